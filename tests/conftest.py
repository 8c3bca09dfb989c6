"""Shared fixtures: the stand-in server as a real process, and the bfcl-ext command as one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.waiting import answers_200, exited, wait_until
from tests.support.vllm_cpu import REPO_ROOT, VllmServer, ensure_tiny_model, free_port, running_vllm

BFCL_EXT = [sys.executable, "-m", "bfcl_ext"]

# scripts/test.sh runs the suite on several workers (pytest-xdist, --dist loadfile): a file's tests
# share one worker, so its module- and session-scoped fixtures (an image build, a SIF, the SLURM
# cluster, a vLLM server) are made once. The longest files start first (--no-loadscope-reorder keeps
# this order), so that no worker is left with one of them at the end while the others are idle.
# (--dist loadgroup would let the fault table's rows spread, but pytest-xdist 3.8 cannot set its
# groups on pytest 9's node ids.)
LONGEST_FIRST = ("test_apptainer.py", "test_apptainer_builds.py", "test_fault_table.py", "test_slurm.py",
                 "test_compose.py", "test_docs.py",
                 "test_vllm_image.py", "test_runner_full_image.py", "test_vllm_cpu.py", "test_runner_vllm.py",
                 "test_smoke_script.py", "test_embeddings.py")  # fmt: skip


# The full suite's heavy part, marked `slow`: the files that build images or SIFs, start a SLURM
# cluster, a Docker stack or a real vLLM, or make the full (torch) venv, and any test marked vllm,
# docker or slurm. `scripts/test.sh --fast` runs the rest (`-m "not slow"`): the inner loop.
SLOW_FILES = ("test_apptainer.py", "test_apptainer_builds.py", "test_slurm.py", "test_compose.py", "test_docs.py",
              "test_vllm_image.py",
              "test_runner_full_image.py", "test_vllm_cpu.py", "test_runner_vllm.py", "test_smoke_script.py",
              "test_embeddings.py", "test_env_example.py")  # fmt: skip
SLOW_MARKERS = ("vllm", "docker", "slurm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES or any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))  # fmt: skip


CLEAN_ENV_PREFIXES = ("VLLM_", "BFCL_EXT_", "OPENAI_")


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any of our settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class StandinProcess:
    process: subprocess.Popen[str]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"http://127.0.0.1:{self.port}/standin/stats", timeout=10)
        response.raise_for_status()
        return response.json()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_standin(
    log_dir: Path, *args: str, port: int | None = None, env: Mapping[str, str] | None = None, wait: bool = True
) -> StandinProcess:
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"standin-{port}-{time.monotonic_ns()}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [*BFCL_EXT, "standin", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=log_dir, env=clean_environment(env), stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    standin = StandinProcess(process, port, log_path)
    if wait:
        wait_for_health(standin, 60)
    return standin


def wait_for_health(standin: StandinProcess, timeout: float) -> None:
    wait_until(answers_200(f"http://127.0.0.1:{standin.port}/health"), within=timeout, what="stand-in /health 200",
               gone=exited(standin.process, "stand-in"), explain=standin.log_path.read_text)


@pytest.fixture
def standin() -> Iterator[Any]:
    """``standin(**options)`` starts the stand-in in this process on a free port (``StandinOptions``);
    all are stopped afterwards. ``standin_factory`` runs it as a process of its own instead."""
    from bfcl_ext.standin import Standin, StandinOptions

    started: list[Standin] = []

    def start(**options: Any) -> Standin:
        server = Standin(StandinOptions(port=0, **options)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def standin_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[StandinProcess] = []

    def factory(*args: str, **kwargs: Any) -> StandinProcess:
        standin = start_standin(tmp_path / "standin-logs", *args, **kwargs)
        started.append(standin)
        return standin

    yield factory
    for standin in started:
        standin.stop()


def run_bfcl_ext(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BFCL_EXT, *args], cwd=cwd or tempfile.mkdtemp(prefix="bfcl-ext-cwd-"),  # no stray ./.env
        env=clean_environment(env), capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def assert_outputs_match_schemas(output_dir: Path) -> None:
    """summary.json and manifest.json as schemas/ documents them."""
    from bfcl_ext import record

    for name in ("summary", "manifest"):
        errors = record.validation_errors(name, read_json(output_dir / f"{name}.json"))
        assert not errors, f"{name}.json does not match schemas/{name}.schema.json: {errors[:5]}"


def result_lines(output_dir: Path) -> list[dict[str, Any]]:
    """Every line of every BFCL result file under ``output_dir`` (each must parse)."""
    lines: list[dict[str, Any]] = []
    for path in sorted((output_dir / "result").rglob("*_result.json")):
        lines.extend(json.loads(line) for line in path.read_text().split("\n") if line.strip())
    return lines


VLLM_SERVED_NAME = "tiny-qwen2"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random model, built once and cached under BFCL_EXT_TEST_CACHE or <repo>/.cache."""
    cache = Path(os.environ.get("BFCL_EXT_TEST_CACHE") or REPO_ROOT / ".cache") / "tiny-models"
    return ensure_tiny_model(cache)


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """A real vLLM server on the CPU, without an API key, shared by the session."""
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with running_vllm(tiny_model_dir, VLLM_SERVED_NAME, free_port(), log) as server:
        yield server
