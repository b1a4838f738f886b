#!/bin/bash
# Is the load tool the bottleneck? `attention-client load --rpc health --concurrency 8` against
# h2load (Debian's nghttp2-client) sending the same 5-byte gRPC frame (an empty
# HealthCheckRequest) over one connection with 8 concurrent streams, to the same server, in
# alternating rounds. Prints each round's calls/s, their ratio, and the CPU a call costs each
# client and the server under it (microseconds of user + system time per call), then the
# median of the rounds' ratios.
#
#   bench/load_vs_h2load.sh            (environment: BUILD=build ROUNDS=5 DURATION=5 CONCURRENCY=8)
#
# Needs h2load: apt-get install nghttp2-client.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build} rounds=${ROUNDS:-5} duration=${DURATION:-5}
concurrency=${CONCURRENCY:-8}
command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }

work=$(mktemp -d) server_pid=
trap 'kill $server_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
source "$root/bench/lib.sh"
start_server "$build"

ticks_per_s=$(getconf CLK_TCK)
# CPU seconds the server has used so far.
server_cpu() { awk -v hz="$ticks_per_s" '{ print ($14 + $15) / hz }' "/proc/$server_pid/stat"; }
# Runs a command with its output in $work/out; sets cpu (its CPU seconds) and server_cpu_s
# (the server's CPU seconds meanwhile).
measure() {
  local before after TIMEFORMAT='%U %S'
  before=$(server_cpu)
  { time "$@" >"$work/out" 2>&1; } 2>"$work/time"
  after=$(server_cpu)
  cpu=$(awk '{ print $1 + $2 }' "$work/time")
  server_cpu_s=$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')
}
us_per_call() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.1f", s / n * 1e6 }'; }

printf '\x00\x00\x00\x00\x00' >"$work/frame"  # uncompressed, length 0: an empty message
ratios=()
echo "round  attention-client calls/s  h2load calls/s  ratio  client us/call (ours, h2load)  server us/call (under ours, under h2load)"
for r in $(seq "$rounds"); do
  measure "$build/client/attention-client" --target "$target" load --rpc health \
    --concurrency "$concurrency" --duration "$duration" --warmup 1 --quiet --json "$work/load.json"
  ours=$(sed -n 's/.*"rps": *\([0-9.]*\).*/\1/p' "$work/load.json" | head -1)
  # The warmup's calls count in the CPU time, so they count in the calls too.
  calls=$(awk -v r="$ours" -v d="$duration" 'BEGIN { print int(r * (d + 1)) }')
  our_cpu=$(us_per_call "$cpu" "$calls") our_server=$(us_per_call "$server_cpu_s" "$calls")
  # As many requests as ours made in the same time, at least 20000, so both run for similar times.
  n=$(awk -v r="$ours" -v d="$duration" 'BEGIN { n = int(r * d); print (n < 20000 ? 20000 : n) }')
  measure h2load -n "$n" -c 1 -m "$concurrency" -d "$work/frame" -H 'content-type: application/grpc' \
    -H 'te: trailers' "http://$target/grpc.health.v1.Health/Check"
  theirs=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$work/out")
  their_cpu=$(us_per_call "$cpu" "$n") their_server=$(us_per_call "$server_cpu_s" "$n")
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')
  ratios+=("$ratio")
  printf '%5d  %24.0f  %14.0f  %5s  %14s, %s  %26s, %s\n' "$r" "$ours" "$theirs" "$ratio" \
    "$our_cpu" "$their_cpu" "$our_server" "$their_server"
done
median=$(median_of "${ratios[@]}")
echo "median ratio attention-client / h2load: $median (goal >= 0.8)"
