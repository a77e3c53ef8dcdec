#!/usr/bin/env python3
"""Scale study (issue 15): herds of 5, 10 and 25 herd servers on loopback, as a ring, a
random graph of degree about 3 and a full mesh. For each: messages and bytes per update
(counted from the servers' own logs: every record a server receives is one logged line),
the time until every server has an update (p50/p99, from the log timestamps: one clock,
one host), CPU per update (utime+stime of all servers, idle baseline subtracted); then a
model calibrated on those runs, projected to 100 and 500 servers.

Writes <out>/scale.json and scale_*.svg next to the suite's results (REPORT_OUT).
"""

import json
import os
import random
import sys
import tempfile
import time
from collections import defaultdict, deque

import suite
import svgplot
from suite import Lines, cpu_s, log

SIZES = [5, 10, 25]
TOPOS = ["ring", "random3", "mesh"]


def edges_for(topo, n, seed=1):
    names = [f"S{i:02d}" for i in range(n)]
    es = set()

    def add(a, b):
        if a != b:
            es.add((min(a, b), max(a, b)))
    if topo == "mesh":
        for i in range(n):
            for j in range(i + 1, n):
                add(i, j)
    else:
        for i in range(n):
            add(i, (i + 1) % n)
        if topo == "random3":
            # A ring (so it is connected) plus random chords until every server has three
            # neighbours where it can: degree 3 (a few 4) as in a random 3-regular graph.
            r = random.Random(seed)
            deg = lambda v: sum(v in e for e in es)
            for _ in range(50 * n):
                low = [v for v in range(n) if deg(v) < 3]
                if len(low) < 2:
                    break
                a, b = r.sample(low, 2)
                add(a, b)
            for v in range(n):
                if deg(v) < 3:
                    add(v, r.choice([u for u in range(n) if u != v]))
    return names, [(names[a], names[b]) for a, b in sorted(es)]


def diameter(names, edges):
    nb = defaultdict(set)
    for a, b in edges:
        nb[a].add(b)
        nb[b].add(a)
    best = 0
    for s in names:
        dist = {s: 0}
        q = deque([s])
        while q:
            v = q.popleft()
            for u in nb[v]:
                if u not in dist:
                    dist[u] = dist[v] + 1
                    q.append(u)
        best = max(best, max(dist.values()))
    return best


def ts(line):
    """Seconds of the day of an RFC 3339 log time stamp (the runs are seconds long)."""
    t = line[11:line.index("Z")]
    h, m, s = t.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def parse_logs(logdir, names, prefix):
    origin, arrive = {}, defaultdict(dict)
    msgs = byts = dup = 0
    for n in names:
        try:
            f = open(os.path.join(logdir, f"{n}.log"), errors="replace")
        except OSError:
            continue
        with f:
            for line in f:
                if prefix not in line:
                    continue
                if " recv: IAMAT " in line:
                    c = line.split(" recv: IAMAT ", 1)[1].split()[0]
                    origin[c] = ts(line)
                elif "] record from " in line:
                    rec = line.split("): ", 1)[1].split(" | ", 1)[0].rstrip("\n")
                    c = rec.split()[3]
                    msgs += 1
                    byts += len(rec) + 1
                    if "(new)" in line:
                        arrive[c][n] = ts(line)
                    else:
                        dup += 1
    return origin, arrive, msgs, byts, dup


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_one(su, topo, n, updates, rate):
    names, edges = edges_for(topo, n)
    tag = f"scale-{topo}-{n}"
    yml, ports, procs = su.start_herd("herd", tag, edges, names)
    time.sleep(1.0 + n * 0.02)  # links up (dials are immediate; the HELLOs cross)
    pids = [p.pid for p in procs.values()]
    # Idle baseline: heartbeats and timers, over as long as the updates will take.
    span = updates / rate + 1.0
    c0 = sum(cpu_s(p) for p in pids)
    time.sleep(span)
    idle_cpu = sum(cpu_s(p) for p in pids) - c0
    conns = {m: Lines(ports[m][0]) for m in names}
    prefix = f"sc{os.getpid()}-"
    c0 = sum(cpu_s(p) for p in pids)
    t0 = time.time()
    for k in range(updates):
        m = names[k % n]
        conns[m].send(f"IAMAT {prefix}{k} +34.068930-118.445127 {time.time():.9f}\n")
        conns[m].line()
        wait = t0 + (k + 1) / rate - time.time()
        if wait > 0:
            time.sleep(wait)
    time.sleep(1.0)
    busy = sum(cpu_s(p) for p in pids) - c0
    for c in conns.values():
        c.close()
    for p in procs.values():
        su.kill(p)  # SIGTERM: the logs are flushed at once
    origin, arrive, msgs, byts, dup = parse_logs(os.path.join(su.out, "logs", f"herd-{tag}"), names, prefix)
    spread, missing = [], 0
    for c, t in origin.items():
        a = arrive.get(c, {})
        if len(a) < n - 1:
            missing += 1
            continue
        spread.append((max(a.values()) - t) * 1000 if a else 0.0)
    cpu_per_update = max(0.0, busy - idle_cpu) / max(1, updates)
    deg = [sum(x in e for e in edges) for x in names]
    r = {"topology": topo, "servers": n, "edges": len(edges), "diameter": diameter(names, edges),
         "max_degree": max(deg), "updates": updates, "seen_at_origin": len(origin),
         "incomplete": missing, "messages_per_update": msgs / max(1, len(origin)),
         "duplicates_per_update": dup / max(1, len(origin)),
         "bytes_per_update": byts / max(1, len(origin)),
         "flood_formula": 2 * len(edges) - (n - 1),
         "spread_p50_ms": pct(spread, 0.5), "spread_p99_ms": pct(spread, 0.99),
         "cpu_us_per_update": cpu_per_update * 1e6, "idle_cpu_s": idle_cpu, "busy_cpu_s": busy}
    log(f"scale {topo} {n}: {r['messages_per_update']:.1f} msgs/update (formula {r['flood_formula']}), "
        f"spread p50 {r['spread_p50_ms']} ms, cpu {r['cpu_us_per_update']:.0f} us/update")
    su.trim_logs()
    return r


def solve3(rows, ys):
    """Least squares for y = a + b*x1 + c*x2 (normal equations, 3x3, Cramer)."""
    X = [[1.0, r[0], r[1]] for r in rows]
    A = [[sum(X[k][i] * X[k][j] for k in range(len(X))) for j in range(3)] for i in range(3)]
    B = [sum(X[k][i] * ys[k] for k in range(len(X))) for i in range(3)]

    def det(m):
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))
    d = det(A)
    if abs(d) < 1e-12:
        return [sum(ys) / len(ys), 0.0, 0.0]
    out = []
    for i in range(3):
        m = [row[:] for row in A]
        for r_, b in zip(m, B):
            r_[i] = b
        out.append(det(m) / d)
    return out


def fit2(xs, ys):
    """Least squares for y = p*x1 + q*x2 (through the origin), 2x2 normal equations."""
    a11 = sum(x[0] * x[0] for x in xs)
    a12 = sum(x[0] * x[1] for x in xs)
    a22 = sum(x[1] * x[1] for x in xs)
    b1 = sum(x[0] * y for x, y in zip(xs, ys))
    b2 = sum(x[1] * y for x, y in zip(xs, ys))
    d = a11 * a22 - a12 * a12
    if abs(d) < 1e-12:
        return 0.0, (b2 / a22 if a22 else 0.0)
    return (b1 * a22 - b2 * a12) / d, (a11 * b2 - a12 * b1) / d


def model(runs):
    """Calibrates CPU per update = alpha x servers + beta x messages (each server reached
    pays a wake-up, a log line and a flush; each message a read, a compare and a write)
    and spread p50 = a + b x diameter + c x max degree (a hop costs a wake-up, a server
    writes to its neighbours one after another). Projects 100 and 500 servers, and the
    herd-wide update rate at which the busiest server's one core is full."""
    import math
    pts = [r for r in runs if r["spread_p50_ms"] is not None]
    alpha, beta = fit2([(r["servers"], r["messages_per_update"]) for r in runs],
                       [r["cpu_us_per_update"] for r in runs])
    a, b, c = solve3([(r["diameter"], r["max_degree"]) for r in pts], [r["spread_p50_ms"] for r in pts])
    rec = sum(r["bytes_per_update"] for r in runs) / max(1, sum(r["messages_per_update"] for r in runs))
    proj = []
    for n in (5, 10, 25, 100, 500):
        for topo in TOPOS:
            if topo == "ring":
                e, dia, dmax = n, n // 2, 2
            elif topo == "random3":
                e, dia, dmax = 3 * n // 2, max(2, round(math.log(n) / math.log(2)) + 1), 3
            else:
                e, dia, dmax = n * (n - 1) // 2, 1, n - 1
            m = 2 * e - (n - 1)
            # Every update costs every server one wake-up and its share of the messages:
            # m / n of them (each server forwards to all its neighbours but the sender),
            # which on these regular graphs is every server's own load.
            per_server_us = alpha + beta * m / n
            proj.append({"servers": n, "topology": topo, "edges": e, "diameter": dia,
                         "messages_per_update": m, "bytes_per_update": m * rec,
                         "spread_p50_ms": a + b * dia + c * dmax,
                         "cpu_us_per_update": alpha * n + beta * m,
                         "max_herd_updates_per_s": 1e6 / per_server_us if per_server_us > 0 else None,
                         "links_per_server": dmax})
    return {"cpu_us_per_server": alpha, "cpu_us_per_message": beta,
            "spread_fit_ms": {"a": a, "per_hop": b, "per_degree": c},
            "bytes_per_message": rec, "projection": proj}


def main():
    quick = "--quick" in sys.argv
    updates, rate = (60, 100) if quick else (200, 100)
    out = os.environ.get("REPORT_OUT") or tempfile.mkdtemp(prefix="herd-report.")
    os.makedirs(out, exist_ok=True)
    os.chdir(out)
    su = suite.Suite(out, {})
    runs = []
    if "--model-only" in sys.argv:
        # Refits the model (and redraws) from the runs of an earlier scale.json.
        with open(os.path.join(out, "scale.json")) as f:
            old = json.load(f)
        runs, updates, rate = old["runs"], old["updates_per_run"], old["rate_per_s"]
    try:
        for n in SIZES if not runs else []:
            for topo in TOPOS:
                runs.append(run_one(su, topo, n, updates, rate))
    finally:
        su.cleanup()
    m = model(runs)
    res = {"commit": os.environ.get("REPORT_COMMIT", "unknown"), "machine": suite.machine(),
           "updates_per_run": updates, "rate_per_s": rate, "runs": runs, "model": m,
           "watchdog_kills": su.watchdog_kills}
    with open(os.path.join(out, "scale.json"), "w") as f:
        json.dump(res, f, indent=1)
    xs = SIZES
    by = {(r["topology"], r["servers"]): r for r in runs}
    for key, title, unit, logy in (("messages_per_update", "Messages per update (measured)", "messages", True),
                                   ("spread_p99_ms", "Time until every server has an update, p99", "ms", False),
                                   ("cpu_us_per_update", "CPU per update, all servers", "us", True)):
        svgplot.lines(os.path.join(out, f"scale_{key}.svg"), title, xs,
                      {t: [by[(t, n)][key] for n in xs] for t in TOPOS}, "servers", unit, logy=logy)
    proj = m["projection"]
    pxs = [5, 10, 25, 100, 500]
    pb = {(p["topology"], p["servers"]): p for p in proj}
    svgplot.lines(os.path.join(out, "scale_projection.svg"),
                  "Model: herd-wide updates/s before the busiest server's core is full", pxs,
                  {t: [pb[(t, n)]["max_herd_updates_per_s"] for n in pxs] for t in TOPOS},
                  "servers", "updates/s", logy=True)
    print(f"{'topology':8} {'N':>3} {'E':>4} {'D':>2} {'msgs/upd':>9} {'formula':>7} {'bytes/upd':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'cpu us/upd':>10} {'incomplete':>10}")
    for r in runs:
        print(f"{r['topology']:8} {r['servers']:>3} {r['edges']:>4} {r['diameter']:>2} "
              f"{r['messages_per_update']:>9.1f} {r['flood_formula']:>7} {r['bytes_per_update']:>9.0f} "
              f"{suite.fmt(r['spread_p50_ms']):>7} {suite.fmt(r['spread_p99_ms']):>7} "
              f"{r['cpu_us_per_update']:>10.0f} {r['incomplete']:>10}")
    print(f"model: {m['cpu_us_per_server']:.1f} us CPU per server reached + {m['cpu_us_per_message']:.2f} us per message; spread p50 = "
          f"{m['spread_fit_ms']['a']:.3f} + {m['spread_fit_ms']['per_hop']:.3f} x hops + "
          f"{m['spread_fit_ms']['per_degree']:.4f} x degree ms; {m['bytes_per_message']:.0f} B/message")
    for p in proj:
        if p["servers"] >= 100:
            print(f"  {p['topology']:8} {p['servers']:>3}: {p['messages_per_update']} msgs/update, "
                  f"{p['bytes_per_update'] / 1024:.0f} KiB, spread p50 ~{p['spread_p50_ms']:.1f} ms, "
                  f"cpu {p['cpu_us_per_update'] / 1000:.1f} ms/update, herd max "
                  f"{suite.fmt(p['max_herd_updates_per_s'])} updates/s")
    print(f"scale results: {out}/scale.json", file=sys.stderr)


if __name__ == "__main__":
    main()
