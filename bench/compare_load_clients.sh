#!/bin/bash
# Two builds of attention-client load against one server (this build's, with the demo model),
# in alternating rounds, so that a change to the load tool shows what it does to the rates it
# reaches and to its own CPU per call. Cases: self-attention with the demo model at a small
# shape, unary (--concurrency 8) and over streams (--stream --concurrency 8, 4 in flight each),
# and the health RPC (--concurrency 8).
#
#   bench/compare_load_clients.sh BASE_BUILD   (environment: BUILD=build ROUNDS=3 DURATION=4 SEQ=8)
#
# BASE_BUILD is the build directory of another checkout (its client/attention-client is used).
# Prints, per case and round, each client's calls/s and CPU per call (user + system, its
# warmup included), then per case the median of the rounds' ratios (this build / base).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 BASE_BUILD" >&2; exit 2; }
base=$1 build=${BUILD:-$root/build} rounds=${ROUNDS:-3} duration=${DURATION:-4} seq=${SEQ:-8}

work=$(mktemp -d) server_pid=
trap 'kill $server_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
source "$root/bench/lib.sh"
start_server "$build" --model "demo=$root/models/demo.safetensors"

cases=("unary:--model demo --seq $seq --concurrency 8"
       "streams:--model demo --seq $seq --stream --concurrency 8 --in-flight 4"
       "health:--rpc health --concurrency 8")
# Runs one client on one case; prints "calls/s us-per-call".
run() {
  local client=$1 TIMEFORMAT='%U %S'
  shift
  { time "$client" --target "$target" load "$@" --duration "$duration" --warmup 0.5 --quiet \
      --json "$work/r.json" >/dev/null; } 2>"$work/time"
  local rps
  rps=$(sed -n 's/.*"rps": *\([0-9.]*\).*/\1/p' "$work/r.json" | head -1)
  awk -v r="$rps" -v d="$duration" '{ printf "%.0f %.1f", r, ($1 + $2) / (r * (d + 0.5)) * 1e6 }' \
    "$work/time"
}

echo "case     round  base calls/s  this calls/s  this/base  base us/call  this us/call"
for c in "${cases[@]}"; do
  name=${c%%:*} ratios=()
  read -ra args <<<"${c#*:}"
  for r in $(seq "$rounds"); do
    read -r base_rps base_us <<<"$(run "$base/client/attention-client" "${args[@]}")"
    read -r this_rps this_us <<<"$(run "$build/client/attention-client" "${args[@]}")"
    ratio=$(awk -v a="$this_rps" -v b="$base_rps" 'BEGIN { printf "%.2f", a / b }')
    ratios+=("$ratio")
    printf '%-8s %5d  %12s  %12s  %9s  %12s  %12s\n' "$name" "$r" "$base_rps" "$this_rps" \
      "$ratio" "$base_us" "$this_us"
  done
  median=$(median_of "${ratios[@]}")
  echo "$name: median this/base $median"
done
