#!/usr/bin/env bash
# Builds the libFuzzer targets (CMake option ATTENTION_FUZZ: clang, with
# AddressSanitizer and UndefinedBehaviorSanitizer; in ${BUILD_DIR:-build-asan},
# the build scripts/test-sanitizers.sh tests) and runs each for SECONDS, one
# after the other:
#   fuzz_inputs                  the safetensors and .npy parsers, and requests
#                                made from parsed files, through the core
#   fuzz_self_attention_request  the request path as the server sees it: the
#   fuzz_attention_request       bytes of a serialized request -> parse ->
#   fuzz_infer_request           validate -> compute on tiny shapes -> response
#                                (the last: the Open Inference Protocol's
#                                ModelInferRequest)
#   fuzz_decode                  StreamDecode: a series of messages on one
#                                stream's sequences (positions, shapes,
#                                options, the budget)
#
#   scripts/fuzz.sh [--grow] [SECONDS] [FUZZER...]   default: 120 s each, all five
#
# Each starts from its committed corpus, tests/fuzz/corpus/FUZZER (fuzz_inputs
# also from the PyTorch fixtures and models), and keeps what it finds in
# BUILD_DIR/corpus/FUZZER (reused by the next run). --grow then merges into the
# committed corpus the inputs that reach code it does not (edges, not hit
# counts), cut to 2 KiB, so that it stays small: commit them. A crash, a sanitizer report or a broken promise of the
# contract stops the script with exit code 1; the input is saved in
# BUILD_DIR/artifacts. Reproduce with: BUILD_DIR/tests/fuzz/FUZZER INPUT.
# scripts/test.sh runs this for 20 s each (FUZZ_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."

grow=false
if [ "${1:-}" = "--grow" ]; then grow=true; shift; fi
seconds="${1:-120}"
[ $# -gt 0 ] && shift
fuzzers=("$@")
[ ${#fuzzers[@]} -eq 0 ] && fuzzers=(fuzz_inputs fuzz_self_attention_request fuzz_attention_request fuzz_infer_request fuzz_decode)

scripts/install-deps.sh
build_dir="${BUILD_DIR:-build-asan}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DATTENTION_FUZZ=ON >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target "${fuzzers[@]}"

for f in "${fuzzers[@]}"; do
  corpus="tests/fuzz/corpus/$f"
  found="$build_dir/corpus/$f"
  mkdir -p "$corpus" "$found" "$build_dir/artifacts"
  seeds=("$corpus")
  max_len=32768  # the request fuzzers' --max-message-mb (tests/fuzz/fuzz_limits.h)
  if [ "$f" = fuzz_inputs ]; then
    seeds+=(tests/fixtures models)
    max_len=65536
  fi
  log="$build_dir/$f.log"
  echo "fuzz.sh: $f for ${seconds} s (log: $log)"
  if ! "$build_dir/tests/fuzz/$f" -max_total_time="$seconds" -max_len="$max_len" -timeout=60 \
      -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$build_dir/artifacts/$f-" \
      "$found" "${seeds[@]}" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz.sh: $f failed; the input is in $build_dir/artifacts/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | tr '\n' ' '
  echo
  if $grow; then
    "$build_dir/tests/fuzz/$f" -merge=1 -use_counters=0 -max_len=2048 "$corpus" "$found" \
      >>"$log" 2>&1
    echo "fuzz.sh: $corpus: $(ls "$corpus" | wc -l) inputs, $(du -sh --apparent-size "$corpus" | cut -f1)"
  fi
done
