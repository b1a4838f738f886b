#!/usr/bin/env bash
# Configures and builds the project (Release) in ${BUILD_DIR:-build}, after
# installing any missing Debian package. Extra arguments are build targets.
#   scripts/build.sh                      everything, tests included
#   scripts/build.sh attention-server     just that target
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
jobs="$(nproc)"
if [ $# -gt 0 ]; then
  cmake --build "$build_dir" -j "$jobs" --target "$@"
else
  cmake --build "$build_dir" -j "$jobs"
fi
