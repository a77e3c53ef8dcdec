//! `--svg FILE`: one run's latency by percentile as a standalone SVG, drawn like
//! bench/latency.svg (bench/report.py) but for a single run: x is the percentile on a log
//! scale of 1/(1-p), so the tail gets as much room as the median; y is the latency on a
//! log scale, so 50 µs and 50 ms both stay readable. Pure: points in, text out.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The x axis ends here: 100 % itself is infinitely far on a log scale of 1/(1-p).
const LAST_PERCENTILE: f64 = 99.999;

/// x of a percentile (0..=100), before scaling: 0 at 0 %, 5 at 99.999 %.
fn x_of(percent: f64) -> f64 {
    let p = (percent / 100.0).clamp(0.0, LAST_PERCENTILE / 100.0);
    (1.0 / (1.0 - p)).log10()
}

/// `s` with the characters XML gives a meaning escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A latency in microseconds as an axis label: `50 µs`, `1 ms`, `10 s`.
fn label_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// The plot of `points`: (percentile 0..=100, latency in µs), in increasing percentile
/// order, as loadgen's histograms give them. Latencies of 0 are left out (a log scale has
/// no room for them); with no point left the plot says there was nothing to draw.
pub fn latency_by_percentile(title: &str, points: &[(f64, u64)]) -> String {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="32" fill="#555">latency by percentile (log scales)</text>"##
    );
    let drawn: Vec<(f64, f64)> = points
        .iter()
        .filter(|&&(_, us)| us > 0)
        .map(|&(p, us)| (p, us as f64))
        .collect();
    let (Some(lo), Some(hi)) = (
        drawn.iter().map(|d| d.1).reduce(f64::min),
        drawn.iter().map(|d| d.1).reduce(f64::max),
    ) else {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no successful replies: nothing to plot</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    };
    // Whole decades around the data, at least one.
    let lo_dec = lo.log10().floor();
    let hi_dec = hi.log10().ceil().max(lo_dec + 1.0);
    let x = |p: f64| LEFT + pw * x_of(p) / x_of(LAST_PERCENTILE);
    let y = |us: f64| TOP + ph * (1.0 - (us.log10() - lo_dec) / (hi_dec - lo_dec));

    let mut e = lo_dec;
    while e <= hi_dec {
        let v = 10f64.powf(e);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{x2}" y2="{yv:.1}" stroke="#ddd"/><text x="{lx}" y="{ty:.1}" text-anchor="end">{l}</text>"##,
            yv = y(v),
            x2 = LEFT + pw,
            lx = LEFT - 6.0,
            ty = y(v) + 4.0,
            l = label_us(v)
        );
        e += 1.0;
    }
    for (p, l) in [
        (0.0, "0%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
    ] {
        let _ = writeln!(
            s,
            r##"<line x1="{xp:.1}" y1="{TOP}" x2="{xp:.1}" y2="{yb}" stroke="#ddd"/><text x="{xp:.1}" y="{ty}" text-anchor="middle">{l}</text>"##,
            xp = x(p),
            yb = TOP + ph,
            ty = TOP + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let line: Vec<String> = drawn
        .iter()
        .map(|&(p, us)| format!("{:.1},{:.1}", x(p), y(us)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        line.join(" ")
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (x, y) pairs of the plot's polyline.
    fn polyline(svg: &str) -> Vec<(f64, f64)> {
        let Some(at) = svg.find("<polyline") else {
            return Vec::new();
        };
        let rest = &svg[at..];
        let start = rest.find("points=\"").map(|i| i + 8).unwrap_or(0);
        let end = start + rest[start..].find('"').unwrap_or(0);
        rest[start..end]
            .split(' ')
            .map(|xy| {
                let (x, y) = xy.split_once(',').unwrap_or(("nan", "nan"));
                (x.parse().unwrap_or(f64::NAN), y.parse().unwrap_or(f64::NAN))
            })
            .collect()
    }

    #[test]
    fn every_point_is_drawn_inside_the_plot_in_order() {
        let points = [
            (0.0, 40),
            (50.0, 60),
            (90.0, 90),
            (99.0, 190),
            (99.9, 4_600),
            (99.99, 44_000),
            (100.0, 44_447),
        ];
        let svg = latency_by_percentile("iamat, 4 connections", &points);
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.ends_with("</svg>\n"));
        let xy = polyline(&svg);
        assert_eq!(xy.len(), points.len(), "{svg}");
        for w in xy.windows(2) {
            assert!(w[0].0 <= w[1].0, "percentiles left to right: {xy:?}");
            assert!(w[0].1 >= w[1].1, "higher latency is higher up: {xy:?}");
        }
        for &(x, y) in &xy {
            assert!((LEFT..=W - RIGHT).contains(&x), "x {x} in the plot");
            assert!((TOP..=H - BOTTOM).contains(&y), "y {y} in the plot");
        }
        // Decades from 10 µs to 100 ms are labelled.
        assert!(svg.contains(">10 µs<") && svg.contains(">100 ms<"), "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn one_latency_and_zeroes_still_make_a_plot() {
        let svg = latency_by_percentile("flat", &[(0.0, 0), (50.0, 100), (100.0, 100)]);
        let xy = polyline(&svg);
        assert_eq!(xy.len(), 2, "the 0 µs point is left out: {svg}");
        assert!(xy.iter().all(|&(x, y)| x.is_finite() && y.is_finite()), "{svg}");
    }

    #[test]
    fn no_replies_says_so_instead_of_drawing() {
        let svg = latency_by_percentile("whatsat", &[]);
        assert!(svg.contains("nothing to plot"), "{svg}");
        assert!(!svg.contains("<polyline"));
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn the_title_is_escaped() {
        let svg = latency_by_percentile("raw \"PING\" <&>", &[(50.0, 10)]);
        assert!(svg.contains("raw &quot;PING&quot; &lt;&amp;&gt;"), "{svg}");
        assert!(!svg.contains("<&>"));
    }
}
