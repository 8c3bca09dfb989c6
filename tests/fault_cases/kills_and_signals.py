"""Rows: bfcl-ext itself is stopped (issue 3, end to end): ``kill -9`` at a random moment, a torn last
line, SIGTERM and SIGINT during generation. Each row then runs the same command again; that rerun is
the row's outcome (every selected entry on disk exactly once, checked by the table) and it asks the
server only for what was not answered before."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from typing import Any

from tests.conftest import assert_outputs_match_schemas, read_json
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import (
    asked,
    assert_no_duplicates,
    assert_ok,
    cli,
    dataset_ids,
    endpoint_env,
    output_of,
    run_args,
    spawn,
    summary_complete,
    wait_exit,
    wait_for_lines,
)

SECTION = "issue 3: faults end to end"


def _check_rerun_asked_the_rest(outcome: Outcome) -> None:
    """The rerun finished the job and asked for exactly the entries not kept from before."""
    assert outcome.output_dir is not None
    summary_complete(outcome.output_dir, outcome.expected_ids)
    again = asked(outcome.notes["before"], outcome.notes["standin"].stats())
    assert set(again) == set(outcome.expected_ids) - outcome.notes["kept"], \
        "the rerun asked for entries already answered, or missed some"


# ---------------------------------------------------------------- SIGKILL, and a torn line


def _sigkill_then_rerun(seed: int) -> Any:
    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory("--latency", "0.05")
        out = ctx.tmp_path / "out"
        args = run_args(out, "--num-threads", "8")
        env = endpoint_env(standin)
        delay = random.Random(seed).uniform(0.0, 3.0)  # generation takes ~2.5 s here; later kills hit the end
        runner = spawn(args, env, ctx.tmp_path, "killed")
        try:
            wait_for_lines(out, 1, runner)
            time.sleep(delay)
        finally:
            runner.send_signal(signal.SIGKILL)
            runner.wait()
        kept = assert_no_duplicates(out)  # every line complete and parseable, none twice
        print(f"seed {seed}: killed {delay:.2f}s after the first answer, {len(kept)} answers kept")
        before = standin.stats()

        result = cli(args, env, ctx.tmp_path)
        return Outcome(result, out, dataset_ids(), {"standin": standin, "before": before, "kept": kept})

    return scenario


def _torn_last_line(ctx: Any) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    args = run_args(out, "--limit", "30")
    env = endpoint_env(standin)
    assert_ok(cli(args, env, ctx.tmp_path))
    (path,) = list((out / "result").rglob("*_result.json"))
    lines = path.read_text().splitlines()
    torn_id = json.loads(lines[-1])["id"]
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # no final newline
    before = standin.stats()

    result = cli(args, env, ctx.tmp_path)
    return Outcome(result, out, dataset_ids(30),
                   {"standin": standin, "before": before, "torn_id": torn_id, "path": path})


def _check_torn_line_asked_again(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    summary = summary_complete(outcome.output_dir, outcome.expected_ids)
    notes = outcome.notes
    assert summary["entries"]["repaired_on_resume"]["torn_lines"] == 1, summary["entries"]
    assert asked(notes["before"], notes["standin"].stats()) == Counter({notes["torn_id"]: 1})
    assert notes["path"].read_text().endswith("\n")


# ---------------------------------------------------------------- SIGTERM and SIGINT


def _signal_then_rerun(signum: signal.Signals, code: int) -> Any:
    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory("--latency", "0.2")
        out = ctx.tmp_path / "out"
        env = endpoint_env(standin)
        runner = spawn(run_args(out, "--num-threads", "4"), env, ctx.tmp_path, "signalled")
        try:
            wait_for_lines(out, 10, runner)
            runner.send_signal(signum)
            signalled = time.monotonic()
            rc = wait_exit(runner, 30)
            took = time.monotonic() - signalled
        finally:
            if runner.poll() is None:
                runner.kill()
        stdout, stderr = output_of(ctx.tmp_path, "signalled")
        assert rc == code, f"exit {rc}\n{stderr[-3000:]}"
        assert "Traceback" not in stdout + stderr, stderr[-3000:]
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

        result = cli(run_args(out, "--num-threads", "64"), env, ctx.tmp_path)
        return Outcome(result, out, dataset_ids(), {"standin": standin, "before": before, "kept": kept})

    return scenario


CASES = [
    *[Case(f"kill -9 at a random moment (seed {seed}), then the same command", SECTION, _sigkill_then_rerun(seed),
           0, check=_check_rerun_asked_the_rest) for seed in (1, 2, 3)],
    Case("a torn last line is dropped and asked again", SECTION, _torn_last_line, 0,
         check=_check_torn_line_asked_again),
    *[Case(f"{signum.name} during generation (exit {code}), then the same command", SECTION,
           _signal_then_rerun(signum, code), 0, check=_check_rerun_asked_the_rest)
      for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130))],
]
