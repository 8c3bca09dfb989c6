#!/usr/bin/env bash
# Create $VENV (default .venv) with bfcl_ext and the exact, torch-free bfcl-eval environment.
#   scripts/install.sh                 runner only
#   scripts/install.sh --test          plus the test tools
#   scripts/install.sh --full          plus what the memory_vector category needs (requirements/full.lock:
#                                      the CPU build of torch 2.13.0 and sentence-transformers; +1.1 GB)
#   scripts/install.sh --full --test   both (in either order)
#   --no-compile                       skip byte-compiling (about 2x faster, 0.4 GB less with --full;
#                                      Python compiles what it imports on first use): for test venvs
# torch==2.13.0+cpu is not on PyPI: pip takes it from its configured find-links (a local wheel
# directory) or from PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
# Environment: PYTHON (default python3.11), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

test_tools=0
full=0
pip_install=("$VENV/bin/pip" install --quiet)
for arg in "$@"; do
    case "$arg" in
        --test) test_tools=1 ;;
        --full) full=1 ;;
        --no-compile) pip_install+=(--no-compile) ;;
        *) echo "install.sh: unknown option $arg (usage: scripts/install.sh [--test] [--full] [--no-compile])" >&2
           exit 2 ;;
    esac
done

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: PYTHON=$PYTHON not found; the locked environment needs Python 3.11 or 3.12" >&2
    exit 2
fi
# requirements/runner.lock holds packages that need Python 3.11 or later (pandas 3, scipy 1.17,
# transformers 5, ...); bfcl-eval itself stops at 3.12.
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))'; then
    echo "install.sh: PYTHON=$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())');" \
         "the locked environment needs Python 3.11 or 3.12 (set PYTHON=python3.11)" >&2
    exit 2
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"${pip_install[@]}" --no-deps -r requirements/runner.lock
"${pip_install[@]}" --no-deps -e .
if [ "$full" = 1 ]; then
    # --no-deps and exact pins: nothing is resolved, so no CUDA build of torch can come in.
    if ! "${pip_install[@]}" --no-deps -r requirements/full.lock; then
        echo "install.sh: installing requirements/full.lock failed; torch==2.13.0+cpu comes from a local" \
             "wheel directory (pip's find-links) or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
        exit 1
    fi
fi
if [ "$test_tools" = 1 ]; then
    "${pip_install[@]}" -r requirements/test.txt
fi
if [ "$full" = 1 ]; then
    "$VENV/bin/pip" check
    # sentence_transformers (torch) before faiss, as bfcl-eval imports them.
    "$VENV/bin/python" -c 'import sentence_transformers, torch, faiss
print("install.sh: memory_vector support: torch", torch.__version__, "sentence-transformers",
      sentence_transformers.__version__, "faiss", faiss.__version__)'
fi
"$VENV/bin/bfcl-ext" --version
