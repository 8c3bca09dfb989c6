#!/usr/bin/env bash
# The whole pipeline on a machine without a GPU: the bundled stand-in server (an oracle that
# answers from BFCL's ground truth, as a perfect model would) scored in skip mode by the real
# bfcl-eval. A correct deployment prints 100.00% for simple_python.
#   scripts/smoke.sh [CATEGORIES]             local: .venv (scripts/install.sh), default simple_python
#   scripts/smoke.sh --compose [CATEGORIES]   containers: both images and compose.yaml, results in ./results
set -euo pipefail
cd "$(dirname "$0")/.."

mode=local
if [ "${1:-}" = "--compose" ]; then
    mode=compose
    shift
fi
CATEGORIES=${1:-simple_python}

if [ "$mode" = compose ]; then
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
"$BFCL_EXT" standin --host 127.0.0.1 --port "$PORT" --served-model-name smoke-oracle &
standin_pid=$!
trap 'kill "$standin_pid" 2>/dev/null || true; wait "$standin_pid" 2>/dev/null || true' EXIT

VLLM_ENDPOINT=127.0.0.1 VLLM_PORT=$PORT "$BFCL_EXT" run --skip-vllm --model smoke-oracle \
    --test-category "$CATEGORIES" --output-dir "$OUTPUT" --wait-timeout 120
echo "smoke.sh: summary in $OUTPUT/summary.json"
