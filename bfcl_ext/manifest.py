"""summary.json (what was scored) and manifest.json (how), written atomically, secrets redacted."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bfcl_ext import __version__
from bfcl_ext.config import is_secret_name

REDACTED = "<redacted>"
RECORDED_ENV_PREFIXES = ("VLLM_", "BFCL_EXT_", "HF_", "SLURM_JOB", "SLURM_NODELIST", "CUDA_VISIBLE_DEVICES", "OPENAI_")
SECRET_FLAGS = ("--api-key",)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``--api-key X`` and ``--api-key=X`` lose their value."""
    cleaned: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            cleaned.append(REDACTED)
            hide_next = False
        elif arg in SECRET_FLAGS:
            cleaned.append(arg)
            hide_next = True
        elif any(arg.startswith(flag + "=") for flag in SECRET_FLAGS):
            cleaned.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            cleaned.append(arg)
    return cleaned


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in a command line (the last one wins)."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def redact_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key: (REDACTED if is_secret_name(key) else value)
        for key, value in sorted(environ.items())
        if key.startswith(RECORDED_ENV_PREFIXES)
    }


def scrub(text: str, secrets: Sequence[str | None]) -> str:
    """Remove secret values from free text (a server log line, an error message)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def write_json(path: Path, payload: Mapping[str, Any], secrets: Sequence[str | None] = ()) -> None:
    """Write ``payload`` to ``path`` via a temporary file and rename: never half a file."""
    text = scrub(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", secrets)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def source_commit() -> str | None:
    """The git commit of the bfcl_ext source when it runs from a checkout, else None."""
    package_dir = Path(__file__).resolve().parent
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def gpus() -> list[str]:
    """GPU names from nvidia-smi when present (managed mode runs beside the GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def host_facts() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "bfcl_ext": __version__,
        "bfcl_ext_commit": source_commit(),
        "gpus": gpus(),
    }
