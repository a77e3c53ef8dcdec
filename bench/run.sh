#!/usr/bin/env bash
# The benchmark suite: measures a reference (Redis PING) and herd in the same run, with the
# same load generator, on this machine, and writes BENCHMARKS.md (every figure also as a
# ratio to the reference) and bench/latency.svg.
#
#   bench/run.sh                 # ~7 minutes
#   BENCH_DURATION=5s BENCH_ROUNDS=5 bench/run.sh
#
# Everything listens on 127.0.0.1 at free ports; every process started here is killed by
# PID on exit. The servers' logs are emptied between measurements and removed at the end
# (BENCH_KEEP_LOGS=1 keeps them whole); the raw results stay in /tmp/herd-bench.*.
# Needs redis-server (installed with apt-get when missing and run as root) and 3 GB of
# free disk for the logs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
duration=${BENCH_DURATION:-6s}
warmup=${BENCH_WARMUP:-2s}
# The one-server comparison runs as many short interleaved rounds (see below).
rounds=${BENCH_ROUNDS:-9}
round_duration=${BENCH_ROUND_DURATION:-3s}
round_warmup=${BENCH_ROUND_WARMUP:-1s}
out=$(mktemp -d /tmp/herd-bench.XXXXXX)
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # herd logs every message: gigabytes per run. Only the results are kept.
  [ "${BENCH_KEEP_LOGS:-0}" = 1 ] || rm -rf "$out/logs"
}
trap cleanup EXIT
die() { echo "bench/run.sh: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }
# Empties the herd logs between measurements (the servers follow a truncated log file),
# so the disk holds one measurement's log at a time, not the run's.
trim_logs() {
  [ "${BENCH_KEEP_LOGS:-0}" = 1 ] && return 0
  local f
  for f in "$out"/logs/*.log; do if [ -f "$f" ]; then : >"$f"; fi; done
}

# A measurement at pipeline 16 logs about 1 GB; leave room for it.
need_kib=$((3 * 1024 * 1024))
avail_kib=$(df -Pk "$out" 2>/dev/null | awk 'NR == 2 {print $4}') || true
case $avail_kib in '' | *[!0-9]*) die "cannot read the free space in $out (df)" ;; esac
[ "$avail_kib" -ge "$need_kib" ] ||
  die "need 3 GB free in $out for the servers' logs (have $((avail_kib / 1024)) MB)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local deadline=$((SECONDS + 20))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing listening on port $1 after 20 s"
    sleep 0.05
  done
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Largest RSS of PID $1 while PID $2 runs, into file $3.
sample_rss() {
  local max=0 v
  while kill -0 "$2" 2>/dev/null; do
    v=$(rss_kib "$1" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$max" ] && max=$v
    sleep 0.2
  done
  echo "$max" >"$3"
}

step "building (release)"
(cd "$root" && cargo build --release --quiet -p herd -p herd-bench) || die "build failed"
# What was built, for the report (which itself changes tracked files).
(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown) >"$out/commit"
herd=$root/target/release/herd
loadgen=$root/target/release/loadgen

if ! command -v redis-server >/dev/null; then
  step "installing redis-server (the reference)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null ||
      die "could not install redis-server"
  else
    die "redis-server is missing: sudo apt-get install redis-server"
  fi
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge 10100 ] || die "need ulimit -n >= 10100 for 10,000 connections (have $(ulimit -n))"

lg() { "$loadgen" --warmup "$warmup" --duration "$duration" --json --quiet "$@"; }

# --- the reference -------------------------------------------------------------------
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize no \
  --maxclients 20000 --loglevel warning >"$out/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_port "$redis_port"
redis=(--addr "127.0.0.1:$redis_port" --workload raw --line PING --expect +PONG)
step "(f) Redis with 10,000 idle connections plus load (reference RSS per connection)"
echo "$(rss_kib "$redis_pid")" >"$out/redis_rss_base"
lg "${redis[@]}" -c 50 -d 1 --idle 10000 >"$out/redis_idle.json" &
lgpid=$!
sample_rss "$redis_pid" "$lgpid" "$out/redis_rss_peak"
wait "$lgpid"

# --- herd ------------------------------------------------------------------------------
# A herd.yml for the given servers (name:neighbours) with fresh ports, logging at the
# default level, Places pointed at $places_url.
write_herd() {
  local file=$1 places_url=$2
  shift 2
  {
    echo "servers:"
    for spec in "$@"; do
      echo "  ${spec%%:*}: { host: 127.0.0.1, port: $(free_port), peer_port: $(free_port), neighbours: [${spec#*:}] }"
    done
    echo "places: { api: new, url: '$places_url', workers: 16, timeout_ms: 5000 }"
    echo "log: { dir: $out/logs, level: info }"
    # SPEC's default max_connections (10000) would refuse the load connections that (f)
    # opens beside its 10,000 idle ones; Redis gets --maxclients 20000 for the same reason.
    echo "limits: { max_connections: 20000 }"
  } >"$file"
}
start_herd() { # config, names...
  local cfg=$1
  shift
  for name in "$@"; do
    GOOGLE_PLACES_API_KEY=bench-key "$herd" --config "$cfg" "$name" 2>>"$out/herd.stderr" &
    pids+=("$!")
    eval "pid_$name=$!"
    wait_port "$("$herd" --config "$cfg" --list | awk -v n="$name" '$1 == n {print $3}')"
  done
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
port_of() { "$herd" --config "$1" --list | awk -v n="$2" '$1 == n {print $3}'; }

# The tests' Places imitation as a process, answering after 50 ms; it prints its URL.
"$root/target/release/places-stub" --delay-ms 50 >"$out/places-stub.url" &
pids+=("$!")
for _ in $(seq 1 100); do [ -s "$out/places-stub.url" ] && break; sleep 0.05; done
places_url=$(head -n 1 "$out/places-stub.url")
[ -n "$places_url" ] || die "places-stub did not start"

write_herd "$out/one.yml" "$places_url" "Solo:"
# The same with per-message logging off (log.level: warn), to show what it costs.
write_herd "$out/quiet.yml" "$places_url" "Quiet:"
sed -i 's/level: info/level: warn/' "$out/quiet.yml"
start_herd "$out/one.yml" Solo
start_herd "$out/quiet.yml" Quiet
solo=(--addr "127.0.0.1:$(port_of "$out/one.yml" Solo)")
quiet=(--addr "127.0.0.1:$(port_of "$out/quiet.yml" Quiet)")
# The host's load drifts, by 20% and more within a minute (other tenants). Short rounds
# that interleave the reference and herd, each round's ratio taken on its own, and the
# median of many, keep a slow stretch from favouring either side.
rlg() { "$loadgen" --warmup "$round_warmup" --duration "$round_duration" --json --quiet "$@"; }
for round in $(seq 1 "$rounds"); do
  for d in 1 16; do
    step "(a, b) round $round/$rounds, pipeline $d: Redis PING, herd IAMAT, herd IAMAT with log.level warn"
    rlg "${redis[@]}" -c 50 -d "$d" >"$out/redis_p${d}_r$round.json"
    rlg "${solo[@]}" --workload iamat -c 50 -d "$d" >"$out/herd_p${d}_r$round.json"
    rlg "${quiet[@]}" --workload iamat -c 50 -d "$d" >"$out/quiet_p${d}_r$round.json"
    trim_logs
  done
done
stop_pid "$pid_Quiet"
step "(d) WHATSAT against a Places imitation answering in 50 ms (16 workers)"
lg "${solo[@]}" --workload whatsat --clients 2000 --radius 10 --bound 5 -c 32 -d 1 >"$out/whatsat.json"
stop_pid "$pid_Solo"
trim_logs

step "(f) one herd server with 10,000 idle connections plus load"
start_herd "$out/one.yml" Solo
echo "$(rss_kib "$pid_Solo")" >"$out/herd_rss_base"
lg "${solo[@]}" --workload iamat -c 50 -d 1 --idle 10000 >"$out/herd_idle.json" &
lgpid=$!
sample_rss "$pid_Solo" "$lgpid" "$out/herd_rss_peak"
wait "$lgpid"
stop_pid "$pid_Solo"
trim_logs

write_herd "$out/five.yml" "$places_url" \
  "Bailey:Bona, Campbell" "Bona:Bailey, Campbell, Clark" "Campbell:Bailey, Bona, Jaquez" \
  "Clark:Bona, Jaquez" "Jaquez:Campbell, Clark"
start_herd "$out/five.yml" Bailey Bona Campbell Clark Jaquez
step "(e) propagation Bailey -> Jaquez (two hops), 1,000 trials"
# An unmeasured round first: the links come up in the milliseconds after start-up.
"$loadgen" --json --quiet --workload propagation --trials 50 \
  --from "127.0.0.1:$(port_of "$out/five.yml" Bailey)" --to "127.0.0.1:$(port_of "$out/five.yml" Jaquez)" >/dev/null
"$loadgen" --json --quiet --workload propagation --trials 1000 \
  --from "127.0.0.1:$(port_of "$out/five.yml" Bailey)" --to "127.0.0.1:$(port_of "$out/five.yml" Jaquez)" \
  >"$out/propagation.json"

step "(c) the five-server herd with flooding, IAMAT spread over all five"
lg --config "$out/five.yml" --workload iamat -c 50 -d 1 >"$out/herd5_p1.json"
step "writing BENCHMARKS.md and bench/latency.svg"
python3 "$here/report.py" "$out" "$root/BENCHMARKS.md" "$here/latency.svg"
echo "raw results: $out" >&2
