#!/usr/bin/env bash
# Build bfcl-ext-local/apptainer:1.4, the tool image that runs Apptainer 1.4.x (Debian sid) as a
# non-root user on a host without Apptainer (docker/apptainer/Dockerfile). scripts/apptainer-build.sh
# and tests/test_apptainer.py use it.
#
#   scripts/ci/build-apptainer-tool.sh [--force]
#
# Cached: nothing is done when the image exists and was built from the current Dockerfile (its
# sha256 is a label of the image), unless --force. The build needs deb.debian.org (sid), about
# 20 s; then a smoke check: `apptainer --version` as the non-root builder.
# Needs the local Debian base (scripts/ci/setup-docker.sh makes it).
#
# Environment: DOCKER (default /usr/bin/docker if present), LOCAL_PYTHON_BASE (the Debian 12
# base, default bfcl-ext-local/python:3.11-bookworm), BFCL_EXT_APPTAINER_IMAGE (default
# bfcl-ext-local/apptainer:1.4), APPTAINER_VERSION (apt version pattern, default 1.4.*).
set -euo pipefail

LOCAL_PYTHON_BASE=${LOCAL_PYTHON_BASE:-bfcl-ext-local/python:3.11-bookworm}
BFCL_EXT_APPTAINER_IMAGE=${BFCL_EXT_APPTAINER_IMAGE:-bfcl-ext-local/apptainer:1.4}
APPTAINER_VERSION=${APPTAINER_VERSION:-1.4.*}
HASH_LABEL=org.bfcl-ext.dockerfile-sha256

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dockerfile=$repo_root/docker/apptainer/Dockerfile

t_start=$SECONDS
log() { printf 'build-apptainer-tool: [%4ds] %s\n' "$((SECONDS - t_start))" "$*"; }
die() { printf 'build-apptainer-tool: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/ci/docker-client.sh disable=SC1091  # checked on its own
. "$(dirname "${BASH_SOURCE[0]}")/docker-client.sh"
parse_force_flag build-apptainer-tool "$@"
require_docker_engine build-apptainer-tool

# The Dockerfile and the inputs that change what it builds.
wanted=$({ cat "$dockerfile"; printf '%s\n' "$LOCAL_PYTHON_BASE" "$APPTAINER_VERSION"; } | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ]; then
    have=$("$DOCKER" image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$BFCL_EXT_APPTAINER_IMAGE" 2>/dev/null || true)
    if [ "$have" = "$wanted" ]; then
        log "$BFCL_EXT_APPTAINER_IMAGE is up to date ($("$DOCKER" run --rm "$BFCL_EXT_APPTAINER_IMAGE" apptainer --version)); nothing to do (--force rebuilds)"
        exit 0
    fi
fi
"$DOCKER" image inspect "$LOCAL_PYTHON_BASE" >/dev/null 2>&1 \
    || die "base image $LOCAL_PYTHON_BASE is missing: run scripts/ci/setup-docker.sh first"

log "docker build $BFCL_EXT_APPTAINER_IMAGE (base $LOCAL_PYTHON_BASE, apptainer $APPTAINER_VERSION)"
t=$SECONDS
no_cache=()
if [ "$FORCE" = 1 ]; then no_cache=(--no-cache); fi
DOCKER_BUILDKIT=1 "$DOCKER" build "${no_cache[@]}" \
    --file "$dockerfile" \
    --build-arg "DEBIAN_BASE=$LOCAL_PYTHON_BASE" \
    --build-arg "APPTAINER_VERSION=$APPTAINER_VERSION" \
    --label "$HASH_LABEL=$wanted" \
    --tag "$BFCL_EXT_APPTAINER_IMAGE" \
    "$repo_root/docker/apptainer"
log "docker build took $((SECONDS - t)) s"

# shellcheck disable=SC2016 # expanded in the container
version=$("$DOCKER" run --rm "$BFCL_EXT_APPTAINER_IMAGE" sh -c 'printf "%s as uid %s" "$(apptainer --version)" "$(id -u)"') \
    || die "smoke check of $BFCL_EXT_APPTAINER_IMAGE failed"
case $version in
    "apptainer version 1.4."*" as uid 0") die "the tool image runs as root: $version" ;;
    "apptainer version 1.4."*) ;;
    *) die "unexpected version in $BFCL_EXT_APPTAINER_IMAGE: $version" ;;
esac
log "done: $BFCL_EXT_APPTAINER_IMAGE, $version, $((SECONDS - t_start)) s in all"
