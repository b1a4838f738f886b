#!/usr/bin/env bash
# Fuzzes the input parsers and request validation with libFuzzer under
# AddressSanitizer (clang from Debian: apt-get install clang), seeded with the
# PyTorch fixtures. Not part of the test command (it runs until stopped).
#   scripts/fuzz.sh [SECONDS]     default 120
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
scripts/install-deps.sh
if ! command -v clang++ >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends clang >/dev/null
fi
out="${BUILD_DIR:-build}/fuzz"
mkdir -p "$out/corpus"
cp tests/fixtures/*.safetensors tests/fixtures/models/*.safetensors "$out/corpus/" 2>/dev/null || true
clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fopenmp -I. \
  tests/fuzz/fuzz_inputs.cc core/attention.cc core/attention_kernels.cc core/attention_plan.cc \
  core/guard.cc core/onednn_ops.cc core/projection.cc core/safetensors.cc core/workspace.cc \
  core/tensor.cc client/npy.cc \
  -ldnnl -labsl_status -labsl_statusor -labsl_strings -labsl_str_format_internal \
  -labsl_cord -labsl_cordz_info -labsl_cord_internal -labsl_cordz_functions -labsl_cordz_handle \
  -labsl_raw_logging_internal -labsl_int128 -labsl_throw_delegate -labsl_strings_internal \
  -labsl_synchronization -labsl_time -labsl_base -labsl_spinlock_wait -labsl_stacktrace \
  -labsl_symbolize -labsl_malloc_internal -labsl_debugging_internal -labsl_demangle_internal \
  -labsl_graphcycles_internal -labsl_time_zone -labsl_exponential_biased -labsl_bad_optional_access \
  -o "$out/fuzz_inputs"
"$out/fuzz_inputs" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 \
  -print_final_stats=1 "$out/corpus"
