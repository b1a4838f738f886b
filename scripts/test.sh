#!/usr/bin/env bash
# Builds everything (installing missing Debian packages first) and runs every
# test: core unit tests (against PyTorch fixtures and the naive reference),
# server and client unit tests, and the end-to-end tests that start real
# servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
build_dir="${BUILD_DIR:-build}"
cd "$build_dir"
ctest --output-on-failure -j 2 --timeout 600
