"""Rows: the server misbehaves (issue 3, end to end): 5xx and 429, a server that dies and comes back
or dies for good, fewer slots than threads, readiness through the CLI (nothing listening, a host
that does not resolve, the model not listed), and the happy path with an identical rerun.

Each row runs the real ``bfcl-ext run`` against the stand-in; the run that should finish the job is
the row's outcome, so the table checks every selected entry on disk exactly once."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.conftest import assert_outputs_match_schemas, read_json
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import (
    CATEGORY,
    MODEL,
    assert_no_duplicates,
    assert_ok,
    cli,
    completed,
    dataset_ids,
    endpoint_env,
    exactly_once,
    run_args,
    spawn,
    summary_complete,
    wait_exit,
)
from tests.support.vllm_cpu import free_port

SECTION = "issue 3: faults end to end"


# ---------------------------------------------------------------- 5xx and 429


def _errors_and_rate_limits(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--error-rate", "0.1", "--rate-limit-rate", "0.05", "--seed", "7")
    out = ctx.tmp_path / "out"
    done = cli(run_args(out), endpoint_env(standin), ctx.tmp_path)
    return Outcome(done, out, dataset_ids(), {"standin": standin})


def _check_retried(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    summary = summary_complete(outcome.output_dir, outcome.expected_ids)
    requests = summary["requests"]
    assert requests["retried_requests"] > 0, requests
    assert "500" in requests["http_errors_by_status"] and "429" in requests["http_errors_by_status"], requests
    stats = outcome.notes["standin"].stats()
    assert stats["errors"] > 0 and stats["rate_limited"] > 0, stats


# ---------------------------------------------------------------- the server dies and comes back


def _dies_and_comes_back(ctx: Any) -> Outcome:
    first = ctx.standin_factory("--die-after", "150")
    out = ctx.tmp_path / "out"
    runner = spawn(run_args(out), endpoint_env(first), ctx.tmp_path, "run")
    try:
        first.process.wait(timeout=90)  # crashes after 150 completions
        assert first.process.returncode == 1
        died_at = time.monotonic()
        assert runner.poll() is None, "bfcl-ext gave up while the server was away"
        time.sleep(max(0.0, 10.0 - (time.monotonic() - died_at)))
        assert runner.poll() is None, "bfcl-ext gave up while the server was away"
        second = ctx.standin_factory(port=first.port)
        wait_exit(runner, 180)
    finally:
        if runner.poll() is None:
            runner.kill()
    return Outcome(completed(runner, ctx.tmp_path, "run"), out, dataset_ids(), {"second": second})


def _check_recovered(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    summary = summary_complete(outcome.output_dir, outcome.expected_ids)
    assert summary["server_recoveries"] >= 1, summary
    assert 0 < sum(outcome.notes["second"].stats()["entries"].values()) < len(dataset_ids())


# ---------------------------------------------------------------- the server dies for good


def _dies_for_good_then_rerun(ctx: Any) -> Outcome:
    first = ctx.standin_factory("--die-after", "150")
    out = ctx.tmp_path / "out"
    args = run_args(out, "--recovery-timeout", "5", "--retry-rounds", "1", "--max-retries", "1")
    env = endpoint_env(first)
    started = time.monotonic()
    result = cli(args, env, ctx.tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 4, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
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

    second = ctx.standin_factory(port=first.port)
    result = cli(args, env, ctx.tmp_path, timeout=120)
    return Outcome(result, out, sorted(everything), {"second": second, "missing": missing})


def _check_rerun_asked_only_the_rest(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    summary_complete(outcome.output_dir, outcome.expected_ids)
    missing = outcome.notes["missing"]
    stats = outcome.notes["second"].stats()
    assert stats["received"] == len(missing), (stats["received"], len(missing))
    answered = Counter(stats["entries"])
    assert set(answered) == missing, (sorted(set(answered) - missing)[:10], sorted(missing - set(answered))[:10])
    assert all(n == 1 for n in answered.values()), [i for i, n in answered.items() if n > 1]


# ---------------------------------------------------------------- a concurrency cap


def _fewer_slots_than_threads(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--max-concurrency", "4", "--latency", "0.02")
    out = ctx.tmp_path / "out"
    done = cli(run_args(out, "--num-threads", "32"), endpoint_env(standin), ctx.tmp_path)
    return Outcome(done, out, dataset_ids(), {"standin": standin})


def _check_no_spinning(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    entries = outcome.expected_ids
    summary = summary_complete(outcome.output_dir, entries)
    received = outcome.notes["standin"].stats()["received"]
    print(f"max concurrency 4, 32 threads: {received} requests for {len(entries)} entries, "
          f"{summary['requests']['http_errors_by_status']}")
    assert received < 10 * len(entries)
    assert summary["requests"]["http_requests_sent"] < 10 * len(entries)


# ---------------------------------------------------------------- readiness through the CLI


def _connection_refused(ctx: Any) -> Outcome:
    out = ctx.tmp_path / "out"
    done = cli(run_args(out, "--wait-timeout", "2"), {"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(free_port())},
               ctx.tmp_path, timeout=60)
    return Outcome(done, out)


def _unresolvable_host(ctx: Any) -> Outcome:
    out = ctx.tmp_path / "out"
    done = cli(run_args(out, "--wait-timeout", "2"), {"VLLM_ENDPOINT": "nonexistent.invalid", "VLLM_PORT": "8000"},
               ctx.tmp_path, timeout=60)
    return Outcome(done, out)


def _model_not_listed(ctx: Any) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    done = cli(run_args(out, "--wait-timeout", "1", model="some-other-model"), endpoint_env(standin), ctx.tmp_path,
               timeout=60)
    return Outcome(done, out, notes={"standin": standin})


def _check_nothing_asked(outcome: Outcome) -> None:
    assert outcome.notes["standin"].stats()["received"] == 0


# ---------------------------------------------------------------- the happy path


def _happy_path_then_identical_rerun(ctx: Any) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    env = endpoint_env(standin)
    result = cli(run_args(out), env, ctx.tmp_path)
    assert_ok(result)
    exactly_once(out, dataset_ids(), "happy path")
    summary = summary_complete(out, dataset_ids())
    assert summary["partial"] is False and summary["mode"] == "skip"
    assert summary["requests"]["http_errors_by_status"] == {}
    assert "100.00%" in result.stdout
    assert standin.alive(), "skip mode stopped a server it did not start"
    before = standin.stats()
    assert before["received"] == len(dataset_ids())

    again = cli(run_args(out), env, ctx.tmp_path)
    return Outcome(again, out, dataset_ids(), {"standin": standin, "before": before})


def _check_rerun_asked_nothing(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    standin = outcome.notes["standin"]
    assert standin.stats() == outcome.notes["before"], "the rerun asked the server again"
    summary = summary_complete(outcome.output_dir, outcome.expected_ids)
    assert summary["entries"]["answered_this_run"] == 0
    assert standin.alive()


NAME_WITH_SLASH = "my_org/model_x-v1.5"


def _loading_server_limit_and_model_name(ctx: Any) -> Outcome:
    """One run, three things: a server whose port opens 3 s late is waited for; ``--limit 5`` makes a
    partial run of 5; a served name with '_' and '/' works (BFCL maps result folders back '_' -> '/')."""
    standin = ctx.standin_factory("--served-model-name", NAME_WITH_SLASH, "--load-delay", "3", wait=False)
    out = ctx.tmp_path / "out"
    started = time.monotonic()
    done = cli(run_args(out, "--limit", "5", model=NAME_WITH_SLASH), endpoint_env(standin), ctx.tmp_path)
    return Outcome(done, out, dataset_ids(5), {"standin": standin, "took_s": time.monotonic() - started})


def _check_waited_partial_and_named(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    assert outcome.notes["took_s"] > 3
    summary = summary_complete(outcome.output_dir, outcome.expected_ids)
    assert summary["partial"] is True and summary["limit"] == 5
    assert summary["categories"][CATEGORY]["total"] == 5 and summary["overall"]["total"] == 5
    assert summary["overall"]["accuracy"] == 1.0
    assert summary["model"] == NAME_WITH_SLASH and summary["served_model_name"] == NAME_WITH_SLASH
    assert "partial run" in outcome.done.stdout
    assert outcome.notes["standin"].stats()["received"] == 5


CASES = [
    Case("500s and 429s are retried (every entry once, accuracy 1.0)", SECTION, _errors_and_rate_limits, 0,
         check=_check_retried),
    Case("the server dies mid-run and comes back on the same port", SECTION, _dies_and_comes_back, 0,
         check=_check_recovered),
    Case("the server dies for good (exit 4), then the same command finishes asking only the rest", SECTION,
         _dies_for_good_then_rerun, 0, check=_check_rerun_asked_only_the_rest),
    Case("a server with fewer slots than threads (4 slots, 32 threads)", SECTION, _fewer_slots_than_threads, 0,
         check=_check_no_spinning),
    Case("nothing listening on the port", SECTION, _connection_refused, 3, "connection refused"),
    Case("a host name that does not resolve", SECTION, _unresolvable_host, 3,
         "cannot resolve host 'nonexistent.invalid'"),
    Case("the model is not listed by the server", SECTION, _model_not_listed, 3, f"it lists: {MODEL!r}",
         _check_nothing_asked),
    Case("the happy path, then an identical rerun asks nothing", SECTION, _happy_path_then_identical_rerun, 0,
         check=_check_rerun_asked_nothing),
    Case("a server loading for 3 s, --limit 5, a served name with '_' and '/'", SECTION,
         _loading_server_limit_and_model_name, 0, check=_check_waited_partial_and_named),
]
