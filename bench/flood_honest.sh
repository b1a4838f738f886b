#!/usr/bin/env bash
# A flood of large uploads against a server with a memory budget: starts
# attention-server (--max-memory-mb, default 512) on loopback, runs
# attention-flood (48 callers x 2 requests of 50 MiB by default), prints its
# JSON line (answered, refused, the server's peak and final RSS) and stops
# the server. Extra environment for the server (an allocator to compare)
# goes in SERVER_ENV, e.g.
#   SERVER_ENV="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4" bench/flood_honest.sh
# Usage: bench/flood_honest.sh [BUILD_DIR] [BUDGET_MIB] [CALLERS] [CALLS] [MIB]
set -euo pipefail
build=${1:-build}
budget=${2:-512}
callers=${3:-48}
calls=${4:-2}
mib=${5:-50}
work=$(mktemp -d)
trap 'kill ${server_pid:-} 2>/dev/null; rm -rf "$work"' EXIT
. "$(dirname "$0")/lib.sh"
start_server "$build" --max-memory-mb "$budget"
"$build/bench/attention-flood" --target "$target" --pid "$server_pid" --callers "$callers" \
  --calls "$calls" --mib "$mib"
