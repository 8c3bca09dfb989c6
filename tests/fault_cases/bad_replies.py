"""Rows: a server fault is never the model's answer (issue 11 section 1).

A reply with status 200 that the client cannot use (the body cut short, ``choices[0].message``
null, no ``usage``, ``choices: []``, ``tool_calls`` a string, a tool call with ``function: null``,
an integer ``content``; the stand-in's ``--bad-reply-rate``) is retried like a 5xx,
counted in ``summary.json`` ``requests``, and never written to a result file; ``check`` names it
in one line (exit 3); an older version's "Error during inference" line for one is asked again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import read_json, result_lines, run_bfcl_ext
from tests.fault_cases import Case, Outcome

MODEL = "bfcl-ext-standin"
KINDS = ("cut", "null-message", "no-usage", "empty-choices", "string-tool-calls", "null-function", "int-content")
SECTION = "issue 11 section 1: a server fault is never the model's answer"


def _ids(limit: int) -> list[str]:
    return [f"simple_python_{n}" for n in range(limit)]


def _run_args(base_url: str, out: Path, limit: int, *extra: str) -> list[str]:
    return ["run", "--skip-vllm", "--model", MODEL, "--base-url", base_url, "--test-category", "simple_python",
            "--limit", str(limit), "--output-dir", str(out), "--wait-timeout", "30", *extra]


def _no_error_lines(out: Path) -> None:
    if (out / "result").exists():
        written = [line for line in result_lines(out) if str(line["result"]).startswith("Error during inference")]
        assert not written, f"a bad reply was written as an answer: {written[:3]}"


# ---------------------------------------------------------------- run: 20% bad replies of one kind


def _run_with_bad_replies(kind: str) -> Any:
    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory("--bad-reply-rate", "0.2", "--bad-reply-kinds", kind, "--seed", "11")
        out = ctx.tmp_path / "out"
        done = run_bfcl_ext(_run_args(standin.base_url, out, 40), cwd=ctx.tmp_path, timeout=240)
        return Outcome(done, out, _ids(40), {"stats": standin.stats(), "kind": kind})

    return scenario


def _check_retried_and_scored_clean(outcome: Outcome) -> None:
    out, stats = outcome.output_dir, outcome.notes["stats"]
    assert out is not None
    _no_error_lines(out)
    summary = read_json(out / "summary.json")
    assert summary["status"] == "complete", summary["status"]
    assert summary["categories"]["simple_python"]["accuracy"] == 1.0, summary["categories"]
    assert summary["entries"]["failed"] == 0, summary["entries"]
    requests = summary["requests"]
    served = stats["bad_reply_kinds"]
    assert set(served) == {outcome.notes["kind"]} and stats["bad_replies"] > 0, stats
    assert requests["bad_replies"] == stats["bad_replies"], (requests, stats)
    assert requests["retried_requests"] >= requests["bad_replies"], requests
    # every 200 the stand-in sent arrived: the answers and the bad replies (connection errors, if a
    # loaded machine sees any, are the SDK's to retry and counted apart)
    assert requests["http_ok"] == stats["ok"] + stats["bad_replies"], (requests, stats)


# ---------------------------------------------------------------- run: nothing but bad replies


def _run_with_only_bad_replies(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--bad-reply-rate", "1", "--seed", "3")
    out = ctx.tmp_path / "out"
    done = run_bfcl_ext(_run_args(standin.base_url, out, 5, "--max-retries", "1", "--retry-rounds", "1"),
                        cwd=ctx.tmp_path, timeout=240)
    return Outcome(done, out, _ids(5), {"stats": standin.stats()})


def _check_left_unanswered(outcome: Outcome) -> None:
    out, stats = outcome.output_dir, outcome.notes["stats"]
    assert out is not None
    assert not (out / "result").exists() or not result_lines(out), "a bad reply was written"
    summary = read_json(out / "summary.json")
    assert summary["entries"]["failed_ids"] == _ids(5), summary["entries"]
    assert summary["status"] == "incomplete", summary["status"]
    assert summary["categories"]["simple_python"]["accuracy"] is None, summary["categories"]  # never scored
    assert summary["categories"]["simple_python"]["missing"] == 5, summary["categories"]
    # 5 entries, 2 passes, 2 tries each (--max-retries 1): every one a bad reply, none an answer
    assert summary["requests"]["bad_replies"] == stats["bad_replies"] == 20, (summary["requests"], stats)
    assert stats["ok"] == 0 and set(stats["bad_reply_kinds"]) == set(KINDS), stats
    assert "no answer (unusable reply (HTTP 200" in outcome.done.stderr


# ---------------------------------------------------------------- check: one plain line, exit 3


def _check_against(kind: str) -> Any:
    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory("--bad-reply-rate", "1", "--bad-reply-kinds", kind)
        done = run_bfcl_ext(["check", "--skip-vllm", "--base-url", standin.base_url, "--wait-timeout", "30"],
                            cwd=ctx.tmp_path, timeout=120)
        return Outcome(done)

    return scenario


def _check_not_an_answer(outcome: Outcome) -> None:
    seen = outcome.done.stdout + outcome.done.stderr
    assert "internal error" not in seen and "answered in text" not in seen, seen
    assert "a server fault, not a model answer" in outcome.done.stderr, seen


# ---------------------------------------------------------------- resume: an older version's line for a bad reply


OLD_LINES = {  # what bfcl-ext wrote for these replies before they were transport failures
    "simple_python_1": "Error during inference: 'NoneType' object has no attribute 'content'",  # message: null
    "simple_python_3": "Error during inference: 'NoneType' object has no attribute 'prompt_tokens'",  # no usage
    "simple_python_4": "Error during inference: Unterminated string starting at: line 1 column 380 (char 379)",  # cut
}


def _resume_over_old_error_lines(ctx: Any) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    first = run_bfcl_ext(_run_args(standin.base_url, out, 6), cwd=ctx.tmp_path, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]
    (path,) = (out / "result").rglob("*_result.json")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**line, "result": OLD_LINES.get(line["id"], line["result"])}) + "\n"
                            for line in lines))
    before = standin.stats()["entries"]
    done = run_bfcl_ext(_run_args(standin.base_url, out, 6), cwd=ctx.tmp_path, timeout=240)
    after = standin.stats()["entries"]
    asked = {entry: after[entry] - before.get(entry, 0) for entry in after if after[entry] != before.get(entry, 0)}
    return Outcome(done, out, _ids(6), {"asked": asked})


def _check_asked_again(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    assert outcome.notes["asked"] == dict.fromkeys(OLD_LINES, 1), outcome.notes["asked"]
    _no_error_lines(outcome.output_dir)
    summary = read_json(outcome.output_dir / "summary.json")
    assert summary["entries"]["repaired_on_resume"]["transport_errors"] == len(OLD_LINES), summary["entries"]
    assert summary["categories"]["simple_python"]["accuracy"] == 1.0, summary["categories"]


CHECK_MESSAGES = {
    "cut": "HTTP 200 and a body that is not valid JSON",
    "null-message": "HTTP 200 and a null message (choices[0].message)",
    "no-usage": "HTTP 200 and no usage",
    "empty-choices": "HTTP 200 and an empty reply (choices: [])",
    "string-tool-calls": "HTTP 200 and choices[0].message.tool_calls that is not a list (a string)",
    "null-function": "HTTP 200 and choices[0].message.tool_calls[0].function that is null, not a function call",
    "int-content": "HTTP 200 and choices[0].message.content that is not text (a number)",
}

CASES = [
    *(Case(f"run: 20% of replies {kind} (simple_python, 40 entries)", SECTION, _run_with_bad_replies(kind), 0,
           check=_check_retried_and_scored_clean) for kind in KINDS),
    Case("run: every reply unusable (all seven kinds)", SECTION, _run_with_only_bad_replies, 4,
         "5 entries have no answer after retries", check=_check_left_unanswered),
    *(Case(f"check: the server replies {kind}", SECTION, _check_against(kind), 3, CHECK_MESSAGES[kind],
           check=_check_not_an_answer) for kind in KINDS),
    Case("resume: older 'Error during inference' lines for bad replies are asked again", SECTION,
         _resume_over_old_error_lines, 0, check=_check_asked_again),
]
