#!/usr/bin/env python3
"""Benchmark ``bfcl-ext run`` against upstream ``bfcl generate`` + ``bfcl evaluate``.

One run, one machine, one stand-in server (``python -m bfcl_ext.standin``, an oracle
OpenAI-compatible server), both tools talking to it over 127.0.0.1:

  1. out of the box: ``non_live`` at 0.2 s per completion, each tool with its own defaults
     (bfcl-ext: 64 threads; upstream: 1 thread for an API model): wall time, speed-up,
     accuracies side by side
  2. overhead at equal threads: ``simple_python``, zero latency, ``--num-threads 8`` for both;
     median of N runs each, interleaved
  3. ``bfcl-ext --help`` wall time (median of 10)
  4. server ready -> first request: ``durations_s.first_request_after_ready`` from bfcl-ext's
     summary.json, and runs against a stand-in that keeps its port closed for 5 s and 15 s
     (--load-delay), bfcl-ext launched at the same moment; the stand-in's request counter,
     polled every 20 ms, times port-open -> first request from outside
  5. peak memory (max RSS, from wait4) of the bfcl-ext process and of upstream's two processes
     during scenario 1
  6. injected faults: bfcl-ext (its defaults, retry settings included) on ``simple_python`` against
     a clean stand-in, one answering 20% of completions with an unusable 200 (all kinds) and one
     answering 10% with 500; N runs each, interleaved, median; accuracy, retries and
     "Error during inference" answers on disk

Run from the repository root:

    .venv/bin/python benchmarks/bench_runner.py [--quick] [--scenario faults,...] [--json figures.json]

``--quick``: scenario 1 on simple_python only, 1 repeat in scenario 2, 5 ``--help`` runs,
scenario 6 on the first 100 entries, 1 repeat.
Standard library and ``requests`` only. Every stand-in and tool process is started and stopped
here (SIGTERM, also on Ctrl-C). Outputs stay in a temp folder printed at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: the tests' one wait helper is tests.support.waiting
from tests.support.waiting import answers_200, wait_until  # noqa: E402
BIN_DIR = Path(sys.executable).parent  # run with .venv/bin/python: bfcl-ext and bfcl live next to it
MODEL = "openbmb/MiniCPM-SALA-FC"  # a BFCL registry model served by OpenAICompletionsHandler (chat + tools)
HOST = "127.0.0.1"
TARGETS = {
    "speedup": 20.0,  # scenario 1: upstream wall / bfcl-ext wall, at least
    "overhead_ratio": 0.8,  # scenario 2: bfcl-ext wall / upstream wall, at most
    "help_s": 0.5,  # scenario 3: at most
    "first_request_after_ready_s": 1.0,  # scenario 4: at most
}
SCENARIOS = ("help", "out-of-the-box", "load-delay", "overhead", "faults")  # --scenario names, in run order
# Scenario 6: (label, stand-in fault flags); the first is the clean baseline the others are divided by.
# --bad-reply-kinds is not passed: the stand-in then draws all four kinds evenly.
FAULT_ARMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("clean", ()),
    ("bad_replies_20pct", ("--bad-reply-rate", "0.2", "--seed", "7")),
    ("errors_10pct", ("--error-rate", "0.1", "--seed", "7")),
)
# bfcl-ext settings that decide how long a retried request waits (read back from manifest.json)
RETRY_SETTINGS = ("num_threads", "max_retries", "retry_rounds", "request_timeout")
# bfcl-ext's backoff (bfcl_ext/retry_policy.py): code, not settings
BACKOFF = ("per request: 0.5 s doubling, at most 8 s, less 0-25% jitter, before each of max_retries retries; "
           "per pass over still-failed entries: min(2**pass, 30) s")
# Settings that would steer either tool away from the stand-in (or into a container default).
SCRUBBED_PREFIXES = ("BFCL_EXT_", "VLLM_", "OPENAI_", "REMOTE_OPENAI_", "LOCAL_SERVER_")
SCRUBBED_NAMES = ("BFCL_PROJECT_ROOT",)

LIVE: set[subprocess.Popen[Any]] = set()  # every process we started and have not reaped yet


# ----------------------------------------------------------------------------- processes


@dataclass
class ToolRun:
    """One tool process: how long it ran, how it ended, its peak memory."""

    name: str
    argv: list[str]
    wall_s: float
    returncode: int
    max_rss_mib: float
    log: Path
    started: float  # time.monotonic() at launch
    first_request_s: float | None = None  # launch -> first completion seen by the stand-in


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(SCRUBBED_PREFIXES) and key not in SCRUBBED_NAMES
    }
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"  # never route the stand-in through a proxy
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def terminate(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL; reaps the process."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    LIVE.discard(process)


def run_tool(name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float,
             standin: Standin | None = None) -> ToolRun:
    """Run one command to the end; wall time around the process, max RSS from ``wait4``.

    ``wait4`` returns the child's own rusage (the kernel counter /usr/bin/time -v reports):
    ``ru_maxrss`` is the peak resident set of that process, in KiB on Linux.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    watcher = FirstRequestWatcher(standin) if standin else None
    with log.open("wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        LIVE.add(process)
        if watcher:
            watcher.start(started)
        reaped = threading.Event()

        def overtime() -> None:
            if not reaped.is_set():  # the pid stays ours until wait4 below has reaped it
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        timer = threading.Timer(timeout, overtime)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.monotonic() - started
            reaped.set()
        except BaseException:
            terminate(process)
            raise
        finally:
            timer.cancel()
            if watcher:
                watcher.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
        LIVE.discard(process)
    return ToolRun(name, argv, wall, process.returncode, usage.ru_maxrss / 1024, log, started,
                   watcher.first_request_s if watcher else None)


# ----------------------------------------------------------------------------- the stand-in


class Standin:
    """``python -m bfcl_ext.standin`` on a free port, as a child process."""

    def __init__(self, workdir: Path, latency: float = 0.0, load_delay: float = 0.0,
                 faults: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.faults = faults
        self.latency = latency
        self.load_delay = load_delay
        self.log = workdir / f"standin-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.launched_at: float | None = None
        self.bound_at: float | None = None  # when its banner ("serving ... on ...") appeared
        self._reader: threading.Thread | None = None

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def start(self, wait: bool = True) -> Standin:
        argv = [sys.executable, "-m", "bfcl_ext.standin", "--host", HOST, "--port", str(self.port),
                "--served-model-name", MODEL, "--latency", str(self.latency)]
        if self.load_delay:
            argv += ["--load-delay", str(self.load_delay)]
        argv += list(self.faults)
        self.launched_at = time.monotonic()
        self.process = subprocess.Popen(argv, cwd=self.log.parent, env=clean_environment(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        LIVE.add(self.process)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        if wait:
            self.wait_healthy()
        return self

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log.open("wb") as sink:
            for line in self.process.stdout:
                if self.bound_at is None and line.startswith(b"standin: serving"):
                    self.bound_at = time.monotonic()
                sink.write(line)
                sink.flush()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def gone() -> str | None:
            code = None if self.process is None else self.process.poll()
            return None if code is None else f"stand-in exited with {code}; see {self.log}"

        wait_until(answers_200(f"{self.root}/health", timeout=1), within=timeout, poll=0.05,
                   what="stand-in /health 200", gone=gone, failure=RuntimeError)

    def warm_up(self, tries: int = 10) -> None:
        """One completion, so the oracle loads its data now and not inside a timed run.

        A stand-in with ``--error-rate`` may answer it 500 before the oracle ran: asked again then.
        """
        body = {"model": MODEL, "messages": [{"role": "user", "content": "warm-up"}]}
        for _ in range(tries):
            reply = requests.post(f"{self.base_url}/chat/completions", json=body, timeout=120)
            if reply.status_code == 200:
                return
        reply.raise_for_status()

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.root}/standin/stats", timeout=10).json()

    def received(self) -> int:
        return self.counter("received")

    def counter(self, name: str) -> int:
        """One of the stand-in's counters (``received``, ``ok``, ``errors``, ``bad_replies``, ...)."""
        return int(self.stats().get(name, 0))

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> Standin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FirstRequestWatcher:
    """Polls the stand-in's counters; notes when the first completion request of a run arrives."""

    POLL_S = 0.02  # light: it runs while the tool under test starts up

    def __init__(self, standin: Standin) -> None:
        self.standin = standin
        self.baseline: int | None = None
        self.launched: float | None = None
        self.first_request_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        try:
            self.baseline = standin.received()
        except requests.RequestException:
            self.baseline = 0  # port still closed (--load-delay): nothing received yet

    def start(self, launched: float) -> None:
        self.launched = launched
        self._thread.start()

    def _poll(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                received = int(session.get(f"{self.standin.root}/standin/stats", timeout=2).json()["received"])
            except (requests.RequestException, ValueError, KeyError):
                received = None
            if received is not None and received > (self.baseline or 0):
                self.first_request_at = time.monotonic()
                return
            self._stop.wait(self.POLL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def first_request_s(self) -> float | None:
        if self.first_request_at is None or self.launched is None:
            return None
        return self.first_request_at - self.launched


# ----------------------------------------------------------------------------- the two tools


@dataclass
class Outcome:
    """One pipeline run end to end: its processes, its scores, what the stand-in saw."""

    tool: str
    runs: list[ToolRun]
    scores: dict[str, dict[str, Any]]
    requests_at_server: int
    output_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    error_answers: int = 0  # upstream: "Error during inference" written as an answer

    @property
    def wall_s(self) -> float:
        return sum(run.wall_s for run in self.runs)

    @property
    def ok(self) -> bool:
        return all(run.returncode == 0 for run in self.runs)

    @property
    def max_rss_mib(self) -> float:
        return max(run.max_rss_mib for run in self.runs)

    def overall(self) -> dict[str, Any]:
        correct = sum(s["correct"] for s in self.scores.values())
        total = sum(s["total"] for s in self.scores.values())
        return {"accuracy": correct / total if total else None, "correct": correct, "total": total}


def read_scores(score_dir: Path) -> dict[str, dict[str, Any]]:
    """BFCL's score files (first line ``{accuracy, correct_count, total_count}``), by category."""
    scores = {}
    for path in sorted(score_dir.rglob("BFCL_v4_*_score.json")):
        category = path.name[len("BFCL_v4_"):-len("_score.json")]
        with path.open(encoding="utf-8") as handle:
            header = json.loads(handle.readline())
        scores[category] = {"accuracy": header["accuracy"], "correct": header["correct_count"],
                            "total": header["total_count"]}
    return scores


def count_error_answers(result_dir: Path) -> int:
    count = 0
    for path in result_dir.rglob("*_result.json"):
        with path.open(encoding="utf-8") as handle:
            count += sum(1 for line in handle if '"Error during inference' in line)
    return count


def run_bfcl_ext(workdir: Path, standin: Standin, category: str, timeout: float,
                 threads: int | None = None, wait_timeout: float | None = None,
                 limit: int | None = None) -> Outcome:
    """``bfcl-ext run --skip-vllm`` with its defaults, from a fresh working folder."""
    workdir.mkdir(parents=True)
    out = workdir / "out"
    argv = [str(BIN_DIR / "bfcl-ext"), "run", "--skip-vllm", "--vllm-endpoint", HOST,
            "--vllm-port", str(standin.port), "--model", MODEL, "--test-category", category,
            "--output-dir", str(out)]
    if threads is not None:
        argv += ["--num-threads", str(threads)]
    if wait_timeout is not None:
        argv += ["--wait-timeout", str(wait_timeout)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    before = _received(standin)
    run = run_tool("bfcl-ext run", argv, workdir, clean_environment(), workdir / "bfcl-ext.log", timeout, standin)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Outcome("bfcl-ext", [run], read_scores(out / "score"), _received(standin) - before, out, summary,
                   count_error_answers(out / "result"))


def run_upstream(workdir: Path, standin: Standin, category: str, timeout: float,
                 threads: int | None = None) -> Outcome:
    """``bfcl generate`` then ``bfcl evaluate`` with their defaults, in a fresh BFCL_PROJECT_ROOT."""
    workdir.mkdir(parents=True)
    root = workdir / "project"
    root.mkdir()
    env = clean_environment({"BFCL_PROJECT_ROOT": str(root), "OPENAI_BASE_URL": standin.base_url,
                             "OPENAI_API_KEY": "EMPTY"})
    generate = [str(BIN_DIR / "bfcl"), "generate", "--model", MODEL, "--test-category", category]
    if threads is not None:
        generate += ["--num-threads", str(threads)]
    evaluate = [str(BIN_DIR / "bfcl"), "evaluate", "--model", MODEL, "--test-category", category]
    before = _received(standin)
    runs = [run_tool("bfcl generate", generate, workdir, env, workdir / "generate.log", timeout, standin)]
    if runs[0].returncode == 0:
        runs.append(run_tool("bfcl evaluate", evaluate, workdir, env, workdir / "evaluate.log", timeout))
    return Outcome("upstream", runs, read_scores(root / "score"), _received(standin) - before, root,
                   error_answers=count_error_answers(root / "result"))


def _received(standin: Standin) -> int:
    return _counter(standin, "received")


def _counter(standin: Standin, name: str) -> int:
    try:
        return standin.counter(name)
    except requests.RequestException:
        return 0


# ----------------------------------------------------------------------------- reporting


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES TARGET"


def check(outcome: Outcome, label: str) -> None:
    """Loud line when a tool failed; the figures are still printed."""
    for run in outcome.runs:
        if run.returncode != 0:
            say(f"  !! {label}: {run.name} exited {run.returncode}; log: {run.log}")
            say("  !! last lines: " + " | ".join(_tail(run.log, 5)))


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    # tqdm writes \r-separated progress; keep the last real lines
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()][-lines:]


def machine_facts() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "bfcl_ext"],
                                capture_output=True, text=True, check=False).stdout.strip())
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {name: pkg(name) for name in ("bfcl-ext", "bfcl-eval", "openai", "httpx", "requests")},
        "bfcl_ext_commit": commit,
        "bfcl_ext_uncommitted_changes": dirty,
    }


def warm_page_cache(workdir: Path) -> None:
    """Import what both tools import once, untimed, so neither pays the cold-disk cost alone."""
    root = workdir / "warm-up"
    root.mkdir()
    code = ("import bfcl_eval.eval_checker.eval_runner, bfcl_eval._llm_response_generation, openai, httpx, "
            "bfcl_ext.bridge, bfcl_ext.run")
    subprocess.run([sys.executable, "-c", code], cwd=root, env=clean_environment({"BFCL_PROJECT_ROOT": str(root)}),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=300)
    subprocess.run([str(BIN_DIR / "bfcl-ext"), "--help"], cwd=root, env=clean_environment(),
                   stdout=subprocess.DEVNULL, check=False)


# ----------------------------------------------------------------------------- scenarios


def scenario_help(workdir: Path, runs: int) -> dict[str, Any]:
    say(f"\n[3] bfcl-ext --help, {runs} runs")
    cwd = workdir / "help"
    cwd.mkdir()
    times = []
    for _ in range(runs):
        started = time.monotonic()
        done = subprocess.run([str(BIN_DIR / "bfcl-ext"), "--help"], cwd=cwd, env=clean_environment(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.monotonic() - started)
        if done.returncode != 0:
            say(f"  !! bfcl-ext --help exited {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}")
    median = statistics.median(times)
    say(f"  median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f})  "
        f"target < {TARGETS['help_s']} s: {verdict(median < TARGETS['help_s'])}")
    return {"runs": runs, "median_s": median, "min_s": min(times), "max_s": max(times),
            "all_s": [round(t, 4) for t in times], "target_s": TARGETS["help_s"],
            "meets_target": median < TARGETS["help_s"]}


def scenario_out_of_the_box(workdir: Path, category: str, latency: float, timeout: float) -> dict[str, Any]:
    say(f"\n[1] out of the box: {category}, stand-in latency {latency} s per completion, each tool's defaults")
    with Standin(workdir, latency=latency) as standin:
        standin.start()
        standin.warm_up()
        say(f"  stand-in {standin.root} (log {standin.log})")
        ext = run_bfcl_ext(workdir / "s1-bfcl-ext", standin, category, timeout)
        check(ext, "bfcl-ext")
        say(f"  bfcl-ext  {ext.wall_s:8.1f} s  rc={ext.runs[0].returncode}  output {ext.output_dir}")
        say("  upstream (1 thread by default for an API model): this takes a while ...")
        up = run_upstream(workdir / "s1-upstream", standin, category, timeout)
        check(up, "upstream")
        say(f"  upstream  {up.wall_s:8.1f} s  rc={[r.returncode for r in up.runs]}  output {up.output_dir}")
    speedup = up.wall_s / ext.wall_s if ext.wall_s else None
    categories = sorted(set(ext.scores) | set(up.scores))
    say(f"  {'category':<22}{'bfcl-ext':>20}{'upstream':>20}")
    for name in categories:
        e, u = ext.scores.get(name), up.scores.get(name)
        cell_e = f"{fmt_pct(e['accuracy'])} {e['correct']}/{e['total']}" if e else "-"
        cell_u = f"{fmt_pct(u['accuracy'])} {u['correct']}/{u['total']}" if u else "-"
        say(f"  {name:<22}{cell_e:>20}{cell_u:>20}")
    oe, ou = ext.overall(), up.overall()
    say(f"  {'overall (entries)':<22}{fmt_pct(oe['accuracy']) + ' ' + str(oe['correct']) + '/' + str(oe['total']):>20}"
        f"{fmt_pct(ou['accuracy']) + ' ' + str(ou['correct']) + '/' + str(ou['total']):>20}")
    say(f"  completion requests at the stand-in: bfcl-ext {ext.requests_at_server}, upstream {up.requests_at_server}; "
        f"'Error during inference' answers: bfcl-ext {ext.error_answers}, upstream {up.error_answers}")
    first = (ext.summary.get("durations_s") or {}).get("first_request_after_ready")
    say(f"  bfcl-ext summary.json first_request_after_ready {first} s; launch -> first completion at the stand-in: "
        f"bfcl-ext {_secs(ext.runs[0].first_request_s)}, upstream generate {_secs(up.runs[0].first_request_s)}")
    say(f"  max RSS: bfcl-ext {ext.max_rss_mib:.0f} MiB; upstream "
        + ", ".join(f"{r.name} {r.max_rss_mib:.0f} MiB" for r in up.runs))
    if speedup is not None:
        say(f"  speed-up {speedup:.1f}x  target >= {TARGETS['speedup']}x: {verdict(speedup >= TARGETS['speedup'])}")
    return {
        "category": category,
        "latency_s": latency,
        "bfcl_ext": _outcome_json(ext),
        "upstream": _outcome_json(up),
        "speedup": speedup,
        "target_speedup": TARGETS["speedup"],
        "meets_target": speedup is not None and speedup >= TARGETS["speedup"] and ext.ok and up.ok,
        "accuracy_difference_points": (
            None if oe["accuracy"] is None or ou["accuracy"] is None else 100 * (oe["accuracy"] - ou["accuracy"])
        ),
    }


def scenario_overhead(workdir: Path, repeats: int, threads: int, timeout: float) -> dict[str, Any]:
    say(f"\n[2] overhead at equal threads: simple_python, zero latency, --num-threads {threads}, "
        f"{repeats} run(s) each, interleaved")
    ext_runs: list[Outcome] = []
    up_runs: list[Outcome] = []
    with Standin(workdir, latency=0.0) as standin:
        standin.start()
        standin.warm_up()
        say(f"  stand-in {standin.root} (log {standin.log})")
        for index in range(repeats):
            ext = run_bfcl_ext(workdir / f"s2-bfcl-ext-{index + 1}", standin, "simple_python", timeout, threads)
            check(ext, "bfcl-ext")
            up = run_upstream(workdir / f"s2-upstream-{index + 1}", standin, "simple_python", timeout, threads)
            check(up, "upstream")
            ext_runs.append(ext)
            up_runs.append(up)
            gen, ev = up.runs[0].wall_s, (up.runs[1].wall_s if len(up.runs) > 1 else float("nan"))
            say(f"  run {index + 1}: bfcl-ext {ext.wall_s:6.2f} s ({fmt_pct(ext.overall()['accuracy'])})   "
                f"upstream {up.wall_s:6.2f} s = generate {gen:.2f} + evaluate {ev:.2f} "
                f"({fmt_pct(up.overall()['accuracy'])})")
    ext_median = statistics.median(o.wall_s for o in ext_runs)
    up_median = statistics.median(o.wall_s for o in up_runs)
    ratio = ext_median / up_median
    say(f"  median: bfcl-ext {ext_median:.2f} s, upstream {up_median:.2f} s, ratio {ratio:.2f}  "
        f"target <= {TARGETS['overhead_ratio']}: {verdict(ratio <= TARGETS['overhead_ratio'])}")
    firsts = [o.summary.get("durations_s", {}).get("first_request_after_ready") for o in ext_runs]
    return {
        "category": "simple_python",
        "threads": threads,
        "repeats": repeats,
        "bfcl_ext_wall_s": [round(o.wall_s, 3) for o in ext_runs],
        "upstream_wall_s": [round(o.wall_s, 3) for o in up_runs],
        "upstream_generate_s": [round(o.runs[0].wall_s, 3) for o in up_runs],
        "upstream_evaluate_s": [round(o.runs[1].wall_s, 3) if len(o.runs) > 1 else None for o in up_runs],
        "bfcl_ext_median_s": ext_median,
        "upstream_median_s": up_median,
        "ratio": ratio,
        "target_ratio": TARGETS["overhead_ratio"],
        "meets_target": ratio <= TARGETS["overhead_ratio"] and all(o.ok for o in ext_runs + up_runs),
        "bfcl_ext_accuracy": [o.overall()["accuracy"] for o in ext_runs],
        "upstream_accuracy": [o.overall()["accuracy"] for o in up_runs],
        "bfcl_ext_first_request_after_ready_s": firsts,
        "bfcl_ext_launch_to_first_request_s": [o.runs[0].first_request_s for o in ext_runs],
        "upstream_launch_to_first_request_s": [o.runs[0].first_request_s for o in up_runs],
        "output_dirs": [str(o.output_dir) for o in ext_runs + up_runs],
    }


@dataclass
class FaultArm:
    """Scenario 6: one stand-in (clean, or with fault flags) and bfcl-ext's runs against it."""

    label: str
    faults: tuple[str, ...]
    runs: list[Outcome] = field(default_factory=list)
    bad_replies_sent: list[int] = field(default_factory=list)  # the stand-in's own count, per run

    @property
    def median_s(self) -> float:
        return statistics.median(o.wall_s for o in self.runs)

    def phase_s(self) -> list[float | None]:
        """summary.json's ``generation_and_evaluation``, per run: the wall time less bfcl-ext's start-up."""
        return [(o.summary.get("durations_s") or {}).get("generation_and_evaluation") for o in self.runs]

    @property
    def median_phase_s(self) -> float | None:
        known = [value for value in self.phase_s() if value is not None]
        return statistics.median(known) if known else None

    def requests(self, key: str) -> list[Any]:
        """One figure of summary.json's ``requests``, per run."""
        return [(o.summary.get("requests") or {}).get(key) for o in self.runs]

    def entries_failed(self) -> list[Any]:
        return [(o.summary.get("entries") or {}).get("failed") for o in self.runs]

    def as_json(self) -> dict[str, Any]:
        return {
            "standin_args": list(self.faults),
            "wall_s": [round(o.wall_s, 3) for o in self.runs],
            "median_wall_s": self.median_s,
            "generation_and_evaluation_s": self.phase_s(),
            "median_generation_and_evaluation_s": self.median_phase_s,
            "returncodes": [o.runs[0].returncode for o in self.runs],
            "overall": [o.overall() for o in self.runs],
            "summary_requests": [o.summary.get("requests") for o in self.runs],
            "bad_replies_at_standin": self.bad_replies_sent,
            "entries_failed": self.entries_failed(),
            "error_during_inference_answers": [o.error_answers for o in self.runs],
            "output_dirs": [str(o.output_dir) for o in self.runs],
        }


def scenario_faults(workdir: Path, latency: float, repeats: int, limit: int | None,
                    timeout: float) -> dict[str, Any]:
    """Wall time of bfcl-ext against stand-ins answering 20% of completions with a 200 the client
    cannot use (cut body, null message, no usage, no choices) or 10% with 500, vs a clean one.

    bfcl-ext runs with its defaults (threads and retry settings: what a user gets); the stand-ins
    run side by side and the runs are interleaved, so load drifts hit every arm alike.
    """
    entries = f"first {limit} entries" if limit else "all entries"
    say(f"\n[6] injected faults: simple_python ({entries}), {latency} s per completion, bfcl-ext defaults, "
        f"{repeats} run(s) per stand-in, interleaved; stand-ins: "
        + "; ".join(f"{label} {' '.join(flags) or '(no faults)'}" for label, flags in FAULT_ARMS))
    arms = [FaultArm(label, flags) for label, flags in FAULT_ARMS]
    with contextlib.ExitStack() as stack:
        standins = [stack.enter_context(Standin(workdir, latency=latency, faults=arm.faults)) for arm in arms]
        for standin in standins:
            standin.start()
            standin.warm_up()
        for index in range(repeats):
            for arm, standin in zip(arms, standins, strict=True):
                _fault_run(arm, standin, workdir / f"s6-{arm.label}-{index + 1}", timeout, limit)
    return _faults_figures(arms, latency, repeats, limit)


def _fault_run(arm: FaultArm, standin: Standin, workdir: Path, timeout: float, limit: int | None) -> None:
    before = _counter(standin, "bad_replies")
    outcome = run_bfcl_ext(workdir, standin, "simple_python", timeout, limit=limit)
    check(outcome, f"bfcl-ext ({arm.label})")
    arm.runs.append(outcome)
    arm.bad_replies_sent.append(_counter(standin, "bad_replies") - before)
    counts, overall = outcome.summary.get("requests") or {}, outcome.overall()
    phase = (outcome.summary.get("durations_s") or {}).get("generation_and_evaluation")
    say(f"  run {len(arm.runs)} {arm.label:<18}{outcome.wall_s:7.2f} s (generation + scoring {_secs(phase)})  "
        f"rc {outcome.runs[0].returncode}  "
        f"accuracy {fmt_pct(overall['accuracy'])} {overall['correct']}/{overall['total']}  "
        f"bad_replies {counts.get('bad_replies')} (stand-in sent {arm.bad_replies_sent[-1]})  "
        f"retried_requests {counts.get('retried_requests')}  http errors {counts.get('http_errors_by_status')}  "
        f"'Error during inference' {outcome.error_answers}")


def retry_settings(outcome: Outcome) -> dict[str, Any]:
    """The run's thread and retry settings, each with where it came from (manifest.json: default, env, flag)."""
    path = outcome.output_dir / "manifest.json"
    settings = (json.loads(path.read_text()) if path.exists() else {}).get("settings", {})
    sources = settings.get("sources", {})
    return {name: {"value": settings.get(name), "source": sources.get(name)} for name in RETRY_SETTINGS}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _faults_figures(arms: list[FaultArm], latency: float, repeats: int, limit: int | None) -> dict[str, Any]:
    clean, faulty = arms[0], arms[1:]
    settings = retry_settings(clean.runs[0])
    ratios = {arm.label: arm.median_s / clean.median_s for arm in faulty}
    phase_ratios = {arm.label: _ratio(arm.median_phase_s, clean.median_phase_s) for arm in faulty}
    overall = [o.overall() for arm in arms for o in arm.runs]
    accuracy_equal = all(o == overall[0] for o in overall)
    error_answers = sum(o.error_answers for arm in arms for o in arm.runs)
    failed = sum(n or 0 for arm in arms for n in arm.entries_failed())
    say("  bfcl-ext settings (manifest.json): "
        + ", ".join(f"{name} {s['value']} ({s['source']})" for name, s in settings.items()))
    say(f"  backoff (bfcl-ext code): {BACKOFF}")
    for arm in faulty:
        say(f"  median wall: clean {clean.median_s:.2f} s, {arm.label} {arm.median_s:.2f} s, "
            f"ratio {ratios[arm.label]:.2f}; generation + scoring: clean {_secs(clean.median_phase_s)}, "
            f"{arm.label} {_secs(arm.median_phase_s)}, ratio {_fmt_ratio(phase_ratios[arm.label])}; "
            f"bad_replies {arm.requests('bad_replies')}, retried_requests {arm.requests('retried_requests')}")
    say(f"  accuracy the same in every run: {accuracy_equal} ({fmt_pct(overall[0]['accuracy'])} "
        f"{overall[0]['correct']}/{overall[0]['total']}); 'Error during inference' answers on disk: "
        f"{error_answers} (must be 0); entries failed: {failed}")
    return {
        "category": "simple_python",
        "limit": limit,
        "latency_s": latency,
        "repeats": repeats,
        "bfcl_ext_settings": settings,
        "backoff": BACKOFF,
        "arms": {arm.label: arm.as_json() for arm in arms},
        "clean_median_s": clean.median_s,
        "median_s": {arm.label: arm.median_s for arm in arms},
        "ratio_to_clean": ratios,
        "generation_and_evaluation_median_s": {arm.label: arm.median_phase_s for arm in arms},
        "generation_and_evaluation_ratio_to_clean": phase_ratios,
        "accuracy_equal": accuracy_equal,
        "error_during_inference_answers": error_answers,
        "entries_failed": failed,
        "all_ok": all(o.ok for arm in arms for o in arm.runs),
    }


def scenario_load_delay(workdir: Path, load_delay: float, timeout: float,
                        startup_s: float | None) -> dict[str, Any]:
    """bfcl-ext launched together with a stand-in whose port stays closed ``load_delay`` seconds.

    ``startup_s``: bfcl-ext's launch -> first request against a ready server (scenario 1). When the
    port opens later than that, port-open -> first request is the readiness check alone; when it
    opens earlier, bfcl-ext was still importing and preparing, and the figure includes that.
    """
    say(f"\n[4] stand-in started with --load-delay {load_delay:g} (port closed while 'loading'), "
        "bfcl-ext launched at the same moment, simple_python, zero latency")
    with Standin(workdir, latency=0.0, load_delay=load_delay) as standin:
        standin.start(wait=False)
        ext = run_bfcl_ext(workdir / f"s4-bfcl-ext-load-delay-{load_delay:g}", standin, "simple_python", timeout)
        check(ext, "bfcl-ext")
    durations = ext.summary.get("durations_s", {})
    run = ext.runs[0]
    port_open_s = (standin.bound_at - run.started) if standin.bound_at is not None else None
    launch_to_first = run.first_request_s  # both from time.monotonic(), relative to bfcl-ext's launch
    first_after_port_open = (
        launch_to_first - port_open_s if launch_to_first is not None and port_open_s is not None else None
    )
    say(f"  port opened {port_open_s:.2f} s after bfcl-ext's launch; its first completion reached the stand-in "
        f"{launch_to_first:.2f} s after launch, i.e. {first_after_port_open:.2f} s after the port opened"
        if port_open_s is not None and launch_to_first is not None and first_after_port_open is not None
        else "  (could not time the port opening or the first request)")
    say(f"  summary.json: wait_for_server {durations.get('wait_for_server')} s, first_request_after_ready "
        f"{durations.get('first_request_after_ready')} s, total {durations.get('total')} s; "
        f"wall {ext.wall_s:.2f} s, rc {ext.runs[0].returncode}, accuracy {fmt_pct(ext.overall()['accuracy'])}")
    first = durations.get("first_request_after_ready")
    readiness_bound = port_open_s is not None and startup_s is not None and port_open_s > startup_s
    if first_after_port_open is not None:
        say("  port open -> first request: " + (
            "bfcl-ext was already waiting when the port opened, so this is its readiness check plus the first request"
            if readiness_bound else
            f"the port opened before bfcl-ext finished starting up ({_secs(startup_s)} to its first request against "
            "a ready server in scenario 1), so this includes its own startup"))
    return {
        "load_delay_s": load_delay,
        "bfcl_ext_startup_s_scenario1": startup_s,
        "port_open_after_bfcl_ext_was_waiting": readiness_bound,
        "port_open_after_launch_s": port_open_s,
        "launch_to_first_request_s": launch_to_first,
        "first_request_after_port_open_s": first_after_port_open,
        "summary_durations_s": durations,
        "wall_s": ext.wall_s,
        "returncode": ext.runs[0].returncode,
        "accuracy": ext.overall()["accuracy"],
        "output_dir": str(ext.output_dir),
        "meets_target": first is not None and first < TARGETS["first_request_after_ready_s"],
        "port_open_to_first_request_meets_target": (
            first_after_port_open < TARGETS["first_request_after_ready_s"]
            if first_after_port_open is not None and readiness_bound else None
        ),
    }


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "wall_s": outcome.wall_s,
        "processes": [
            {"name": r.name, "argv": r.argv, "wall_s": r.wall_s, "returncode": r.returncode,
             "max_rss_mib": round(r.max_rss_mib, 1), "launch_to_first_request_s": r.first_request_s,
             "log": str(r.log)}
            for r in outcome.runs
        ],
        "max_rss_mib": round(outcome.max_rss_mib, 1),
        "scores": outcome.scores,
        "overall": outcome.overall(),
        "completion_requests_at_server": outcome.requests_at_server,
        "error_during_inference_answers": outcome.error_answers,
        "output_dir": str(outcome.output_dir),
        "summary_durations_s": outcome.summary.get("durations_s"),
        "summary_requests": outcome.summary.get("requests"),
    }


# ----------------------------------------------------------------------------- main


def print_table(figures: dict[str, Any]) -> None:
    s1, s2, s3, s4 = (figures.get(k) for k in ("scenario1", "scenario2", "scenario3", "scenario4"))
    rows: list[tuple[str, str, str, str]] = []
    if s1:
        ext, up = s1["bfcl_ext"], s1["upstream"]
        rows += [
            (f"1 wall, {s1['category']} @ {s1['latency_s']} s/req: bfcl-ext", f"{ext['wall_s']:.1f} s", "", ""),
            (f"1 wall, {s1['category']} @ {s1['latency_s']} s/req: upstream gen+eval", f"{up['wall_s']:.1f} s", "", ""),
            ("1 speed-up (upstream / bfcl-ext)", f"{s1['speedup']:.1f}x" if s1["speedup"] else "-",
             f">= {s1['target_speedup']:.0f}x", verdict(s1["meets_target"])),
            ("1 accuracy bfcl-ext / upstream",
             f"{fmt_pct(ext['overall']['accuracy'])} / {fmt_pct(up['overall']['accuracy'])}", "equal",
             "equal" if ext["overall"] == up["overall"] else
             f"differ by {s1['accuracy_difference_points']:.2f} points"),
        ]
    if s2:
        rows += [
            ("2 simple_python, 8 threads, 0 s: bfcl-ext median", f"{s2['bfcl_ext_median_s']:.2f} s", "", ""),
            ("2 simple_python, 8 threads, 0 s: upstream median", f"{s2['upstream_median_s']:.2f} s", "", ""),
            ("2 ratio bfcl-ext / upstream", f"{s2['ratio']:.2f}", f"<= {s2['target_ratio']}",
             verdict(s2["meets_target"])),
        ]
    if s3:
        rows.append(("3 bfcl-ext --help, median", f"{s3['median_s']:.3f} s", f"< {s3['target_s']} s",
                     verdict(s3["meets_target"])))
    if s1:
        first = (s1["bfcl_ext"]["summary_durations_s"] or {}).get("first_request_after_ready")
        rows.append(("4 first_request_after_ready (scenario 1)", "-" if first is None else f"{first:.3f} s",
                     f"< {TARGETS['first_request_after_ready_s']:.0f} s",
                     verdict(first is not None and first < TARGETS["first_request_after_ready_s"])))
    for run in s4 or []:
        d, delay = run["summary_durations_s"], f"{run['load_delay_s']:g}"
        rows.append((f"4 --load-delay {delay}: wait_for_server (summary)", f"{d.get('wait_for_server')} s", "", ""))
        rows.append((f"4 --load-delay {delay}: first_request_after_ready (summary)",
                     f"{d.get('first_request_after_ready')} s", f"< {TARGETS['first_request_after_ready_s']:.0f} s",
                     verdict(run["meets_target"])))
        if run["first_request_after_port_open_s"] is not None:
            judged = run["port_open_to_first_request_meets_target"]
            rows.append((f"4 --load-delay {delay}: port open -> first request at server",
                         f"{run['first_request_after_port_open_s']:.3f} s",
                         f"< {TARGETS['first_request_after_ready_s']:.0f} s",
                         "includes bfcl-ext startup" if judged is None else verdict(judged)))
    if s1:
        rows.append(("5 max RSS bfcl-ext run (scenario 1)", f"{s1['bfcl_ext']['max_rss_mib']:.0f} MiB", "", ""))
        for process in s1["upstream"]["processes"]:
            rows.append((f"5 max RSS upstream {process['name']} (scenario 1)",
                         f"{process['max_rss_mib']:.0f} MiB", "", ""))
    if figures.get("scenario6"):
        rows += _fault_rows(figures["scenario6"])
    width = max(len(r[0]) for r in rows) if rows else 10
    say("\n" + "=" * (width + 50))
    say(f"{'figure':<{width}}  {'value':>16}  {'target':>8}  verdict")
    for name, value, target, judged in rows:
        say(f"{name:<{width}}  {value:>16}  {target:>8}  {judged}")
    say("=" * (width + 50))


def _fault_rows(s6: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    limit = f"[:{s6['limit']}]" if s6["limit"] else ""
    where = f"simple_python{limit} @ {s6['latency_s']:g} s"
    rows = [(f"6 {where}, median of {s6['repeats']}: {label}", f"{median:.2f} s", "", "")
            for label, median in s6["median_s"].items()]
    rows += [(f"6 ratio {label} / clean", f"{ratio:.2f}", "", "") for label, ratio in s6["ratio_to_clean"].items()]
    rows += [(f"6 generation + scoring (summary.json), median: {label}", _secs(median), "", "")
             for label, median in s6["generation_and_evaluation_median_s"].items()]
    rows += [(f"6 generation + scoring ratio {label} / clean", _fmt_ratio(ratio), "", "")
             for label, ratio in s6["generation_and_evaluation_ratio_to_clean"].items()]
    accuracies = " / ".join(fmt_pct(arm["overall"][0]["accuracy"]) for arm in s6["arms"].values())
    rows.append(("6 accuracy " + " / ".join(s6["arms"]), accuracies, "equal",
                 "equal" if s6["accuracy_equal"] else "DIFFER"))
    for label, arm in list(s6["arms"].items())[1:]:
        pairs = ", ".join(f"{(r or {}).get('bad_replies')}/{(r or {}).get('retried_requests')}"
                          for r in arm["summary_requests"])
        rows.append((f"6 {label}: bad_replies/retried_requests per run", pairs, "", ""))
    rows.append(("6 'Error during inference' answers, all runs", str(s6["error_during_inference_answers"]), "0",
                 "none" if s6["error_during_inference_answers"] == 0 else "FOUND"))
    return rows


def _delays(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more of {','.join(SCENARIOS)}")
    return names


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="scenario 1 on simple_python only, 1 repeat in scenario 2, 5 --help runs")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    parser.add_argument("--latency", type=float, default=0.2, help="stand-in seconds per completion in scenario 1")
    parser.add_argument("--load-delay", type=_delays, default=(5.0, 15.0),
                        help="comma-separated stand-in port-closed seconds in scenario 4 (default 5,15: 5 s is "
                             "shorter than bfcl-ext's own startup here, 15 s isolates its readiness check)")
    parser.add_argument("--repeats", type=int, help="scenario 2 runs per tool (default 3; --quick 1)")
    parser.add_argument("--threads", type=int, default=8, help="scenario 2 threads for both tools")
    parser.add_argument("--help-runs", type=int, help="scenario 3 runs (default 10; --quick 5)")
    parser.add_argument("--scenario", type=_scenarios, default=SCENARIOS, metavar="NAME,...",
                        help=f"run only these scenarios (default all: {','.join(SCENARIOS)}; "
                             "out-of-the-box also gives the memory figures)")
    parser.add_argument("--faults-repeats", type=int, help="scenario 6 runs per stand-in (default 3; --quick 1)")
    parser.add_argument("--faults-latency", type=float, default=0.05,
                        help="stand-in seconds per completion in scenario 6")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one tool process may take")
    parser.add_argument("--workdir", type=Path, help="where outputs go (default: a new temp folder, kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    help_runs = args.help_runs or (5 if args.quick else 10)
    fault_repeats = args.faults_repeats or (1 if args.quick else 3)
    fault_limit = 100 if args.quick else None
    chosen = set(args.scenario)
    category = "simple_python" if args.quick else "non_live"
    for tool in ("bfcl-ext", "bfcl"):
        if not (BIN_DIR / tool).exists():
            print(f"bench_runner: {BIN_DIR / tool} not found; run with the venv's python (.venv/bin/python)",
                  file=sys.stderr)
            return 2
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bfcl-ext-bench-", dir=args.workdir)).resolve()
    # SIGTERM as Ctrl-C: the finally blocks stop every stand-in and tool process we started
    signal.signal(signal.SIGTERM, _interrupt)

    facts = machine_facts()
    say("bfcl-ext benchmark" + (" (--quick)" if args.quick else ""))
    say(f"  date {facts['date']}  host {facts['host']}  kernel {facts['kernel']}  python {facts['python']}")
    say(f"  nproc {facts['nproc']} (usable {facts['nproc_usable']})  CPU {facts['cpu_model']}  "
        f"memory {facts['memory_gib']} GiB  load average {facts['load_average_at_start']}")
    say("  versions " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
        + f"; bfcl_ext commit {facts['bfcl_ext_commit']}" + (" (+ uncommitted changes)"
                                                              if facts["bfcl_ext_uncommitted_changes"] else ""))
    say(f"  model {MODEL}; tools from {BIN_DIR}; outputs under {workdir}")

    figures: dict[str, Any] = {"machine": facts, "quick": args.quick, "workdir": str(workdir), "targets": TARGETS,
                               "model": MODEL, "scenarios": list(args.scenario)}
    status = 0
    errors: dict[str, str] = {}

    def attempt(key: str, scenario: Any, *scenario_args: Any) -> Any:
        """One scenario; a failure is reported and recorded, and the others still run."""
        nonlocal status
        try:
            figures[key] = scenario(*scenario_args)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - report, keep the other figures
            errors[key] = f"{type(error).__name__}: {error}"
            say(f"  !! {key} failed: {errors[key]}")
            traceback.print_exc()
            status = 1
            for process in list(LIVE):
                terminate(process)
        return figures.get(key)

    try:
        warm_page_cache(workdir)
        if "help" in chosen:
            attempt("scenario3", scenario_help, workdir, help_runs)
        s1 = None
        if "out-of-the-box" in chosen:
            s1 = attempt("scenario1", scenario_out_of_the_box, workdir, category, args.latency, args.timeout)
        startup = s1["bfcl_ext"]["processes"][0]["launch_to_first_request_s"] if s1 else None
        if "load-delay" in chosen:
            attempt("scenario4", lambda: [scenario_load_delay(workdir, delay, args.timeout, startup)
                                          for delay in args.load_delay])
        if "overhead" in chosen:
            attempt("scenario2", scenario_overhead, workdir, repeats, args.threads, args.timeout)
        if "faults" in chosen:
            attempt("scenario6", scenario_faults, workdir, args.faults_latency, fault_repeats, fault_limit,
                    args.timeout)
    except KeyboardInterrupt:
        say("\nbench_runner: interrupted; stopping what it started")
        status = 130
    finally:
        for process in list(LIVE):
            terminate(process)
    if errors:
        figures["errors"] = errors
    figures["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(figures)
    say(f"load average at start {facts['load_average_at_start']}, at end {figures['machine']['load_average_at_end']}"
        f"; outputs under {workdir}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
