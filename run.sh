#!/usr/bin/env bash
# Starts the herd, or the named servers, in the background.
#   ./run.sh [NAME...]
# Environment: HERD_CONFIG (default: herd.yml beside this script), HERD_RUN_DIR (PID
# files; default: run/ beside this script), GOOGLE_PLACES_API_KEY (optional), HERD_BIN
# (a herd binary to use as is, instead of building target/release/herd).
# Builds the release binary first if it is missing or older than the sources, waits until
# each server accepts connections, and refuses to start a server that is already running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=${HERD_CONFIG:-$here/herd.yml}
run_dir=${HERD_RUN_DIR:-$here/run}
bin=${HERD_BIN:-$here/target/release/herd}

die() { echo "run.sh: $*" >&2; exit 1; }

[ -f "$config" ] || die "no config at $config"
if [ -n "${HERD_BIN:-}" ]; then
  [ -x "$bin" ] || die "HERD_BIN=$bin is not an executable"
elif [ ! -x "$bin" ] || [ -n "$(find "$here/src" "$here/Cargo.toml" "$here/Cargo.lock" -newer "$bin" 2>/dev/null | head -n 1)" ]; then
  command -v cargo >/dev/null || die "cargo is not installed (see https://rustup.rs)"
  echo "building herd (release)..."
  (cd "$here" && cargo build --release --quiet --bin herd) || die "build failed"
fi

# The binary's own parser validates the config and lists NAME HOST PORT PEER_PORT LOG.
listing=$("$bin" --config "$config" --list 2>&1) || die "${listing#herd: }"
if [ $# -gt 0 ]; then wanted=("$@"); else mapfile -t wanted < <(awk '{print $1}' <<<"$listing"); fi
for name in "${wanted[@]}"; do
  awk -v n="$name" '$1 == n {found=1} END {exit !found}' <<<"$listing" ||
    die "no server named '$name' in $config (it has: $(awk '{print $1}' <<<"$listing" | paste -sd' '))"
done

mkdir -p "$run_dir"
# Room for many client connections, as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

accepting() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

started=0
for name in "${wanted[@]}"; do
  read -r _ host port _ log _ <<<"$(awk -v n="$name" '$1 == n' <<<"$listing")"
  pidfile=$run_dir/$name.pid
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && grep -q herd "/proc/$pid/cmdline" 2>/dev/null; then
      die "$name is already running (pid $pid); stop it with ./stop.sh $name"
    fi
    rm -f "$pidfile"   # stale: that process is gone
  fi
  errfile=$run_dir/$name.stderr
  nohup "$bin" --config "$config" "$name" </dev/null >/dev/null 2>"$errfile" &
  pid=$!
  echo "$pid" >"$pidfile"
  deadline=$((SECONDS + 10))
  until accepting "$host" "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      die "$name did not start: $(cat "$errfile")"
    fi
    [ $SECONDS -lt $deadline ] || die "$name (pid $pid) is not accepting on $host:$port after 10 s"
    sleep 0.05
  done
  printf '%-9s pid %-7s listening on %s:%s   log %s\n' "$name" "$pid" "$host" "$port" "$log"
  started=$((started + 1))
done
echo "started $started server(s); try: nc localhost $(awk 'NR==1{print $3}' <<<"$listing")   stop: ./stop.sh"
