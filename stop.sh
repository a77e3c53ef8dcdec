#!/usr/bin/env bash
# Stops the herd, or the named servers, that ./run.sh started: only the PIDs it recorded.
#   ./stop.sh [NAME...]
# Each server gets SIGTERM (it closes its ports and exits within a second); one that is
# still alive after 5 s gets SIGKILL. PID files of processes that are gone are removed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run_dir=${HERD_RUN_DIR:-$here/run}

if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for f in "$run_dir"/*.pid; do [ -e "$f" ] && names+=("$(basename "$f" .pid)"); done
fi
if [ ${#names[@]} -eq 0 ]; then echo "stop.sh: nothing to stop (no PID files in $run_dir)"; exit 0; fi

status=0
for name in "${names[@]}"; do
  pidfile=$run_dir/$name.pid
  if [ ! -f "$pidfile" ]; then echo "stop.sh: $name: not started by run.sh (no $pidfile)" >&2; status=1; continue; fi
  pid=$(cat "$pidfile")
  # Only signal the process we started: it must still be a herd process.
  if ! kill -0 "$pid" 2>/dev/null || ! grep -q herd "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$name: not running (removed stale PID file)"
    rm -f "$pidfile"
    continue
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: still running after 5 s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
  echo "$name: stopped (pid $pid)"
done
exit $status
