#!/usr/bin/env bash
# Create .venv with bfcl_ext and the exact, torch-free bfcl-eval environment.
#   scripts/install.sh          runner only
#   scripts/install.sh --test   plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: PYTHON=$PYTHON not found; bfcl-eval needs Python 3.10-3.12" >&2
    exit 2
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --no-deps -r requirements/runner.lock
"$VENV/bin/pip" install --quiet --no-deps -e .
if [ "${1:-}" = "--test" ]; then
    "$VENV/bin/pip" install --quiet -r requirements/test.txt
fi
"$VENV/bin/bfcl-ext" --version
