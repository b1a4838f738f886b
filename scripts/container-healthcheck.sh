#!/usr/bin/env bash
# The image's HEALTHCHECK: asks the running attention-server where it listens
# (its own command line, so a container started with other --listen or
# --admin-listen flags is still checked at the right place), then
# - with --admin-listen: GET /readyz on the admin port (plain HTTP, so it works
#   whatever TLS or tokens the gRPC port requires), healthy on 200;
# - without: the gRPC health check on --listen (default 0.0.0.0:50051).
# A wildcard host (0.0.0.0, [::], empty) is checked on loopback.
set -euo pipefail

listen=0.0.0.0:50051
admin=
args=()
for f in /proc/1/cmdline /proc/[0-9]*/cmdline; do  # PID 1, or under an init (--init)
  mapfile -d '' args < "$f" 2>/dev/null || continue
  [[ "${args[0]:-}" == *attention-server ]] && break
  args=()
done
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --listen=* | -listen=*) listen="${args[i]#*=}" ;;
    --listen | -listen) listen="${args[i + 1]:-}" ;;
    --admin-listen=* | -admin-listen=* | --admin_listen=*) admin="${args[i]#*=}" ;;
    --admin-listen | -admin-listen | --admin_listen) admin="${args[i + 1]:-}" ;;
  esac
done

loopback() {  # HOST:PORT with a wildcard host -> 127.0.0.1:PORT
  local host="${1%:*}" port="${1##*:}"
  case "$host" in "" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;; esac
  echo "$host:$port"
}

if [[ -n "$admin" ]]; then
  a="$(loopback "$admin")"
  host="${a%:*}"; host="${host#[}"; host="${host%]}"
  exec 3<>"/dev/tcp/$host/${a##*:}"
  printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  read -r -t 3 status_line <&3
  [[ "$status_line" == *" 200 "* ]] || { echo "unhealthy: /readyz: $status_line"; exit 1; }
  echo "healthy: /readyz on $a"
  exit 0
fi
case "$listen" in
  unix:*) target="$listen" ;;
  *) target="$(loopback "$listen")" ;;
esac
exec attention-client --target "$target" health --timeout 3
