"""A real SLURM cluster on this machine (scripts/ci/setup-slurm.sh), and helpers to drive slurm/.

Plain Python (no pytest at import time). The cluster runs as root with everything under one
state folder; :func:`start_cluster` raises ``AssertionError`` with the script's output when SLURM
cannot be installed or started: the tests that need it fail, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO_ROOT / "slurm"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "ci" / "setup-slurm.sh"
BFCL_EXT_BIN = Path(sys.executable).with_name("bfcl-ext")  # the venv's, as the runner command
CLEAN_ENV_PREFIXES = ("VLLM_", "BFCL_EXT_", "OPENAI_", "SERVE_", "SITE_", "SLURM_", "CANCEL_SERVER")
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}

# Site settings for the test cluster: no GPU unless asked for (--gpus N: each node has one fake GPU),
# one CPU per job, no memory request.
TEST_SITE = """\
SITE_PARTITION=
SITE_RUNNER_PARTITION=
SITE_ACCOUNT=
SITE_QOS=
SITE_GPUS=0
SITE_GPU_TYPE=
SITE_SERVER_CPUS=1
SITE_SERVER_MEM=
SITE_RUNNER_CPUS=1
SITE_RUNNER_MEM=
SITE_TIME=15
SITE_SIGNAL_LEAD=30
SITE_SBATCH_EXTRA=
SITE_MODULES=
SITE_VLLM_SIF=
SITE_RUNNER_SIF=
SITE_APPTAINER_BIND=
SITE_RESULTS_ROOT=
"""

# bfcl-ext's managed mode passes vLLM's flags; the stand-in takes only some of them.
VLLM_SHIM = """\
#!{python}
import argparse, sys
from bfcl_ext import standin
parser = argparse.ArgumentParser()
for flag in ("--model", "--host", "--port", "--served-model-name"):
    parser.add_argument(flag)
args, _ = parser.parse_known_args()
sys.exit(standin.main(["--host", args.host, "--port", args.port, "--served-model-name", args.served_model_name]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def standin_command(*extra: str) -> str:
    """BFCL_EXT_SERVER_COMMAND for the oracle stand-in (placeholders filled by server.sbatch)."""
    words = [str(BFCL_EXT_BIN), "standin", *extra, "--served-model-name", "{served_model_name}",
             "--host", "{host}", "--port", "{port}"]
    return " ".join(words)


@dataclass
class Job:
    job_id: str
    state: str
    exit_code: int | None
    raw: str


@dataclass
class SlurmCluster:
    state_dir: Path
    conf: Path
    site_file: Path
    shim: Path
    submitted: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def job_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment jobs are submitted with (sbatch --export=ALL): ours, cleaned, plus extra."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_ENV_PREFIXES)}
        env.update(self.env)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "BFCL_EXT_SITE_ENV": str(self.site_file),
            "BFCL_EXT_SERVER_COMMAND": standin_command(),
            "BFCL_EXT_RUNNER_COMMAND": str(BFCL_EXT_BIN),
            "BFCL_EXT_VLLM_COMMAND": str(self.shim),
        })
        env.update(extra or {})
        return env

    def run(self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=dict(env or self.job_env()), capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=cwd)

    def submit(self, *args: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """slurm/submit.sh ARGS; returns {"server": id, "runner": id} / {"het": id} / {"single": id}."""
        done = self.run([str(SLURM_DIR / "submit.sh"), "--site", str(self.site_file), *args], env=env)
        assert done.returncode == 0, f"submit.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        ids = dict(re.findall(r"^(server|runner|het|single) job:\s+(\d+)", done.stdout, re.MULTILINE))
        assert ids, done.stdout
        self.submitted.extend(ids.values())
        return ids

    def sbatch(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        done = self.run(["sbatch", "--parsable", *args], env=env)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip().split(";")[0]
        self.submitted.append(job_id)
        return job_id

    def job(self, job_id: str) -> Job:
        done = self.run(["scontrol", "show", "job", job_id], env=self.job_env())
        if done.returncode != 0:
            return Job(job_id, "GONE", None, done.stderr)
        state = re.search(r"JobState=(\S+)", done.stdout)
        code = re.search(r"\bExitCode=(\d+):(\d+)", done.stdout)
        exit_code = None
        if code:
            exit_code = int(code.group(1)) or (128 + int(code.group(2)) if int(code.group(2)) else 0)
        return Job(job_id, state.group(1) if state else "?", exit_code, done.stdout)

    def wait(self, job_id: str, timeout: float = 180) -> Job:
        """Wait until the job (every component of a het job) has ended; its final record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queued = self.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=self.job_env())
            if not set(queued.stdout.split()) & LIVE_STATES:
                return self.job(job_id)
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still running after {timeout}s: {self.job(job_id).raw}")

    def state(self, job_id: str) -> str:
        done = self.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=self.job_env())
        return (done.stdout.split() or ["ENDED"])[0]

    def cancel_leftovers(self) -> None:
        live = [j for j in self.submitted if self.state(j) in LIVE_STATES]
        if live:
            self.run(["scancel", *live], env=self.job_env())
            for job_id in live:
                self.wait(job_id, timeout=60)
        self.submitted.clear()


def start_cluster(state_dir: Path) -> SlurmCluster:
    """Install (apt) and start SLURM with setup-slurm.sh; AssertionError with its output if it cannot."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ctld, node = free_port(), free_port()
    while node + 1 == ctld or not _port_free(node + 1):
        node = free_port()
    env = {**os.environ, "BFCL_EXT_SLURM_STATE": str(state_dir), "BFCL_EXT_SLURM_CTLD_PORT": str(ctld),
           "BFCL_EXT_SLURM_NODE_PORT": str(node)}
    try:
        done = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=600,
                              check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"scripts/ci/setup-slurm.sh timed out: {error.stdout}\n{error.stderr}") from None
    match = re.search(r"^export SLURM_CONF=(\S+)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise AssertionError(
            f"SLURM could not be installed or started (scripts/ci/setup-slurm.sh exit {done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    _give_nodes_a_gpu(state_dir, Path(match.group(1)))
    site = state_dir / "site.env"
    site.write_text(TEST_SITE)
    shim = state_dir / "vllm-shim.py"
    shim.write_text(VLLM_SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    return SlurmCluster(state_dir, Path(match.group(1)), site, shim)


NODES = ("n1", "n2")  # setup-slurm.sh's logical nodes
GPUS_PER_NODE = 1


def _give_nodes_a_gpu(state_dir: Path, conf: Path) -> None:
    """Each node declares one GPU (GresTypes=gpu, Gres=gpu:1, gres.conf), so that a job asks for
    one as the docs do (submit.sh --gpus 1: --gres=gpu:1); setup-slurm.sh's cluster has none. The
    GPU is a character device with the null device's numbers (SLURM wants a device file); the
    server job gets CUDA_VISIBLE_DEVICES=0 as on a GPU node, and the CPU vLLM ignores it. A new
    GresTypes needs slurmctld and slurmd restarted: stopped by pid and started as setup-slurm.sh
    starts them (pid files, logs), then nodes idle with the GPU. Nothing to do when the daemons
    already run with it (setup-slurm.sh reused them)."""
    text = conf.read_text()
    if "GresTypes=gpu" in text:
        return
    device = state_dir / "fake-gpu" / "nvidia0"
    device.parent.mkdir(exist_ok=True)
    if not device.exists():
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (conf.parent / "gres.conf").write_text(f"# tests/support/slurm_cluster.py: one fake GPU per node\n"
                                           f"Name=gpu Count={GPUS_PER_NODE} File={device}\n")
    lines = []
    for line in text.splitlines():
        if line.startswith("NodeName="):
            line = line.replace(" State=", f" Gres=gpu:{GPUS_PER_NODE} State=")
        lines.append(line)
        if line.startswith("ClusterName="):
            lines.append("GresTypes=gpu")
    conf.write_text("\n".join(lines) + "\n")
    run, log = state_dir / "run", state_dir / "log"
    daemons = {"slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)]}
    daemons.update({f"slurmd-{node}": ["slurmd", "-D", "-N", node, "-f", str(conf)] for node in NODES})
    pids = [int((run / f"{name}.started").read_text().split()[0]) for name in daemons]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"SLURM daemons {pids} did not stop for the restart with GPUs"
        time.sleep(0.1)
    for name, argv in daemons.items():  # as setup-slurm.sh's start_daemon: detached, pid in a file
        started = subprocess.run(["bash", "-c", 'nohup "$@" </dev/null >>"$LOG" 2>&1 & echo $!', "start", *argv],
                                 env={**os.environ, "LOG": str(log / f"{name}.stdout")}, capture_output=True,
                                 text=True, check=True, timeout=30)
        (run / f"{name}.started").write_text(started.stdout)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    deadline = time.monotonic() + 60
    while True:
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t %G"], env=env, capture_output=True, text=True,
                               check=False, timeout=30).stdout.split("\n")
        ready = {line.split()[0] for line in nodes if line.endswith(f" idle gpu:{GPUS_PER_NODE}")}
        if ready >= set(NODES):
            return
        assert time.monotonic() < deadline, f"nodes not idle with a GPU after the restart: {nodes}"
        time.sleep(0.3)


def _alive(pid: int) -> bool:
    """The process runs (a zombie, which its parent has yet to reap, has stopped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "(zombie)" not in status


def stop_cluster(cluster: SlurmCluster) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BFCL_EXT_SLURM_STATE": str(cluster.state_dir)}
    return subprocess.run(["bash", str(SETUP_SCRIPT), "stop"], env=env, capture_output=True, text=True,
                          timeout=180, check=False)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- what the jobs leave behind


def read_kv(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def summary(output: Path) -> dict[str, Any]:
    return json.loads((output / "summary.json").read_text())


def job_logs(output: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted((output / "slurm").glob("*.out")))


def standin_pids(port: int | str) -> list[int]:
    """Processes that are a stand-in serving on PORT (none should outlive its job)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if "standin" in " ".join(words) and str(port) in words:
            found.append(int(entry.name))
    return found


def port_open(port: int | str, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, int(port))) == 0


def assert_server_gone(output: Path) -> None:
    """No endpoint file left, and no server process left on the port the server job used."""
    slurm_out = output / "slurm"
    assert not (slurm_out / "endpoint.env").exists(), job_logs(output)
    assert not (slurm_out / "endpoint.json").exists(), job_logs(output)
    status = read_kv(slurm_out / "server-status.env")
    assert status["SERVER_STATE"] in ("stopped", "failed"), status
    deadline = time.monotonic() + 10
    while standin_pids(status["SERVER_PORT"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not standin_pids(status["SERVER_PORT"]), f"server left running on port {status['SERVER_PORT']}"
    assert not port_open(status["SERVER_PORT"])


class FirstRequestWatch:
    """Polls the output folder for the endpoint file, then the stand-in's /standin/stats, and notes
    when the endpoint appeared and when the first completion request arrived (monotonic seconds)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.endpoint_file = output / "slurm" / "endpoint.env"
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.endpoint_at: float | None = None
        self.first_request_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> FirstRequestWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _poll(self) -> None:
        port = None
        while not self._stop.is_set() and self.first_request_at is None:
            if port is None:
                try:
                    facts = read_kv(self.endpoint_file)
                except OSError:
                    facts = {}
                if facts.get("BFCL_EXT_ENDPOINT_COMPLETE") == "1":
                    port = facts["SERVER_PORT"]
                    self.endpoint_at = time.monotonic()
            else:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/standin/stats", timeout=2) as answer:
                        if json.load(answer).get("received", 0) > 0:
                            self.first_request_at = time.monotonic()
                except OSError:
                    pass
            time.sleep(0.02)

    def timings(self) -> dict[str, float | None]:
        def since(at: float | None) -> float | None:
            return None if at is None else round(at - self.started, 2)

        found = {"submit_to_endpoint_file_s": since(self.endpoint_at),
                 "submit_to_first_request_s": since(self.first_request_at)}
        # Where the time went, from the job scripts' own log lines (wall clock, milliseconds).
        marks = {
            "server_script_started": r"bfcl-server: job \S+ .*on \S+: serving",
            "endpoint_written": r"bfcl-server: ready after",
            "runner_script_started": r"bfcl-runner: job \S+ on \S+: waiting",
            "bfcl_ext_launched": r"bfcl-runner: running:",
        }
        logs = job_logs(self.output)
        for name, pattern in marks.items():
            match = re.search(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) " + pattern, logs, re.MULTILINE)
            if match:
                at = time.mktime(time.strptime(match.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + float(match.group(1)[19:])
                found[f"submit_to_{name}_s"] = round(at - self.started_wall, 2)
        if self.first_request_at is not None and "submit_to_bfcl_ext_launched_s" in found:
            found["bfcl_ext_launch_to_first_request_s"] = round(
                found["submit_to_first_request_s"] - found["submit_to_bfcl_ext_launched_s"], 2)
        return found
