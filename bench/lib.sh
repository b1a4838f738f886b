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

# Calls `$1 LABEL LOAD-ARGS...` for each flood shape one client can send (bench/flood.sh,
# bench/flood_container.sh; tests/cgroup_test.cc sends the same), each sized to press a 1 GiB
# server with default flags and the demo model loaded.
each_flood_shape() {
  local each=$1 self=(--rpc self-attention)
  "$each" "large uploads: 48 x 50 MiB at once" "${self[@]}" --batch 100 --seq 128 --embed 1024 \
    --heads 8 --concurrency 48 --connections 4 --requests 96
  "$each" "small uploads over 50 connections" "${self[@]}" --batch 1 --seq 64 --embed 256 \
    --heads 4 --concurrency 200 --connections 50 --requests 4000
  "$each" "streams of 4 MiB messages" "${self[@]}" --batch 16 --seq 128 --embed 512 --heads 8 \
    --stream --in-flight 4 --concurrency 32 --connections 4 --requests 400
  "$each" "streams of 50 MiB messages, 48 at once" "${self[@]}" --batch 100 --seq 128 \
    --embed 1024 --heads 8 --stream --in-flight 1 --concurrency 48 --connections 4 --requests 96
  "$each" "per-head weights (32 MiB out each)" "${self[@]}" --batch 1 --seq 1024 --embed 64 \
    --heads 8 --weights per-head --concurrency 32 --connections 8 --requests 200
  # 256 sequences each holding 4096 tokens' keys and values (2 MiB; 512 MiB in all), 10 steps
  # each (a stream's deadline covers them all).
  "$each" "decode caches: 256 x 4096 tokens" --rpc decode --model demo --context 4096 \
    --sequences 256 --steps 10 --connections 8 --timeout 180
}
