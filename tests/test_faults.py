"""Faults end to end: the real ``bfcl-ext run`` as a subprocess against the stand-in server.

Every test reads only what a user would: the exit code, stdout/stderr, and the files under the
output folder (result lines, summary.json). Each final check also counts entries lost (selected
but without a result line) and entries duplicated (more than one result line); both totals are
printed at the end of the module and must be 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    assert_outputs_match_schemas,
    BFCL_EXT,
    StandinProcess,
    clean_environment,
    read_json,
    result_lines,
    run_bfcl_ext,
)
from tests.support.vllm_cpu import free_port

MODEL = "bfcl-ext-standin"  # the stand-in's default served name
CATEGORY = "simple_python"
RUN_TIMEOUT = 240.0

TALLY: dict[str, int] = {"checks": 0, "lost": 0, "duplicated": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_tally(request: pytest.FixtureRequest) -> Any:
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    line = (f"\nfault tests: {TALLY['checks']} final checks, entries lost: {TALLY['lost']}, "
            f"entries duplicated: {TALLY['duplicated']}")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)
    else:
        print(line)


# ---------------------------------------------------------------- helpers


def dataset_ids(limit: int | None = None) -> list[str]:
    """The ids of simple_python in file order (what ``--limit N`` takes the first N of)."""
    from bfcl_ext.bridge import dataset_path

    with dataset_path(CATEGORY).open(encoding="utf-8") as handle:
        ids = [json.loads(line)["id"] for line in handle if line.strip()]
    return ids[:limit] if limit else ids


def endpoint_env(standin: StandinProcess, **extra: str) -> dict[str, str]:
    return {"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(standin.port), **extra}


def run_args(out: Path, *extra: str, model: str = MODEL) -> list[str]:
    return ["run", "--skip-vllm", "--model", model, "--test-category", CATEGORY, "--output-dir", str(out),
            "--wait-timeout", "30", *extra]


def cli(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = RUN_TIMEOUT
        ) -> subprocess.CompletedProcess[str]:
    return run_bfcl_ext(args, env=env, timeout=timeout, cwd=cwd)


def spawn(args: Sequence[str], env: Mapping[str, str], cwd: Path, name: str) -> subprocess.Popen[bytes]:
    """The runner as a background process (for signals and polling); output goes to files."""
    return subprocess.Popen(
        [*BFCL_EXT, *args], cwd=cwd, env=clean_environment(env),
        stdout=(cwd / f"{name}.stdout").open("wb"), stderr=(cwd / f"{name}.stderr").open("wb"),
    )


def output_of(cwd: Path, name: str) -> tuple[str, str]:
    return ((cwd / f"{name}.stdout").read_text(errors="replace"), (cwd / f"{name}.stderr").read_text(errors="replace"))


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"bfcl-ext did not exit within {timeout:.0f}s") from None


def line_count(out: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in (out / "result").rglob("*_result.json"))


def wait_for_lines(out: Path, count: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while line_count(out) < count:
        assert process.poll() is None, f"bfcl-ext exited ({process.returncode}) before writing {count} result lines"
        assert time.monotonic() < deadline, f"fewer than {count} result lines after {timeout:.0f}s"
        time.sleep(0.02)


def ids_on_disk(out: Path) -> list[str]:
    """Every result line's id; ``result_lines`` fails if any line does not parse."""
    return [line["id"] for line in result_lines(out)]


def assert_no_duplicates(out: Path) -> set[str]:
    ids = ids_on_disk(out)
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"duplicate result lines: {duplicated[:10]}"
    return set(ids)


def final_check(out: Path, expected: Sequence[str], label: str) -> dict[str, Any]:
    """After the run that should finish the job: every entry exactly once, accuracy exactly 1.0."""
    ids = ids_on_disk(out)
    counts = Counter(ids)
    lost = sorted(set(expected) - set(counts))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    extra = sorted(set(counts) - set(expected))
    TALLY["checks"] += 1
    TALLY["lost"] += len(lost)
    TALLY["duplicated"] += sum(counts[i] - 1 for i in duplicated)
    print(f"{label}: {len(expected)} entries, lost {len(lost)}, duplicated {len(duplicated)}")
    assert not lost, f"{label}: entries lost: {lost[:10]}"
    assert not duplicated, f"{label}: entries duplicated: {duplicated[:10]}"
    assert not extra, f"{label}: result lines for entries not selected: {extra[:10]}"
    summary = read_json(out / "summary.json")
    assert summary["status"] == "complete", summary["status"]
    assert summary["categories"][CATEGORY]["accuracy"] == 1.0, summary["categories"]
    assert summary["categories"][CATEGORY]["total"] == len(expected)
    assert summary["entries"]["failed"] == 0
    return summary


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"


def asked(before: Mapping[str, Any], after: Mapping[str, Any]) -> Counter[str]:
    """Entries the stand-in answered between two stats snapshots, with how often."""
    delta = Counter(after["entries"])
    delta.subtract(before["entries"])
    return Counter({i: n for i, n in delta.items() if n})


# ---------------------------------------------------------------- 1. 5xx and 429


def test_500_and_429_are_retried(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory("--error-rate", "0.1", "--rate-limit-rate", "0.05", "--seed", "7")
    out = tmp_path / "out"
    result = cli(run_args(out), endpoint_env(standin), tmp_path)
    assert_ok(result)
    summary = final_check(out, dataset_ids(), "500/429")
    requests = summary["requests"]
    assert requests["retried_requests"] > 0, requests
    assert "500" in requests["http_errors_by_status"] and "429" in requests["http_errors_by_status"], requests
    stats = standin.stats()
    assert stats["errors"] > 0 and stats["rate_limited"] > 0, stats


# ---------------------------------------------------------------- 2. the server dies and comes back


def test_server_dies_and_comes_back_on_the_same_port(standin_factory: Any, tmp_path: Path) -> None:
    first = standin_factory("--die-after", "150")
    out = tmp_path / "out"
    runner = spawn(run_args(out), endpoint_env(first), tmp_path, "run")
    try:
        first.process.wait(timeout=90)  # crashes after 150 completions
        assert first.process.returncode == 1
        died_at = time.monotonic()
        assert runner.poll() is None, "bfcl-ext gave up while the server was away"
        time.sleep(max(0.0, 10.0 - (time.monotonic() - died_at)))
        assert runner.poll() is None, "bfcl-ext gave up while the server was away"
        second = standin_factory(port=first.port)
        rc = wait_exit(runner, 180)
    finally:
        if runner.poll() is None:
            runner.kill()
    _, stderr = output_of(tmp_path, "run")
    assert rc == 0, f"exit {rc}\n{stderr[-3000:]}"
    summary = final_check(out, dataset_ids(), "die and come back")
    assert summary["server_recoveries"] >= 1, summary
    assert 0 < sum(second.stats()["entries"].values()) < len(dataset_ids())


# ---------------------------------------------------------------- 3. the server dies for good


def test_server_dies_for_good_then_the_same_command_finishes(standin_factory: Any, tmp_path: Path) -> None:
    first = standin_factory("--die-after", "150")
    out = tmp_path / "out"
    args = run_args(out, "--recovery-timeout", "5", "--retry-rounds", "1", "--max-retries", "1")
    env = endpoint_env(first)
    started = time.monotonic()
    result = cli(args, env, tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 4, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    print(f"server dead for good: exit 4 after {elapsed:.1f}s")
    assert elapsed < 60, f"took {elapsed:.0f}s to give up"
    assert "run the same command again" in result.stderr
    kept = assert_no_duplicates(out)
    everything = set(dataset_ids())
    missing = everything - kept
    assert kept and missing, (len(kept), len(missing))
    summary = read_json(out / "summary.json")
    assert summary["status"] == "incomplete", summary["status"]
    assert summary["entries"]["failed"] > 0
    assert set(summary["entries"]["failed_ids"]) <= missing
    assert summary["categories"][CATEGORY]["accuracy"] is None  # a partial category is never scored
    assert_outputs_match_schemas(out)

    second = standin_factory(port=first.port)
    result = cli(args, env, tmp_path, timeout=120)
    assert_ok(result)
    final_check(out, sorted(everything), "dead then rerun")
    stats = second.stats()
    assert stats["received"] == len(missing), (stats["received"], len(missing))
    answered = Counter(stats["entries"])
    assert set(answered) == missing, (sorted(set(answered) - missing)[:10], sorted(missing - set(answered))[:10])
    assert all(n == 1 for n in answered.values()), [i for i, n in answered.items() if n > 1]


# ---------------------------------------------------------------- 4. SIGKILL, and a torn line


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_rerun(standin_factory: Any, tmp_path: Path, seed: int) -> None:
    standin = standin_factory("--latency", "0.05")
    out = tmp_path / "out"
    args = run_args(out, "--num-threads", "8")
    env = endpoint_env(standin)
    delay = random.Random(seed).uniform(0.0, 3.0)  # generation takes ~2.5 s here; later kills hit the end
    runner = spawn(args, env, tmp_path, "killed")
    try:
        wait_for_lines(out, 1, runner)
        time.sleep(delay)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    kept = assert_no_duplicates(out)  # every line complete and parseable, none twice
    print(f"seed {seed}: killed {delay:.2f}s after the first answer, {len(kept)} answers kept")
    before = standin.stats()

    result = cli(args, env, tmp_path)
    assert_ok(result)
    everything = dataset_ids()
    final_check(out, everything, f"SIGKILL seed {seed}")
    again = asked(before, standin.stats())
    assert set(again) == set(everything) - kept, "the rerun asked for entries already answered, or missed some"


def test_torn_last_line_is_dropped_and_asked_again(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    out = tmp_path / "out"
    args = run_args(out, "--limit", "30")
    env = endpoint_env(standin)
    assert_ok(cli(args, env, tmp_path))
    (path,) = list((out / "result").rglob("*_result.json"))
    lines = path.read_text().splitlines()
    torn_id = json.loads(lines[-1])["id"]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # no final newline
    before = standin.stats()

    result = cli(args, env, tmp_path)
    assert_ok(result)
    summary = final_check(out, dataset_ids(30), "torn line")
    assert summary["entries"]["repaired_on_resume"]["torn_lines"] == 1, summary["entries"]
    assert asked(before, standin.stats()) == Counter({torn_id: 1})
    assert path.read_text().endswith("\n")


# ---------------------------------------------------------------- 5. SIGTERM and SIGINT


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_generation_stops_cleanly(
    standin_factory: Any, tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    standin = standin_factory("--latency", "0.2")
    out = tmp_path / "out"
    env = endpoint_env(standin)
    runner = spawn(run_args(out, "--num-threads", "4"), env, tmp_path, "signalled")
    try:
        wait_for_lines(out, 10, runner)
        runner.send_signal(signum)
        signalled = time.monotonic()
        rc = wait_exit(runner, 30)
        took = time.monotonic() - signalled
    finally:
        if runner.poll() is None:
            runner.kill()
    _, stderr = output_of(tmp_path, "signalled")
    assert rc == code, f"exit {rc}\n{stderr[-3000:]}"
    assert f"stopped by {signum.name}" in stderr
    print(f"{signum.name}: exit {rc} {took:.1f}s after the signal")
    assert took < 8, f"{took:.1f}s from {signum.name} to exit, with only 0.2 s requests in flight"
    assert standin.alive(), "skip mode stopped a server it did not start"
    assert standin.stats()["in_flight"] == 0
    kept = assert_no_duplicates(out)
    assert 10 <= len(kept) < len(dataset_ids())
    summary = read_json(out / "summary.json")
    assert summary["status"] == "interrupted", summary["status"]
    assert summary["entries"]["answered"] == len(kept)
    assert_outputs_match_schemas(out)
    before = standin.stats()

    result = cli(run_args(out, "--num-threads", "64"), env, tmp_path)
    assert_ok(result)
    final_check(out, dataset_ids(), f"{signum.name} then rerun")
    assert set(asked(before, standin.stats())) == set(dataset_ids()) - kept


# ---------------------------------------------------------------- 6. API key


KEY_VARIABLE = "BFCL_EXT_TEST_STANDIN_KEY"


def _argv_holding(secret: bytes) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if secret in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_api_key_is_used_and_never_shown(standin_factory: Any, tmp_path: Path) -> None:
    key = f"sk-standin-{os.urandom(12).hex()}"
    standin = standin_factory("--api-key-env", KEY_VARIABLE, env={KEY_VARIABLE: key})
    out = tmp_path / "out"
    runner = spawn(run_args(out, "--limit", "20"), endpoint_env(standin, VLLM_API_KEY=key), tmp_path, "keyed")
    polls = 0
    leaks: list[str] = []
    while runner.poll() is None:
        leaks += _argv_holding(key.encode())
        polls += 1
        time.sleep(0.05)
    rc = runner.wait()
    stdout, stderr = output_of(tmp_path, "keyed")
    assert rc == 0, f"exit {rc}\n{stderr[-3000:]}"
    assert polls > 10
    assert not leaks, leaks
    final_check(out, dataset_ids(20), "api key")
    assert key not in stdout and key not in stderr
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "manifest.json" for path in files)
    assert [str(path) for path in files if key.encode() in path.read_bytes()] == []

    # a wrong key and no key at all, side by side
    wrong = spawn(run_args(tmp_path / "wrong", "--limit", "5"), endpoint_env(standin, VLLM_API_KEY="not-the-key"),
                  tmp_path, "wrong")
    none = spawn(run_args(tmp_path / "none", "--limit", "5"), endpoint_env(standin), tmp_path, "none")
    codes = (wait_exit(wrong, 60), wait_exit(none, 60))
    assert codes == (3, 3), output_of(tmp_path, "wrong") + output_of(tmp_path, "none")
    stdout, stderr = output_of(tmp_path, "wrong")
    _assert_one_error_line(stderr, "rejected the API key")
    assert key not in stdout + stderr
    _assert_one_error_line(output_of(tmp_path, "none")[1], "no API key was sent")


def _assert_one_error_line(stderr: str, wanted: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("bfcl-ext: error:")]
    assert len(errors) == 1 and wanted in errors[0], stderr[-3000:]


# ---------------------------------------------------------------- 7. a concurrency cap


def test_server_with_fewer_slots_than_threads(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory("--max-concurrency", "4", "--latency", "0.02")
    out = tmp_path / "out"
    result = cli(run_args(out, "--num-threads", "32"), endpoint_env(standin), tmp_path)
    assert_ok(result)
    entries = dataset_ids()
    summary = final_check(out, entries, "max concurrency 4")
    received = standin.stats()["received"]
    print(f"max concurrency 4, 32 threads: {received} requests for {len(entries)} entries, "
          f"{summary['requests']['http_errors_by_status']}")
    assert received < 10 * len(entries)
    assert summary["requests"]["http_requests_sent"] < 10 * len(entries)


# ---------------------------------------------------------------- 8. readiness through the CLI


def test_connection_refused(tmp_path: Path) -> None:
    port = free_port()
    result = cli(run_args(tmp_path / "out", "--wait-timeout", "2"),
                 {"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(port)}, tmp_path, timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
    _assert_one_error_line(result.stderr, "connection refused")


def test_unresolvable_host(tmp_path: Path) -> None:
    result = cli(run_args(tmp_path / "out", "--wait-timeout", "2"),
                 {"VLLM_ENDPOINT": "nonexistent.invalid", "VLLM_PORT": "8000"}, tmp_path, timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
    _assert_one_error_line(result.stderr, "cannot resolve host 'nonexistent.invalid'")


def test_model_not_listed(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    result = cli(run_args(tmp_path / "out", "--wait-timeout", "1", model="some-other-model"),
                 endpoint_env(standin), tmp_path, timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
    _assert_one_error_line(result.stderr, f"it lists: {MODEL!r}")
    assert standin.stats()["received"] == 0


# ---------------------------------------------------------------- 9. the happy path


def test_happy_path_then_identical_rerun_asks_nothing(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    out = tmp_path / "out"
    env = endpoint_env(standin)
    result = cli(run_args(out), env, tmp_path)
    assert_ok(result)
    summary = final_check(out, dataset_ids(), "happy path")
    assert summary["partial"] is False and summary["mode"] == "skip"
    assert summary["requests"]["http_errors_by_status"] == {}
    assert "100.00%" in result.stdout
    assert standin.alive(), "skip mode stopped a server it did not start"
    before = standin.stats()
    assert before["received"] == len(dataset_ids())

    again = cli(run_args(out), env, tmp_path)
    assert_ok(again)
    assert standin.stats() == before, "the rerun asked the server again"
    summary = final_check(out, dataset_ids(), "identical rerun")
    assert summary["entries"]["answered_this_run"] == 0
    assert standin.alive()


def test_loading_server_limit_and_model_name(standin_factory: Any, tmp_path: Path) -> None:
    """One run, three things: a server whose port opens 3 s late is waited for; ``--limit 5`` makes a
    partial run of 5; a served name with '_' and '/' works (BFCL maps result folders back '_' -> '/')."""
    name = "my_org/model_x-v1.5"
    standin = standin_factory("--served-model-name", name, "--load-delay", "3", wait=False)
    out = tmp_path / "out"
    started = time.monotonic()
    result = cli(run_args(out, "--limit", "5", model=name), endpoint_env(standin), tmp_path)
    assert_ok(result)
    assert time.monotonic() - started > 3
    summary = final_check(out, dataset_ids(5), "limit 5, model name with _ and /")
    assert summary["partial"] is True and summary["limit"] == 5
    assert summary["categories"][CATEGORY]["total"] == 5 and summary["overall"]["total"] == 5
    assert summary["overall"]["accuracy"] == 1.0
    assert summary["model"] == name and summary["served_model_name"] == name
    assert "partial run" in result.stdout
    assert standin.stats()["received"] == 5
