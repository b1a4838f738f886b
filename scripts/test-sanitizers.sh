#!/usr/bin/env bash
# Builds everything with AddressSanitizer and UndefinedBehaviorSanitizer and
# runs every test (the servers the end-to-end tests start are sanitized too:
# a report makes them exit non-zero, and UBSan aborts at its first). The
# build is the instrumented clang one of CMake's ATTENTION_FUZZ option, in
# ${BUILD_DIR:-build-asan}, which scripts/fuzz.sh shares. Part of the test
# command (scripts/test.sh); on 2 cores about 4.5 minutes to build from
# scratch, 2 to test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir="${BUILD_DIR:-build-asan}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DATTENTION_FUZZ=ON >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
cd "$build_dir"
# allocator_may_return_null: an allocation that fails throws std::bad_alloc,
# as in production (the server answers RESOURCE_EXHAUSTED; tests cap memory
# to see it), instead of ending the process.
ASAN_OPTIONS=allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure -j 2 --timeout 900
