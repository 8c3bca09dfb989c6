"""The Docker engine and Compose v2 as the tests use them (set up by scripts/ci/setup-docker.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_PYTHON_BASE = "bfcl-ext-local/python:3.11-bookworm"
COMPOSE_FILES = (
    "-f compose.yaml",
    "-f compose.yaml -f compose.smoke.yaml",
    "-f compose.yaml -f compose.cpu.yaml",
)


def docker() -> str:
    """Debian's client (engine 20.10, BuildKit) when present, else whatever `docker` is on PATH."""
    found = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    if not found:
        raise AssertionError("no docker client: run scripts/ci/setup-docker.sh")
    return found


def compose_command() -> list[str]:
    return [docker(), "compose"]


def ensure_engine() -> None:
    """Fail loudly, with the fix, when the engine, Compose v2 or the local base image is missing."""
    info = subprocess.run([docker(), "info"], capture_output=True, text=True, check=False)
    assert info.returncode == 0, f"no Docker engine ({info.stderr.strip()[:200]}): run scripts/ci/setup-docker.sh"
    version = subprocess.run([*compose_command(), "version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and "v2." in version.stdout, "Compose v2 missing: run scripts/ci/setup-docker.sh"
    base = subprocess.run([docker(), "image", "inspect", LOCAL_PYTHON_BASE], capture_output=True, check=False)
    assert base.returncode == 0, f"{LOCAL_PYTHON_BASE} missing: run scripts/ci/setup-docker.sh"


def docker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for compose commands: local base images (no registry here), BuildKit on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "BFCL_EXT_", "SERVE_"))}
    env.update(DOCKER_BUILDKIT="1", COMPOSE_DOCKER_CLI_BUILD="1", RUNNER_PYTHON_BASE=LOCAL_PYTHON_BASE)
    env.update(extra or {})
    return env
