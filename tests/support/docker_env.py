"""The Docker engine and Compose v2 as the tests use them (set up by scripts/ci/setup-docker.sh).

Builds and compose run through the CLI (BuildKit, Compose v2); what the tests inspect
(containers, images) comes from the engine's API through the Docker SDK.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient, from_env
from docker.errors import DockerException, ImageNotFound

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_PYTHON_BASE = "bfcl-ext-local/python:3.11-bookworm"
# compose's images in the tests are tagged this, not `local`: the `:local` tags are the Apptainer
# README test's (tests/test_apptainer_builds.py moves them for a while on another worker)
COMPOSE_TEST_TAG = "compose-test"
COMPOSE_TEST_RUNNER = f"bfcl-ext-runner:{COMPOSE_TEST_TAG}"
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


def run_docker(*args: str, check: bool = True, timeout: float = 120,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker ARGS` with the client above; a failure (check) fails the test with the command's output."""
    done = subprocess.run([docker(), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and done.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def compose_command() -> list[str]:
    return [docker(), "compose"]


@functools.cache
def engine() -> DockerClient:
    """The Docker SDK's client of the engine (DOCKER_HOST, else the default socket)."""
    try:
        client = from_env()
        client.ping()
    except DockerException as error:
        raise AssertionError(f"no Docker engine ({str(error)[:200]}): run scripts/ci/setup-docker.sh") from None
    return client


def ensure_engine() -> None:
    """Fail loudly, with the fix, when the engine, Compose v2 or the local base image is missing."""
    engine()
    version = subprocess.run([*compose_command(), "version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and "v2." in version.stdout, "Compose v2 missing: run scripts/ci/setup-docker.sh"
    try:
        engine().images.get(LOCAL_PYTHON_BASE)
    except ImageNotFound:
        raise AssertionError(f"{LOCAL_PYTHON_BASE} missing: run scripts/ci/setup-docker.sh") from None


def image_id(name: str) -> str:
    """The image's ID (sha256 of its configuration), as `docker image inspect` shows it."""
    return engine().images.get(name).id


def image_size(name: str) -> int:
    return int(engine().images.get(name).attrs["Size"])


def project_containers(project: str, service: str | None = None) -> list[Any]:
    """A compose project's containers, stopped ones too (optionally one service's)."""
    labels = [f"com.docker.compose.project={project}"]
    if service:
        labels.append(f"com.docker.compose.service={service}")
    return engine().containers.list(all=True, filters={"label": labels})


def docker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for compose commands: local base images (no registry here), BuildKit on, the
    default runner flavour (``WITH_MEMORY_VECTOR`` only through ``extra``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLLM_", "BFCL_EXT_", "SERVE_")) and k != "WITH_MEMORY_VECTOR"}
    env.update(DOCKER_BUILDKIT="1", COMPOSE_DOCKER_CLI_BUILD="1", RUNNER_PYTHON_BASE=LOCAL_PYTHON_BASE,
               BFCL_EXT_IMAGE_TAG=COMPOSE_TEST_TAG)
    env.update(extra or {})
    return env
