"""The vLLM server bfcl-ext launches itself (managed mode): port, start, log, stop.

Only a server started here is ever signalled. It runs in its own process group, so stopping
it reaches every process vLLM spawned (engine cores, workers) and nothing else: SIGTERM to the
group, a grace period, then SIGKILL. If bfcl-ext itself dies without cleaning up, the kernel
sends the server SIGTERM (PR_SET_PDEATHSIG), so no GPU is left held by an orphan.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


SLURM_PORT_SPAN = 20000  # ports 20000-39999
SLURM_PORT_BASE = 20000
_PR_SET_PDEATHSIG = 1


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def choose_port(host: str, wanted: int, slurm_job_id: str | None) -> int:
    """``wanted`` if free; else a port derived from the SLURM job id (a requeued job picks the
    same one), else one the kernel hands out."""
    if port_is_free(host, wanted):
        return wanted
    if slurm_job_id and slurm_job_id.isdigit():
        start = int(slurm_job_id) % SLURM_PORT_SPAN
        for offset in range(SLURM_PORT_SPAN):
            candidate = SLURM_PORT_BASE + (start + offset) % SLURM_PORT_SPAN
            if port_is_free(host, candidate):
                return candidate
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def server_command(
    command: Sequence[str], model: str, served_name: str, host: str, port: int, extra: Sequence[str],
    revision: str | None = None,
) -> list[str]:
    """``vllm serve MODEL ...``; for a module entry point (``python -m ...api_server``) ``--model MODEL``."""
    model_args = [model] if command[-1] == "serve" else ["--model", model]
    if revision:
        model_args += ["--revision", revision]
    pinned = [] if any(arg.startswith("--generation-config") for arg in extra) else ["--generation-config", "vllm"]
    return [
        *command, *model_args, "--host", host, "--port", str(port), "--served-model-name", served_name,
        *pinned, *extra,
    ]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedServer:
    """``with ManagedServer(...) as server:`` starts vLLM; leaving the block stops it, whatever happened."""

    def __init__(
        self,
        argv: Sequence[str],
        environ: Mapping[str, str],  # Settings.server_environment: our variables already taken out
        api_key: str | None,
        log_path: Path,
        grace: float,
    ) -> None:
        self.argv = list(argv)
        self._environ = environ
        self._api_key = api_key
        self.log_path = log_path
        self._grace = grace
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self._environ)
        if self._api_key:
            env["VLLM_API_KEY"] = self._api_key  # the environment, never argv: argv shows in `ps`
        with self.log_path.open("ab") as log:
            try:
                self._process = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise FileNotFoundError(
                    f"cannot start vLLM with {self.argv[0]!r} ({error.strerror}); set BFCL_EXT_VLLM_COMMAND"
                ) from None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 16384))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to our process group, wait ``grace``, SIGKILL what is left. Idempotent."""
        process = self._process
        if process is None:
            return
        group = process.pid  # start_new_session: the group id is the leader's pid
        self._signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline and self._group_alive(group):
            process.poll()
            time.sleep(0.1)
        if self._group_alive(group):
            self._signal_group(group, signal.SIGKILL)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._process = None

    @staticmethod
    def _signal_group(group: int, signum: int) -> None:
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            pass

    @staticmethod
    def _group_alive(group: int) -> bool:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
