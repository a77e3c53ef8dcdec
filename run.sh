#!/usr/bin/env bash
# Starts the herd, or the named servers, in the background: see usage() below.
# A server counts as started only when its own process is alive and owns a socket
# listening on its client port (matched through /proc, so another process that happens to
# hold the port is never taken for it). One server failing to start does not stop the
# others; the failures are named at the end and the exit status is 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=${HERD_CONFIG:-$here/herd.yml}
run_dir=${HERD_RUN_DIR:-$here/run}
bin=${HERD_BIN:-$here/target/release/herd}
start_timeout=${HERD_START_TIMEOUT:-20}

usage() {
  cat <<EOF
Usage: ./run.sh [NAME...]
Starts the named servers of the herd (default: every server that is not running) in the
background, and waits until each one listens on its client port.

  NAME          a server of the config (see: target/release/herd --list)
  -h, --help    this text

A server that is already running is left alone and named. One that fails to start is
named with its error; the others are still started, and the exit status is then 1.
PID files and each server's stderr go to run/; logs to the config's log.dir.
The first run builds target/release/herd (a few minutes on a small machine); later runs rebuild only when
the sources changed. Stop the herd with ./stop.sh.

Environment:
  HERD_CONFIG            the config (default: herd.yml beside this script)
  HERD_RUN_DIR           PID and stderr files (default: run/ beside this script)
  HERD_BIN               a herd binary to use as is, instead of building one
  HERD_START_TIMEOUT     seconds to wait for a server to listen (default 20)
  GOOGLE_PLACES_API_KEY  the Places key (or the variable named by places.key_env)
EOF
}

die() { echo "run.sh: $*" >&2; exit 1; }

for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    -*) echo "run.sh: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -f "$config" ] || die "no config at $config (set HERD_CONFIG to use another file)"
if [ -n "${HERD_BIN:-}" ]; then
  [ -x "$bin" ] || die "HERD_BIN=$bin is not an executable"
elif [ ! -x "$bin" ]; then
  command -v cargo >/dev/null || die "cargo is not installed (see https://rustup.rs)"
  echo "building herd (release: a few minutes the first time on a small machine)..."
  (cd "$here" && cargo build --release --quiet --bin herd) || die "build failed"
elif [ -n "$(find "$here/src" "$here/Cargo.toml" "$here/Cargo.lock" -newer "$bin" 2>/dev/null | head -n 1)" ]; then
  command -v cargo >/dev/null || die "cargo is not installed (see https://rustup.rs)"
  echo "sources changed: rebuilding herd (release)..."
  (cd "$here" && cargo build --release --quiet --bin herd) || die "build failed"
fi

# The binary's own parser validates the config. Its --list lines start with
# NAME HOST PORT PEER_PORT LOG_FILE; later columns are not read here.
listing=$("$bin" --config "$config" --list 2>&1) || die "${listing#herd: }"
mapfile -t all < <(awk '{print $1}' <<<"$listing")
if [ $# -gt 0 ]; then wanted=("$@"); else wanted=("${all[@]}"); fi
unknown=()
for name in "${wanted[@]}"; do
  awk -v n="$name" '$1 == n {found=1} END {exit !found}' <<<"$listing" || unknown+=("'$name'")
done
if [ ${#unknown[@]} -gt 0 ]; then
  die "no server named ${unknown[*]} in $config (it has: ${all[*]})"
fi

mkdir -p "$run_dir"
# Room for many client connections, as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# alive PID, is_server PID NAME
. "$here/scripts/procs.sh"

# Does process $1 itself own a socket listening on TCP port $2? The listening sockets'
# inodes come from the process's own view of /proc/net (its network namespace), and one
# of them must be among its open files.
listening() {
  local pid=$1 hex inode fd
  hex=$(printf '%04X' "$2")
  for inode in $(awk -v p="$hex" '$4 == "0A" && substr($2, index($2, ":") + 1) == p {print $10}' \
    "/proc/$pid/net/tcp" "/proc/$pid/net/tcp6" 2>/dev/null); do
    for fd in "/proc/$pid/fd/"*; do
      [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ] && return 0
    done
  done
  return 1
}

# Starts server $1 and waits until it listens; on failure says why on stdout (one line).
start() {
  local name=$1 host port log pidfile errfile pid deadline
  read -r _ host port _ log _ <<<"$(awk -v n="$name" '$1 == n' <<<"$listing")"
  pidfile=$run_dir/$name.pid
  errfile=$run_dir/$name.stderr
  nohup "$bin" --config "$config" "$name" </dev/null >/dev/null 2>"$errfile" &
  pid=$!
  echo "$pid" >"$pidfile"
  deadline=$((SECONDS + start_timeout))
  until listening "$pid" "$port"; do
    if ! alive "$pid"; then
      rm -f "$pidfile"
      echo "$(tail -n 1 "$errfile" 2>/dev/null || true) (exited; see $errfile)"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$pidfile"
      echo "not listening on $host:$port after $start_timeout s, killed it (see $errfile)"
      return 1
    fi
    sleep 0.02
  done
  printf '%-9s pid %-7s listening on %s:%s   log %s\n' "$name" "$pid" "$host" "$port" "$log"
}

started=0
up=()
refused=()
failed=()
for name in "${wanted[@]}"; do
  pidfile=$run_dir/$name.pid
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if is_server "$pid" "$name"; then
      up+=("$name")
      # Asked for by name: say so as an error, the others are still started.
      [ $# -gt 0 ] && refused+=("$name")
      continue
    fi
    rm -f "$pidfile" # stale: that process is gone
  fi
  if why=$(start "$name"); then
    echo "$why"
    started=$((started + 1))
  else
    failed+=("$name: $why")
  fi
done

[ ${#up[@]} -eq 0 ] || echo "already running: ${up[*]}"
first_port=$(awk 'NR == 1 {print $3}' <<<"$listing")
echo "started $started server(s); try: nc -N localhost $first_port   stop: ./stop.sh"
status=0
for name in "${refused[@]}"; do
  echo "run.sh: $name is already running (pid $(cat "$run_dir/$name.pid")); stop it with ./stop.sh $name" >&2
  status=1
done
for f in "${failed[@]}"; do
  echo "run.sh: did not start $f" >&2
  status=1
done
exit $status
