# Sourced by the image scripts: sets DOCKER to the client to use, unless the caller set it.
# Debian's client (/usr/bin/docker) matches the 20.10 engine and builds with BuildKit; the
# newer client some machines have in /usr/local/bin has no buildx.
# shellcheck shell=bash
set -euo pipefail  # as the scripts that source it
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
fi

# parse_force_flag PROG ARGS...: the image scripts' one option. FORCE=1 with --force; --help prints
# the calling script's header comment; anything else exits 2.
# shellcheck disable=SC2034  # FORCE is read by the scripts that source this file
parse_force_flag() {
    local prog=$1 arg
    shift
    FORCE=0
    for arg in "$@"; do
        case $arg in
            --force) FORCE=1 ;;
            -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
            *) printf '%s: unknown argument %s (usage: %s [--force])\n' "$prog" "$arg" "$0" >&2; exit 2 ;;
        esac
    done
}

# require_docker_engine PROG: exit 1, saying how to fix it, unless the client and the engine answer.
require_docker_engine() {
    local fix="(run scripts/ci/setup-docker.sh)"
    if [ -z "$DOCKER" ]; then
        printf '%s: error: no docker client found %s\n' "$1" "$fix" >&2
        exit 1
    fi
    if ! "$DOCKER" info >/dev/null 2>&1; then
        printf '%s: error: the docker engine does not answer %s\n' "$1" "$fix" >&2
        exit 1
    fi
}
