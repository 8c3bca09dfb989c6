"""Rows: result lines a hostile user (or upstream BFCL) leaves that used to break every rerun, and a
result file that is a link, bundled. Found by the hostile pass on issue 11's fixes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import read_json, run_bfcl_ext
from tests.fault_cases import Case, Outcome
from tests.fault_cases.results_on_disk import (
    CATEGORY,
    OTHER_RESULT_FILE,
    RESULT_FILE,
    _asked,
    _first_run,
    _ids,
    _run_args,
)

SECTION = "issue 11: every number honest (hostile pass on the fixes)"


def _rerun_after(edit: Any) -> Any:
    """A first run of 3 entries, ``edit(out)``, then the same command: what it asked again."""

    def scenario(ctx: Any) -> Outcome:
        standin, out = _first_run(ctx, 3)
        edit(out)
        before = standin.stats()["entries"]
        done = run_bfcl_ext(_run_args(standin.base_url, out, 3), cwd=ctx.tmp_path, timeout=240)
        notes = {"asked": _asked(before, standin.stats()["entries"]), "summary": read_json(out / "summary.json")}
        return Outcome(done, out, _ids(3), notes)

    return scenario


def _byte_that_is_not_utf8(out: Path) -> None:
    path = out / RESULT_FILE
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:-1] + b', "note": "\xff"}'  # the line is JSON but not UTF-8
    path.write_bytes(b"\n".join(lines))


def _list_id_in_another_categorys_file(out: Path) -> None:
    (out / OTHER_RESULT_FILE).write_text(json.dumps({"id": ["x"], "result": 1}) + "\n")


def _line_separator_inside_an_answer(out: Path) -> None:
    path = out / RESULT_FILE
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[1]["note"] = "text\u2028more\u0085end"  # as upstream writes it: ensure_ascii=False
    path.write_text("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))


def _check_asked(expected: dict[str, int]) -> Any:
    def check(outcome: Outcome) -> None:
        assert outcome.notes["asked"] == expected, outcome.notes["asked"]
        assert outcome.notes["summary"]["status"] == "complete", outcome.notes["summary"]["status"]

    return check


def _bundle_of_a_linked_result_file(ctx: Any) -> Outcome:
    _, out = _first_run(ctx, 3)
    path = out / RESULT_FILE
    moved = ctx.tmp_path / "real.json"
    path.rename(moved)
    path.symlink_to(moved)
    done = run_bfcl_ext(["bundle", str(out), "-o", str(ctx.tmp_path / "b.tar.gz")], cwd=ctx.tmp_path)
    return Outcome(done, notes={"bundle": ctx.tmp_path / "b.tar.gz"})


def _check_no_bundle(outcome: Outcome) -> None:
    assert not outcome.notes["bundle"].exists()


CASES = [
    Case("a result line holding a byte that is not UTF-8 (0xff), then the same command", SECTION,
         _rerun_after(_byte_that_is_not_utf8), 0, check=_check_asked({f"{CATEGORY}_1": 1})),
    Case("a line with a list as its id in the file of a category the run does not ask, then the same command",
         SECTION, _rerun_after(_list_id_in_another_categorys_file), 0, check=_check_asked({})),
    Case("an answer holding U+2028 and U+0085 unescaped (upstream's ensure_ascii=False): kept", SECTION,
         _rerun_after(_line_separator_inside_an_answer), 0, check=_check_asked({})),
    Case("bundle of a folder whose result file is a link to a regular file: refused, not left out", SECTION,
         _bundle_of_a_linked_result_file, 2, f"cannot bundle '{RESULT_FILE}': a symbolic link",
         check=_check_no_bundle),
]
