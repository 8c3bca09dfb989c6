"""Fault table rows: bundles of a folder used for two models (issue 11, section 7).

BFCL keeps every model scored in one output folder side by side: ``result/<model>/``,
``score/<model>/`` and one row each in ``score/data_*.csv``. The folder here holds two real runs
on the stand-in: ``org/B`` first, answering ``multiple`` wrongly (0/3), then ``A``, the oracle
(the run the folder's summary.json is of), as a folder without a recorded identity allows (an
older bfcl-ext's, or BFCL's own). ``bundle`` packs A alone; a bundle that carries B's
trees, with B's score raised and SHA256SUMS rewritten to match, is refused by ``verify``
(exit 5), whether it was laid out as bundles were before (every model's trees) or B's file was
added to A's bundle; so is a leaderboard row of B's added to A's CSV.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bfcl_ext import bundle as bundles
from bfcl_ext.errors import EXIT_VERIFY_FAILED
from tests.conftest import run_bfcl_ext
from tests.fault_cases import Case, Outcome

SECTION = "issue 11 section 7: a bundle vouches for all it carries"
RUN_MODEL, OTHER_MODEL = "A", "org/B"  # the run's model (ran last), the other one (ran first, in org_B/)
CATEGORIES, LIMIT = "simple_python,multiple", "3"
OTHER_SCORE = "score/org_B/non_live/BFCL_v4_multiple_score.json"


@dataclass(frozen=True)
class TwoModels:
    folder: Path  # the output folder both runs wrote into
    other_board: bytes  # score/data_overall.csv as B's run left it (B's row), before A's run replaced it


_SHARED: dict[str, TwoModels] = {}  # the two runs are made once per test session, then copied


def _run(ctx: Any, model: str, folder: Path, *standin_args: str) -> None:
    standin = ctx.standin_factory("--served-model-name", model, *standin_args)
    try:
        done = run_bfcl_ext(["run", "--skip-vllm", "--base-url", standin.base_url, "--model", model,
                             "--test-category", CATEGORIES, "--limit", LIMIT, "--output-dir", str(folder)],
                            timeout=300)
    finally:
        standin.stop()
    assert done.returncode == 0, done.stderr[-3000:]


def _two_models(ctx: Any) -> TwoModels:
    """A copy of the folder used for two models, in this row's scratch folder."""
    shared = _SHARED.get("runs")
    if shared is None or not shared.folder.is_dir():
        base = ctx.tmp_path / "two-models"
        folder = base / "out"
        _run(ctx, OTHER_MODEL, folder, "--mode", "wrong-category:multiple")
        other_board = (folder / bundles.LEADERBOARD_CSV).read_bytes()
        # bfcl-ext now refuses a folder holding another model's answers (.bfcl-ext/identity.json); one an older
        # bfcl-ext or BFCL's own `bfcl generate` wrote has no identity recorded, and takes the second model
        (folder / ".bfcl-ext" / "identity.json").unlink()
        _run(ctx, RUN_MODEL, folder)
        shared = _SHARED["runs"] = TwoModels(folder, other_board)
    copy = ctx.tmp_path / "out"
    shutil.copytree(shared.folder, copy, symlinks=True)
    return TwoModels(copy, shared.other_board)


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def _every_model(folder: Path) -> dict[str, bytes]:
    """The folder as bundles were laid out before: the top files and every model's trees."""
    files = {name: (folder / name).read_bytes() for name in bundles.TOP_FILES}
    for tree in ("result", "score"):
        for path in sorted((folder / tree).rglob("*")):
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def _raised(score_file: bytes) -> bytes:
    """B's multiple score, 0/3 on the disk, raised to 3/3 in its header."""
    header, _, rest = score_file.partition(b"\n")
    fields = json.loads(header)
    assert (fields["correct_count"], fields["total_count"]) == (0, 3), fields
    fields.update(accuracy=1.0, correct_count=3)
    return json.dumps(fields).encode() + b"\n" + rest


def _forged(ctx: Any, files: dict[str, bytes]) -> Outcome:
    """``files`` packed with SHA256SUMS rewritten to match, then verified."""
    files[bundles.SUMS] = bundles.checksum_list(files)
    archive = ctx.tmp_path / "forged.tar.gz"
    bundles.write_archive(files, archive)
    return Outcome(run_bfcl_ext(["verify", str(archive)], timeout=300), notes={"files": sorted(files)})


def _bundled(ctx: Any, two: TwoModels) -> tuple[dict[str, bytes], str]:
    archive = ctx.tmp_path / "run.tar.gz"
    done = run_bfcl_ext(["bundle", str(two.folder), "-o", str(archive)], timeout=120)
    assert done.returncode == 0, done.stderr
    return _members(archive), done.stderr


# ---------------------------------------------------------------- scenarios


def bundled_and_verified(ctx: Any) -> Outcome:
    two = _two_models(ctx)
    archive = ctx.tmp_path / "run.tar.gz"
    bundled = run_bfcl_ext(["bundle", str(two.folder), "-o", str(archive)], timeout=120)
    assert bundled.returncode == 0, bundled.stderr
    verified = run_bfcl_ext(["verify", str(archive)], timeout=300)
    # output_dir stays None: both models answered the same ids, each once in its own tree
    return Outcome(verified, notes={"files": _members(archive), "bundle_stderr": bundled.stderr,
                                    "on_disk": sorted(p.relative_to(two.folder).as_posix()
                                                      for p in two.folder.rglob("*") if p.is_file())})


def check_only_the_runs_model(outcome: Outcome) -> None:
    files: dict[str, bytes] = outcome.notes["files"]
    trees = sorted({"/".join(name.split("/")[:2]) for name in files if name.count("/") >= 2})
    assert trees == ["result/A", "score/A"], trees
    assert any(name.startswith("result/org_B/") for name in outcome.notes["on_disk"]), "B's trees are on disk"
    for name in (n for n in files if n.startswith("score/data_")):
        rows = bundles.parse_csv(files[name].decode())
        assert [row["Model"] for row in rows] == ["A (FC; bfcl-ext)"], (name, rows)
    assert "left out, not of the run's model 'A' (result/A/, score/A/): result/org_B/; score/org_B/" in \
        outcome.notes["bundle_stderr"]
    assert "multiple 100.00% (3/3)" in outcome.done.stdout


def every_models_tree_with_the_other_score_raised(ctx: Any) -> Outcome:
    files = _every_model(_two_models(ctx).folder)
    files[OTHER_SCORE] = _raised(files[OTHER_SCORE])
    return _forged(ctx, files)


def the_other_raised_score_added_to_the_runs_bundle(ctx: Any) -> Outcome:
    two = _two_models(ctx)
    files, _ = _bundled(ctx, two)
    files[OTHER_SCORE] = _raised((two.folder / OTHER_SCORE).read_bytes())
    return _forged(ctx, files)


def the_other_models_row_added_to_the_leaderboard(ctx: Any) -> Outcome:
    two = _two_models(ctx)
    files, _ = _bundled(ctx, two)
    header, own = files[bundles.LEADERBOARD_CSV].split(b"\n")[:2]
    other = two.other_board.split(b"\n")[1].split(b",")  # Rank, Overall Acc, Model, ...
    assert other[2] == b"org/B (FC; bfcl-ext)", other
    other[1] = b"100.00%"
    files[bundles.LEADERBOARD_CSV] = b"\n".join([header, b",".join(other), own])
    return _forged(ctx, files)


def check_not_verified(outcome: Outcome) -> None:
    assert "verified" not in outcome.done.stdout and outcome.done.stdout == ""


CASES: list[Case] = [
    Case("a folder used for two models, bundled: only the run's model's trees and rows go in, and it verifies",
         SECTION, bundled_and_verified, 0, None, check_only_the_runs_model),
    Case("every model's trees bundled (as before), the other model's score raised 0/3 -> 3/3, SHA256SUMS rewritten",
         SECTION, every_models_tree_with_the_other_score_raised, EXIT_VERIFY_FAILED,
         "bfcl-run/result/org_B/non_live/BFCL_v4_multiple_result.json is of another model (result/org_B/): the "
         "bundle is the run of 'A' (result/A/) and verify re-scores that model only", check_not_verified),
    Case("the other model's raised score file added to the run's bundle, SHA256SUMS rewritten",
         SECTION, the_other_raised_score_added_to_the_runs_bundle, EXIT_VERIFY_FAILED,
         f"bfcl-run/{OTHER_SCORE} is of another model (score/org_B/)", check_not_verified),
    Case("the other model's leaderboard row, raised, added to data_overall.csv in the run's bundle, sums rewritten",
         SECTION, the_other_models_row_added_to_the_leaderboard, EXIT_VERIFY_FAILED,
         "score/data_overall.csv: has a row for model 'org/B (FC; bfcl-ext)', which re-scoring the bundled answers "
         "does not write", check_not_verified),
]
