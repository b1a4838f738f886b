# Sourced by the bench scripts: start_server LOG BINARY [FLAGS...] starts an
# attention-server on 127.0.0.1 (a port of its own), waits for its start
# line and sets `server` (its pid) and `target` (HOST:PORT). The caller's
# EXIT trap stops it. Extra environment for the server goes in SERVER_ENV.
start_server() {
  local log=$1 binary=$2
  shift 2
  env ${SERVER_ENV:-} "$binary" --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$log" && break
    sleep 0.1
  done
  target=$(sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$log")
  [ -n "$target" ] || { cat "$log" >&2; return 1; }
}
