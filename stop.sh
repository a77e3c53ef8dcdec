#!/usr/bin/env bash
# Stops the herd, or the named servers, that ./run.sh started: see usage() below.
# Only the PIDs run.sh recorded are signalled, and only while they are still that server.
# Every server gets SIGTERM at once, then the script waits for all of them together and
# returns as soon as they are gone; a zombie (exited, not yet reaped by its parent) counts
# as gone, which `kill -0` alone would not see.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=${HERD_CONFIG:-$here/herd.yml}
run_dir=${HERD_RUN_DIR:-$here/run}
bin=${HERD_BIN:-$here/target/release/herd}
grace=5 # seconds between SIGTERM and SIGKILL

usage() {
  cat <<EOF
Usage: ./stop.sh [NAME...]
Stops the named servers (default: every server ./run.sh started) with SIGTERM, and
SIGKILL for one still alive after $grace s. Returns as soon as they have exited.

  NAME          a server of the config
  -h, --help    this text

Only processes recorded in run/NAME.pid are signalled; a server started by hand is left
alone. PID and stderr files of servers that are gone are removed.
Environment: HERD_CONFIG, HERD_RUN_DIR, HERD_BIN as for ./run.sh.
EOF
}

for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    -*) echo "stop.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

# alive PID, is_server PID NAME
. "$here/scripts/procs.sh"

recorded=()
for f in "$run_dir"/*.pid; do [ -e "$f" ] && recorded+=("$(basename "$f" .pid)"); done

if [ $# -gt 0 ]; then
  # Names are checked against the config when the binary can read it (a server with a PID
  # file counts too); without a binary no server can be running but those with PID files.
  if [ -x "$bin" ] && listing=$("$bin" --config "$config" --list 2>/dev/null); then
    known=("${recorded[@]}")
    mapfile -t -O ${#known[@]} known < <(awk '{print $1}' <<<"$listing")
    unknown=()
    for name in "$@"; do
      printf '%s\n' "${known[@]}" | grep -qxF -- "$name" || unknown+=("'$name'")
    done
    if [ ${#unknown[@]} -gt 0 ]; then
      echo "stop.sh: no server named ${unknown[*]} in $config (it has: $(awk '{print $1}' <<<"$listing" | paste -sd' '))" >&2
      exit 1
    fi
  fi
  names=("$@")
else
  names=("${recorded[@]}")
fi

stopping=() # "name pid"
for name in "${names[@]}"; do
  pidfile=$run_dir/$name.pid
  if [ ! -f "$pidfile" ]; then
    echo "$name: not running (no $pidfile; a server started by hand is not stopped here)"
    rm -f "$run_dir/$name.stderr"
    continue
  fi
  pid=$(cat "$pidfile")
  if ! is_server "$pid" "$name"; then
    echo "$name: not running (removed stale PID file)"
    rm -f "$pidfile" "$run_dir/$name.stderr"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null
  stopping+=("$name $pid")
done

deadline=$((SECONDS + grace))
while [ ${#stopping[@]} -gt 0 ]; do
  left=()
  for entry in "${stopping[@]}"; do
    read -r name pid <<<"$entry"
    if alive "$pid"; then
      left+=("$entry")
    else
      rm -f "$run_dir/$name.pid" "$run_dir/$name.stderr"
      echo "$name: stopped (pid $pid)"
    fi
  done
  stopping=("${left[@]}")
  [ ${#stopping[@]} -gt 0 ] || break
  if [ $SECONDS -ge $deadline ]; then
    for entry in "${stopping[@]}"; do
      read -r name pid <<<"$entry"
      echo "$name: still running after $grace s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
      rm -f "$run_dir/$name.pid" "$run_dir/$name.stderr"
      echo "$name: killed (pid $pid)"
    done
    break
  fi
  sleep 0.01
done

if [ $# -eq 0 ]; then
  # A stderr file without a PID file is from a server that is gone (a failed start, a
  # crash): run.sh showed its last line when it happened.
  for f in "$run_dir"/*.stderr; do
    [ -e "$f" ] && [ ! -e "${f%.stderr}.pid" ] && rm -f "$f"
  done
  [ ${#names[@]} -gt 0 ] || echo "stop.sh: nothing to stop (no PID files in $run_dir)"
fi
exit 0
