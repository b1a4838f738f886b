# shellcheck shell=bash
# Shared by bench scripts (sourced, not run).

# Starts $1/server/attention-server with the other arguments on 127.0.0.1 at a port the system
# picks, logging to $work/server.log; sets server_pid and target (HOST:PORT) once it listens,
# or prints the log and exits. The caller's EXIT trap kills $server_pid. Extra environment for
# the server (another allocator, say) goes in SERVER_ENV; SERVER_CGROUP runs it in that cgroup.
# shellcheck disable=SC2034,SC2154  # work comes from the caller; server_pid and target go to it
start_server() {
  local build=$1
  shift
  # In the cgroup SERVER_CGROUP names, if any: the server moves itself there before it starts.
  local launch=()
  if [ -n "${SERVER_CGROUP:-}" ]; then
    # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
    launch=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$SERVER_CGROUP")
  fi
  # shellcheck disable=SC2086  # SERVER_ENV is a list of NAME=VALUE words
  env ${SERVER_ENV:-} "${launch[@]}" "$build/server/attention-server" --listen 127.0.0.1:0 "$@" \
    >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$work/server.log" && break
    sleep 0.1
  done
  target=$(sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$work/server.log")
  [ -n "$target" ] || { cat "$work/server.log" >&2; exit 1; }
}

# The median of the numbers given as arguments.
median_of() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
