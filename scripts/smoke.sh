#!/usr/bin/env bash
# The whole pipeline on a machine without a GPU: the bundled stand-in server (an oracle that
# answers from BFCL's ground truth, as a perfect model would) scored in skip mode by the real
# bfcl-eval. A correct deployment prints 100.00% for simple_python.
#   scripts/smoke.sh [CATEGORIES]             local: .venv (scripts/install.sh), default simple_python;
#                                             `all`: the whole leaderboard (the stand-in also plays SerpAPI)
#   scripts/smoke.sh --compose [CATEGORIES]   containers: both images and compose.yaml, results in ./results
set -euo pipefail
cd "$(dirname "$0")/.."

mode=local
if [ "${1:-}" = "--compose" ]; then
    mode=compose
    shift
fi
CATEGORIES=${1:-simple_python}

# compose.smoke.yaml (and compose.cpu.yaml) replace settings with the !override and !reset tags:
# Docker Compose 2.24.4 or later (the docs' "Requires" for !override; !reset came in 2.18.0).
COMPOSE_MINIMUM=2.24.4
check_compose_version() {
    local docker=${DOCKER:-docker} found
    if ! found=$("$docker" compose version --short 2>/dev/null); then
        echo "smoke.sh: '$docker compose' does not run: install Docker Compose v2 ($COMPOSE_MINIMUM or later)" >&2
        exit 2
    fi
    found=${found#v}
    if [ "$(printf '%s\n' "$COMPOSE_MINIMUM" "$found" | sort -V | head -n 1)" != "$COMPOSE_MINIMUM" ]; then
        echo "smoke.sh: Docker Compose $found is too old: compose.smoke.yaml's !override and !reset tags need $COMPOSE_MINIMUM or later" >&2
        exit 2
    fi
}

if [ "$mode" = compose ]; then
    check_compose_version
    results=${BFCL_EXT_RESULTS_DIR:-./results}
    mkdir -p "$results"
    if [ "$(id -u)" = 0 ]; then chown "${RUNNER_UID:-1000}:${RUNNER_GID:-1000}" "$results"; fi
    BFCL_EXT_TEST_CATEGORY=$CATEGORIES BFCL_EXT_RESULTS_DIR=$results \
        scripts/compose-up.sh -f compose.yaml -f compose.smoke.yaml
    echo "smoke.sh: summary in $results/summary.json"
    exit 0
fi

BFCL_EXT=${BFCL_EXT:-.venv/bin/bfcl-ext}
PORT=${SMOKE_PORT:-18000}
OUTPUT=${BFCL_EXT_OUTPUT_DIR:-bfcl-results/smoke}
[ -x "$BFCL_EXT" ] || { echo "smoke.sh: $BFCL_EXT missing; run scripts/install.sh first" >&2; exit 2; }
# The stand-in also plays SerpAPI (web_search_*), with a key made for this run only.
SMOKE_SEARCH_KEY=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
export SMOKE_SEARCH_KEY
"$BFCL_EXT" standin --host 127.0.0.1 --port "$PORT" --served-model-name smoke-oracle \
    --search-api-key-env SMOKE_SEARCH_KEY &
standin_pid=$!
trap 'kill "$standin_pid" 2>/dev/null || true; wait "$standin_pid" 2>/dev/null || true' EXIT

SERPAPI_API_KEY=$SMOKE_SEARCH_KEY BFCL_EXT_SEARCH_BASE_URL=http://127.0.0.1:$PORT \
VLLM_ENDPOINT=127.0.0.1 VLLM_PORT=$PORT "$BFCL_EXT" run --skip-vllm --model smoke-oracle \
    --test-category "$CATEGORIES" --output-dir "$OUTPUT" --wait-timeout 120
echo "smoke.sh: summary in $OUTPUT/summary.json"
