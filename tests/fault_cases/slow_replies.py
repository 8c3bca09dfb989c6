"""Rows: a reply that never ends. httpx's timeout bounds each read, so a server that sends a byte
every second kept one request going for minutes; --request-timeout now bounds the whole reply."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import read_json
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import cli, dataset_ids, endpoint_env, run_args

SECTION = "issue 11: no hang, ever"
TIMEOUT = 2.0  # --request-timeout
TRICKLE = 1.0  # seconds per byte: a reply of a few hundred bytes takes minutes


def _trickled_replies(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--trickle", str(TRICKLE))
    out = ctx.tmp_path / "out"
    started = time.monotonic()
    done = cli(run_args(out, "--limit", "2", "--request-timeout", str(TIMEOUT), "--max-retries", "1",
                        "--retry-rounds", "0"), endpoint_env(standin), ctx.tmp_path)  # fmt: skip
    return Outcome(done, out, dataset_ids(2), {"took": time.monotonic() - started, "standin": standin})


def _check_bounded_and_unanswered(outcome: Outcome) -> None:
    # 2 entries x 2 tries x 2 s, plus start-up; a reply as sent would take minutes
    assert outcome.notes["took"] < 120, outcome.notes["took"]
    assert outcome.output_dir is not None
    summary = read_json(outcome.output_dir / "summary.json")
    assert summary["entries"]["failed"] == 2 and summary["entries"]["answered"] == 0, summary["entries"]
    assert summary["requests"]["retried_requests"] >= 2, summary["requests"]
    assert outcome.notes["standin"].stats()["ok"] >= 4  # each try reached the stand-in, none came back whole


CASES = [
    Case("replies that trickle a byte a second (--request-timeout 2 bounds the whole reply)", SECTION,
         _trickled_replies, 4, "2 entries have no answer after retries", check=_check_bounded_and_unanswered),
]
