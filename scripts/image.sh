#!/usr/bin/env bash
# Builds the service's container image without a Docker engine, with Debian's
# buildah, and smoke-tests the running container with podman (as root).
#
#   scripts/image.sh              # base images (once), the image, then the smoke test
#   scripts/image.sh --no-build   # only the smoke test of the existing image
#   IMAGE=attention-service:dev PORT=6000 ADMIN_PORT=6001 scripts/image.sh
#
# 1. Base images debian:12 and debian:12-slim made with mmdebstrap (variant
#    minbase, merged /usr) from this machine's apt sources and Acquire::
#    settings (so the build reaches the same mirror apt does here), imported
#    with podman import and tagged as docker.io/library/debian:12[-slim], so
#    the Dockerfile's FROM lines resolve without pulling.
# 2. buildah bud --format docker (OCI drops HEALTHCHECK) --isolation chroot
#    (the default isolation fails on hybrid cgroups). The build stage runs the
#    Release test suite (scripts/test.sh --quick; CI also runs the sanitizer
#    and fuzz stages).
# 3. The smoke test: podman run --runtime runc (crun fails on hybrid cgroups)
#    with --network host, the server on 127.0.0.1:PORT (other flags than the
#    image's defaults, on purpose) and its admin port; then health, a verified
#    load run with the demo model, the user (10001, not root), the HEALTHCHECK
#    (podman healthcheck run: periodic checks need systemd), and podman stop
#    (SIGTERM: exits 0 within the drain).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-attention-service:latest}"
port="${PORT:-50051}"
admin_port="${ADMIN_PORT:-9090}"
build=1
[[ "${1:-}" == "--no-build" ]] && build=0

missing=()
for tool in buildah podman mmdebstrap runc; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "image: installing ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends buildah podman mmdebstrap runc uidmap > /dev/null
fi

# A Debian 12 base image named `name` (debian:12 or debian:12-slim), made once.
base_image() {
  local name="$1" slim="$2"
  podman image exists "docker.io/library/$name" && return 0
  echo "image: making $name with mmdebstrap" >&2
  local tar sources=() aptopts=() slimopts=()
  tar="$(mktemp --suffix=.tar)"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -s "$f" ]] && sources+=("$f")
  done
  for f in /etc/apt/apt.conf.d/*; do
    grep -q '^Acquire::' "$f" 2> /dev/null && aptopts+=("--aptopt=$f")
  done
  if ((slim)); then  # what the official -slim images leave out
    for p in doc man groff info lintian linda locale; do
      slimopts+=("--dpkgopt=path-exclude=/usr/share/$p/*")
    done
    slimopts+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
  fi
  mmdebstrap --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    "${aptopts[@]}" "${slimopts[@]}" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tar" "${sources[@]}"
  podman import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tar" "docker.io/library/$name" > /dev/null
  rm -f "$tar"
}

if ((build)); then
  base_image debian:12 0
  base_image debian:12-slim 1
  start=$(date +%s)
  buildah bud --format docker --isolation chroot --pull=never -t "$image" .
  echo "image: built $image in $(($(date +%s) - start)) s" >&2
fi
podman image inspect "$image" --format 'image: {{.Id}} size {{.Size}} bytes' | cut -c1-80
echo "image: its largest packages (KiB installed):"
podman run --rm --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  --entrypoint dpkg-query "$image" -Wf '${Installed-Size}\t${Package}\n' | sort -rn | head -6

# --- smoke test ---------------------------------------------------------------
name="attention-smoke-$$"
cleanup() { podman rm -f "$name" > /dev/null 2>&1 || true; }
trap cleanup EXIT
fail() { echo "image: SMOKE TEST FAILED: $*" >&2; podman logs "$name" 2>&1 | tail -20 >&2; exit 1; }

podman run -d --name "$name" --runtime runc --network host \
  --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  "$image" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
  --model demo=/opt/attention/models/demo.safetensors --drain-seconds 5 > /dev/null
in_container() { podman exec "$name" "$@"; }
for _ in $(seq 50); do
  in_container attention-client --target "127.0.0.1:$port" health > /dev/null 2>&1 && break
  sleep 0.2
done
[[ "$(in_container attention-client --target "127.0.0.1:$port" health)" == SERVING ]] ||
  fail "health is not SERVING"
echo "image: health SERVING on 127.0.0.1:$port"
in_container attention-client --target "127.0.0.1:$port" load --model demo \
  --model-file /opt/attention/models/demo.safetensors --seq 32 --requests 50 --concurrency 2 \
  --warmup 0 --verify 100 --quiet | grep -E "ok|verify" || fail "the demo model's calls failed"
user="$(in_container id -u)"
[[ "$user" == 10001 ]] || fail "runs as uid $user, not 10001"
echo "image: runs as uid $user"
podman healthcheck run "$name" || fail "HEALTHCHECK reports unhealthy"
echo "image: HEALTHCHECK healthy (admin port $admin_port)"
start=$(date +%s.%N)
podman stop -t 20 "$name" > /dev/null
stop_s=$(echo "$(date +%s.%N) - $start" | bc)
code="$(podman inspect "$name" --format '{{.State.ExitCode}}')"
[[ "$code" == 0 ]] || fail "exit code $code after podman stop"
echo "image: podman stop: exit 0 after ${stop_s} s"
echo "image: smoke test passed"
