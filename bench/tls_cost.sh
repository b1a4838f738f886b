#!/bin/bash
# What TLS (and a bearer token) costs end to end: the same closed-loop load against a plaintext
# server and a TLS + token server, in alternating rounds, for a large call (self-attention
# (8, 128, 512, 8) with a random model) and a tiny one (the demo model, (1, 1, 64, 4)).
#
#   bench/tls_cost.sh [--build build] [--rounds 3] [--duration 4] [--concurrency 1]
#
# Prints requests/s and p50 per round and the median ratio TLS / plaintext per case. Each load
# run opens its connection (and so its TLS handshake) inside the warm-up, so the figures are
# the steady-state cost: encryption of every byte, plus the token check on every call.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build rounds=3 duration=4 concurrency=1
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2 ;;
    --rounds) rounds=$2 ;;
    --duration) duration=$2 ;;
    --concurrency) concurrency=$2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [--duration SECONDS] [--concurrency N]" >&2
       exit 2 ;;
  esac
  shift 2
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

"$root/scripts/make-certs.sh" "$tmp/certs" >/dev/null
echo "bench-token" >"$tmp/tokens"
"$build/bench/attention-bench" --write-model "$tmp/m.safetensors" --embed 512 --heads 8 >/dev/null

start() {  # start NAME FLAGS...: a server on a free port; sets port_NAME
  local name=$1
  shift
  "$build/server/attention-server" --listen 127.0.0.1:0 --model "m=$tmp/m.safetensors" \
    --model "demo=$root/models/demo.safetensors" "$@" >"$tmp/$name.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do grep -q "listening on" "$tmp/$name.out" && break; sleep 0.1; done
  local port
  port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\);.*/\1/p' "$tmp/$name.out")
  [ -n "$port" ] || { cat "$tmp/$name.out" >&2; exit 1; }
  eval "port_$name=$port"
}
# Both servers idle while the other is measured (one load at a time).
start plain
start tls --tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server.key" \
  --auth-token-file "$tmp/tokens"

run() {  # run KIND CASE-FLAGS...: prints "rps p50"
  local kind=$1
  shift
  local sec=()
  local port=$port_plain
  if [ "$kind" = tls ]; then
    sec=(--tls-ca "$tmp/certs/ca.pem")
    port=$port_tls
    export ATTENTION_TOKEN=bench-token
  fi
  "$build/client/attention-client" --target "127.0.0.1:$port" load "${sec[@]}" "$@" \
    --concurrency "$concurrency" --duration "$duration" --warmup 1 --quiet \
    --json "$tmp/r.json" >/dev/null
  unset ATTENTION_TOKEN
  /usr/bin/python3 -c "
import json, sys
r = json.load(open('$tmp/r.json'))
assert r['ok'] == r['sent'] and not r['errors'], r['errors']
print(f\"{r['rps']:.1f} {r['latency_ms']['p50']:.3f}\")"
}

declare -A cases=(
  [large]="--model m --batch 8 --seq 128"
  [tiny]="--model demo --batch 1 --seq 1"
)
for c in large tiny; do
  ratios=()
  for r in $(seq "$rounds"); do
    # shellcheck disable=SC2086
    read -r p_rps p_p50 <<<"$(run plain ${cases[$c]})"
    # shellcheck disable=SC2086
    read -r t_rps t_p50 <<<"$(run tls ${cases[$c]})"
    ratio=$(/usr/bin/python3 -c "print(f'{$t_rps / $p_rps:.3f}')")
    ratios+=("$ratio")
    echo "$c round $r: plaintext $p_rps req/s (p50 $p_p50 ms), TLS+token $t_rps req/s (p50 $t_p50 ms), ratio $ratio"
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$c: TLS+token / plaintext throughput, median of $rounds rounds: $median"
done
