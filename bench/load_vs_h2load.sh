#!/bin/bash
# Is the load tool the bottleneck? `attention-client load --rpc health --concurrency 8` against
# h2load (Debian's nghttp2-client) sending the same 5-byte gRPC frame (an empty
# HealthCheckRequest) over one connection with 8 concurrent streams, to the same server, in
# alternating rounds. Prints each round's calls/s and the median of the rounds' ratios.
#
#   bench/load_vs_h2load.sh            (environment: BUILD=build ROUNDS=3 DURATION=5 CONCURRENCY=8)
#
# Needs h2load: apt-get install nghttp2-client.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build} rounds=${ROUNDS:-3} duration=${DURATION:-5}
concurrency=${CONCURRENCY:-8}
command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }

work=$(mktemp -d)
"$build/server/attention-server" --listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$work/server.log" && break
  sleep 0.1
done
target=$(sed -n 's/.*listening on \([^;]*\);.*/\1/p' "$work/server.log")
[ -n "$target" ] || { cat "$work/server.log" >&2; exit 1; }

printf '\x00\x00\x00\x00\x00' >"$work/frame"  # uncompressed, length 0: an empty message
ratios=()
echo "round  attention-client calls/s  h2load calls/s  ratio"
for r in $(seq "$rounds"); do
  ours=$("$build/client/attention-client" --target "$target" load --rpc health \
    --concurrency "$concurrency" --duration "$duration" --warmup 1 --quiet --json "$work/load.json" \
    >/dev/null && sed -n 's/.*"rps": *\([0-9.]*\).*/\1/p' "$work/load.json" | head -1)
  # As many requests as ours made in the same time, at least 20000, so both run for similar times.
  n=$(awk -v r="$ours" -v d="$duration" 'BEGIN { n = int(r * d); print (n < 20000 ? 20000 : n) }')
  theirs=$(h2load -n "$n" -c 1 -m "$concurrency" -d "$work/frame" -H 'content-type: application/grpc' \
    -H 'te: trailers' "http://$target/grpc.health.v1.Health/Check" |
    sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p')
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')
  ratios+=("$ratio")
  printf '%5d  %24.0f  %14.0f  %5s\n' "$r" "$ours" "$theirs" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo "median ratio attention-client / h2load: $median (goal >= 0.8)"
