#!/usr/bin/env bash
# Builds everything with AddressSanitizer and UndefinedBehaviorSanitizer in
# ${BUILD_DIR:-build-asan} and runs every test (the servers the end-to-end
# tests start are sanitized too: a report makes them exit non-zero). Slower
# than scripts/test.sh (about 5 minutes on 2 cores); not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir="${BUILD_DIR:-build-asan}"
# -Wno-error=maybe-uninitialized: GCC 12 warns falsely inside std::regex under ASan.
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -Wno-error=maybe-uninitialized" \
  >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
cd "$build_dir"
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest --output-on-failure -j 2 --timeout 900
