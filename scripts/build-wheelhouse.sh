#!/usr/bin/env bash
# Wheels for an offline runner-image build: every pin of requirements/runner.lock, plus the
# build tools, built for this machine's Python and architecture, into docker/wheelhouse/.
#   scripts/build-wheelhouse.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
target=${1:-docker/wheelhouse}
mkdir -p "$target"
"$PYTHON" -m pip wheel --quiet --no-deps -r requirements/runner.lock -w "$target"
"$PYTHON" -m pip wheel --quiet --no-deps "setuptools>=68" wheel pip -w "$target"
echo "build-wheelhouse: $(find "$target" -name '*.whl' | wc -l) wheels in $target"
