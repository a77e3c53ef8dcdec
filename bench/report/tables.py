#!/usr/bin/env python3
"""Markdown tables for REPORT.md from one recorded run: results.json, scale.json and
loc.json in the directory given (default $REPORT_OUT), printed on stdout. REPORT.md's
numbers are pasted from this output, so each can be traced to that run's files.
"""

import json
import os
import statistics
import sys

from suite import fmt

out = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REPORT_OUT", ".")
R = json.load(open(os.path.join(out, "results.json")))
S = R["summary"]
ORDER = ["herd", "asyncio", "tokio", "redis"]


def row(key, label, servers=ORDER, ratio=True):
    fig = S[key]
    cells = []
    for t in servers:
        v = fig.get(t)
        if v is None or v["value"] is None:
            cells.append("–")
            continue
        c = fmt(v["value"])
        if ratio and t != "herd" and v["vs_herd"] is not None:
            c += f" ({v['vs_herd']:.2f}×)"
        cells.append(c)
    return f"| {label} | " + " | ".join(cells) + " |"


def table(rows, servers=ORDER):
    print("| figure | " + " | ".join(servers) + " |")
    print("|---|" + "---:|" * len(servers))
    for key, label in rows:
        if key in S:
            print(row(key, label, servers))
    print()


m = R["machine"]
print(f"Run: commit `{R['commit']}`, {R['mode']} mode, started {R['started_utc']}, {R['elapsed_s']} s; "
      f"{m['nproc']} × {m['model']}, {m['mem_total_kib'] // 1024} MiB; load average "
      f"{' / '.join(f'{x:.1f}' for x in m['loadavg_start'])} at the start, "
      f"{' / '.join(f'{x:.1f}' for x in R['loadavg_end'])} at the end; watchdog kills: "
      f"{R['watchdog_kills'] or 'none'}.\n")
print("One server, closed loop, 50 connections (median of rounds; (×) = its median over herd's):\n")
table([("closed_p1_tput", "throughput, pipeline 1 (req/s)"),
       ("closed_p1_p50_ms", "p50, pipeline 1 (ms)"),
       ("closed_p1_p99_ms", "p99, pipeline 1 (ms)"),
       ("closed_p1_p99_9_ms", "p99.9, pipeline 1 (ms)"),
       ("closed_p16_tput", "throughput, pipeline 16 (req/s)"),
       ("closed_p16_p50_ms", "p50, pipeline 16 (ms)"),
       ("closed_p16_p99_ms", "p99, pipeline 16 (ms)"),
       ("closed_p16_p99_9_ms", "p99.9, pipeline 16 (ms)"),
       ("cpu_us_per_req_p1", "CPU per request, pipeline 1 (µs)"),
       ("cpu_us_per_req_p16", "CPU per request, pipeline 16 (µs)")])
print("Ranges of throughput over the rounds (req/s):\n")
for d in (1, 16):
    rr = S[f"closed_p{d}_tput_range"]
    print(f"- pipeline {d}: " + "; ".join(f"{t} {fmt(v[0])}–{fmt(v[1])}" for t, v in rr.items() if v))
print()
print("Ratio to Redis PING (same loadgen, same connections):\n")
print("| figure | herd | asyncio | tokio |\n|---|---:|---:|---:|")
for key, label in (("closed_p1_tput", "throughput p1"), ("closed_p16_tput", "throughput p16"),
                   ("closed_p1_p99_ms", "p99 p1"), ("closed_p16_p99_ms", "p99 p16"),
                   ("cpu_us_per_req_p16", "CPU/request p16"), ("idle_bytes_per_conn", "bytes/idle conn")):
    print(f"| {label} | " + " | ".join(fmt((S[key].get(t) or {}).get("vs_redis")) for t in ORDER[:3]) + " |")
print()
print("Open loop (p99 / p99.9 in ms) at 25/50/75% of each server's own maximum, and at one "
      f"rate for all ({R['one_server']['common_rate']} req/s):\n")
rows = []
for f in (25, 50, 75, "common"):
    rows += [(f"open{f}_p99_ms", f"p99 at {f}{'%' if f != 'common' else ''}"),
             (f"open{f}_p99_9_ms", f"p99.9 at {f}{'%' if f != 'common' else ''}")]
table(rows)
print("loadgen's own send lateness in the same runs (p99, ms; median over rounds): a request "
      "sent this late was waiting for loadgen, i.e. for a core, not for the server:\n")
print("| rate | " + " | ".join(ORDER) + " |\n|---|" + "---:|" * len(ORDER))
for f in ("25", "50", "75", "common"):
    runs = R["one_server"]["open"][f]
    cells = []
    for t in ORDER:
        xs = sorted(r["send_lateness_us"]["p99"] / 1000 for r in runs.get(t, []) if "send_lateness_us" in r)
        cells.append(fmt(statistics.median(xs)) if xs else "–")
    print(f"| {f}{'%' if f != 'common' else ''} | " + " | ".join(cells) + " |")
print()
print("Rates used (req/s): " + "; ".join(
    f"{f}%: " + ", ".join(f"{t} {v}" for t, v in S[f"open{f}_rate"].items()) for f in (25, 50, 75)) + "\n")
print("Five-server herd (herd.yml's topology, every server loaded, records flooding):\n")
table([("five_p1_tput", "throughput, pipeline 1 (req/s)"), ("five_p1_p99_ms", "p99, pipeline 1 (ms)"),
       ("five_p16_tput", "throughput, pipeline 16 (req/s)"), ("five_p16_p99_ms", "p99, pipeline 16 (ms)"),
       ("five_cpu_us_per_req", "CPU per request, all five (µs)"),
       ("five_prop_idle_p50_ms", "propagation Bailey→Jaquez, idle, p50 (ms)"),
       ("five_prop_idle_p99_ms", "propagation, idle, p99 (ms)"),
       ("five_prop_load_p50_ms", "propagation under pipeline-1 load, p50 (ms)"),
       ("five_prop_load_p99_ms", "propagation under load, p99 (ms)")], ORDER[:3])
print("Memory, Places, failures:\n")
table([("idle_bytes_per_conn", "RSS per idle connection, 10,000 (bytes)"),
       ("whatsat_wait_iamat_p99_ms", "IAMAT p99, 100 WHATSATs waiting 1 s (ms)"),
       ("whatsat_wait_iamat_p99_9_ms", "IAMAT p99.9, same (ms)"),
       ("whatsat_wait_whatsat_per_s", "WHATSATs answered per s, same"),
       ("kill_restart_listening_s", "neighbour restart: listening after (s)"),
       ("kill_restart_caught_up_s", "neighbour restart: caught up after (s)")])
for t, v in R["idle_memory"].items():
    print(f"- {t}: {v['opened']} idle connections, RSS {v['base_kib']} → {v['peak_kib']} KiB")
print()

try:
    SC = json.load(open(os.path.join(out, "scale.json")))
except OSError:
    SC = None
if SC:
    print(f"Scale study ({SC['updates_per_run']} updates per herd at {SC['rate_per_s']}/s, herd only):\n")
    print("| topology | servers | edges | diameter | msgs/update (2E−N+1) | bytes/update | "
          "spread p50 (ms) | spread p99 (ms) | CPU/update (µs) | incomplete |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in SC["runs"]:
        print(f"| {r['topology']} | {r['servers']} | {r['edges']} | {r['diameter']} | "
              f"{r['messages_per_update']:.1f} ({r['flood_formula']}) | {r['bytes_per_update']:.0f} | "
              f"{fmt(r['spread_p50_ms'])} | {fmt(r['spread_p99_ms'])} | {r['cpu_us_per_update']:.0f} | "
              f"{r['incomplete']} |")
    mo = SC["model"]
    print(f"\nModel: CPU per update ≈ {mo['cpu_us_per_server']:.1f} µs × servers + "
          f"{mo['cpu_us_per_message']:.2f} µs × messages; spread p50 ≈ "
          f"{mo['spread_fit_ms']['a']:.3f} + {mo['spread_fit_ms']['per_hop']:.3f}·hops + "
          f"{mo['spread_fit_ms']['per_degree']:.4f}·degree ms; {mo['bytes_per_message']:.0f} B per message.\n")
    print("| servers | topology | msgs/update | KiB/update | spread p50 (ms) | CPU/update (ms) | "
          "herd-wide updates/s before one core is full |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for p in mo["projection"]:
        if p["servers"] >= 25:
            print(f"| {p['servers']} | {p['topology']} | {p['messages_per_update']} | "
                  f"{p['bytes_per_update'] / 1024:.1f} | {p['spread_p50_ms']:.2f} | "
                  f"{p['cpu_us_per_update'] / 1000:.2f} | {fmt(p['max_herd_updates_per_s'])} |")
    print()
    b = mo["bytes_per_message"]
    print("Full-table sync when a link comes up (both directions send the whole table): "
          + "; ".join(f"{c:,} clients = {c * b / 2**20:.1f} MiB per link direction" for c in (10_000, 1_000_000))
          + f"; a restarted server of degree 3 in a 1,000,000-client herd receives "
          f"{3 * 1_000_000 * b / 2**20:.0f} MiB, one of a 500-server mesh {499 * 1_000_000 * b / 2**30:.1f} GiB.\n")
try:
    L = json.load(open(os.path.join(out, "loc.json")))
    print("Lines of code per concern (non-blank, non-comment; herd's unit tests left out):\n")
    print("| concern | herd | asyncio | tokio |\n|---|---:|---:|---:|")
    for c in L["herd"]:
        print(f"| {c} | {L['herd'].get(c, 0)} | {L['asyncio'].get(c, 0)} | {L['tokio'].get(c, 0)} |")
except OSError:
    pass
