#!/usr/bin/env bash
# A first cut of issue 15's comparison: one server each of herd, the asyncio reference and
# the tokio reference (bench/ref/), loaded by bench/loadgen with closed-loop IAMAT at
# pipeline 1 and 16, in short interleaved rounds; prints the median throughput and p99 of
# each, with ratios to herd (and Redis PING through the same load generator when
# redis-server is installed). Bounded: about 2 minutes with the defaults.
#
#   bench/report/run.sh
#   REPORT_ROUNDS=5 REPORT_DURATION=3s bench/report/run.sh
#
# Everything listens on 127.0.0.1 at free ports; every process started here is killed by
# PID on exit. Logs are emptied between measurements; raw results stay in /tmp/herd-report.*.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${REPORT_ROUNDS:-3}
duration=${REPORT_DURATION:-2s}
warmup=${REPORT_WARMUP:-1s}
connections=${REPORT_CONNECTIONS:-50}
out=$(mktemp -d /tmp/herd-report.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$out/logs"
}
trap cleanup EXIT
die() { echo "bench/report/run.sh: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing listening on port $1 after 30 s"
    sleep 0.05
  done
}

step "building (release): herd, loadgen, the tokio reference"
(cd "$root" && cargo build --release --quiet -p herd -p herd-bench) || die "build failed"
cargo build --release --quiet --manifest-path "$root/bench/ref/tokio/Cargo.toml" || die "tokio reference build failed"
(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown) >"$out/commit"
loadgen=$root/target/release/loadgen
declare -A cmd=(
  [herd]="$root/target/release/herd"
  [asyncio]="$root/bench/ref/asyncio/run.sh"
  [tokio]="$root/bench/ref/tokio/target/release/herd-tokio"
)
servers=(herd asyncio tokio)
declare -A addr
for s in "${servers[@]}"; do
  port=$(free_port)
  cat >"$out/$s.yml" <<YML
servers:
  Solo: { host: 127.0.0.1, port: $port, peer_port: $(free_port), neighbours: [] }
places: { url: 'http://127.0.0.1:9' }
log: { dir: $out/logs/$s, level: info }
YML
  "${cmd[$s]}" --config "$out/$s.yml" Solo 2>>"$out/$s.stderr" &
  pids+=("$!")
  wait_port "$port"
  addr[$s]=127.0.0.1:$port
done
if command -v redis-server >/dev/null; then
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize no \
    --loglevel warning >"$out/redis.log" 2>&1 &
  pids+=("$!")
  wait_port "$redis_port"
  servers+=(redis)
fi
trim_logs() { local f; for f in "$out"/logs/*/*.log; do if [ -f "$f" ]; then : >"$f"; fi; done; }

# The host's load drifts (other tenants, other builds): short rounds that interleave the
# servers, each round's ratio taken on its own, and the median over rounds.
for round in $(seq 1 "$rounds"); do
  for d in 1 16; do
    for s in "${servers[@]}"; do
      step "round $round/$rounds, pipeline $d: $s"
      if [ "$s" = redis ]; then
        load=(--addr "127.0.0.1:$redis_port" --workload raw --line PING --expect +PONG)
      else
        load=(--addr "${addr[$s]}" --workload iamat)
      fi
      "$loadgen" "${load[@]}" -c "$connections" -d "$d" --warmup "$warmup" --duration "$duration" \
        --json --quiet >"$out/${s}_p${d}_r$round.json" || die "loadgen failed against $s"
      trim_logs
    done
  done
done

python3 - "$out" "$rounds" "${servers[@]}" <<'PY'
import json, os, statistics, sys
out, rounds, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(s, d, r):
    with open(os.path.join(out, f"{s}_p{d}_r{r}.json")) as f:
        return json.load(f)
commit = open(os.path.join(out, "commit")).read().strip()
print(f"commit {commit}, {os.cpu_count()} CPUs, {rounds} rounds; IAMAT (Redis: PING), closed loop")
print(f"{'server':8} {'pipe':>4} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'tput/herd':>10} {'p99/herd':>9} {'errors':>7}")
for d in (1, 16):
    for s in servers:
        runs = [load(s, d, r) for r in range(1, rounds + 1)]
        herd = [load("herd", d, r) for r in range(1, rounds + 1)]
        med = lambda f: statistics.median(f(x) for x in runs)
        tput = med(lambda x: x["throughput"])
        lat = lambda k: med(lambda x: x["latency_us"][k]) / 1000
        # Each round's ratio on its own, then the median.
        rt = statistics.median(x["throughput"] / h["throughput"] for x, h in zip(runs, herd))
        rp = statistics.median(x["latency_us"]["p99"] / max(h["latency_us"]["p99"], 1) for x, h in zip(runs, herd))
        errs = sum(x["errors_total"] for x in runs)
        print(f"{s:8} {d:>4} {tput:>10.0f} {lat('p50'):>8.3f} {lat('p99'):>8.3f} {lat('p99_9'):>9.3f} {rt:>10.3f} {rp:>9.3f} {errs:>7}")
PY
echo "raw results: $out" >&2
