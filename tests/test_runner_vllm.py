"""bfcl-ext against a REAL vLLM server on the CPU (tiny random model), in both modes.

A random model never calls a tool correctly, so these tests check the plumbing: requests reach
vLLM with the right model name, every selected entry gets an answer line, scores are computed,
and the server's life cycle is what the mode promises (skip: untouched; managed: started,
found ready, stopped, nothing left behind, also on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import BFCL_EXT, VLLM_SERVED_NAME, clean_environment, read_json, result_lines, run_bfcl_ext
from tests.support.vllm_cpu import SERVER_FLAGS, VllmServer, free_port, vllm_env, vllm_python
from tests.support.waiting import exited, wait_until

pytestmark = pytest.mark.vllm
LIMIT = 3


def _alive_processes_mentioning(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def test_skip_mode_scores_entries_against_a_running_vllm_and_leaves_it_running(
    vllm_server: VllmServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", VLLM_SERVED_NAME, "--test-category", "simple_python",
         "--limit", str(LIMIT), "--output-dir", str(out), "--num-threads", "3"],
        env={"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(vllm_server.port)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_json(out / "summary.json")
    assert summary["status"] == "complete"
    assert summary["partial"] is True
    assert summary["categories"]["simple_python"]["total"] == LIMIT
    assert 0.0 <= summary["categories"]["simple_python"]["accuracy"] <= 1.0
    assert summary["requests"]["http_ok"] >= LIMIT
    assert sorted(line["id"] for line in result_lines(out)) == [f"simple_python_{i}" for i in range(LIMIT)]
    manifest = read_json(out / "manifest.json")
    assert manifest["server"]["version"] == "0.32.0"
    assert [m["id"] for m in manifest["server"]["models"]["data"]] == [VLLM_SERVED_NAME]
    assert vllm_server.process.poll() is None
    assert requests.get(f"{vllm_server.root_url}/health", timeout=10).status_code == 200


def test_check_reports_version_models_and_a_tool_round_trip(vllm_server: VllmServer) -> None:
    done = run_bfcl_ext(["check", "--skip-vllm", "--base-url", vllm_server.base_url], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "server version: 0.32.0" in done.stdout
    assert VLLM_SERVED_NAME in done.stdout
    assert "round trip:" in done.stdout


def _managed_args(tiny_model_dir: Path, out: Path, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "run", "--model", str(tiny_model_dir), "--served-model-name", VLLM_SERVED_NAME,
        "--test-category", "simple_python", "--output-dir", str(out), "--vllm-port", str(port),
        "--vllm-command", f"{vllm_python()} -m vllm.entrypoints.openai.api_server",
        "--vllm-args", " ".join(SERVER_FLAGS), "--wait-timeout", "240", "--stop-grace", "10", *extra,
    ]


def _managed_env() -> dict[str, str]:
    env = {k: v for k, v in vllm_env().items() if k.startswith(("HF_", "TRANSFORMERS_", "VLLM_", "DO_NOT"))}
    return clean_environment(env)


def test_managed_mode_launches_vllm_scores_and_stops_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    port = free_port()
    done = subprocess.run(
        [*BFCL_EXT, *_managed_args(tiny_model_dir, out, port, ("--limit", "2", "--num-threads", "2"))],
        env=_managed_env(), cwd=tmp_path, capture_output=True, text=True, timeout=420, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = read_json(out / "summary.json")
    assert summary["mode"] == "managed"
    assert summary["categories"]["simple_python"]["total"] == 2
    manifest = read_json(out / "manifest.json")
    launched = manifest["server"]["launched_with"]
    assert "--served-model-name" in launched and VLLM_SERVED_NAME in launched
    assert "--generation-config" in launched
    assert (out / "logs" / "vllm-server.log").stat().st_size > 0
    assert _alive_processes_mentioning(f"--port {port} ") == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.parametrize("moment", ["while loading", "during generation"])
def test_managed_mode_sigterm_exits_143_and_leaves_no_vllm(tiny_model_dir: Path, tmp_path: Path, moment: str) -> None:
    out = tmp_path / "out"
    port = free_port()
    runner = subprocess.Popen(
        [*BFCL_EXT, *_managed_args(tiny_model_dir, out, port, ("--limit", "40", "--num-threads", "2"))],
        env=_managed_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for(moment, out, port, runner)
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 143, output[-3000:]
    assert "SIGTERM" in output
    deadline = time.monotonic() + 5
    while _alive_processes_mentioning(f"--port {port} ") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_processes_mentioning(f"--port {port} ") == []
    if moment == "during generation":
        summary = read_json(out / "summary.json")
        assert summary["status"] == "interrupted"
        ids = [line["id"] for line in result_lines(out)]
        assert ids and len(ids) == len(set(ids))


def _wait_for(moment: str, out: Path, port: int, runner: subprocess.Popen[str]) -> None:
    log = out / "logs" / "vllm-server.log"

    def reached() -> bool:
        if moment == "while loading":
            return log.exists() and log.stat().st_size > 0
        return moment == "during generation" and _has_results(out)

    wait_until(reached, within=240, what=f"bfcl-ext {moment}", gone=exited(runner, "bfcl-ext (before the signal)"))


def _has_results(out: Path) -> bool:
    try:
        return bool(result_lines(out))
    except ValueError:  # a line being written right now
        return False
