#!/usr/bin/env bash
# Builds attention-server and attention-client (installing missing Debian
# packages first) and starts the server with the demo model on 127.0.0.1:50051
# (this machine only). Extra arguments go to attention-server and win over
# these (e.g. --listen 127.0.0.1:6000, or --listen 0.0.0.0:50051 for other
# machines: then with TLS and tokens, README.md).
# Stop it with Ctrl-C: it drains in-flight calls and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh attention-server attention-client
build_dir="${BUILD_DIR:-build}"
echo "run-server: client: $build_dir/client/attention-client --help" >&2
exec "$build_dir/server/attention-server" --listen 127.0.0.1:50051 \
  --model demo=models/demo.safetensors "$@"
