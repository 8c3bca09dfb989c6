"""Rows: a bundle carries the run its summary.json describes, and that summary tells the whole truth.

* A folder an earlier run scored other categories in (BFCL keeps every category's answers and
  score file side by side): the later run's leaderboard row counts the categories it scored only,
  ``bundle`` leaves out the other categories' answers and score files (one warning line; they stay
  in the folder) and the honest bundle verifies. Before, bundle packed the older score files, the
  run's own leaderboard row counted them, and ``verify`` refused the honest bundle.
* A ``--limit`` at least every category's size selects the whole dataset: a complete run (summary
  ``partial: false``, no limit), not a partial one.
* A bundle's summary.json edited to drop a category it scored, or to record it as not scored (the
  overall and entry counts adjusted to match, SHA256SUMS rewritten): verify refuses it (exit 5),
  naming the answers or the score file the summary does not account for. Before, both verified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bfcl_ext.errors import EXIT_VERIFY_FAILED
from tests.conftest import read_json, run_bfcl_ext
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import bundle_members, forged_summary

SECTION = "issue 11: every record can be trusted (bundle and verify)"
MODEL = "bfcl-ext-standin"
EARLIER, LATER = "simple_python", "multiple"
SMALL = "simple_javascript"  # 50 entries
SMALL_SIZE = 50


def _run_args(base_url: str, out: Path, categories: str, limit: int, *extra: str) -> list[str]:
    return ["run", "--skip-vllm", "--model", MODEL, "--base-url", base_url, "--test-category", categories,
            "--limit", str(limit), "--output-dir", str(out), "--wait-timeout", "30", *extra]


def _run_ok(args: list[str], cwd: Path) -> Any:
    done = run_bfcl_ext(args, cwd=cwd, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _bundle(ctx: Any, out: Path) -> tuple[Path, Any]:
    archive = ctx.tmp_path / "run.tar.gz"
    return archive, _run_ok(["bundle", str(out), "-o", str(archive)], ctx.tmp_path)


# ---------------------------------------------------------------- an earlier run's other categories


def _an_earlier_run_scored_another_category(ctx: Any) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    _run_ok(_run_args(standin.base_url, out, EARLIER, 3), ctx.tmp_path)
    _run_ok(_run_args(standin.base_url, out, LATER, 3), ctx.tmp_path)
    archive, bundled = _bundle(ctx, out)
    verified = run_bfcl_ext(["verify", str(archive)], cwd=ctx.tmp_path, timeout=300)
    return Outcome(verified, notes={"out": out, "bundled": bundled, "members": bundle_members(archive),
                                    "summary": read_json(out / "summary.json")})


def _check_left_out_and_verified(outcome: Outcome) -> None:
    bundled, members, out = outcome.notes["bundled"], outcome.notes["members"], outcome.notes["out"]
    warned = [line for line in bundled.stderr.splitlines() if "categories this run did not score" in line]
    assert warned == [f"bfcl-ext: warning: left out the answers and scores of 1 categories this run did not score "
                      f"({EARLIER}: an earlier run's in this folder; they stay in the folder)"], bundled.stderr
    earlier = [name for name in members if f"_{EARLIER}_" in name]
    assert not earlier, earlier
    assert f"result/{MODEL}/non_live/BFCL_v4_{LATER}_result.json" in members, sorted(members)
    assert (out / f"score/{MODEL}/non_live/BFCL_v4_{EARLIER}_score.json").is_file()  # still in the folder
    board = outcome.notes["summary"]["leaderboard"]
    assert EARLIER in board["categories_not_scored"], board
    assert outcome.done.stdout.startswith("verified ") and f"{LATER} 100.00% (3/3)" in outcome.done.stdout, \
        outcome.done.stdout
    assert EARLIER not in outcome.done.stdout, outcome.done.stdout


# ---------------------------------------------------------------- a limit that covers the whole dataset


def _a_limit_beyond_the_dataset(ctx: Any) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    ran = _run_ok(_run_args(standin.base_url, out, SMALL, SMALL_SIZE + 10, "--num-threads", "4"), ctx.tmp_path)
    archive, bundled = _bundle(ctx, out)
    verified = run_bfcl_ext(["verify", str(archive)], cwd=ctx.tmp_path, timeout=300)
    ids = [f"{SMALL}_{n}" for n in range(SMALL_SIZE)]
    return Outcome(verified, out, ids, {"ran": ran, "bundled": bundled, "summary": read_json(out / "summary.json")})


def _check_a_complete_run(outcome: Outcome) -> None:
    summary = outcome.notes["summary"]
    assert (summary["partial"], summary["limit"], summary["status"]) == (False, None, "complete"), summary
    assert summary["categories"][SMALL]["total"] == SMALL_SIZE, summary["categories"]
    assert "partial run" not in outcome.notes["ran"].stdout, outcome.notes["ran"].stdout[-2000:]
    assert "entries of each category" not in outcome.notes["bundled"].stderr, outcome.notes["bundled"].stderr
    assert f"{SMALL} 100.00% ({SMALL_SIZE}/{SMALL_SIZE})" in outcome.done.stdout, outcome.done.stdout


# ---------------------------------------------------------------- a summary edited to hide a category


def _two_categories_bundled(ctx: Any) -> Path:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    _run_ok(_run_args(standin.base_url, out, f"{EARLIER},{LATER}", 3), ctx.tmp_path)
    return _bundle(ctx, out)[0]


def _only_the_earlier_counted(summary: dict[str, Any]) -> None:
    summary["overall"].update(accuracy=1.0, correct=3, total=3)
    summary["entries"].update(selected=3, answered=3)


def _a_category_edited_out(ctx: Any) -> Outcome:
    def edit(summary: dict[str, Any]) -> None:
        del summary["categories"][LATER]
        _only_the_earlier_counted(summary)

    return forged_summary(ctx, _two_categories_bundled(ctx), edit)


def _a_category_edited_to_unscored(ctx: Any) -> Outcome:
    def edit(summary: dict[str, Any]) -> None:
        summary["categories"][LATER] = {"accuracy": None, "correct": None, "total": 3, "missing": 0}
        _only_the_earlier_counted(summary)
        summary["entries"].update(selected=6, answered=6)

    return forged_summary(ctx, _two_categories_bundled(ctx), edit)


def _check_not_verified(outcome: Outcome) -> None:
    assert outcome.done.stdout == "", outcome.done.stdout


CASES: list[Case] = [
    Case(f"a folder where an earlier run scored {EARLIER}, then a run of {LATER}: bundled (its answers and score "
         "left out, one warning) and verified", SECTION, _an_earlier_run_scored_another_category, 0, None,
         _check_left_out_and_verified),
    Case(f"--limit {SMALL_SIZE + 10} on {SMALL}, beyond its {SMALL_SIZE} entries: a complete run, not partial; "
         "bundled and verified", SECTION, _a_limit_beyond_the_dataset, 0, None, _check_a_complete_run),
    Case(f"a bundle's summary.json edited to hide category {LATER}: removed, overall and entries adjusted (sums "
         "rewritten)",
         SECTION, _a_category_edited_out, EXIT_VERIFY_FAILED,
         f"BFCL_v4_{LATER}_result.json holds answers of a category the run neither records nor scores "
         f"(summary.json: {EARLIER})", _check_not_verified),
    Case(f"a bundle's summary.json edited to hide category {LATER}: recorded as not scored, overall adjusted (sums "
         "rewritten)", SECTION, _a_category_edited_to_unscored, EXIT_VERIFY_FAILED,
         f"BFCL_v4_{LATER}_score.json scores category '{LATER}', but summary.json records it as not scored",
         _check_not_verified),
]
