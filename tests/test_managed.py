"""Managed mode's life cycle, fast: the stand-in plays vLLM (it accepts vLLM's flags and reads
VLLM_API_KEY like vLLM). The same paths run against the real CPU vLLM in test_runner_vllm.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bfcl_ext.server import choose_port, server_command
from tests.conftest import assert_outputs_match_schemas, BFCL_EXT, clean_environment, read_json, run_bfcl_ext
from tests.support.vllm_cpu import free_port

STANDIN_AS_VLLM = f"{sys.executable} -m bfcl_ext.standin"


def _managed(out: Path, port: int, *extra: str) -> list[str]:
    return ["run", "--model", "org/managed_model", "--test-category", "simple_python", "--limit", "20",
            "--output-dir", str(out), "--vllm-port", str(port), "--vllm-command", STANDIN_AS_VLLM,
            "--wait-timeout", "60", "--stop-grace", "5", *extra]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _environ_of_processes_with(needle: str) -> list[dict[str, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in cmdline:
            found.append(dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item))
    return found


def test_managed_run_starts_the_server_scores_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    done = run_bfcl_ext(_managed(tmp_path / "out", port, "--model-revision", "a1b2c3d", "--vllm-args",
                                 "--enable-auto-tool-choice --tool-call-parser hermes"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["mode"] == "managed"
    sampling = read_json(tmp_path / "out" / "manifest.json")["sampling"]
    assert sampling["temperature_sent"] == 0.001 and sampling["temperature_effective"] == 0.01
    model = read_json(tmp_path / "out" / "manifest.json")["model"]
    assert model["revision"] == "a1b2c3d" and model["served_as"] == "org/managed_model"
    assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 20, "total": 20}
    assert "standin: serving org/managed_model" in (tmp_path / "out" / "logs" / "vllm-server.log").read_text()
    launched = read_json(tmp_path / "out" / "manifest.json")["server"]["launched_with"]
    def value(flag: str) -> str:
        return launched[launched.index(flag) + 1]

    assert (value("--model"), value("--host"), value("--port")) == ("org/managed_model", "127.0.0.1", str(port))
    assert value("--served-model-name") == "org/managed_model" and value("--generation-config") == "vllm"
    assert value("--revision") == "a1b2c3d"
    assert read_json(tmp_path / "out" / "manifest.json")["server"]["tool_call_parser"] == "hermes"
    assert_outputs_match_schemas(tmp_path / "out")
    assert not _listening(port)


def test_a_taken_port_moves_the_server_and_says_so(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = run_bfcl_ext(_managed(tmp_path / "out", taken), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"port {taken} is taken" in done.stderr
    assert read_json(tmp_path / "out" / "summary.json")["endpoint"] != f"http://localhost:{taken}/v1"


def test_slurm_job_id_gives_the_same_port_on_a_rerun() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        first = choose_port("127.0.0.1", taken, "4242")
        assert first == choose_port("127.0.0.1", taken, "4242") == 20000 + 4242
        assert choose_port("127.0.0.1", taken, "4243") == 20000 + 4243
    assert choose_port("127.0.0.1", taken, "4242") == taken  # free again: the configured port wins


def test_server_command_shapes() -> None:
    serve = server_command(
        ("vllm", "serve"), "Qwen/Qwen3-8B", "served", "0.0.0.0", 8001, ("--tensor-parallel-size", "2")
    )
    assert serve == ["vllm", "serve", "Qwen/Qwen3-8B", "--host", "0.0.0.0", "--port", "8001", "--served-model-name",
                     "served", "--generation-config", "vllm", "--tensor-parallel-size", "2"]
    pinned = server_command(("vllm", "serve"), "Qwen/Qwen3-8B", "s", "h", 1, (), revision="a1b2c3d")
    assert pinned[2:5] == ["Qwen/Qwen3-8B", "--revision", "a1b2c3d"]
    module = server_command(("python", "-m", "vllm.entrypoints.openai.api_server"), "m", "m", "h", 1,
                            ("--generation-config", "auto"))
    assert module[3:5] == ["--model", "m"] and module.count("--generation-config") == 1


def test_key_reaches_the_server_through_its_environment_only(tmp_path: Path) -> None:
    key = "sk-managed-secret-7731"
    port = free_port()
    runner = subprocess.Popen(
        [*BFCL_EXT, *_managed(tmp_path / "out", port, "--limit", "200", "--num-threads", "2")],
        env=clean_environment({"VLLM_API_KEY": key, "VLLM_PORT": "9"}), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen_server_env: list[dict[str, str]] = []
    deadline = time.monotonic() + 120
    while runner.poll() is None and time.monotonic() < deadline:
        seen_server_env += _environ_of_processes_with(f"--port {port} ")
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    assert key not in (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    pass
        time.sleep(0.05)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 0, output[-3000:]
    assert seen_server_env, "never saw the managed server running"
    assert all(env.get("VLLM_API_KEY") == key for env in seen_server_env)
    assert all("VLLM_PORT" not in env for env in seen_server_env), "our VLLM_PORT leaked into vLLM's environment"
    assert key not in output
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_a_server_that_exits_at_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run_bfcl_ext(
        ["run", "--model", "m", "--test-category", "simple_python", "--output-dir", str(tmp_path / "out"),
         "--vllm-command", "sh -c 'echo CUDA out of memory >&2; exit 7' sh", "--wait-timeout", "600"],
        timeout=300,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert "CUDA out of memory" in done.stderr
    assert time.monotonic() - started < 60


def test_a_missing_server_command_is_a_configuration_error(tmp_path: Path) -> None:
    done = run_bfcl_ext(
        ["run", "--model", "m", "--test-category", "simple_python", "--output-dir", str(tmp_path / "out"),
         "--vllm-command", "no-such-vllm-binary serve"],
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "BFCL_EXT_VLLM_COMMAND/--vllm-command='no-such-vllm-binary serve'" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_server_never_outlives_the_runner(tmp_path: Path, signum: int) -> None:
    port = free_port()
    runner = subprocess.Popen(
        [*BFCL_EXT, *_managed(tmp_path / "out", port, "--limit", "400", "--num-threads", "1")],
        env=clean_environment(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not _listening(port):
        assert runner.poll() is None and time.monotonic() < deadline, "managed server never came up"
        time.sleep(0.1)
    time.sleep(1.0)
    runner.send_signal(signum)
    runner.wait(timeout=60)
    assert runner.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 15  # SIGKILL: the kernel's parent-death signal stops it
    while _environ_of_processes_with(f"--port {port} ") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _environ_of_processes_with(f"--port {port} ") == []
    assert not _listening(port)
