"""``bfcl-ext bundle`` and ``bfcl-ext verify`` against real runs on the oracle stand-in.

Two runs of the same command into the same folder, each bundled: a bundle is byte-identical
when made twice, and the two runs' bundles differ only in fields that are times (and the
stand-in's own time stamps and random ids in /v1/models). Then every corruption ``verify``
must catch, each with its one-line message and exit code 5, nothing written outside its
temporary folder.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bfcl_ext import bundle as bundles
from bfcl_ext.errors import EXIT_CONFIG, EXIT_VERIFY_FAILED
from tests.conftest import run_bfcl_ext, start_standin

MODEL = "M"
CATEGORIES = "simple_python,multiple"
LIMIT = "3"

# Fields that are times or hosts: the only ones allowed to differ between two runs of one command.
TIME_AND_HOST_FIELDS = {
    "summary.json": [("started_at",), ("finished_at",), ("durations_s",)],
    "manifest.json": [("hostname",), ("started_at",), ("finished_at",)],
}
STANDIN_MODEL_LIST_TIMES = ("created",)  # /v1/models: vLLM's (and the stand-in's) creation time stamps
STANDIN_MODEL_LIST_IDS = ("id",)  # ... and the random "modelperm-..." id of each permission
RESULT_LINE_TIMES = ("latency",)
LEADERBOARD_TIMES = ("Latency Mean (s)", "Latency Standard Deviation (s)", "Latency 95th Percentile (s)")


@dataclass(frozen=True)
class Runs:
    output_dir: Path
    first: Path  # bundle of the first run
    first_again: Path  # the first run's folder bundled a second time
    second: Path  # bundle of the second run (same command, same folder, run afresh)
    first_stdout: str


def _run(base_url: str, output_dir: Path) -> None:
    done = run_bfcl_ext(["run", "--skip-vllm", "--base-url", base_url, "--model", MODEL, "--test-category",
                         CATEGORIES, "--limit", LIMIT, "--output-dir", str(output_dir)], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _bundle(output_dir: Path, archive: Path) -> str:
    done = run_bfcl_ext(["bundle", str(output_dir), "-o", str(archive)], timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    base = tmp_path_factory.mktemp("bundle-runs")
    standin = start_standin(base / "standin", "--served-model-name", MODEL)
    try:
        output_dir = base / "out"
        _run(standin.base_url, output_dir)
        first, first_again, second = base / "first.tar.gz", base / "first-again.tar.gz", base / "second.tar.gz"
        stdout = _bundle(output_dir, first)
        _bundle(output_dir, first_again)
        shutil.rmtree(output_dir)
        _run(standin.base_url, output_dir)
        _bundle(output_dir, second)
        yield Runs(output_dir, first, first_again, second, stdout)
    finally:
        standin.stop()


def _members(archive: Path) -> dict[str, bytes]:
    """Our own, trusted archives: every regular file, by name inside bfcl-run/."""
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def _rebuild(source: Path, target: Path, edit: Callable[[dict[str, bytes]], None], fix_sums: bool) -> Path:
    files = _members(source)
    edit(files)
    if fix_sums:
        files[bundles.SUMS] = bundles.checksum_list(files)
    bundles.write_archive(files, target)
    return target


def _verify(archive: Path, tmp_path: Path) -> tuple[int, str, str, Path]:
    """``bfcl-ext verify`` with its temporary folders under tmp_path/tmpdir (checked empty afterwards)."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    done = run_bfcl_ext(["verify", str(archive)], env={"TMPDIR": str(tmpdir)}, timeout=300)
    assert list(tmpdir.iterdir()) == [], "verify left files behind in its temporary folder"
    return done.returncode, done.stdout, done.stderr, tmpdir


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("bfcl-ext: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------- bundle


def test_the_same_folder_bundled_twice_gives_identical_bytes(runs: Runs) -> None:
    assert runs.first.read_bytes() == runs.first_again.read_bytes()
    raw = runs.first.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] & 0x08 == 0, "no file name in the gzip header"
    assert raw[4:8] == b"\0\0\0\0", "gzip mtime is 0"
    with tarfile.open(runs.first, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    for member in members:
        assert member.isreg() and member.name.startswith("bfcl-run/"), member.name
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode) == (
            0, 0, 0, "", "", 0o644), member.name


def test_a_bundle_holds_the_run_and_a_checksum_of_every_file(runs: Runs) -> None:
    files = _members(runs.first)
    assert {"summary.json", "manifest.json", "SHA256SUMS", "score/data_overall.csv",
            "result/M/non_live/BFCL_v4_simple_python_result.json", "result/M/non_live/BFCL_v4_multiple_result.json",
            "score/M/non_live/BFCL_v4_simple_python_score.json", "score/M/non_live/BFCL_v4_multiple_score.json",
            } <= set(files)
    assert not [name for name in files if name.startswith(".bfcl-eval") or "/." in name or name.endswith(".tmp")]
    sums = dict(reversed(line.split("  ", 1)) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name


def test_the_leaderboard_row_is_in_bfcls_own_csv_format(runs: Runs) -> None:
    text = _members(runs.first)["score/data_overall.csv"].decode()
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 1 and len(rows[0]) == len(header), "one row, one value per column (no stray comma)"
    row = dict(zip(header, rows[0], strict=True))
    assert row["Model"] == "M (FC; bfcl-ext)"
    assert row["Non-Live Multiple AST"] == "100.00%"
    assert "bfcl-run/score/data_overall.csv" in runs.first_stdout and "M (FC; bfcl-ext)" in runs.first_stdout


def _drop(payload: Any, path: tuple[str, ...]) -> None:
    if len(path) == 1:
        payload.pop(path[0], None)
    else:
        _drop(payload.get(path[0], {}), path[1:])


def _normalized(name: str, data: bytes) -> Any:
    """The file with the time and host fields removed, parsed."""
    if name in TIME_AND_HOST_FIELDS:
        payload = json.loads(data)
        for path in TIME_AND_HOST_FIELDS[name]:
            _drop(payload, path)
        if name == "manifest.json":
            for model in payload["server"]["models"]["data"]:
                for key in STANDIN_MODEL_LIST_TIMES:
                    model.pop(key)
                for permission in model.get("permission", []):
                    for key in STANDIN_MODEL_LIST_TIMES + STANDIN_MODEL_LIST_IDS:
                        permission.pop(key)
        return payload
    if name.startswith("result/"):
        lines = [json.loads(line) for line in data.decode().splitlines()]
        for line in lines:
            for key in RESULT_LINE_TIMES:
                line.pop(key)
        return lines
    if name.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        for row in rows:
            for key in LEADERBOARD_TIMES:
                row.pop(key, None)
        return rows
    if name == bundles.SUMS:  # checksums of files that differ in times differ too: compare the names
        return sorted(line.split("  ", 1)[1] for line in data.decode().splitlines())
    return data


def test_two_runs_differ_only_in_times_and_hosts(runs: Runs) -> None:
    first, second = _members(runs.first), _members(runs.second)
    assert sorted(first) == sorted(second)
    for name in sorted(first):
        if name.startswith("score/") and name.endswith("_score.json"):
            assert first[name] == second[name], f"score file {name} differs"
        assert _normalized(name, first[name]) == _normalized(name, second[name]), f"{name} differs beyond times"
    changed = {name for name in first if first[name] != second[name]}
    assert "summary.json" in changed  # the times really are there, and really are removed above


def test_lock_files_temporaries_and_links_stay_out(runs: Runs, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(runs.output_dir, folder, symlinks=True)
    (folder / ".summary.json.tmp").write_text("{}")
    (folder / "result" / "M" / "non_live" / "BFCL_v4_multiple_result.json.tmp").write_text("torn")
    (folder / "logs").mkdir()
    (folder / "logs" / "vllm-server.log").write_text("INFO vLLM started\n")
    (folder / "score" / "outside").symlink_to("/etc/hostname")
    (folder / "notes.txt").write_text("not part of a run")
    report = bundles.bundle(folder, tmp_path / "b.tar.gz")
    names = set(_members(report.archive))
    assert "logs/vllm-server.log" in names
    assert not {n for n in names if n.endswith(".tmp") or n.startswith(".") or "outside" in n or n == "notes.txt"}
    assert not {n for n in names if ".bfcl-eval" in n}


def test_bundling_a_folder_that_is_not_a_run_is_a_configuration_error(tmp_path: Path) -> None:
    done = run_bfcl_ext(["bundle", str(tmp_path), "-o", str(tmp_path / "x.tar.gz")])
    assert done.returncode == EXIT_CONFIG
    assert "no summary.json: not the output folder of a finished bfcl-ext run" in _error_line(done.stderr)
    assert not (tmp_path / "x.tar.gz").exists()


# ---------------------------------------------------------------- verify


def test_a_fresh_bundle_verifies(runs: Runs, tmp_path: Path) -> None:
    code, stdout, stderr, _ = _verify(runs.first, tmp_path)
    assert code == 0, stderr
    assert "verified" in stdout and "bfcl-eval 2026.3.23" in stdout
    assert "simple_python 100.00% (3/3), multiple 100.00% (3/3)" in stdout


def _failing(archive: Path, tmp_path: Path) -> str:
    code, _, stderr, _ = _verify(archive, tmp_path)
    assert code == EXIT_VERIFY_FAILED, stderr
    return _error_line(stderr)


RESULT = "result/M/non_live/BFCL_v4_multiple_result.json"


def test_a_tampered_file_fails(runs: Runs, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        files[RESULT] = files[RESULT].replace(b'"result": [', b'"result": [{"forged": "{}"}, ', 1)

    line = _failing(_rebuild(runs.first, tmp_path / "t.tar.gz", edit, fix_sums=False), tmp_path)
    assert f"bfcl-run/{RESULT} does not match its checksum" in line and "changed after bundling" in line


def test_a_missing_file_fails(runs: Runs, tmp_path: Path) -> None:
    line = _failing(_rebuild(runs.first, tmp_path / "m.tar.gz", lambda f: f.pop(RESULT), fix_sums=False), tmp_path)
    assert f"bfcl-run/{RESULT} is listed in SHA256SUMS but missing from the bundle" in line


def test_a_file_missing_from_the_checksum_list_fails(runs: Runs, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        files["score/extra.csv"] = b"a,b\n"

    line = _failing(_rebuild(runs.first, tmp_path / "e.tar.gz", edit, fix_sums=False), tmp_path)
    assert "bfcl-run/score/extra.csv is in the bundle but not in SHA256SUMS" in line


@pytest.mark.parametrize("keep", [0.5, -4])
def test_a_truncated_archive_fails(runs: Runs, tmp_path: Path, keep: float) -> None:
    raw = runs.first.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(raw[: int(len(raw) * keep)] if keep > 0 else raw[: int(keep)])
    assert "truncated archive" in _failing(cut, tmp_path)


def test_garbage_is_a_damaged_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip at all" * 10)
    assert "damaged archive" in _failing(junk, tmp_path)
    plain = tmp_path / "notar.tar.gz"
    plain.write_bytes(gzip.compress(b"not a tar" * 100))
    assert "damaged archive" in _failing(plain, tmp_path)


def _malicious(runs: Runs, target: Path, *members: tarfile.TarInfo, data: bytes = b"pwned\n") -> Path:
    """A hand-made archive: the good bundle's files, then the hostile members."""
    files = _members(runs.first)
    with tarfile.open(target, "w:gz") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(f"bfcl-run/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for member in members:
            if member.isreg():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return target


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize("case", ["dotdot", "dotdot-inside", "absolute", "symlink-out", "hardlink-out",
                                  "symlink-then-write", "device"])
def test_members_that_escape_are_refused_and_nothing_is_written(runs: Runs, tmp_path: Path, case: str) -> None:
    victim = tmp_path / "victim"
    members = {
        "dotdot": _member("../victim"),
        "dotdot-inside": _member("bfcl-run/../../victim"),
        "absolute": _member(str(victim)),
        "symlink-out": _member("bfcl-run/score/evil", tarfile.SYMTYPE, str(victim)),
        "hardlink-out": _member("bfcl-run/score/evil", tarfile.LNKTYPE, "../../victim"),
        "symlink-then-write": [_member("bfcl-run/logs", tarfile.SYMTYPE, str(tmp_path)),
                               _member("bfcl-run/logs/victim")],
        "device": _member("bfcl-run/score/dev", tarfile.CHRTYPE),
    }
    hostile = members[case]
    archive = _malicious(runs, tmp_path / "evil.tar.gz", *(hostile if isinstance(hostile, list) else [hostile]))
    line = _failing(archive, tmp_path)
    assert "refused" in line and "nothing was unpacked" in line, line
    expected = {"dotdot": "climbs out with '..'", "dotdot-inside": "climbs out with '..'",
                "absolute": "absolute path", "symlink-out": "a symbolic link", "hardlink-out": "a hard link",
                "symlink-then-write": "a symbolic link", "device": "a device"}[case]
    assert expected in line, line
    assert not victim.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "tmpdir"]


def test_a_member_twice_is_refused(runs: Runs, tmp_path: Path) -> None:
    """A second copy of a file would silently replace the first one on a naive unpack."""
    line = _failing(_malicious(runs, tmp_path / "dup.tar.gz", _member("bfcl-run/summary.json"), data=b"{}"), tmp_path)
    assert "member 'bfcl-run/summary.json' appears twice (nothing was unpacked)" in line


def test_a_bundle_scored_with_another_bfcl_eval_names_the_one_needed(runs: Runs, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["bfcl_eval"] = "2025.1.1"
        files["manifest.json"] = json.dumps(manifest).encode()

    line = _failing(_rebuild(runs.first, tmp_path / "v.tar.gz", edit, fix_sums=True), tmp_path)
    assert "scored with bfcl-eval 2025.1.1, but bfcl-eval 2026.3.23 is installed" in line
    assert "bfcl-eval==2025.1.1" in line


def test_an_edited_score_in_the_summary_fails_the_rescore(runs: Runs, tmp_path: Path) -> None:
    def edit(files: dict[str, bytes]) -> None:
        summary = json.loads(files["summary.json"])
        summary["categories"]["multiple"].update(accuracy=2 / 3, correct=2)
        files["summary.json"] = json.dumps(summary).encode()

    line = _failing(_rebuild(runs.first, tmp_path / "s.tar.gz", edit, fix_sums=True), tmp_path)
    assert ("category 'multiple': summary.json records 66.67% (2/3), re-scoring the bundled answers gives "
            "100.00% (3/3)") in line


def test_an_answer_changed_with_its_checksum_fixed_fails_the_rescore(runs: Runs, tmp_path: Path) -> None:
    """Someone edits an answer and SHA256SUMS: the recorded scores no longer follow from the answers."""
    def edit(files: dict[str, bytes]) -> None:
        lines = [json.loads(line) for line in files[RESULT].decode().splitlines()]
        lines[0]["result"] = [{"no_such_function": "{}"}]
        files[RESULT] = "".join(json.dumps(line) + "\n" for line in lines).encode()

    line = _failing(_rebuild(runs.first, tmp_path / "a.tar.gz", edit, fix_sums=True), tmp_path)
    assert "category 'multiple': summary.json records 100.00% (3/3), re-scoring the bundled answers gives " \
           "66.67% (2/3)" in line


@pytest.mark.parametrize("target", ["score-file", "leaderboard-row"])
def test_an_edited_score_file_or_leaderboard_row_fails_the_rescore(runs: Runs, tmp_path: Path, target: str) -> None:
    score = "score/M/non_live/BFCL_v4_multiple_score.json"

    def edit(files: dict[str, bytes]) -> None:
        if target == "score-file":
            files[score] = files[score].replace(b'"correct_count": 3', b'"correct_count": 2', 1)
        else:
            files["score/data_overall.csv"] = files["score/data_overall.csv"].replace(b",100.00%,", b",99.00%,", 1)

    line = _failing(_rebuild(runs.first, tmp_path / "f.tar.gz", edit, fix_sums=True), tmp_path)
    if target == "score-file":
        assert f"{score}: records 100.00% (2/3), re-scoring the bundled answers gives 100.00% (3/3)" in line
    else:
        assert ("score/data_overall.csv: column 'Non-Live Multiple AST' of model 'M (FC; bfcl-ext)' records "
                "'99.00%', re-scoring gives '100.00%'") in line


@pytest.mark.parametrize("field", ["overall_accuracy", "complete", "categories_not_scored"])
def test_a_leaderboard_claim_in_the_summary_must_follow_from_the_answers(
    runs: Runs, tmp_path: Path, field: str
) -> None:
    """summary.json's leaderboard block is the number people quote: raising it, or calling a partial
    run the whole leaderboard, is caught even with SHA256SUMS fixed."""
    forged = {"overall_accuracy": 0.9999, "complete": True, "categories_not_scored": []}

    def edit(files: dict[str, bytes]) -> None:
        summary = json.loads(files["summary.json"])
        summary["leaderboard"][field] = forged[field]
        files["summary.json"] = json.dumps(summary, indent=2).encode()

    line = _failing(_rebuild(runs.first, tmp_path / "l.tar.gz", edit, fix_sums=True), tmp_path)
    assert f"summary.json leaderboard.{field} records {forged[field]!r}, re-scoring the bundled answers gives" in line


# ---------------------------------------------------------------- one model per bundle (a folder used for several)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


TWO_ROWS = ("Rank,Overall Acc,Model,Model Link\n1,50.00%,B (FC; bfcl-ext),\n"
            "2,40.00%,org/A (FC; bfcl-ext),")


def test_a_folder_used_for_two_models_bundles_the_runs_model_only(tmp_path: Path) -> None:
    """BFCL keeps both models' trees side by side and one CSV row each; the bundle holds the run's."""
    folder = tmp_path / "run"
    _write(folder / "summary.json", json.dumps({"model": "org/A", "served_model_name": "org/A"}))
    _write(folder / "manifest.json", "{}")
    for model in ("org_A", "B"):
        _write(folder / "result" / model / "non_live" / "BFCL_v4_multiple_result.json", f'{{"id": "{model}"}}\n')
        _write(folder / "score" / model / "non_live" / "BFCL_v4_multiple_score.json", f'{{"id": "{model}"}}\n')
    _write(folder / "score" / "data_overall.csv", TWO_ROWS)
    _write(folder / "score" / "data_live.csv", "Rank,Model,Live Overall Acc\n1,org/A (FC; bfcl-ext),0.00%")
    _write(folder / "score" / "data_agentic.csv", "Rank,Model,Agentic Overall Acc\n1,B (FC; bfcl-ext),0.00%")
    _write(folder / "result" / "stray.json", "{}")
    _write(folder / "previous-20260101T000000" / "result" / "B" / "x_result.json", "{}")  # --fresh moved it aside
    report = bundles.bundle(folder, tmp_path / "b.tar.gz")
    files = _members(report.archive)
    assert sorted(files) == ["SHA256SUMS", "manifest.json", "result/org_A/non_live/BFCL_v4_multiple_result.json",
                             "score/data_live.csv", "score/data_overall.csv",
                             "score/org_A/non_live/BFCL_v4_multiple_score.json", "summary.json"]
    # the run's row, byte for byte as BFCL wrote it; a file with the run's row only is packed unchanged
    assert files["score/data_overall.csv"] == b"Rank,Overall Acc,Model,Model Link\n2,40.00%,org/A (FC; bfcl-ext),"
    assert files["score/data_live.csv"] == (folder / "score" / "data_live.csv").read_bytes()
    assert report.row is not None and report.row["Model"] == "org/A (FC; bfcl-ext)"
    [left_out] = [w for w in report.warnings if w.startswith("left out")]
    assert "'org/A' (result/org_A/, score/org_A/)" in left_out
    for name in ("result/B/", "score/B/", "result/stray.json", "score/data_agentic.csv: the whole file",
                 "score/data_overall.csv: the rows of 'B (FC; bfcl-ext)'"):
        assert name in left_out, left_out


def test_the_runs_leaderboard_row_is_never_another_served_models() -> None:
    served_a = {"model": "a,b", "served_model_name": "a,b"}
    other = [{"Model": "other (FC; bfcl-ext)", "Overall Acc": "9.00%"}]
    assert bundles.pick_leaderboard_row(other, served_a) is None
    assert bundles.pick_leaderboard_row([*other, {"Model": "a;b (FC; bfcl-ext)"}], served_a) == {
        "Model": "a;b (FC; bfcl-ext)"}
    registry = {"model": "Qwen/Qwen3-8B-FC", "served_model_name": "qwen"}
    assert bundles.pick_leaderboard_row([{"Model": "Qwen3-8B (FC)"}], registry) == {"Model": "Qwen3-8B (FC)"}
    assert bundles.model_dir_name("Qwen/Qwen3-8B-FC") == "Qwen_Qwen3-8B-FC"


OTHER_SCORE = "score/O/non_live/BFCL_v4_multiple_score.json"


@pytest.mark.parametrize("carried", ["other-score-file", "other-result-tree", "other-row", "stray-file",
                                     "extra-csv", "model-mismatch"])
def test_a_bundle_vouches_for_all_it_carries(runs: Runs, tmp_path: Path, carried: str) -> None:
    """Another model's tree, another model's leaderboard row, a file outside the layout: refused, checksums fixed."""
    def edit(files: dict[str, bytes]) -> None:
        if carried == "other-score-file":  # a score file claiming 3/3 for a model the bundle has no run of
            files[OTHER_SCORE] = files["score/M/non_live/BFCL_v4_multiple_score.json"]
        elif carried == "other-result-tree":
            files["result/O/non_live/BFCL_v4_multiple_result.json"] = files[RESULT]
        elif carried == "other-row":
            board = files["score/data_overall.csv"].decode()
            header, row = board.split("\n")[:2]
            files["score/data_overall.csv"] = f"{header}\n{row}\n{row.replace('M (FC', 'O (FC')}".encode()
        elif carried == "stray-file":
            files["score/notes.txt"] = b"nothing re-scores this"
        elif carried == "extra-csv":
            files["score/data_extra.csv"] = files["score/data_overall.csv"]
        else:
            summary = json.loads(files["summary.json"])
            summary["model"] = "O"
            files["summary.json"] = json.dumps(summary).encode()

    line = _failing(_rebuild(runs.first, tmp_path / "c.tar.gz", edit, fix_sums=True), tmp_path)
    expected = {
        "other-score-file": f"bfcl-run/{OTHER_SCORE} is of another model (score/O/): the bundle is the run of 'M' "
                              "(score/M/) and verify re-scores that model only",
        "other-result-tree": "bfcl-run/result/O/non_live/BFCL_v4_multiple_result.json is of another model (result/O/)",
        "other-row": "score/data_overall.csv: has a row for model 'O (FC; bfcl-ext)', which re-scoring the bundled "
                     "answers does not write",
        "stray-file": "bfcl-run/score/notes.txt is not part of a run of 'M' (a bundle holds summary.json, "
                      "manifest.json, SHA256SUMS, result/M/, score/M/, score/data_*.csv and logs/)",
        "extra-csv": "score/data_extra.csv is not written again when the bundled answers are re-scored",
        "model-mismatch": "manifest.json names model 'M', summary.json 'O': not the files of one run",
    }[carried]
    assert expected in line, line


# ---------------------------------------------------------------- the agentic and multi-turn categories


def test_memory_web_search_and_multi_turn_runs_bundle_and_verify(tmp_path: Path) -> None:
    """Memory snapshots and prerequisite answers are part of the run: bundled, checksummed, re-scored."""
    standin = start_standin(tmp_path / "standin", "--served-model-name", "m", "--search-api-key-env", "SEARCH_KEY",
                            env={"SEARCH_KEY": "k"})
    try:
        output_dir = tmp_path / "out"
        done = run_bfcl_ext(
            ["run", "--skip-vllm", "--base-url", standin.base_url, "--model", "m", "--test-category",
             "memory_kv,multi_turn_base,simple_python,web_search_base", "--limit", "3",
             "--output-dir", str(output_dir)],
            env={"SERPAPI_API_KEY": "k", "BFCL_EXT_SEARCH_BASE_URL": f"http://127.0.0.1:{standin.port}"}, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        standin.stop()
    archive = tmp_path / "m.tar.gz"
    _bundle(output_dir, archive)
    files = _members(archive)
    memory = "result/m/agentic/memory/kv/"
    assert {f"{memory}BFCL_v4_memory_kv_prereq_result.json", f"{memory}BFCL_v4_memory_kv_result.json",
            "result/m/agentic/BFCL_v4_web_search_base_result.json",
            "result/m/multi_turn/BFCL_v4_multi_turn_base_result.json",
            "score/m/agentic/memory/kv/BFCL_v4_memory_kv_score.json"} <= set(files)
    snapshots = [name for name in files if name.startswith(f"{memory}memory_snapshot/")]
    assert f"{memory}memory_snapshot/customer_final.json" in snapshots and any("prereq_checkpoints/" in n
                                                                                for n in snapshots)
    on_disk = sorted(p.relative_to(output_dir).as_posix() for tree in ("result", "score")
                     for p in (output_dir / tree).rglob("*") if p.is_file())
    assert sorted(n for n in files if n.startswith(("result/", "score/"))) == on_disk, "every file of the run"
    code, stdout, stderr, _ = _verify(archive, tmp_path)
    assert code == 0, stderr
    for category in ("simple_python", "multi_turn_base", "memory_kv", "web_search_base"):
        assert f"{category} 100.00% (3/3)" in stdout, stdout
