#!/usr/bin/env bash
# Configures and builds the project (Release) in ${BUILD_DIR:-build}, after
# installing any missing Debian package. Extra arguments are build targets.
#   scripts/build.sh                      everything, tests included
#   scripts/build.sh attention-server     just that target
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir="${BUILD_DIR:-build}"
# A checkout moved (or copied) elsewhere keeps a build directory whose cache
# names the old place, which CMake refuses: say what to do.
cache="$build_dir/CMakeCache.txt"
if [ -f "$cache" ]; then
  cached_source=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
  if [ -n "$cached_source" ] && [ "$cached_source" != "$(pwd)" ] &&
    [ "$cached_source" != "$(pwd -P)" ]; then
    echo "build.sh: $build_dir was configured for the checkout in $cached_source, not $(pwd)" \
      "(moved?): remove it (rm -rf $build_dir) and run this again" >&2
    exit 1
  fi
fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
jobs="$(nproc)"
if [ $# -gt 0 ]; then
  cmake --build "$build_dir" -j "$jobs" --target "$@"
else
  cmake --build "$build_dir" -j "$jobs"
fi
