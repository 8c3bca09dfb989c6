"""Rows: every number honest about the answers on disk (issue 11, "every number honest").

A result file is the user's to edit, damage or replace; whatever is found at a result path, a
rerun either reads it the way BFCL would or says in one line why it cannot, and what it scores
and records is exactly the entries the run selected:

* a line whose id is no entry of its category (``simple_python_0x``: BFCL cannot even sort it)
  is not an answer: dropped on resume, counted in ``repaired_on_resume``, its entry asked again;
* a rerun with a smaller ``--limit`` scores the entries it selected, not every answer on disk
  (the others stay there, untouched), and its bundle verifies; a bundle whose summary records
  a limit but whose scores cover more answers does not;
* a bundle carrying answers of a category its run neither records nor scores is refused by verify
  (exit 5): it would vouch for answers it never re-scores;
* a bundle answers the whole selection its summary.json claims: a ``--limit 5`` run's summary
  edited to ``limit: 10``, or its limit removed (a claimed full run), is refused by verify (exit 5,
  the category and how many of the claimed entries the bundle answers named), while the honest
  ``--limit 5`` bundle verifies; so does an honest run that ended with exit 4 (its unanswered
  entries recorded as ``missing``; bundle packs it with a warning), but not once its summary is
  edited to claim it complete;
* a FIFO, a folder or a link to something that is not a regular file at a result path: one line
  naming the path, exit 6, no hang (a link to a regular file is followed); so at a score file's
  path or a leaderboard CSV's (exit 6 when scoring), and at ``.bfcl-ext/identity.json`` (exit 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bfcl_ext import bundle as bundles
from bfcl_ext.errors import EXIT_VERIFY_FAILED
from tests.conftest import read_json, run_bfcl_ext
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import bundle_members, forged_summary
from tests.fault_cases._helpers import dataset_ids

SECTION = "issue 11: every number honest"
MODEL = "bfcl-ext-standin"
CATEGORY = "simple_python"
RESULT_FILE = f"result/{MODEL}/non_live/BFCL_v4_{CATEGORY}_result.json"
SCORE_FILE = f"score/{MODEL}/non_live/BFCL_v4_{CATEGORY}_score.json"
OTHER_RESULT_FILE = f"result/{MODEL}/non_live/BFCL_v4_multiple_result.json"


def _ids(limit: int) -> list[str]:
    return [f"{CATEGORY}_{n}" for n in range(limit)]


def _run_args(base_url: str, out: Path, limit: int, *extra: str) -> list[str]:
    return ["run", "--skip-vllm", "--model", MODEL, "--base-url", base_url, "--test-category", CATEGORY,
            "--limit", str(limit), "--output-dir", str(out), "--wait-timeout", "30", *extra]


def _first_run(ctx: Any, limit: int) -> tuple[Any, Path]:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    first = run_bfcl_ext(_run_args(standin.base_url, out, limit), cwd=ctx.tmp_path, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]
    return standin, out


def _asked(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {entry: n - before.get(entry, 0) for entry, n in after.items() if n != before.get(entry, 0)}


# ---------------------------------------------------------------- a line BFCL cannot sort


def _an_id_edited_to_one_bfcl_cannot_sort(ctx: Any) -> Outcome:
    standin, out = _first_run(ctx, 5)
    path = out / RESULT_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["id"] = f"{CATEGORY}_0x"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = standin.stats()["entries"]
    done = run_bfcl_ext(_run_args(standin.base_url, out, 5), cwd=ctx.tmp_path, timeout=240)
    notes = {"asked": _asked(before, standin.stats()["entries"]), "summary": read_json(out / "summary.json")}
    notes["again"] = run_bfcl_ext(_run_args(standin.base_url, out, 5), cwd=ctx.tmp_path, timeout=240)
    return Outcome(done, out, _ids(5), notes)


def _check_dropped_and_asked_again(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    assert outcome.notes["asked"] == {f"{CATEGORY}_0": 1}, outcome.notes["asked"]
    summary = outcome.notes["summary"]
    assert summary["status"] == "complete", summary["status"]
    assert summary["entries"]["repaired_on_resume"]["unknown_ids"] == 1, summary["entries"]
    assert summary["categories"][CATEGORY] == {"accuracy": 1.0, "correct": 5, "total": 5}, summary["categories"]
    again = outcome.notes["again"]
    assert again.returncode == 0 and "5 already answered, 0 to ask" in again.stderr, again.stderr[-2000:]


# ---------------------------------------------------------------- a rerun with a smaller --limit


def _ids_in(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _bundle(ctx: Any, out: Path) -> Path:
    archive = ctx.tmp_path / "run.tar.gz"
    done = run_bfcl_ext(["bundle", str(out), "-o", str(archive)], cwd=ctx.tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return archive


def _a_smaller_limit_in_the_same_folder(ctx: Any) -> Outcome:
    standin, out = _first_run(ctx, 10)
    done = run_bfcl_ext(_run_args(standin.base_url, out, 5), cwd=ctx.tmp_path, timeout=240)
    archive = _bundle(ctx, out)
    verified = run_bfcl_ext(["verify", str(archive)], cwd=ctx.tmp_path, timeout=300)
    compared = run_bfcl_ext(["compare", str(out), str(archive)], cwd=ctx.tmp_path, timeout=120)
    # output_dir stays None: the table would count the 5 answers beyond --limit 5 as not selected
    return Outcome(done, notes={"out": out, "members": bundle_members(archive), "verified": verified,
                                "compared": compared})


def _check_the_selection_scored_and_the_rest_kept(outcome: Outcome) -> None:
    out: Path = outcome.notes["out"]
    summary = read_json(out / "summary.json")
    assert (summary["status"], summary["limit"]) == ("complete", 5), summary
    assert summary["categories"][CATEGORY] == {"accuracy": 1.0, "correct": 5, "total": 5}, summary["categories"]
    assert summary["entries"]["selected"] == summary["entries"]["answered"] == 5, summary["entries"]
    header = json.loads((out / SCORE_FILE).read_text().splitlines()[0])
    assert (header["correct_count"], header["total_count"]) == (5, 5), header
    assert sorted(_ids_in(out / RESULT_FILE)) == sorted(_ids(10)), "the answers beyond --limit 5 are not kept"
    bundled = [json.loads(line)["id"] for line in outcome.notes["members"][RESULT_FILE].decode().splitlines()]
    assert sorted(bundled) == sorted(_ids(5)), f"the bundle carries answers the run did not score: {bundled}"
    verified = outcome.notes["verified"]
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert f"{CATEGORY} 100.00% (5/5)" in verified.stdout, verified.stdout
    compared = outcome.notes["compared"]
    assert compared.returncode == 0, compared.stderr[-2000:]
    runs = compared.stdout.split("\n\n")[0]
    assert "partial (--limit 5)" in runs and "complete" not in runs, compared.stdout


def _a_bundle_scoring_more_than_its_limit(ctx: Any) -> Outcome:
    """What a smaller-limit rerun used to leave: summary.json says --limit 5, its scores cover 10 answers."""
    _, out = _first_run(ctx, 10)
    files = bundle_members(_bundle(ctx, out))
    summary = json.loads(files["summary.json"])
    summary["limit"] = 5
    files["summary.json"] = json.dumps(summary).encode()
    files[bundles.SUMS] = bundles.checksum_list(files)
    forged = ctx.tmp_path / "forged.tar.gz"
    bundles.write_archive(files, forged)
    return Outcome(run_bfcl_ext(["verify", str(forged)], cwd=ctx.tmp_path, timeout=300))


def _another_categorys_answers_added_to_the_bundle(ctx: Any) -> Outcome:
    """A result file of a category the run never scored (nor recorded), packed in and checksummed."""
    _, out = _first_run(ctx, 3)
    files = bundle_members(_bundle(ctx, out))
    files[OTHER_RESULT_FILE] = "".join(json.dumps({"id": f"multiple_{n}", "result": [{"f": "{}"}]}) + "\n"
                                       for n in range(3)).encode()
    files[bundles.SUMS] = bundles.checksum_list(files)
    forged = ctx.tmp_path / "forged.tar.gz"
    bundles.write_archive(files, forged)
    return Outcome(run_bfcl_ext(["verify", str(forged)], cwd=ctx.tmp_path, timeout=300))


# ---------------------------------------------------------------- the selection a summary claims


def _an_honest_limit_bundle(ctx: Any) -> Outcome:
    _, out = _first_run(ctx, 5)
    verified = run_bfcl_ext(["verify", str(_bundle(ctx, out))], cwd=ctx.tmp_path, timeout=300)
    return Outcome(verified, out, _ids(5), notes={"summary": read_json(out / "summary.json")})


def _check_the_honest_limit_verified(outcome: Outcome) -> None:
    summary = outcome.notes["summary"]
    assert (summary["limit"], summary["partial"], summary["status"]) == (5, True, "complete"), summary
    assert f"{CATEGORY} 100.00% (5/5)" in outcome.done.stdout, outcome.done.stdout


def _the_limit_raised_by_hand(ctx: Any) -> Outcome:
    """A --limit 5 run whose bundled summary.json is edited to say --limit 10, sums rewritten."""
    _, out = _first_run(ctx, 5)
    return forged_summary(ctx, _bundle(ctx, out), lambda summary: summary.update(limit=10))


def _the_limit_removed_by_hand(ctx: Any) -> Outcome:
    """A --limit 5 run's bundled summary.json edited to claim a full run: no limit, not partial."""
    _, out = _first_run(ctx, 5)

    def edit(summary: dict[str, Any]) -> None:
        del summary["limit"]
        summary["partial"] = False

    return forged_summary(ctx, _bundle(ctx, out), edit)


def _check_not_verified(outcome: Outcome) -> None:
    assert outcome.done.stdout == "", outcome.done.stdout
    assert outcome.notes["summary"]["categories"][CATEGORY]["total"] == 5, "the forgery kept the run's own scores"


def _check_every_entry_named(outcome: Outcome) -> None:
    _check_not_verified(outcome)
    line = next(line for line in outcome.done.stderr.splitlines() if line.startswith("bfcl-ext: error:"))
    assert f"claims every entry, no limit ({len(dataset_ids())} to answer) and scores them, the bundle answers 5: " \
           f"no answer to {CATEGORY}_5, " in line, line


def _an_honest_run_that_ended_with_exit_4(ctx: Any) -> Outcome:
    """--limit 5 against a stand-in that answers half its completions with an unusable body (seeded dice,
    one thread, no retries): some entries have no answer (exit 4, recorded as missing); bundled (a warning)
    and verified."""
    standin = ctx.standin_factory("--bad-reply-rate", "0.5", "--seed", "0")
    out = ctx.tmp_path / "out"
    failed = run_bfcl_ext(_run_args(standin.base_url, out, 5, "--num-threads", "1", "--max-retries", "0",
                                    "--retry-rounds", "1"), cwd=ctx.tmp_path, timeout=240)
    archive = ctx.tmp_path / "run.tar.gz"
    bundled = run_bfcl_ext(["bundle", str(out), "-o", str(archive)], cwd=ctx.tmp_path, timeout=120)
    verified = run_bfcl_ext(["verify", str(archive)], cwd=ctx.tmp_path, timeout=300)
    summary = read_json(out / "summary.json")
    return Outcome(verified, out, notes={"failed": failed, "bundled": bundled, "archive": archive, "summary": summary,
                                         "unanswered": summary["entries"]["failed_ids"]})


def _check_the_unanswered_recorded(outcome: Outcome) -> None:
    failed, bundled, summary = outcome.notes["failed"], outcome.notes["bundled"], outcome.notes["summary"]
    unanswered = outcome.notes["unanswered"]
    assert failed.returncode == 4, failed.stderr[-2000:]
    assert 0 < len(unanswered) < 5, f"the dice left {unanswered} unanswered: the row needs some answered, some not"
    assert summary["status"] == "incomplete", summary["status"]
    assert summary["categories"][CATEGORY] == {"accuracy": None, "correct": None, "total": 5,
                                               "missing": len(unanswered)}, summary["categories"]
    assert bundled.returncode == 0 and "the run's status is 'incomplete', not 'complete'" in bundled.stderr, \
        bundled.stderr[-2000:]
    assert outcome.done.stdout.startswith("verified "), outcome.done.stdout
    answers = bundle_members(outcome.notes["archive"])[RESULT_FILE].decode()
    ids = [json.loads(line)["id"] for line in answers.splitlines()]
    assert sorted(ids) == sorted(set(_ids(5)) - set(unanswered)), ids


def _an_exit_4_run_edited(ctx: Any, edit: Any) -> Outcome:
    """That exit-4 run's bundle, its summary.json edited by ``edit``, sums rewritten."""
    honest = _an_honest_run_that_ended_with_exit_4(ctx)
    assert honest.done.returncode == 0, honest.done.stderr[-2000:]
    forged = forged_summary(ctx, honest.notes["archive"], edit)
    forged.notes["unanswered"] = honest.notes["unanswered"]
    return forged


def _an_exit_4_run_edited_to_claim_complete(ctx: Any) -> Outcome:
    def edit(summary: dict[str, Any]) -> None:
        summary["status"] = "complete"
        summary["categories"][CATEGORY]["missing"] = 0

    return _an_exit_4_run_edited(ctx, edit)


def _an_exit_4_run_edited_to_say_complete(ctx: Any) -> Outcome:
    return _an_exit_4_run_edited(ctx, lambda summary: summary.update(status="complete"))


def _error_line(outcome: Outcome) -> str:
    assert outcome.done.stdout == "", outcome.done.stdout
    return next(line for line in outcome.done.stderr.splitlines() if line.startswith("bfcl-ext: error:"))


def _check_nothing_missing_refused(outcome: Outcome) -> None:
    unanswered = outcome.notes["unanswered"]
    assert f"the bundle answers {5 - len(unanswered)}: no answer to {', '.join(unanswered)}" in _error_line(outcome)


def _check_complete_refused(outcome: Outcome) -> None:
    assert f"but {len(outcome.notes['unanswered'])} of the 5 entries it selects (--limit 5) have no answer in the " \
           "bundle" in _error_line(outcome)


# ---------------------------------------------------------------- a result path that is not a regular file


def _at_the_result_path(make: Any) -> Any:
    """After a first run, the result file replaced by what ``make(path, scratch)`` puts there; the same
    command again (60 s: a run still going then is a hang)."""

    def scenario(ctx: Any) -> Outcome:
        standin, out = _first_run(ctx, 3)
        path = out / RESULT_FILE
        path.unlink()
        make(path, ctx.tmp_path)
        done = run_bfcl_ext(_run_args(standin.base_url, out, 3), cwd=ctx.tmp_path, timeout=60)
        return Outcome(done, notes={"path": path})

    return scenario


def _fifo(path: Path, _: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path, _: Path) -> None:
    path.mkdir()


def _link_to_a_device(path: Path, _: Path) -> None:
    path.symlink_to("/dev/null")


def _link_to_a_regular_file(path: Path, scratch: Path) -> None:
    target = scratch / "elsewhere.json"
    target.write_text("")
    path.symlink_to(target)


def _fifo_at(relative: str) -> Any:
    """After a first run, a FIFO at ``relative`` (a file the run reads or rewrites when it scores or starts);
    the same command again (60 s: a run still going then is a hang; it was, opening the FIFO)."""

    def scenario(ctx: Any) -> Outcome:
        standin, out = _first_run(ctx, 3)
        path = out / relative
        path.unlink()
        os.mkfifo(path)
        done = run_bfcl_ext(_run_args(standin.base_url, out, 3), cwd=ctx.tmp_path, timeout=60)
        return Outcome(done, out, _ids(3), notes={"path": path})

    return scenario


def _check_the_path_named(outcome: Outcome) -> None:
    line = next(line for line in outcome.done.stderr.splitlines() if line.startswith("bfcl-ext: error:"))
    assert f"cannot write {outcome.notes['path']}: not a regular file" in line, line


CASES: list[Case] = [
    Case("a result line's id edited to one BFCL cannot sort (simple_python_0x), then the same command twice",
         SECTION, _an_id_edited_to_one_bfcl_cannot_sort, 0, None, _check_dropped_and_asked_again),
    Case("a rerun in the same folder with a smaller --limit (10, then 5), bundled, verified and compared",
         SECTION, _a_smaller_limit_in_the_same_folder, 0, None, _check_the_selection_scored_and_the_rest_kept),
    Case("a bundle whose summary.json records --limit 5 but whose scores cover 10 answers (sums rewritten)",
         SECTION, _a_bundle_scoring_more_than_its_limit, EXIT_VERIFY_FAILED,
         f"bfcl-run/{RESULT_FILE} holds answers to entries the run did not select (--limit 5): {CATEGORY}_5"),
    Case("a bundle carrying a result file of a category it never re-scores (multiple), checksummed",
         SECTION, _another_categorys_answers_added_to_the_bundle, EXIT_VERIFY_FAILED,
         f"bfcl-run/{OTHER_RESULT_FILE} holds answers of a category the run neither records nor scores"),
    Case("an honest --limit 5 run, bundled: it verifies", SECTION, _an_honest_limit_bundle, 0, None,
         _check_the_honest_limit_verified),
    Case("a --limit 5 run's bundled summary.json edited to say limit 10 (sums rewritten)", SECTION,
         _the_limit_raised_by_hand, EXIT_VERIFY_FAILED,
         f"{CATEGORY}: summary.json claims the first 10 entries (10 to answer) and scores them, the bundle answers 5: "
         f"no answer to {CATEGORY}_5, {CATEGORY}_6, {CATEGORY}_7, {CATEGORY}_8, {CATEGORY}_9", _check_not_verified),
    Case("a --limit 5 run's bundled summary.json edited to claim a full run: limit removed, partial false", SECTION,
         _the_limit_removed_by_hand, EXIT_VERIFY_FAILED, f"{CATEGORY}: summary.json claims every entry, no limit (",
         _check_every_entry_named),
    Case("a --limit 5 run that ended with exit 4 (some entries unanswered, recorded as missing), bundled: it verifies",
         SECTION, _an_honest_run_that_ended_with_exit_4, 0, None, _check_the_unanswered_recorded),
    Case("that exit-4 run's bundled summary.json edited to claim complete, nothing missing (sums rewritten)",
         SECTION, _an_exit_4_run_edited_to_claim_complete, EXIT_VERIFY_FAILED,
         f"{CATEGORY}: summary.json records 0 without an answer among the first 5 entries (5 to answer), the bundle "
         "answers ", _check_nothing_missing_refused),
    Case("that exit-4 run's bundled summary.json edited to say status complete, its counts kept (sums rewritten)",
         SECTION, _an_exit_4_run_edited_to_say_complete, EXIT_VERIFY_FAILED,
         "summary.json records status 'complete', but ", _check_complete_refused),
    Case("a FIFO (mkfifo) at a result file's path", SECTION, _at_the_result_path(_fifo), 6,
         "not a regular file (a FIFO)", _check_the_path_named),
    Case("a folder at a result file's path", SECTION, _at_the_result_path(_folder), 6,
         "not a regular file (a folder)", _check_the_path_named),
    Case("a symbolic link to /dev/null at a result file's path", SECTION, _at_the_result_path(_link_to_a_device), 6,
         "not a regular file (a link to a character device)", _check_the_path_named),
    Case("a symbolic link to a regular file at a result file's path: followed", SECTION,
         _at_the_result_path(_link_to_a_regular_file), 0),
    Case("a FIFO (mkfifo) at a score file's path, then the same command (hung when scoring)", SECTION,
         _fifo_at(SCORE_FILE), 6, "not a regular file (a FIFO)", _check_the_path_named),
    Case("a FIFO (mkfifo) at score/data_overall.csv, then the same command (hung when scoring)", SECTION,
         _fifo_at("score/data_overall.csv"), 6, "not a regular file (a FIFO)", _check_the_path_named),
    Case("a FIFO (mkfifo) at .bfcl-ext/identity.json, then the same command (hung at start)", SECTION,
         _fifo_at(".bfcl-ext/identity.json"), 2, "identity.json is not a regular file; remove it"),
]
