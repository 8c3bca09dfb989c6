#!/usr/bin/env bash
# The whole pipeline on a machine without a GPU: start the bundled stand-in server (an oracle
# that answers from BFCL's ground truth, like a perfect model would), score it in skip mode
# with the real bfcl-eval, and stop it. A correct deployment prints 100.00% for each category.
#   scripts/smoke.sh [CATEGORIES]        default: simple_python
set -euo pipefail
cd "$(dirname "$0")/.."

BFCL_EXT=${BFCL_EXT:-.venv/bin/bfcl-ext}
PYTHON=${PYTHON:-.venv/bin/python}
CATEGORIES=${1:-simple_python}
PORT=${SMOKE_PORT:-18000}
OUTPUT=${BFCL_EXT_OUTPUT_DIR:-bfcl-results/smoke}

[ -x "$BFCL_EXT" ] || { echo "smoke.sh: $BFCL_EXT missing; run scripts/install.sh first" >&2; exit 2; }
"$PYTHON" -m bfcl_ext.standin --host 127.0.0.1 --port "$PORT" --served-model-name smoke-oracle &
standin_pid=$!
trap 'kill "$standin_pid" 2>/dev/null || true; wait "$standin_pid" 2>/dev/null || true' EXIT

VLLM_ENDPOINT=127.0.0.1 VLLM_PORT=$PORT "$BFCL_EXT" run --skip-vllm --model smoke-oracle \
    --test-category "$CATEGORIES" --output-dir "$OUTPUT" --wait-timeout 120
echo "smoke.sh: summary in $OUTPUT/summary.json"
