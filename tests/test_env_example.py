"""One `.env` for every use: `cp .env.example .env` breaks no local command, and compose hands every
runner setting of `.env` to its runner (pointed at its own vllm service whatever `.env` says)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bfcl_ext.config import OPTIONS
from tests.conftest import read_json, run_bfcl_ext
from tests.support.docker_env import REPO_ROOT, compose_command, docker_environment, ensure_engine

# Settings of the managed mode (compose's runner never launches vLLM) and those compose sets itself.
NOT_FOR_THE_COMPOSE_RUNNER = {"BFCL_EXT_VLLM_COMMAND", "BFCL_EXT_VLLM_ARGS", "BFCL_EXT_VLLM_BIND",
                              "BFCL_EXT_STOP_GRACE", "BFCL_EXT_SKIP_VLLM", "BFCL_EXT_OUTPUT_DIR",
                              "BFCL_EXT_SERVER_IMAGE",
                              "BFCL_EXT_API_KEY_FILE"}  # a host path: compose hands the runner VLLM_API_KEY


def _example_keys() -> list[str]:
    text = (REPO_ROOT / ".env.example").read_text()
    return re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE)


@pytest.mark.docker
def test_compose_passes_every_runner_setting_of_the_env_file(tmp_path: Path) -> None:
    ensure_engine()
    env_file = tmp_path / ".env"
    shutil.copy(REPO_ROOT / ".env.example", env_file)
    done = subprocess.run([*compose_command(), "--env-file", str(env_file), "-f", "compose.yaml", "config",
                           "--format", "json"], cwd=REPO_ROOT, env=docker_environment({}), capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    runner = json.loads(done.stdout)["services"]["runner"]["environment"]
    settings = {option.env for option in OPTIONS if option.env}
    wanted = [key for key in _example_keys() if key in settings and key not in NOT_FOR_THE_COMPOSE_RUNNER]
    assert [key for key in wanted if key not in runner] == []
    assert runner["VLLM_ENDPOINT"] == "vllm" and runner["VLLM_PORT"] == "8000"  # not .env's localhost


def test_the_example_env_file_copied_to_env_works_for_local_commands(tmp_path: Path, standin_factory) -> None:
    """As the README says: cp .env.example .env, then the local commands (skip mode here, against the
    stand-in; the example's managed settings point at this machine)."""
    shutil.copy(REPO_ROOT / ".env.example", tmp_path / ".env")
    standin = standin_factory()
    out = tmp_path / "out"
    done = run_bfcl_ext(["run", "--skip-vllm", "--vllm-port", str(standin.port), "--model", "bfcl-ext-standin",
                         "--limit", "3", "--output-dir", str(out)], cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    assert read_json(out / "summary.json")["categories"]["simple_python"]["accuracy"] == 1.0
    assert read_json(out / "manifest.json")["settings"]["sources"]["vllm_endpoint"] == ".env"
    check = run_bfcl_ext(["check", "--skip-vllm", "--vllm-port", str(standin.port), "--model", "bfcl-ext-standin"],
                         cwd=tmp_path, timeout=120)
    assert check.returncode == 0, check.stderr


def test_a_managed_bind_address_that_is_not_this_machine_is_a_setting_error(tmp_path: Path) -> None:
    done = run_bfcl_ext(["run", "--model", "m", "--test-category", "simple_python", "--output-dir",
                         str(tmp_path / "out")], env={"VLLM_ENDPOINT": "no-such-host.invalid"}, cwd=tmp_path,
                        timeout=240)
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("bfcl-ext: error:")]
    assert "BFCL_EXT_VLLM_BIND/--vllm-bind='no-such-host.invalid': the managed vLLM cannot listen there" in line
    assert "Traceback" not in done.stderr


@pytest.mark.docker
def test_the_vllm_health_check_start_period_is_a_setting() -> None:
    """A first download of a big model takes longer than the image's 20 minutes: VLLM_HEALTH_START_PERIOD
    (only the start period: the image's own test on /health stays, Docker fills in what is not set)."""
    ensure_engine()

    def health(extra: dict[str, str]) -> dict[str, object]:
        done = subprocess.run([*compose_command(), "-f", "compose.yaml", "config", "--format", "json"],
                              cwd=REPO_ROOT, env=docker_environment({"BFCL_EXT_MODEL": "m", **extra}),
                              capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["services"]["vllm"]["healthcheck"]

    assert health({}) == {"start_period": "20m0s"}
    assert health({"VLLM_HEALTH_START_PERIOD": "1h30m"}) == {"start_period": "1h30m0s"}
