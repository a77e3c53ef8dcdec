"""A small SVG writer for the report's plots: grouped bars and lines, stdlib only.

Kept to what REPORT.md needs (no matplotlib on the benchmark host): one value axis from
zero, a bar per series in each group, the value printed on top of each bar.
"""

from xml.sax.saxutils import escape

COLOURS = {"herd": "#1b6ac9", "asyncio": "#e0a100", "tokio": "#c0392b", "redis": "#7f8c8d"}
EXTRA = ["#27ae60", "#8e44ad", "#16a085", "#d35400"]


def _colour(name, i):
    return COLOURS.get(name, EXTRA[i % len(EXTRA)])


def _nice_max(v):
    if v <= 0:
        return 1.0
    m = 10 ** len(str(int(v))) / 10 if v >= 1 else 1.0
    while m > v * 10:
        m /= 10
    for k in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50):
        if k * m >= v:
            return k * m
    return v


def _label(v):
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def grouped_bars(path, title, groups, series, unit, width=760, height=360):
    """groups: labels along x; series: {name: [value per group or None]}."""
    left, right, top, bottom = 70, 20, 40, 60
    pw, ph = width - left - right, height - top - bottom
    vals = [v for vs in series.values() for v in vs if v is not None]
    ymax = _nice_max(max(vals) if vals else 1.0)
    n = max(1, len(series))
    gw = pw / max(1, len(groups))
    bw = gw * 0.8 / n
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i in range(6):
        y = top + ph - ph * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{_label(ymax * i / 5)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               f'text-anchor="middle">{escape(unit)}</text>')
    for g, label in enumerate(groups):
        x0 = left + g * gw + gw * 0.1
        for s, (name, vs) in enumerate(series.items()):
            v = vs[g] if g < len(vs) else None
            x = x0 + s * bw
            if v is None:
                out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - 3}" text-anchor="middle" '
                           f'font-size="9">n/a</text>')
                continue
            h = ph * v / ymax
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw * 0.92:.1f}" '
                       f'height="{h:.1f}" fill="{_colour(name, s)}"/>')
            out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - h - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{_label(v)}</text>')
        out.append(f'<text x="{left + g * gw + gw / 2:.1f}" y="{top + ph + 16}" '
                   f'text-anchor="middle">{escape(label)}</text>')
    lx = left
    for s, name in enumerate(series):
        out.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{_colour(name, s)}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 12}">{escape(name)}</text>')
        lx += 16 + 8 * len(name) + 20
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def lines(path, title, xs, series, xlabel, ylabel, width=760, height=360, logy=False):
    """series: {name: [y per x or None]}; x positions evenly spaced, labelled by xs."""
    import math
    left, right, top, bottom = 80, 20, 40, 60
    pw, ph = width - left - right, height - top - bottom
    vals = [v for vs in series.values() for v in vs if v is not None and v > 0]
    if logy and vals:
        lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
        hi = max(hi, lo + 1)

        def fy(v):
            return top + ph - ph * (math.log10(v) - lo) / (hi - lo)
        ticks = [10 ** e for e in range(lo, hi + 1)]
    else:
        ymax = _nice_max(max(vals) if vals else 1.0)

        def fy(v):
            return top + ph - ph * v / ymax
        ticks = [ymax * i / 5 for i in range(6)]
    fx = (lambda i: left + pw * i / (len(xs) - 1)) if len(xs) > 1 else (lambda i: left + pw / 2)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for t in ticks:
        y = fy(t) if (t > 0 or not logy) else top + ph
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    for i, x in enumerate(xs):
        out.append(f'<text x="{fx(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(str(x))}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 34}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    for s, (name, vs) in enumerate(series.items()):
        c = _colour(name, s)
        pts = [(fx(i), fy(v)) for i, v in enumerate(vs) if v is not None and (v > 0 or not logy)]
        if pts:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
            for x, y in pts:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"/>')
    lx = left
    for s, name in enumerate(series):
        out.append(f'<rect x="{lx}" y="{height - 14}" width="12" height="12" fill="{_colour(name, s)}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 4}">{escape(name)}</text>')
        lx += 16 + 7 * len(name) + 20
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
