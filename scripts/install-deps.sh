#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs, only those missing.
#   scripts/install-deps.sh            build + runtime packages (C++ toolchain, gRPC, oneDNN, ...)
#   scripts/install-deps.sh --runtime  only the shared libraries the binaries need at run time
#   scripts/install-deps.sh --torch    also python3-torch (to regenerate fixtures / benchmark PyTorch)
set -euo pipefail

build_pkgs=(
  build-essential cmake pkg-config
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libdnnl-dev ocl-icd-opencl-dev opencl-c-headers
  nlohmann-json3-dev libgtest-dev libgmock-dev libssl-dev openssl libmicrohttpd-dev
  libjemalloc-dev   # the server's allocator (server/allocator.h)
  libcpp-httplib-dev   # the tests' HTTP client
  python3 python3-numpy python3-grpcio python3-protobuf
  prometheus   # the tests: promtool checks /metrics, a real Prometheus scrapes it
  clang libclang-rt-dev libomp-dev   # the tests: the fuzzers (scripts/fuzz.sh)
  clang-format clang-tidy            # the tests: scripts/lint.sh
  curl                               # the README's examples (scripts/test-readme.sh)
)
runtime_pkgs=(libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libdnnl2 libgomp1 libssl3
  libmicrohttpd12 libjemalloc2)
torch_pkgs=(python3-torch libopenblas0-pthread)

want=()
case "${1:-}" in
  --runtime) want=("${runtime_pkgs[@]}") ;;
  --torch) want=("${build_pkgs[@]}" "${torch_pkgs[@]}") ;;
  "") want=("${build_pkgs[@]}") ;;
  *) echo "usage: $0 [--runtime|--torch]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
