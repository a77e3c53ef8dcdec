# Shared by run.sh and stop.sh (sourced, not run): how a recorded PID is judged, so the
# two scripts cannot drift apart on it.

# Alive means running: a zombie (state Z) or a dead process (X) has already exited.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  case ${stat%% *} in Z | X) return 1 ;; esac
}

# The process started for server $2: alive, and its command line ends in that name. This
# keeps a recycled PID (some other program now) from being taken for the server.
is_server() {
  alive "$1" || return 1
  local args
  args=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [ "$(tail -n 1 <<<"$args")" = "$2" ] && grep -q herd <<<"$args"
}
