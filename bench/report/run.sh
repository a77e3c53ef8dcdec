#!/usr/bin/env bash
# Issue 15's measurement suite, one command: herd, the asyncio and tokio references
# (bench/ref/) and Redis PING, all under bench/loadgen in the same run, interleaved
# rounds; writes results.json (every figure, with ratios to herd and to Redis, the commit
# and the machine) and SVG plots, and prints a summary. Then the scale study
# (bench/report/scale.py) unless REPORT_SCALE=0.
#
#   bench/report/run.sh            # the full run, about 12 minutes (bounded: 25)
#   bench/report/run.sh --quick    # about 3 minutes, to try it
#
# REPORT_OUT=DIR keeps the results there (default /tmp/herd-report.XXXXXX). Everything
# listens on 127.0.0.1 at free ports; every process started is killed by PID on exit.
# Needs redis-server (installed with apt-get when missing and run as root), python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-}
case $mode in '' | --quick) ;; *) echo "usage: bench/report/run.sh [--quick]" >&2; exit 2 ;; esac
die() { echo "bench/report/run.sh: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

step "building (release): herd, loadgen, places-stub, the tokio reference"
(cd "$root" && cargo build --release --quiet -p herd -p herd-bench) || die "build failed"
cargo build --release --quiet --manifest-path "$root/bench/ref/tokio/Cargo.toml" || die "tokio reference build failed"
python3 -c 'import aiohttp, yaml' 2>/dev/null || python3 -m pip install --quiet aiohttp pyyaml >&2 ||
  die "the asyncio reference needs aiohttp and PyYAML"
if ! command -v redis-server >/dev/null; then
  step "installing redis-server (the reference)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null ||
      echo "bench/report/run.sh: redis-server could not be installed: no Redis figures" >&2
  else
    echo "bench/report/run.sh: no redis-server (not root, so not installed): no Redis figures" >&2
  fi
fi
REDIS_SERVER=$(command -v redis-server || true)
REPORT_COMMIT=$(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown)
REPORT_OUT=${REPORT_OUT:-$(mktemp -d /tmp/herd-report.XXXXXX)}
export REDIS_SERVER REPORT_COMMIT REPORT_OUT

# 10,000 idle connections per server, plus loadgen's own ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# A hard stop whatever happens: the suite is bounded at 25 minutes.
budget=$([ "$mode" = --quick ] && echo 300 || echo 1000)
sbudget=$([ "$mode" = --quick ] && echo 120 || echo 450)
timeout --signal=TERM --kill-after=20 "$budget" python3 "$root/bench/report/suite.py" $mode ||
  die "the suite failed or ran out of its ${budget} s (partial results in $REPORT_OUT)"
python3 "$root/bench/report/loc.py" >"$REPORT_OUT/loc.txt" || die "loc.py failed"
if [ "${REPORT_SCALE:-1}" = 1 ]; then
  timeout --signal=TERM --kill-after=20 "$sbudget" python3 "$root/bench/report/scale.py" $mode ||
    die "the scale study failed (partial results in $REPORT_OUT)"
fi
echo "results and plots: $REPORT_OUT" >&2
