#!/usr/bin/env bash
# `docker compose up` for one evaluation, with both images' IDs in the run's manifest.json:
# builds the images, looks up the image ID of the runner and vllm services, passes them on as
# BFCL_EXT_RUNNER_IMAGE_ID / BFCL_EXT_SERVER_IMAGE_ID (compose.yaml hands them to the containers),
# then runs `up --exit-code-from runner`: the runner's exit code is this script's.
#   scripts/compose-up.sh [COMPOSE_OPTIONS...]   e.g. -f compose.yaml -f compose.cpu.yaml -p my-run
# Run it where compose.yaml is (the repository root); options go before `up`, as with compose.
# Needs python3 on the host (to read `docker compose config --format json`).
set -euo pipefail
# shellcheck source=scripts/ci/docker-client.sh disable=SC1091  # checked on its own
. "$(dirname "$0")/ci/docker-client.sh"

compose=("$DOCKER" compose "$@")
"${compose[@]}" build

# image_id SERVICE: the ID of the image SERVICE runs (sha256 of the image's configuration). The
# name comes from the resolved configuration (`config --images SERVICE` lists its dependencies' too).
services=$("${compose[@]}" config --format json)
image_id() {
    local image
    image=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["services"][sys.argv[2]]["image"])' \
        "$services" "$1")
    "$DOCKER" image inspect --format '{{.Id}}' "$image"
}
BFCL_EXT_RUNNER_IMAGE_ID=$(image_id runner)
BFCL_EXT_SERVER_IMAGE_ID=$(image_id vllm)
export BFCL_EXT_RUNNER_IMAGE_ID BFCL_EXT_SERVER_IMAGE_ID
printf 'compose-up: runner image %s, server image %s\n' "$BFCL_EXT_RUNNER_IMAGE_ID" "$BFCL_EXT_SERVER_IMAGE_ID" >&2
exec "${compose[@]}" up --exit-code-from runner
