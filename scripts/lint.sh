#!/usr/bin/env bash
# Checks the C++ sources as configured in the repository: clang-format
# (.clang-format: every tracked .cc/.h must be formatted) and clang-tidy
# (.clang-tidy says which checks and why) over every source file of the
# project's own targets, with the compile commands of the Release build
# (${BUILD_DIR:-build}, configured by scripts/build.sh). Part of the test
# command (scripts/test.sh).
#   scripts/lint.sh            both
#   scripts/lint.sh --format   clang-format only (fast)
#   scripts/lint.sh --fix-format   reformat the tree in place
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${BUILD_DIR:-build}"
mode="${1:-all}"

mapfile -t sources < <(git ls-files '*.cc' '*.h')
if [ "$mode" = --fix-format ]; then
  clang-format -i "${sources[@]}"
  exit 0
fi
if ! clang-format --dry-run -Werror "${sources[@]}" 2>/tmp/lint-format.$$; then
  grep 'error:' /tmp/lint-format.$$ | sed 's/:[0-9]*:[0-9]*: error:.*//' | sort -u |
    sed 's/^/lint: not formatted (scripts\/lint.sh --fix-format): /' >&2
  rm -f /tmp/lint-format.$$
  exit 1
fi
rm -f /tmp/lint-format.$$
echo "lint: clang-format: ${#sources[@]} files formatted"
[ "$mode" = --format ] && exit 0

# Translation units in the compile database: the project's own .cc files
# (generated protobuf code and the fuzzers, built only by the clang build,
# aside).
if [ ! -f "$build_dir/compile_commands.json" ]; then
  echo "lint: $build_dir/compile_commands.json missing: run scripts/build.sh first" >&2
  exit 1
fi
mapfile -t units < <(git ls-files '*.cc' | grep -v '^tests/fuzz/')
start=$SECONDS
printf '%s\n' "${units[@]}" |
  xargs -P "$(nproc)" -n 4 clang-tidy -p "$build_dir" --quiet \
    --extra-arg=-Wno-unknown-warning-option 2>/dev/null >/tmp/lint-tidy.$$ || true
if grep -q 'error:\|warning:' /tmp/lint-tidy.$$; then
  grep -A3 'error:\|warning:' /tmp/lint-tidy.$$ >&2
  rm -f /tmp/lint-tidy.$$
  echo "lint: clang-tidy found the problems above" >&2
  exit 1
fi
rm -f /tmp/lint-tidy.$$
echo "lint: clang-tidy: ${#units[@]} files clean in $((SECONDS - start)) s"
