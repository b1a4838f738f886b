#!/usr/bin/env bash
# The test command (CI runs it: .ci/run). Installs missing Debian packages,
# then runs these stages, stopping at the first that fails:
#   1. the Release build (${BUILD_DIR:-build}) and every test in it: core unit
#      tests (against PyTorch fixtures and the naive reference), server and
#      client unit tests, the end-to-end tests that start real servers on
#      127.0.0.1, the Python client's tests; then the README's command blocks
#      in order, checked against what the README says they print
#      (scripts/test-readme.sh);
#   2. lint (scripts/lint.sh): clang-format and clang-tidy, as .clang-format
#      and .clang-tidy configure them;
#   3. the same tests built with AddressSanitizer and UndefinedBehaviorSanitizer
#      and clang's -Wthread-safety (scripts/test-sanitizers.sh: clang, in
#      build-asan);
#   4. a fuzz smoke: each fuzzer for FUZZ_SECONDS (default 20) from its
#      committed corpus (scripts/fuzz.sh, in the same build-asan).
# On 2 cores from a clean checkout: about 7, 4, 6 and 2 minutes (19 in all).
#   scripts/test.sh           all of them (what CI runs)
#   scripts/test.sh --quick   stage 1 only (while developing)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
case "${1:-}" in
  --quick) quick=true ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

stage() {  # NAME COMMAND...: runs it and says how long it took
  local name="$1" start=$SECONDS
  shift
  "$@"
  echo "test.sh: $name passed in $((SECONDS - start)) s"
}

release_tests() (
  scripts/build.sh
  cd "${BUILD_DIR:-build}"
  ctest --output-on-failure -j 2 --timeout 600
)

stage "release build and tests" release_tests
$quick && exit 0
stage "README blocks" scripts/test-readme.sh
stage "lint" scripts/lint.sh
stage "sanitizer build and tests" env BUILD_DIR=build-asan scripts/test-sanitizers.sh
stage "fuzz smoke" env BUILD_DIR=build-asan scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
