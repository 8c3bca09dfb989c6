"""The whole leaderboard: memory (state kept across kills), category planning for ``all``, and
format_sensitivity, end to end: the real ``bfcl-ext run`` against the stand-in, scored by bfcl-eval.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    BFCL_EXT,
    StandinProcess,
    assert_outputs_match_schemas,
    clean_environment,
    read_json,
    result_lines,
    run_bfcl_ext,
)

MODEL = "bfcl-ext-standin"
MEMORY_DIR = Path("result") / MODEL / "agentic" / "memory" / "kv"
PREREQ_FILE = MEMORY_DIR / "BFCL_v4_memory_kv_prereq_result.json"
QUESTION_FILE = MEMORY_DIR / "BFCL_v4_memory_kv_result.json"
SNAPSHOTS = MEMORY_DIR / "memory_snapshot"
CUSTOMER_PREREQS = [f"memory_kv_prereq_{n}-customer-{n}" for n in range(10)]


def run_args(standin: StandinProcess, output: Path, categories: str, *extra: str) -> list[str]:
    return ["run", "--skip-vllm", "--model", MODEL, "--base-url", standin.base_url, "--test-category", categories,
            "--output-dir", str(output), "--wait-timeout", "60", *extra]


def ids_in(path: Path) -> list[str]:
    """Ids of the finished lines of a result file that a live run may be halfway through writing."""
    if not path.exists():
        return []
    finished = path.read_text().split("\n")[:-1]
    return [json.loads(line)["id"] for line in finished if line.strip()]


# ---------------------------------------------------------------- memory: a kill never costs or repeats work


def _kill_when(process: subprocess.Popen[str], output: Path, condition: Callable[[list[str], list[str]], bool],
               timeout: float = 120) -> tuple[list[str], list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prereqs, questions = ids_in(output / PREREQ_FILE), ids_in(output / QUESTION_FILE)
        if condition(prereqs, questions):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return ids_in(output / PREREQ_FILE), ids_in(output / QUESTION_FILE)
        if process.poll() is not None:
            error = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"the run ended before the kill point: {error}")
        time.sleep(0.005)
    process.kill()
    raise AssertionError("the kill point never came")


KILL_POINTS: dict[str, Callable[[list[str], list[str]], bool]] = {
    "during prerequisites": lambda prereqs, questions: 3 <= len(prereqs) < 10,
    "between prerequisites and questions": lambda prereqs, questions: len(prereqs) == 10 and not questions,
    "during questions": lambda prereqs, questions: 2 <= len(questions) < 12,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_memory_run_killed_resumes_without_redoing_or_losing_work(
    standin_factory: Any, tmp_path: Path, point: str
) -> None:
    standin = standin_factory("--latency", "0.02")
    output = tmp_path / "out"
    args = run_args(standin, output, "memory_kv", "--limit", "12", "--num-threads", "4")
    process = subprocess.Popen([*BFCL_EXT, *args], env=clean_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    prereqs_before, questions_before = _kill_when(process, output, KILL_POINTS[point])
    lines_before = {line["id"]: line for line in result_lines(output)}

    done = run_bfcl_ext(args, timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    already = len(prereqs_before) + len(questions_before)
    assert f"{already} already answered, {22 - already} to ask" in done.stderr, done.stderr[-2000:]
    after = result_lines(output)
    counts = Counter(line["id"] for line in after)
    assert set(counts) == set(CUSTOMER_PREREQS) | {f"memory_kv_{n}-customer-{n}" for n in range(12)}
    assert max(counts.values()) == 1, "an entry was answered twice"
    for line in after:  # what the killed run wrote is kept as it was
        if line["id"] in lines_before:
            assert line == lines_before[line["id"]]
    summary = read_json(output / "summary.json")
    # the oracle answers a question right only when the prerequisites' memory reached it
    assert summary["categories"]["memory_kv"] == {"accuracy": 1.0, "correct": 12, "total": 12}
    state = output / SNAPSHOTS / "customer_final.json"
    checkpoint = output / SNAPSHOTS / "prereq_checkpoints" / f"{CUSTOMER_PREREQS[-1]}.json"
    assert state.read_bytes() == checkpoint.read_bytes()
    assert_outputs_match_schemas(output)


def test_memory_state_rebuilt_from_the_last_answered_prerequisite(standin_factory: Any, tmp_path: Path) -> None:
    """A kill after the backend saved its state but before the answer reached the result file
    leaves the state one conversation ahead; the next run rebuilds it, so nothing is applied twice."""
    standin = standin_factory()
    output = tmp_path / "out"
    args = run_args(standin, output, "memory_kv", "--limit", "3")
    first = run_bfcl_ext(args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    state = output / SNAPSHOTS / "customer_final.json"
    complete_state = state.read_bytes()

    # the answer of the last prerequisite, and every question's, never reached the disk ...
    prereq_file = output / PREREQ_FILE
    kept = [line for line in prereq_file.read_text().splitlines() if CUSTOMER_PREREQS[-1] not in line]
    prereq_file.write_text("\n".join(kept) + "\n")
    (output / QUESTION_FILE).unlink()
    state.write_text(complete_state.decode()[: len(complete_state) // 2])  # ... and the state file is torn

    again = run_bfcl_ext(args, timeout=300)

    assert again.returncode == 0, again.stderr[-3000:]
    assert f"customer_final.json: restored from {CUSTOMER_PREREQS[-2]}.json" in again.stderr
    assert "9 already answered, 4 to ask" in again.stderr
    assert state.read_bytes() == complete_state
    assert read_json(output / "summary.json")["categories"]["memory_kv"]["accuracy"] == 1.0


def test_memory_state_lost_with_everything_answered_needs_nothing(standin_factory: Any, tmp_path: Path) -> None:
    import shutil

    standin = standin_factory()
    output = tmp_path / "out"
    args = run_args(standin, output, "memory_kv", "--limit", "3")
    assert run_bfcl_ext(args, timeout=300).returncode == 0
    shutil.rmtree(output / SNAPSHOTS)  # e.g. a results folder copied without it

    again = run_bfcl_ext(args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "13 already answered, 0 to ask" in again.stderr


def test_memory_checkpoints_lost_before_the_questions_ask_the_prerequisites_again(
    standin_factory: Any, tmp_path: Path
) -> None:
    import shutil

    standin = standin_factory()
    output = tmp_path / "out"
    args = run_args(standin, output, "memory_kv", "--limit", "3")
    assert run_bfcl_ext(args, timeout=300).returncode == 0
    shutil.rmtree(output / SNAPSHOTS)
    (output / QUESTION_FILE).unlink()

    again = run_bfcl_ext(args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"the checkpoint of {CUSTOMER_PREREQS[-1]} is missing or damaged; the 10 prerequisite "
            "conversations of customer are asked again") in again.stderr
    assert "0 already answered, 13 to ask" in again.stderr
    assert read_json(output / "summary.json")["categories"]["memory_kv"]["accuracy"] == 1.0


def test_memory_state_cleared_when_no_prerequisite_is_answered(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    output = tmp_path / "out"
    state = output / SNAPSHOTS / "customer_final.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"core_memory": {"planted": "by a run killed after its first save"}, "archival_memory": {}}')

    done = run_bfcl_ext(run_args(standin, output, "memory_kv", "--limit", "1"), timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "customer_final.json: cleared" in done.stderr
    assert "planted" not in state.read_text()
    assert read_json(output / "summary.json")["categories"]["memory_kv"]["accuracy"] == 1.0


def test_memory_limit_keeps_the_prerequisites_of_the_questions_asked(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    output = tmp_path / "out"
    done = run_bfcl_ext(run_args(standin, output, "memory_rec_sum", "--limit", "2"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = {line["id"] for line in result_lines(output)}
    assert ids == {f"memory_rec_sum_prereq_{n}-customer-{n}" for n in range(10)} | {
        "memory_rec_sum_0-customer-0", "memory_rec_sum_1-customer-1"}
    summary = read_json(output / "summary.json")
    assert summary["categories"]["memory_rec_sum"] == {"accuracy": 1.0, "correct": 2, "total": 2}


# ---------------------------------------------------------------- which categories a run asks


def test_all_names_what_it_cannot_run_and_marks_the_overall_partial(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    output = tmp_path / "out"
    done = run_bfcl_ext(run_args(standin, output, "all", "--limit", "1"), timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "web_search_base: not run: SERPAPI_API_KEY='': not set" in done.stderr
    assert "format_sensitivity: not run: BFCL runs it only for prompt-mode registry models" in done.stderr
    summary = read_json(output / "summary.json")
    board = summary["leaderboard"]
    assert board["complete"] is False
    assert {"web_search_base", "web_search_no_snippet", "format_sensitivity"} <= set(board["not_run"])
    assert {"web_search_base", "web_search_no_snippet"} <= set(board["categories_not_scored"])
    assert "memory_kv" in summary["categories"] and "multi_turn_base" in summary["categories"]
    assert "(partial: categories not scored count as 0)" in done.stdout
    assert_outputs_match_schemas(output)


def test_web_search_named_without_a_key_is_refused_before_any_request(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory()
    done = run_bfcl_ext(run_args(standin, tmp_path / "out", "web_search_base"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("bfcl-ext: error: SERPAPI_API_KEY='': not set")
    assert "Traceback" not in done.stderr
    assert standin.stats()["received"] == 0


def test_format_sensitivity_alone_for_a_function_calling_model_is_refused(
    standin_factory: Any, tmp_path: Path
) -> None:
    standin = standin_factory()
    done = run_bfcl_ext(run_args(standin, tmp_path / "out", "format_sensitivity"))
    assert done.returncode == 2
    assert "BFCL runs it only for prompt-mode registry models" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- web search: a broken tool is never scored

SEARCH_KEY = "serp-test-key-5d1c9a"


def _search_env(standin: StandinProcess) -> dict[str, str]:
    return {"SERPAPI_API_KEY": SEARCH_KEY, "BFCL_EXT_SEARCH_BASE_URL": f"http://127.0.0.1:{standin.port}"}


def _search_standin(factory: Any, *args: str) -> StandinProcess:
    return factory("--search-api-key-env", "STANDIN_SEARCH_KEY", *args, env={"STANDIN_SEARCH_KEY": SEARCH_KEY})


def test_web_search_failing_searches_are_retried_and_the_key_is_never_written(
    standin_factory: Any, tmp_path: Path
) -> None:
    standin = _search_standin(standin_factory, "--search-error-rate", "0.3", "--seed", "7")
    output = tmp_path / "out"
    done = run_bfcl_ext(run_args(standin, output, "web_search", "--limit", "8", "--max-retries", "1"),
                        env=_search_env(standin), timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_json(output / "summary.json")
    for category in ("web_search_base", "web_search_no_snippet"):
        assert summary["categories"][category] == {"accuracy": 1.0, "correct": 8, "total": 8}
    assert summary["web_search"]["calls"] >= 16
    assert read_json(output / "manifest.json")["tools"]["web_search"] == {
        "base_url": f"http://127.0.0.1:{standin.port}"}
    assert SEARCH_KEY not in done.stdout + done.stderr
    for path in output.rglob("*"):
        if path.is_file():
            assert SEARCH_KEY.encode() not in path.read_bytes(), f"the search key is in {path}"


def test_web_search_outage_leaves_entries_unanswered_not_wrong(standin_factory: Any, tmp_path: Path) -> None:
    standin = _search_standin(standin_factory, "--search-always-fail", "503")
    output = tmp_path / "out"
    done = run_bfcl_ext(run_args(standin, output, "web_search_base", "--limit", "3", "--max-retries", "0",
                                 "--retry-rounds", "1"), env=_search_env(standin), timeout=300)

    assert done.returncode == 4, done.stderr[-3000:]
    assert "a tool failed under the model: web search: HTTP 503" in done.stderr
    assert result_lines(output) == [], "an entry whose search failed was written as an answer"
    summary = read_json(output / "summary.json")
    assert summary["categories"]["web_search_base"]["missing"] == 3
    assert summary["entries"]["failed"] == 3 and summary["web_search"]["failed"] >= 6


def test_web_search_with_a_wrong_key_is_not_scored(standin_factory: Any, tmp_path: Path) -> None:
    standin = _search_standin(standin_factory)
    output = tmp_path / "out"
    env = {**_search_env(standin), "SERPAPI_API_KEY": "not-the-key"}
    done = run_bfcl_ext(run_args(standin, output, "web_search_base", "--limit", "1", "--retry-rounds", "0"),
                        env=env, timeout=300)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "HTTP 401 from the search service" in done.stderr
    assert "not-the-key" not in done.stderr
    assert result_lines(output) == []


# ---------------------------------------------------------------- each attempt starts from the entry's initial state


def test_multi_turn_entry_asked_again_after_a_failure_starts_from_its_initial_state(
    standin_factory: Any, tmp_path: Path
) -> None:
    """A 500 in the middle of a conversation sends the whole entry back. bfcl-eval keeps the tools'
    state per entry id for the life of the process: without a reset, the second attempt would run on
    the file system the first one had already changed, and the model would see other tool results
    (the logged states and results differ from a run without faults)."""
    # one thread: the stand-in's seeded dice then fail the same requests on every run
    args = ("multi_turn_base", "--limit", "5", "--max-retries", "0", "--retry-rounds", "10", "--num-threads", "1")
    clean = run_bfcl_ext(run_args(standin_factory(), tmp_path / "clean", *args), timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    faulty_standin = standin_factory("--error-rate", "0.1", "--seed", "3")
    faulty = run_bfcl_ext(run_args(faulty_standin, tmp_path / "faulty", *args), timeout=300)
    assert faulty.returncode == 0, faulty.stderr[-3000:]

    summary = read_json(tmp_path / "faulty" / "summary.json")
    assert summary["entries"]["retried"] > 0, "no entry failed mid-conversation: the test proves nothing"
    assert summary["categories"]["multi_turn_base"] == {"accuracy": 1.0, "correct": 5, "total": 5}
    logs = {run: {line["id"]: line["inference_log"] for line in result_lines(tmp_path / run)}
            for run in ("clean", "faulty")}
    assert logs["faulty"] == logs["clean"], "an entry asked again saw the state its failed attempt left"
