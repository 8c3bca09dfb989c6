#!/usr/bin/env bash
# Wheels for an offline runner-image build: every pin of requirements/runner.lock, plus the
# build tools, built for this machine's Python and architecture, into docker/wheelhouse/.
#   scripts/build-wheelhouse.sh [--full] [TARGET_DIR]
#   --full   also requirements/full.lock (memory_vector: the CPU build of torch 2.13.0 and
#            sentence-transformers, about +230 MB of wheels), for the full runner image
#            (--build-arg WITH_MEMORY_VECTOR=1). torch==2.13.0+cpu is not on PyPI: pip takes it
#            from its configured find-links (a local wheel directory) or from
#            PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
# Wheels already in TARGET_DIR are kept; pip only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
full=0
target=
for arg in "$@"; do
    case $arg in
        --full) full=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        -*) printf 'build-wheelhouse: unknown option %s (usage: %s [--full] [TARGET_DIR])\n' "$arg" "$0" >&2
            exit 2 ;;
        *) if [ -n "$target" ]; then
               printf 'build-wheelhouse: one TARGET_DIR only (usage: %s [--full] [TARGET_DIR])\n' "$0" >&2
               exit 2
           fi
           target=$arg ;;
    esac
done
target=${target:-docker/wheelhouse}
mkdir -p "$target"
"$PYTHON" -m pip wheel --quiet --no-deps -r requirements/runner.lock -w "$target"
"$PYTHON" -m pip wheel --quiet --no-deps "setuptools>=68" wheel pip -w "$target"
if [ "$full" = 1 ]; then
    # exact pins and --no-deps, as the image installs them: nothing resolved, no CUDA build of torch
    if ! "$PYTHON" -m pip wheel --quiet --no-deps -r requirements/full.lock -w "$target"; then
        echo "build-wheelhouse: requirements/full.lock failed; torch==2.13.0+cpu comes from a local wheel" \
             "directory (pip's find-links) or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
        exit 1
    fi
fi
echo "build-wheelhouse: $(find "$target" -name '*.whl' | wc -l) wheels in $target"
