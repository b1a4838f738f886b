#!/bin/bash
# CPU time a call costs each side when the load client and the server share this machine:
# the server's compute threads (the worker and its OpenMP team), the server's other threads
# (gRPC: reading, parsing, HTTP/2) and the client, from /proc/<pid>/task/*/stat over a window
# of a closed-loop load at (B, 128, 512, 8) self-attention with a random model.
#
#   bench/cpu_per_call.sh [--build build] [--batch 8] [--concurrency 1] [--window 4]
#
# Prints core-ms a call for each part and the in-process time of the same case just before,
# for a ceiling of end-to-end throughput (every transfer overlapping computation perfectly, and
# computing costing what it costs in-process): in-process core-ms / (in-process core-ms + the
# server's other threads + the client). An upper bound: the compute threads' own share of the
# transfers (the worker writes each response) is left out.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build batch=8 concurrency=1 window=4
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2 ;;
    --batch) batch=$2 ;;
    --concurrency) concurrency=$2 ;;
    --window) window=$2 ;;
    *) echo "usage: $0 [--build DIR] [--batch B] [--concurrency N] [--window SECONDS]" >&2; exit 2 ;;
  esac
  shift 2
done

tmp=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

shape=(--batch "$batch" --seq 128)
"$build/bench/attention-bench" --write-model "$tmp/m.safetensors" --embed 512 --heads 8 >/dev/null
in_process_ms=$("$build/bench/attention-bench" "${shape[@]}" --embed 512 --heads 8 --self \
  --projection --min-time 3 --json | sed -n 's/.*"ms_median": *\([0-9.]*\).*/\1/p' | head -1)

"$build/server/attention-server" --listen 127.0.0.1:0 --model "m=$tmp/m.safetensors" \
  >"$tmp/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 50); do grep -q "listening on" "$tmp/server.out" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\);.*/\1/p' "$tmp/server.out")
[ -n "$port" ] || { cat "$tmp/server.out" >&2; exit 1; }

"$build/client/attention-client" --target "127.0.0.1:$port" load --model m "${shape[@]}" \
  --concurrency "$concurrency" --duration $((window + 4)) --warmup 1 --quiet >"$tmp/load.out" 2>&1 &
client_pid=$!
sleep 3  # past the warmup

# "tid name ticks" for every server thread (the executor names its compute threads
# "compute-W.T") and the client as a whole.
snapshot() {
  for t in /proc/"$server_pid"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done
  echo "client client $(awk '{print $14 + $15}' /proc/"$client_pid"/stat)"
}
snapshot | sort >"$tmp/a"
start=$(date +%s.%N)
sleep "$window"
snapshot | sort >"$tmp/b"
end=$(date +%s.%N)
wait "$client_pid"
rps=$(sed -n 's/.*throughput *\([0-9.]*\) req\/s.*/\1/p' "$tmp/load.out")

join "$tmp/a" "$tmp/b" | awk -v hz="$(getconf CLK_TCK)" -v secs="$(echo "$end - $start" | bc)" \
  -v rps="$rps" -v in_ms="$in_process_ms" -v threads="$(nproc)" '
  { d = ($5 - $3) / hz
    if ($2 == "client") client += d
    else if ($2 ~ /^compute-/) compute += d
    else other += d }
  END {
    calls = secs * rps
    c = 1000 * compute / calls; o = 1000 * other / calls; k = 1000 * client / calls
    in_core = in_ms * threads
    printf "end to end: %.1f calls/s over %.1f s; in-process %.2f ms a call (%.1f calls/s): %.0f%%\n", rps, secs, in_ms, 1000 / in_ms, 100 * rps * in_ms / 1000
    printf "core-ms a call: server compute threads %.2f, server other threads %.2f, client %.2f\n", c, o, k
    printf "ceiling with every transfer hidden: %.0f%% of in-process (%.0f%% without the client)\n", 100 * in_core / (in_core + o + k), 100 * in_core / (in_core + o)
  }'
