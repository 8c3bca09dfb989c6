# Sourced by the image scripts: sets DOCKER to the client to use, unless the caller set it.
# Debian's client (/usr/bin/docker) matches the 20.10 engine and builds with BuildKit; the
# newer client some machines have in /usr/local/bin has no buildx.
# shellcheck shell=bash
set -euo pipefail  # as the scripts that source it
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
fi
