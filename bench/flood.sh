#!/usr/bin/env bash
# The server in a memory cgroup (1 GiB by default, as a container or a
# systemd unit with MemoryMax= gives it) with default flags, flooded by one
# client with each shape in turn (decode caches too): for each, the calls answered and refused,
# the group's peak memory against the budget plus the fixed part (both from
# the server's start line), and the goodput (MB/s of answered calls) against
# the same request sent one at a time to the same server, unflooded.
# Needs root (it makes the cgroup); v1 or v2, whichever the machine has.
# Usage: bench/flood.sh [BUILD_DIR] [LIMIT_MIB]
set -euo pipefail
build=${1:-build}
limit_mib=${2:-1024}
work=$(mktemp -d)
group=""
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$group" ] && rmdir "$group" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A child of this shell's own memory group, so that only the server is in it.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  parent=/sys/fs/cgroup$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
  group=$parent/attention-flood-$$
  mkdir "$group"
  echo $((limit_mib << 20)) >"$group/memory.max"
  peak_file=$group/memory.peak
  oom() { awk '$1 == "oom_kill" { print $2 }' "$group/memory.events"; }
else
  parent=/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)
  group=$parent/attention-flood-$$
  mkdir "$group"
  echo $((limit_mib << 20)) >"$group/memory.limit_in_bytes"
  peak_file=$group/memory.max_usage_in_bytes
  oom() { awk '$1 == "oom_kill" { print $2 }' "$group/memory.oom_control"; }
fi

. "$(dirname "$0")/lib.sh"
SERVER_CGROUP=$group start_server "$build" --model "demo=$(dirname "$0")/../models/demo.safetensors"
budget=$(sed -n 's/.*memory budget \([0-9]*\) MiB.*/\1/p' "$work/server.log")
fixed=$(sed -n 's/.*fixed part \([0-9]*\) MiB.*/\1/p' "$work/server.log")
echo "server in a ${limit_mib} MiB cgroup ($group): budget $budget MiB, fixed part $fixed MiB"

load() { "$build/client/attention-client" --target "$target" load --quiet --timeout 60 "$@"; }
field() { /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

printf '%-38s %9s %-34s %9s %13s %22s\n' shape ok/sent refusals "peak MiB" "budget+fixed" \
  "goodput MB/s (alone)"
run() {
  local name=$1
  shift
  local alone=(--concurrency 1 --in-flight 1 --requests 8)
  [[ " $* " == *" --rpc decode "* ]] && alone=(--sequences 1)
  load "$@" "${alone[@]}" --json "$work/alone.json" >/dev/null 2>&1 || true
  echo 0 >"$peak_file" 2>/dev/null || true  # v1: resets the peak; v2 keeps the lifetime peak
  load "$@" --json "$work/flood.json" >/dev/null 2>&1 || true
  kill -0 "$server_pid" 2>/dev/null || { echo "$name: the server died (OOM kills: $(oom))"; exit 1; }
  printf '%-38s %9s %-34s %9s %13s %22s\n' "$name" \
    "$(field "$work/flood.json" '"%d/%d" % (d["ok"], d["sent"])')" \
    "$(field "$work/flood.json" '",".join("%s %d" % kv for kv in d["errors"].items()) or "none"')" \
    $(($(cat "$peak_file") >> 20)) $((budget + fixed)) \
    "$(field "$work/flood.json" '"%.0f" % d["mb_per_s"]') ($(field "$work/alone.json" '"%.0f" % d["mb_per_s"]'))"
}
each_flood_shape run
echo "OOM kills: $(oom)"
