#!/usr/bin/env bash
# Soak: a server under steady mixed load for a stated time, its resident
# memory sampled once a second; prints the samples' summary and the RSS slope
# (least squares) after the warm-up, to tell a leak (a slope that stays) from
# the allocator settling (a slope that falls to ~0 in a longer run).
#
#   bench/soak.sh [BUILD_DIR] [SECONDS] [WARMUP_SECONDS]    (defaults: build 600 120)
#
# The load, all at once against one server with two models: unary
# self-attention calls to one model (open loop, 300/s), a stream of
# attention calls to the other (4 in flight), and unary calls without a model
# ([2, 32, 64], averaged weights), each from its own `attention-client load`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
seconds=${2:-600}
warmup=${3:-120}
client="$build/client/attention-client"
work=$(mktemp -d)
trap 'kill ${server_pid:-} $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
. "$root/bench/lib.sh"
start_server "$build" --model "demo=$root/models/demo.safetensors" \
  --model "small=$root/tests/fixtures/models/mha_e32_h4.safetensors"

total=$((seconds + 5))
"$client" --target "$target" load --rpc self-attention --model demo --seq 16 --rate 300 \
  --duration "$total" --warmup 0 --quiet --json "$work/unary.json" >/dev/null 2>&1 &
"$client" --target "$target" load --rpc attention --model small --seq 8 --kv-seq 24 --stream \
  --concurrency 1 --duration "$total" --warmup 0 --quiet --json "$work/stream.json" >/dev/null 2>&1 &
"$client" --target "$target" load --rpc self-attention --batch 2 --seq 32 --embed 64 --heads 4 \
  --weights average --concurrency 2 --duration "$total" --warmup 0 --quiet \
  --json "$work/nomodel.json" >/dev/null 2>&1 &

for t in $(seq "$seconds"); do
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status")
  echo "$t $rss" >>"$work/rss"
  sleep 1
done
wait $(jobs -p | grep -v "^$server_pid$") 2>/dev/null || true
awk -v warmup="$warmup" -v seconds="$seconds" '
  { if (NR == 1) first = $2; last = $2; if ($2 > peak) peak = $2
    if ($1 > warmup) { n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2
                       if (n == 1) after_warmup = $2 } }
  END {
    slope = n > 1 ? (n * sxy - sx * sy) / (n * sxx - sx * sx) : 0  # KiB per second
    printf "soak: %d s (warm-up %d s): RSS first %.1f MiB, after warm-up %.1f MiB, last %.1f MiB, peak %.1f MiB\n", seconds, warmup, first / 1024, after_warmup / 1024, last / 1024, peak / 1024
    printf "soak: RSS slope after warm-up %.2f KiB/s (%.1f MiB/hour)\n", slope, slope * 3600 / 1024
  }' "$work/rss"
for f in unary stream nomodel; do
  /usr/bin/python3 -c "
import json, sys
d = json.load(open('$work/$f.json')); d = d[0] if isinstance(d, list) else d
print('soak: %-8s %8d ok  errors %s  lost %d' % ('$f', d['ok'], d['errors'] or 0, d['lost']))"
done
