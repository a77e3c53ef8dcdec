#!/usr/bin/env bash
# Peer-link TLS against plain TCP (issue 11's closing note): two five-server herds with
# flooding, one plain and one with peer_tls, run side by side and loaded in interleaved
# short rounds (IAMAT spread over all five, 50 connections, pipeline 1), so a slow stretch
# of this shared host hits both. Prints per round the throughput, p99 and the servers'
# user CPU per forwarded record, the ratios' medians, the TLS handshake times from the
# servers' debug log at start-up, and propagation Bailey -> Jaquez (two hops) for both.
#
#   bench/tls.sh                 # about a minute; BENCH_TLS_ROUNDS=9 for more rounds
#
# Needs target/release/{herd,loadgen} (cargo build --release --bin herd --bin loadgen).
# Listens on 127.0.0.1 at BENCH_TLS_PORT.. (default 61100, above the ephemeral range);
# every server started here is killed by PID on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
herd=$root/target/release/herd
lg=$root/target/release/loadgen
rounds=${BENCH_TLS_ROUNDS:-5}
base=${BENCH_TLS_PORT:-61100}
out=$(mktemp -d /tmp/herd-tls-bench.XXXXXX)
names=(Bailey Bona Campbell Clark Jaquez)
declare -A pid
cleanup() { for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
[ -x "$herd" ] && [ -x "$lg" ] || { echo "bench/tls.sh: build first: cargo build --release --bin herd --bin loadgen" >&2; exit 1; }

# write DIR FIRST_PORT LEVEL [EXTRA_YAML]
write() {
  local i=0 s
  mkdir -p "$1"
  {
    echo "servers:"
    for s in "Bailey:Bona, Campbell" "Bona:Bailey, Campbell, Clark" "Campbell:Bailey, Bona, Jaquez" \
      "Clark:Bona, Jaquez" "Jaquez:Campbell, Clark"; do
      echo "  ${s%%:*}: { host: 127.0.0.1, port: $(($2 + i)), peer_port: $(($2 + 50 + i)), neighbours: [${s#*:}] }"
      i=$((i + 1))
    done
    echo "log: { dir: logs, level: $3 }"
    echo "places: { url: 'http://127.0.0.1:9' }"
    echo "${4:-}"
  } >"$1/herd.yml"
}
start() {
  local n
  for n in "${names[@]}"; do
    "$herd" --config "$out/$1/herd.yml" "$n" 2>>"$out/$1/stderr" &
    pid[$1.$n]=$!
  done
  sleep 1
}
stop() {
  local n
  for n in "${names[@]}"; do kill "${pid[$1.$n]}"; wait "${pid[$1.$n]}" 2>/dev/null || true; unset "pid[$1.$n]"; done
}
utime() {
  local t=0 n
  for n in "${names[@]}"; do t=$((t + $(awk '{print $14}' "/proc/${pid[$1.$n]}/stat"))); done
  echo "$t"
}

tls="peer_tls: { ca: certs/ca.pem, cert: 'certs/{name}.pem', key: 'certs/{name}.key' }"
write "$out/plain" "$base" warn
write "$out/tls" $((base + 100)) debug "$tls"
"$herd" certs --config "$out/tls/herd.yml" >/dev/null
# Handshake times: the debug log of a TLS herd starting up (12 links, both ends).
start tls
sleep 1
grep -h 'TLS handshake done in' "$out"/tls/logs/*.log | sed 's/.*done in \([0-9]*\) us/\1/' >"$out/handshakes"
stop tls
write "$out/tls" $((base + 100)) warn "$tls"
start plain
start tls
for mode in plain tls; do
  "$lg" --json --quiet --workload propagation --trials 200 --config "$out/$mode/herd.yml" \
    --from Bailey --to Jaquez >"$out/prop_$mode.json"
done
for r in $(seq 1 "$rounds"); do
  for mode in plain tls; do
    u0=$(utime $mode)
    "$lg" --config "$out/$mode/herd.yml" --workload iamat -c 50 -d 1 --warmup 1s --duration 4s \
      --json --quiet >"$out/${mode}_r$r.json"
    echo "$mode $r $(($(utime $mode) - u0))" >>"$out/utime"
  done
done
stop plain
stop tls

python3 - "$out" "$rounds" "$(getconf CLK_TCK)" <<'EOF'
import json, statistics as st, sys
out, rounds, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Each IAMAT is sent once by its server to each of its neighbours and once onwards by
# each other server to all but the one it came from: 2 * 6 links - 4 = 8 record sends.
SENDS = 8
ut = {tuple(l.split()[:2]): int(l.split()[2]) for l in open(f"{out}/utime")}
tp, p99, cpu = [], [], {"plain": [], "tls": []}
for r in range(1, rounds + 1):
    row = {}
    for m in ("plain", "tls"):
        j = json.load(open(f"{out}/{m}_r{r}.json"))
        # utime covers warm-up and run (5 s) at about the measured rate.
        c = ut[(m, str(r))] * 1e6 / hz / (j["throughput"] * 5.0 * SENDS)
        cpu[m].append(c)
        row[m] = (j["throughput"], j["latency_us"]["p99"], j["errors_total"], c)
        print(f"round {r} {m:5}: {j['throughput']:9.0f} req/s  p99 {j['latency_us']['p99']:6} us  "
              f"errors {j['errors_total']}  user CPU {c:.2f} us per forwarded record")
    tp.append(row["tls"][0] / row["plain"][0])
    p99.append(row["tls"][1] / row["plain"][1])
print(f"TLS/plain throughput: median {st.median(tp):.2f} (rounds {min(tp):.2f}..{max(tp):.2f})")
print(f"TLS/plain p99:        median {st.median(p99):.2f} (rounds {min(p99):.2f}..{max(p99):.2f})")
print(f"user CPU per forwarded record: plain {st.median(cpu['plain']):.2f} us, TLS {st.median(cpu['tls']):.2f} us (medians)")
h = sorted(int(x) for x in open(f"{out}/handshakes"))
if h:
    print(f"TLS handshakes at start-up (loop-pass resolution): {len(h)}, median {h[len(h)//2]} us, max {h[-1]} us")
for m in ("plain", "tls"):
    l = json.load(open(f"{out}/prop_{m}.json"))["latency_us"]
    print(f"propagation Bailey -> Jaquez, {m:5}: p50 {l['p50']} us, p99 {l['p99']} us")
EOF
echo "raw results: $out" >&2
