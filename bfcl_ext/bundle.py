"""``bfcl-ext bundle`` and ``bfcl-ext verify``: one run as a reproducible, checksummed archive, and its check.

A bundle is a ``.tar.gz`` holding one folder, ``bfcl-run/``: ``summary.json``, ``manifest.json``,
the run's model's ``result/<model>/`` and ``score/<model>/`` trees, BFCL's leaderboard CSVs
(``score/data_*.csv``, with that model's row only), ``logs/`` when the run launched vLLM, and
``SHA256SUMS`` (``sha256sum -c`` format, every other file). A folder used for several models holds
their trees side by side; the others stay out. Bundling the same folder twice gives the same bytes:
members sorted, regular files only, fixed mtime/owner/mode, gzip without a name or a time stamp.

Verifying never trusts the archive: the gzip stream is read to its end (a truncated archive fails
there), every member is checked before anything is written (a name that climbs out with ``..``,
an absolute name, a link, a device: refused), and regular files are then written one by one,
inside a temporary folder that is removed afterwards. Then: checksums, the bfcl-eval version and
its datasets, that the answers are those of the selection summary.json claims (its categories and
``limit``: no answer to an entry outside it, and one to every entry of it but those the summary
records as unanswered), and a re-score of the bundled answers with BFCL's checker, compared with
every score the bundle records. The selection and the re-score are the evaluator's own (its
datasets and checker, through ``bridge``), never re-implemented here.

A bundle vouches for everything it carries, and it carries one model: the run's. Why not re-score
every model a folder holds instead: the bundle's summary.json, manifest.json and dataset hashes
describe one run; another model's trees would come with no summary, served name, manifest or
dataset hashes of their own (re-scoring them needs a served name the bundle does not record), and
the bundle would then speak for runs it does not describe. Packing the run's model alone is the
simpler guarantee, and a bundle meant as one model's submission loses nothing by it: bundling
packs nothing else (``result/<model>/``, ``score/<model>/``, its row of each leaderboard CSV), and
verify refuses a bundle that holds another model's tree, another model's leaderboard row, any file
outside the layout above, or a score file or leaderboard CSV that re-scoring does not write again.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bfcl_ext.provenance import sha256_file
from bfcl_ext.record import Manifest, Summary, leaderboard_claim
from bfcl_ext.errors import BfclExtError, ConfigError, VerificationError

PREFIX = "bfcl-run"
SUMS = "SHA256SUMS"
TOP_FILES = ("summary.json", "manifest.json")
MODEL_TREES = ("result", "score")  # BFCL's: one folder per model inside each (model_dir_name)
LEADERBOARD_CSV = "score/data_overall.csv"
LEADERBOARD_CSVS = "data_*.csv"  # BFCL's leaderboard tables, directly under score/: one row per model scored there
BFCL_EXT_DISPLAY_SUFFIX = " (FC; bfcl-ext)"  # the display name bridge gives a served model BFCL does not know
FIXED_MTIME = 0
FILE_MODE = 0o644
GZIP_LEVEL = 6
TEMPORARY_SUFFIXES = (".tmp", ".lock", ".part", ".swp", "~")
MAX_UNPACKED_BYTES = 32 * 2**30  # a gzip bomb stops here, not when the disk is full
OUTPUT_SETTING = "OUTPUT_DIR"


# ---------------------------------------------------------------- bundle


@dataclass(frozen=True)
class BundleReport:
    archive: Path
    files: int
    size: int
    leaderboard: str | None  # where BFCL's leaderboard row is, or None when the run has none
    warnings: tuple[str, ...]
    row: dict[str, str] | None = None  # that row, column by column
    complete: bool = False  # the row covers the whole leaderboard


def bundle(output_dir: Path, archive: Path) -> BundleReport:
    """Pack ``output_dir`` into ``archive`` (written atomically)."""
    warnings: list[str] = []
    files = _collect(output_dir, archive, warnings)
    summary = Summary(_json_of(files, "summary.json", output_dir))
    _leave_out_unscored(files, summary, warnings)
    _leave_out_unselected(files, summary, output_dir, warnings)
    if summary.status != "complete":
        warnings.append(f"the run's status is {summary.status!r}, not 'complete'")
    board = summary.get("leaderboard")
    if isinstance(board, dict) and not board.get("complete"):
        unscored = board.get("categories_not_scored") or []
        warnings.append("the overall is partial, not a leaderboard submission: "
                        + (f"{len(unscored)} scoring categories not scored ({', '.join(unscored[:6])}"
                           f"{' ...' if len(unscored) > 6 else ''})" if unscored else "only the first "
                           f"{summary.get('limit')} entries of each category"))
    leaderboard = _leaderboard_row(files, summary)
    if leaderboard is None:
        warnings.append(f"{LEADERBOARD_CSV} is missing or has no row for the model (BFCL writes it only when "
                        "a category was scored, with at least two answers for its latency statistics)")
    files[SUMS] = checksum_list(files)
    write_archive(files, archive)
    where = (f"{PREFIX}/{LEADERBOARD_CSV} (model {leaderboard.get('Model')!r}, overall "
             f"{leaderboard.get('Overall Acc')})") if leaderboard else None
    complete = isinstance(board, dict) and bool(board.get("complete"))
    return BundleReport(archive, len(files), archive.stat().st_size, where, tuple(warnings), leaderboard, complete)


def _leave_out_unscored(files: dict[str, bytes], summary: Summary, warnings: list[str]) -> None:
    """The bundle carries the answers of the categories the run records, and the score files of those it
    scored: an earlier run into the folder that scored other categories left its answers and score
    files beside them. They stay in the folder; the bundle carries what its summary describes (its
    leaderboard row and ``categories_not_scored`` count them out, and verify would re-score them)."""
    from bfcl_ext import bridge

    recorded = summary.get("categories")
    if not isinstance(recorded, dict):
        return  # verify names it
    with _evaluator_for_reading():
        known = bridge.expand_categories(["all"])
        ours = [c for c in recorded if c in known]
        written = set(bridge.ids_by_result_file(bridge.load_entries(_ordered_categories(ours)))) if ours else set()
    scored = set(summary.scored)
    own = model_dir_name(str(summary.model))
    left_out: dict[str, set[str]] = {"answers": set(), "scores": set()}
    for name in list(files):
        tree, _, rest = name.partition("/")
        if tree not in MODEL_TREES or not rest.startswith(f"{own}/"):
            continue
        inside = rest[len(own) + 1:]
        if tree == "result" and inside.endswith("_result.json") and inside not in written:
            category = _category_of_file(inside, ("_result.json", "_prereq_result.json"), known)
            kind, keep = "answers", False
        elif tree == "score" and inside.endswith("_score.json"):
            category = _category_of_file(inside, ("_score.json",), known)
            kind, keep = "scores", category in scored
        else:
            continue
        if category is not None and not keep:
            del files[name]
            left_out[kind].add(category)
    categories = _ordered_categories([*left_out["answers"], *left_out["scores"]])
    if categories:
        what = " and ".join(k for k in ("answers", "scores") if left_out[k])
        warnings.append(f"left out the {what} of {len(categories)} categories this run did not score "
                        f"({', '.join(categories[:6])}{' ...' if len(categories) > 6 else ''}: an earlier run's in "
                        "this folder; they stay in the folder)")


def _category_of_file(name: str, suffixes: Sequence[str], known: Sequence[str]) -> str | None:
    """The category whose result or score file ``name`` is (BFCL's ``<prefix>_<category><suffix>``)."""
    base = name.rsplit("/", 1)[-1]
    matches = [c for c in known for suffix in suffixes if base.endswith(f"_{c}{suffix}")]
    return max(matches, key=len) if matches else None  # 'live_multiple' rather than 'multiple'


def _leave_out_unselected(files: dict[str, bytes], summary: Summary, output_dir: Path,
                          warnings: list[str]) -> None:
    """A ``--limit`` run's result files hold only the entries it selected in the bundle.

    An earlier run into the folder with a larger limit left answers the run did not score; they
    stay in the folder, but the bundle carries what its summary describes (verify refuses more).
    """
    try:
        limit = summary.limit
    except ValueError as error:
        raise ConfigError(OUTPUT_SETTING, str(output_dir), str(error)) from None
    if limit is None:
        return
    from bfcl_ext import bridge

    prefix = f"result/{model_dir_name(str(summary.model))}/"
    with _evaluator_for_reading():
        categories = _answered_categories(summary, (name.rsplit("/", 1)[-1] for name in files))
        allowed = bridge.ids_by_result_file(bridge.load_entries(categories, limit))
    left_out = 0
    for name in [n for n in files if n.startswith(prefix) and n.endswith("_result.json")]:
        ids = allowed.get(name[len(prefix):])
        if ids is None:
            continue
        lines = _text_lines(files[name])
        kept = [line for line, entry_id in zip(lines, _result_line_ids(files[name]), strict=True)
                if entry_id is None or entry_id in ids]  # a line without an id stays: verify names it
        if len(kept) != len(lines):
            left_out += len(lines) - len(kept)
            files[name] = "".join(line + "\n" for line in kept).encode("utf-8")
    if left_out:
        warnings.append(f"left out {left_out} answers to entries beyond --limit {limit} (an earlier run's in "
                        "this folder, not scored by this run; they stay in the folder)")


def model_dir_name(model: str) -> str:
    """The folder BFCL keeps a model's answers and scores in, under ``result/`` and ``score/``.

    bfcl-eval's ``BaseHandler.registry_dir_name``: the registry name with ``/`` made ``_``
    (``bridge.Session.model_dir``); bfcl-ext scores under ``--model``, which summary.json records.
    """
    return model.replace("/", "_")


def collect(output_dir: Path, exclude: Path | None = None) -> dict[str, bytes]:
    """The files a bundle holds, by path relative to the run folder (``/``-separated)."""
    return _collect(output_dir, exclude, [])


def _collect(output_dir: Path, exclude: Path | None, warnings: list[str]) -> dict[str, bytes]:
    """The run's files: the top files, its model's trees, its rows of the leaderboard CSVs, the logs.

    BFCL keeps every model scored in a folder side by side (``result/<model>/``, ``score/<model>/``,
    one row each in ``score/data_*.csv``); ``verify`` re-scores the run's model only, so the other
    models stay out (named in ``warnings``) rather than ride along unchecked.
    """
    if not output_dir.is_dir():
        raise ConfigError(OUTPUT_SETTING, str(output_dir), "not a folder")
    for name in TOP_FILES:
        if not (output_dir / name).is_file():
            raise ConfigError(OUTPUT_SETTING, str(output_dir), f"no {name}: not the output folder of a finished "
                              "bfcl-ext run")
    skip = exclude.resolve() if exclude else None
    files = {name: (output_dir / name).read_bytes() for name in TOP_FILES}
    summary = Summary(_json_of(files, "summary.json", output_dir))
    model = summary.model
    own = model_dir_name(model) if isinstance(model, str) else ""
    if not own or "/" in own or _name_problem(own):
        raise ConfigError(OUTPUT_SETTING, str(output_dir), f"summary.json names no model whose folder could be "
                          f"bundled (model {model!r})")
    left_out: list[str] = []
    for tree in MODEL_TREES:
        base = output_dir / tree
        if base.is_symlink() or not base.is_dir():
            continue
        for entry in sorted(base.iterdir(), key=lambda p: p.name):
            if _is_temporary(entry.name) or entry.is_symlink() or (skip is not None and entry.resolve() == skip):
                continue
            if entry.is_dir() and entry.name == own:
                files.update(_walk(output_dir, entry, skip))
            elif tree == "score" and entry.is_file() and fnmatch.fnmatchcase(entry.name, LEADERBOARD_CSVS):
                data, others = own_rows(entry.read_bytes(), summary)
                name = f"score/{entry.name}"
                if data is not None:
                    files[name] = data
                if others:
                    left_out.append(f"{name}: {'the rows' if data is not None else 'the whole file, with the row'}"
                                    f" of {', '.join(repr(m) for m in others)}")
            else:
                left_out.append(f"{tree}/{entry.name}{'/' if entry.is_dir() else ''}")
    logs = output_dir / "logs"
    if logs.is_dir() and not logs.is_symlink():
        files.update(_walk(output_dir, logs, skip))
    if left_out:
        warnings.append(f"left out, not of the run's model {model!r} (result/{own}/, score/{own}/): "
                        + "; ".join(left_out))
    return files


def _walk(output_dir: Path, base: Path, skip: Path | None) -> dict[str, bytes]:
    """Every regular file under ``base``, no lock files or temporaries. A link is refused, not left out:
    a run follows a link at a result path, so the bundle would lack answers it scored."""
    files: dict[str, bytes] = {}
    for directory, subdirs, names in os.walk(base, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not _is_temporary(d))
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(output_dir).as_posix()
            if path.is_symlink() and not _is_temporary(name):
                raise ConfigError(OUTPUT_SETTING, str(output_dir), f"cannot bundle {relative!r}: a symbolic link "
                                  "(a bundle holds regular files only: put the file itself there)")
            if _is_temporary(name) or not path.is_file() or path.resolve() == skip:
                continue
            problem = _name_problem(relative)
            if problem:
                raise ConfigError(OUTPUT_SETTING, str(output_dir), f"cannot bundle {relative!r}: {problem}")
            files[relative] = path.read_bytes()
    return files


def own_rows(data: bytes, summary: Mapping[str, Any]) -> tuple[bytes | None, list[str]]:
    """A leaderboard CSV cut to the run's row, byte for byte as BFCL wrote it, and the models left out.

    None when no row is the run's: the file then stays out of the bundle (re-scoring would not
    write it again from the run's answers). BFCL joins values with ``,`` and rows with ``\n``.
    """
    lines = data.split(b"\n")
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    columns = _csv_line(header)
    rows = [dict(zip(columns, _csv_line(line), strict=False)) for line in body]
    picked = pick_leaderboard_row(rows, summary)
    keep = [i for i, row in enumerate(rows) if picked is not None and row == picked][:1]
    others = [rows[i].get("Model") or "" for i in range(len(rows)) if i not in keep]
    if not keep:
        return None, others
    if not others:
        return data, []
    return b"\n".join([header, body[keep[0]]]) + (b"\n" if data.endswith(b"\n") else b""), others


def _csv_line(line: bytes) -> list[str]:
    return next(csv.reader([line.decode("utf-8", errors="replace")]), [])


def _is_temporary(name: str) -> bool:
    """Lock files, atomic-write temporaries (``.x.tmp``), the write probe: never part of a run."""
    return name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES)


def checksum_list(files: Mapping[str, bytes]) -> bytes:
    """``sha256sum`` format, sorted: ``cd bfcl-run && sha256sum -c SHA256SUMS`` checks it too."""
    return "".join(
        f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files) if name != SUMS
    ).encode()


def write_archive(files: Mapping[str, bytes], archive: Path) -> None:
    """A deterministic ``.tar.gz`` of ``files`` under ``bfcl-run/``: same input, same bytes."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    temporary = archive.with_name(f".{archive.name}.tmp")
    try:
        with temporary.open("wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as packed:
                with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in sorted(files):
                        data = files[name]
                        info = tarfile.TarInfo(f"{PREFIX}/{name}")
                        info.size = len(data)
                        info.mtime = FIXED_MTIME
                        info.mode = FILE_MODE
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        info.type = tarfile.REGTYPE
                        tar.addfile(info, io.BytesIO(data))
        os.replace(temporary, archive)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ConfigError("-o/--output", str(archive), f"cannot write ({error.strerror or error})") from None


def _json_of(files: Mapping[str, bytes], name: str, where: Path) -> dict[str, Any]:
    try:
        payload = json.loads(files[name])
    except (KeyError, ValueError):
        raise ConfigError(OUTPUT_SETTING, str(where), f"{name} is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ConfigError(OUTPUT_SETTING, str(where), f"{name} is not a JSON object")
    return payload


def _leaderboard_row(files: Mapping[str, bytes], summary: Mapping[str, Any]) -> dict[str, str] | None:
    data = files.get(LEADERBOARD_CSV)
    return pick_leaderboard_row(parse_csv(data.decode("utf-8", errors="replace")), summary) if data else None


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def pick_leaderboard_row(rows: Sequence[Mapping[str, str]], summary: Mapping[str, Any]) -> dict[str, str] | None:
    """The run's row of BFCL's ``data_overall.csv`` (the file holds one row per model in the folder).

    A row is the run's when its display name is the served or registry name (bfcl-ext shows a
    model BFCL does not know as ``<served name> (FC; bfcl-ext)``). A registry model's display name
    is BFCL's own (``Qwen3-8B (FC)``), which only the evaluator knows: a lone row is taken as the
    run's unless it names another model bfcl-ext served (``verify`` checks the row either way).
    """
    names = [str(summary.get(key)) for key in ("served_model_name", "model") if summary.get(key)]
    names += [name.replace(",", ";") for name in names if "," in name]  # bridge's display names have no comma
    for name in names:
        for row in rows:
            model = row.get("Model") or ""
            if model == name or model.startswith(name + " ("):
                return dict(row)
    if len(rows) == 1 and not (rows[0].get("Model") or "").endswith(BFCL_EXT_DISPLAY_SUFFIX):
        return dict(rows[0])
    return None


def read_leaderboard(root: Path, summary: Mapping[str, Any]) -> dict[str, str] | None:
    """The run's leaderboard row from a run folder (or an unpacked bundle), or None."""
    return leaderboard_row_in(root / LEADERBOARD_CSV, summary)


def leaderboard_row_in(path: Path, summary: Mapping[str, Any]) -> dict[str, str] | None:
    """The run's row of one ``data_overall.csv``, or None when the file or the row is missing."""
    if not path.is_file():
        return None
    return pick_leaderboard_row(parse_csv(path.read_text(encoding="utf-8", errors="replace")), summary)


# ---------------------------------------------------------------- unpacking an archive nobody vouched for


def _name_problem(name: str) -> str | None:
    """Why a path inside the bundle folder is refused, or None."""
    if not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute path"
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "backslash or control character in the name"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out with '..'"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' path component"
    return None


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    problem = _name_problem(name.rstrip("/") if member.isdir() else name)
    if problem:
        return f"{problem}: it would land outside the folder it is unpacked into"
    if member.issym():
        return f"a symbolic link (to {member.linkname!r}); a bundle holds regular files only"
    if member.islnk():
        return f"a hard link (to {member.linkname!r}); a bundle holds regular files only"
    if not (member.isreg() or member.isdir()):
        return "a device, pipe or other special file; a bundle holds regular files only"
    if name.split("/", 1)[0] != PREFIX:
        return f"outside {PREFIX}/: not a bfcl-ext bundle"
    return None


def unpack(archive: Path, workdir: Path) -> Path:
    """Check and unpack ``archive`` into ``workdir``; returns the bundle folder (``workdir/files/bfcl-run``).

    Nothing is written outside ``workdir``: the whole gzip stream is read first (truncation and
    corruption fail here), every member is validated next, and only then are regular files
    written, one by one, with exclusive creation that never follows a link.
    """
    if not archive.is_file():
        raise ConfigError("bundle", str(archive), "no such file")
    tar_path = workdir / "archive.tar"
    _gunzip(archive, tar_path)
    files_root = workdir / "files"
    files_root.mkdir()
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            members = tar.getmembers()
            _check_members(archive, members)
            for member in members:
                if member.isreg():
                    _write_member(tar, member, files_root)
    except tarfile.TarError as error:
        raise VerificationError(f"{archive}: damaged archive (tar: {error})") from None
    except OSError as error:
        raise VerificationError(f"{archive}: cannot unpack ({error.strerror or error})") from None
    folder = files_root / PREFIX
    if not folder.is_dir():
        raise VerificationError(f"{archive}: no {PREFIX}/ folder inside: not a bfcl-ext bundle")
    return folder


def _gunzip(archive: Path, target: Path) -> None:
    unpacked = 0
    try:
        with gzip.open(archive, "rb") as source, target.open("wb") as sink:
            while block := source.read(1 << 20):
                unpacked += len(block)
                if unpacked > MAX_UNPACKED_BYTES:
                    limit = MAX_UNPACKED_BYTES // 2**30
                    raise VerificationError(f"{archive}: unpacks to more than {limit} GiB; refused")
                sink.write(block)
    except EOFError:
        raise VerificationError(f"{archive}: truncated archive (the gzip stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise VerificationError(f"{archive}: damaged archive (gzip: {error})") from None
    except OSError as error:
        raise VerificationError(f"{archive}: cannot read ({error.strerror or error})") from None


def _check_members(archive: Path, members: Sequence[tarfile.TarInfo]) -> None:
    if not members:
        raise VerificationError(f"{archive}: empty archive: not a bfcl-ext bundle")
    seen: set[str] = set()
    for member in members:
        problem = _member_problem(member)
        if problem:
            raise VerificationError(f"{archive}: member {member.name!r} refused: {problem} (nothing was unpacked)")
        name = member.name.rstrip("/")
        if name in seen:
            raise VerificationError(f"{archive}: member {member.name!r} appears twice (nothing was unpacked)")
        seen.add(name)


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, files_root: Path) -> None:
    target = files_root.joinpath(*member.name.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(files_root.resolve()):  # cannot happen after the checks above
        raise OSError(f"{member.name!r} resolves outside the unpack folder")
    source = tar.extractfile(member)
    if source is None:
        raise tarfile.ReadError(f"no data for {member.name!r}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with source, os.fdopen(os.open(target, flags, FILE_MODE), "wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 20)


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Path]:
    """A run folder as is, or a bundle unpacked into a temporary folder removed on exit."""
    if path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bfcl-ext-bundle-") as workdir:
        yield unpack(path, Path(workdir))


# ---------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyReport:
    archive: Path
    files: int
    bfcl_eval: str
    scores: dict[str, tuple[float, int, int]]  # category -> accuracy, correct, total (re-scored)


def verify(archive: Path) -> VerifyReport:
    """Every check in order; the first failure raises ``VerificationError`` naming it."""
    from bfcl_ext import bridge

    with tempfile.TemporaryDirectory(prefix="bfcl-ext-verify-") as workdir:
        bridge.use_project_root(Path(workdir) / ".bfcl-eval")  # before anything of bfcl-eval's is imported
        root = unpack(archive, Path(workdir))
        count = check_checksums(archive, root)
        summary = Summary(_load(archive, root, "summary.json"))
        manifest = Manifest(_load(archive, root, "manifest.json"))
        model, served = _run_model(archive, summary, manifest)
        _check_contents(archive, root, model)
        version = _check_bfcl_eval(archive, manifest)
        _check_datasets(archive, manifest)
        _check_answers_carried(archive, root, summary, model)
        _check_scores_recorded(archive, root, summary, model)
        _check_selection_answered(archive, root, summary, model)
        scores = _check_rescore(archive, root, Path(workdir), summary, model, served)
    return VerifyReport(archive, count, version, scores)


def check_checksums(archive: Path | str, root: Path) -> int:
    """Every file listed has its checksum; every file is listed. Returns the number of files checked."""
    sums = root / SUMS
    if not sums.is_file():
        raise VerificationError(f"{archive}: {PREFIX}/{SUMS} is missing: not a bfcl-ext bundle, or damaged")
    listed: dict[str, str] = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or _name_problem(name):
            raise VerificationError(f"{archive}: {PREFIX}/{SUMS} line {number} is malformed: {line[:120]!r}")
        if name in listed:
            raise VerificationError(f"{archive}: {PREFIX}/{SUMS} lists {name!r} twice")
        listed[name] = digest
    for name, digest in listed.items():
        path = root.joinpath(*name.split("/"))
        if not path.is_file():
            raise VerificationError(f"{archive}: {PREFIX}/{name} is listed in {SUMS} but missing from the bundle")
        found = sha256_file(path)
        if found != digest:
            raise VerificationError(f"{archive}: {PREFIX}/{name} does not match its checksum ({SUMS}: "
                                    f"{digest[:16]}..., file: {found[:16]}...): it was changed after bundling")
    present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    for name in present:
        if name != SUMS and name not in listed:
            raise VerificationError(f"{archive}: {PREFIX}/{name} is in the bundle but not in {SUMS}")
    for name in TOP_FILES:
        if name not in listed:
            raise VerificationError(f"{archive}: {PREFIX}/{name} is missing from the bundle")
    return len(listed)


def _load(archive: Path, root: Path, name: str) -> dict[str, Any]:
    try:
        payload = json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise VerificationError(f"{archive}: {PREFIX}/{name} cannot be read as JSON ({error})") from None
    if not isinstance(payload, dict):
        raise VerificationError(f"{archive}: {PREFIX}/{name} is not a JSON object")
    return payload


def _run_model(archive: Path, summary: Summary, manifest: Manifest) -> tuple[str, str]:
    """The model the run scored (its registry name) and the name it was served under."""
    model_facts = manifest.model
    if not isinstance(model_facts, dict):
        raise VerificationError(f"{archive}: manifest.json 'model' is not an object")
    model = model_facts.get("name") or summary.model
    if not model or not isinstance(model, str):
        raise VerificationError(f"{archive}: neither manifest.json nor summary.json names the model")
    if summary.model and summary.model != model:
        raise VerificationError(f"{archive}: manifest.json names model {model!r}, summary.json "
                                f"{summary.model!r}: not the files of one run")
    own = model_dir_name(model)
    if "/" in own or _name_problem(own):
        raise VerificationError(f"{archive}: the model name {model!r} is not a folder name BFCL could have used")
    served = model_facts.get("served_as") or summary.served_model_name or model
    return model, str(served)


def _check_contents(archive: Path, root: Path, model: str) -> None:
    """The bundle carries the run's model alone: nothing it holds escapes the re-score of that model."""
    own = model_dir_name(model)
    layout = (f"summary.json, manifest.json, {SUMS}, result/{own}/, score/{own}/, score/{LEADERBOARD_CSVS} "
              "and logs/")
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        parts = name.split("/")
        if name in (SUMS, *TOP_FILES) or (parts[0] == "logs" and len(parts) > 1):
            continue
        if parts[0] in MODEL_TREES and len(parts) > 2 and parts[1] == own:
            continue
        if parts[0] == "score" and len(parts) == 2 and fnmatch.fnmatchcase(parts[1], LEADERBOARD_CSVS):
            continue
        if parts[0] in MODEL_TREES and len(parts) > 2:
            raise VerificationError(
                f"{archive}: {PREFIX}/{name} is of another model ({parts[0]}/{parts[1]}/): the bundle is the run "
                f"of {model!r} ({parts[0]}/{own}/) and verify re-scores that model only; bundle the run's folder "
                "again (another model's trees stay out)")
        raise VerificationError(f"{archive}: {PREFIX}/{name} is not part of a run of {model!r} (a bundle holds "
                                f"{layout})")


def _check_bfcl_eval(archive: Path, manifest: Manifest) -> str:
    from bfcl_ext import bridge

    recorded = manifest.bfcl_eval
    installed = bridge.installed_version()
    if not recorded:
        raise VerificationError(f"{archive}: manifest.json records no bfcl-eval version")
    if installed != recorded:
        have = f"bfcl-eval {installed} is installed" if installed else "bfcl-eval is not installed"
        raise VerificationError(
            f"{archive}: scored with bfcl-eval {recorded}, but {have}; verify it where bfcl-eval=={recorded} is "
            f"installed (pip install --no-deps bfcl-eval=={recorded})"
        )
    return str(recorded)


def _check_datasets(archive: Path, manifest: Manifest) -> None:
    """The installed prompts and ground truth are the ones the run was scored against."""
    from bfcl_ext import bridge

    recorded = manifest.categories
    if not isinstance(recorded, dict):
        raise VerificationError(f"{archive}: manifest.json 'categories' is not an object")
    for category, hashes in recorded.items():
        installed = bridge.dataset_hashes([category])[category]
        for kind in ("dataset", "ground_truth"):
            want = (hashes or {}).get(kind)
            have = installed.get(kind)
            if want != have:
                raise VerificationError(
                    f"{archive}: the installed bfcl-eval {kind.replace('_', ' ')} of category {category!r} is not "
                    f"the one the run was scored against (sha256 {str(want)[:16]}..., installed {str(have)[:16]}...)"
                )


def _check_answers_carried(archive: Path, root: Path, summary: Summary, model: str) -> None:
    """Every result file the bundle carries belongs to a category of the run, and holds answers to
    the entries the run selected only: verify re-scores those, and vouches for nothing else."""
    from bfcl_ext import bridge

    own = model_dir_name(model)
    results = root / "result" / own
    carried = sorted(results.rglob("*_result.json")) if results.is_dir() else []
    if not carried:
        return
    try:
        limit = summary.limit
    except ValueError as error:
        raise VerificationError(f"{archive}: {error}") from None
    # the categories summary.json records, not those a score file names: bundle leaves an earlier run's
    # other categories out, so answers of a category the summary does not record are a category edited out
    categories = _answered_categories(summary, ())
    allowed = bridge.ids_by_result_file(bridge.load_entries(categories, limit))
    for path in carried:
        name = path.relative_to(results).as_posix()
        shown = f"{PREFIX}/result/{own}/{name}"
        ids = allowed.get(name)
        if ids is None:
            raise VerificationError(
                f"{archive}: {shown} holds answers of a category the run neither records nor scores "
                f"(summary.json: {', '.join(summary.categories) or 'none'}): verify would not re-score "
                "them and does not vouch for them; bundle the run's folder again")
        extra = [entry_id or "a line without an id" for entry_id in _result_line_ids(path.read_bytes())
                 if entry_id not in ids]
        if extra:
            scope = f" (--limit {limit})" if limit else ""
            raise VerificationError(f"{archive}: {shown} holds answers to entries the run did not select{scope}: "
                                    f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def _check_scores_recorded(archive: Path, root: Path, summary: Summary, model: str) -> None:
    """Every score file the bundle carries is of a category summary.json records as scored: a category
    edited out of the summary, or edited to unscored, while its score file stays is refused (bundle
    leaves out the score files of categories its run did not score)."""
    from bfcl_ext import bridge

    recorded = summary.categories
    scored = set(summary.scored)
    own = model_dir_name(model)
    scores = root / "score" / own
    known = bridge.expand_categories(["all"])
    for path in sorted(scores.rglob("*_score.json")) if scores.is_dir() else []:
        category = _category_of_file(path.name, ("_score.json",), known)
        if category not in scored:
            said = ("does not record it" if category not in recorded else "records it as not scored")
            raise VerificationError(
                f"{archive}: {PREFIX}/score/{own}/{path.relative_to(scores).as_posix()} scores "
                f"{'category ' + repr(category) if category else 'no category bfcl-eval has'}, but summary.json "
                f"{said if category else 'cannot record it'} (summary.json scores: "
                f"{', '.join(sorted(scored)) or 'none'}): the summary does not describe the scores the bundle carries")


def _check_selection_answered(archive: Path, root: Path, summary: Summary, model: str) -> None:
    """The bundle answers the whole selection its summary.json claims, and records what it does not.

    The selection follows from the summary's own record, as ``run`` makes it: its categories, the
    first ``limit`` entries of each (every entry without a limit, memory prerequisites included).
    A category the summary scores has an answer to each of them (``run`` scores no other); one it
    leaves unscored (a run that ended with exit 4, or was interrupted: ``bundle`` packs those too,
    with a warning) records its selection's size as ``total`` and exactly how many of those have no
    answer as ``missing``. A ``complete`` status, and the ``entries`` counts, follow from the same
    selection. So raising ``limit`` by hand, or removing it to claim a full run, is refused.
    """
    from bfcl_ext import bridge

    recorded = summary.categories
    if not isinstance(recorded, dict):
        raise VerificationError(f"{archive}: summary.json 'categories' is not an object")
    try:
        limit = summary.limit
    except ValueError as error:
        raise VerificationError(f"{archive}: {error}") from None
    known = set(bridge.expand_categories(["all"]))
    for category, record in recorded.items():
        if category not in known:
            raise VerificationError(f"{archive}: summary.json records category {category!r}, which bfcl-eval "
                                    f"{bridge.installed_version()} does not have: verify cannot tell its entries")
        if not isinstance(record, dict):
            raise VerificationError(f"{archive}: summary.json category {category!r} is not an object")
    selection: dict[str, list[str]] = {category: [] for category in recorded}
    for entry in bridge.load_entries(_ordered_categories(list(recorded)), limit):
        selection.setdefault(bridge.category_of(entry["id"]), []).append(entry["id"])
    results = root / "result" / model_dir_name(model)
    answered = {entry_id for path in (sorted(results.rglob("*_result.json")) if results.is_dir() else [])
                for entry_id in _result_line_ids(path.read_bytes()) if entry_id is not None}
    claim = f"the first {limit} entries" if limit else "every entry, no limit"
    scope = f"--limit {limit}" if limit else "no limit"
    unanswered = 0
    selected = sum(len(selection.get(category, [])) for category in recorded)
    for category, record in recorded.items():
        ids = selection.get(category, [])
        missing = [entry_id for entry_id in ids if entry_id not in answered]
        unanswered += len(missing)
        have = f"the bundle answers {len(ids) - len(missing)}"
        if missing:
            have += f": no answer to {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        if record.get("accuracy") is not None:
            if missing:
                raise VerificationError(f"{archive}: {category}: summary.json claims {claim} ({len(ids)} to "
                                        f"answer) and scores them, {have}")
            continue
        if record.get("total") != len(ids):
            raise VerificationError(f"{archive}: {category}: summary.json records a total of {record.get('total')!r}"
                                    f" for {claim}, which are {len(ids)} to answer")
        if record.get("missing") != len(missing):
            raise VerificationError(f"{archive}: {category}: summary.json records {record.get('missing')!r} "
                                    f"without an answer among {claim} ({len(ids)} to answer), {have}")
    if summary.status == "complete" and unanswered:
        raise VerificationError(f"{archive}: summary.json records status 'complete', but {unanswered} of the "
                                f"{selected} entries it selects ({scope}) have no answer in the bundle")
    entries = summary.get("entries")
    if isinstance(entries, dict):
        for field_name, value in (("selected", selected), ("answered", selected - unanswered)):
            if field_name in entries and entries[field_name] != value:
                raise VerificationError(
                    f"{archive}: summary.json entries.{field_name} records {entries[field_name]!r}, but it selects "
                    f"{selected} entries ({scope}), {selected - unanswered} of them answered in the bundle")


def _check_rescore(
    archive: Path, root: Path, workdir: Path, summary: Summary, model: str, served: str
) -> dict[str, tuple[float, int, int]]:
    from bfcl_ext import bridge

    recorded = summary.categories
    scored = summary.scored
    categories = _ordered_categories([*scored, *_categories_with_score_files(root)])
    rescored_dir = workdir / "rescored"
    if not categories:  # nothing was scored: the checksums were the whole story, if no score is claimed either
        _compare_score_files(archive, root / "score", rescored_dir)
        return {}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the evaluator's progress lines; stdout is the verdict
            scores = bridge.rescore(str(model), str(served), root / "result", rescored_dir, categories,
                                    partial=summary.partial, limit=summary.limit)
    except BfclExtError as error:
        raise VerificationError(f"{archive}: cannot re-score the bundled answers: {error}") from None
    except Exception as error:  # noqa: BLE001 - the checker choking on the bundle is a verdict, not a crash
        raise VerificationError(f"{archive}: re-scoring the bundled answers failed "
                                f"({type(error).__name__}: {error})") from None
    for category in scored:
        want = recorded[category]
        got = scores.get(category)
        if got is None:
            raise VerificationError(f"{archive}: category {category!r}: summary.json records "
                                    f"{_score_text(want)}, but the bundle has no answers to re-score it")
        if (want.get("accuracy"), want.get("correct"), want.get("total")) != (got.accuracy, got.correct, got.total):
            raise VerificationError(
                f"{archive}: category {category!r}: summary.json records {_score_text(want)}, re-scoring the "
                f"bundled answers gives {_score_text(vars(got))}"
            )
    _check_overall(archive, summary, scores, scored)
    _compare_score_files(archive, root / "score", rescored_dir)
    _check_leaderboard(archive, summary, scores, rescored_dir)
    return {c: (s.accuracy, s.correct, s.total) for c, s in scores.items()}


def _check_leaderboard(archive: Path, summary: Mapping[str, Any], scores: Mapping[str, Any], rescored: Path) -> None:
    """summary.json's ``leaderboard`` (BFCL's weighted overall, and whether it is the whole leaderboard)
    must be what the re-scored answers give."""
    from bfcl_ext import bridge

    board = summary.get("leaderboard")
    if not isinstance(board, dict):
        return  # written by a bfcl-ext from before the whole leaderboard ran
    row = leaderboard_row_in(rescored / "data_overall.csv", summary)
    expected = leaderboard_claim(row, [c for c in bridge.scoring_categories() if c not in scores], summary.get("limit"))
    for field_name, value in expected.items():
        if board.get(field_name) != value:
            raise VerificationError(f"{archive}: summary.json leaderboard.{field_name} records "
                                    f"{board.get(field_name)!r}, re-scoring the bundled answers gives {value!r}")


def _ordered_categories(names: Sequence[str]) -> list[str]:
    from bfcl_ext import bridge

    order = {c: i for i, c in enumerate(bridge.expand_categories(["all"]))}
    return sorted(set(names), key=lambda c: (order.get(c, len(order)), c))


def _categories_with_score_files(root: Path) -> list[str]:
    """Categories BFCL wrote a score file for (an earlier run into the same folder may have added some)."""
    return _categories_of_score_files(path.name for path in (root / "score").rglob("*_score.json"))


def _categories_of_score_files(names: Iterable[str]) -> list[str]:
    from bfcl_ext import bridge

    known = bridge.expand_categories(["all"])
    found = []
    for name in names:
        matches = [c for c in known if name.endswith(f"_{c}_score.json")]
        if matches:
            found.append(max(matches, key=len))  # 'live_multiple' rather than 'multiple'
    return found


def _answered_categories(summary: Summary, score_files: Iterable[str]) -> list[str]:
    """The categories whose answers a bundle may carry: those summary.json records, and those scored."""
    from bfcl_ext import bridge

    known = set(bridge.expand_categories(["all"]))
    recorded = [c for c in summary.categories if c in known]
    return _ordered_categories([*recorded, *_categories_of_score_files(score_files)])


def _text_lines(data: bytes) -> list[str]:
    """A JSON-lines file's lines: split at "\n" only (str.splitlines() also splits at U+2028 and U+0085,
    which a line written with ensure_ascii=False may hold unescaped)."""
    return data.decode("utf-8", errors="replace").removesuffix("\n").split("\n") if data else []


def _result_line_ids(data: bytes) -> list[str | None]:
    """Each line's id (None: a line that is no JSON object with a text id)."""
    ids: list[str | None] = []
    for line in _text_lines(data):
        try:
            entry_id = json.loads(line).get("id")
        except (ValueError, AttributeError):
            entry_id = None
        ids.append(entry_id if isinstance(entry_id, str) else None)
    return ids


@contextlib.contextmanager
def _evaluator_for_reading() -> Iterator[None]:
    """bfcl-eval importable here: its project root (import-time folders) in a temporary folder."""
    from bfcl_ext import bridge

    if "bfcl_eval.constants.eval_config" in sys.modules:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="bfcl-ext-bundle-") as root:
        bridge.use_project_root(Path(root))
        yield


def _score_text(score: Mapping[str, Any]) -> str:
    accuracy = score.get("accuracy")
    shown = f"{accuracy:.2%}" if isinstance(accuracy, (int, float)) else repr(accuracy)
    return f"{shown} ({score.get('correct')}/{score.get('total')})"


def _check_overall(archive: Path, summary: Summary, scores: Mapping[str, Any], scored: list[str]) -> None:
    overall = summary.overall
    correct = sum(scores[c].correct for c in scored)
    total = sum(scores[c].total for c in scored)
    accuracy = correct / total if total else None
    if (overall.get("correct"), overall.get("total"), overall.get("accuracy")) != (correct, total, accuracy):
        raise VerificationError(
            f"{archive}: summary.json overall records {_score_text(overall)}, the re-scored categories add up to "
            f"{_score_text({'accuracy': accuracy, 'correct': correct, 'total': total})}"
        )


def _compare_score_files(archive: Path, recorded_dir: Path, rescored_dir: Path) -> None:
    """Every score file and leaderboard row the bundle carries is what BFCL writes now, and nothing more."""
    made = _score_files(rescored_dir)
    kept = _score_files(recorded_dir)
    for name in made:
        recorded = recorded_dir / name
        if not recorded.is_file():
            raise VerificationError(f"{archive}: score/{name} is missing: re-scoring the bundled answers writes it")
        difference = _score_file_difference(recorded, rescored_dir / name)
        if difference:
            raise VerificationError(f"{archive}: score/{name}: {difference}")
    for name in kept:
        if name not in made:
            raise VerificationError(f"{archive}: score/{name} is not produced again from the bundled answers")
    rewritten = sorted(rescored_dir.glob(LEADERBOARD_CSVS)) if rescored_dir.is_dir() else []
    for csv_path in rewritten:
        difference = _csv_difference(recorded_dir / csv_path.name, csv_path)
        if difference:
            raise VerificationError(f"{archive}: score/{csv_path.name}: {difference}")
    carried = sorted(recorded_dir.glob(LEADERBOARD_CSVS)) if recorded_dir.is_dir() else []
    for csv_path in carried:
        if csv_path.name not in {p.name for p in rewritten}:
            raise VerificationError(f"{archive}: score/{csv_path.name} is not written again when the bundled answers "
                                    "are re-scored: its rows do not follow from them")


def _score_files(score_dir: Path) -> list[str]:
    """Every BFCL score file under ``score_dir`` (all models' folders), relative to it."""
    if not score_dir.is_dir():
        return []
    return sorted(p.relative_to(score_dir).as_posix() for p in score_dir.rglob("*_score.json") if p.is_file())


def _score_file_difference(recorded: Path, rescored: Path) -> str | None:
    want = _json_lines(recorded)
    got = _json_lines(rescored)
    if want is None:
        return "not valid JSON lines"
    if want[:1] != got[:1]:
        header_want = want[0] if want and isinstance(want[0], dict) else {}
        header_got = got[0] if got and isinstance(got[0], dict) else {}
        return (f"records {_score_text(_header(header_want))}, re-scoring the bundled answers gives "
                f"{_score_text(_header(header_got))}")
    for index in range(1, max(len(want), len(got))):
        a = want[index] if index < len(want) else None
        b = got[index] if index < len(got) else None
        if a != b:
            entry = (a or b or {}).get("id") if isinstance(a or b, dict) else None
            return f"the checker's verdict on entry {entry!r} differs from the re-scored one (line {index + 1})"
    return None


def _header(header: Mapping[str, Any]) -> dict[str, Any]:
    return {"accuracy": header.get("accuracy"), "correct": header.get("correct_count"),
            "total": header.get("total_count")}


def _json_lines(path: Path) -> list[Any] | None:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    except (OSError, ValueError):
        return None


def _csv_difference(recorded: Path, rescored: Path) -> str | None:
    """The recorded rows are the re-scored ones (this model's), equal but for the rank: no more, no fewer."""
    if not recorded.is_file():
        return "missing: re-scoring the bundled answers writes it"
    made = parse_csv(rescored.read_text(encoding="utf-8"))
    want: dict[str | None, dict[str, str]] = {}
    for row in parse_csv(recorded.read_text(encoding="utf-8", errors="replace")):
        model = row.get("Model")
        if model in want:
            return f"has two rows for model {model!r}"
        if model not in {r.get("Model") for r in made}:
            return (f"has a row for model {model!r}, which re-scoring the bundled answers does not write (the "
                    "bundle vouches for its run's model only)")
        want[model] = row
    for row in made:
        model = row.get("Model")
        if model not in want:
            return f"has no row for model {model!r}"
        for column, value in row.items():
            if column != "Rank" and want[model].get(column) != value:
                return (f"column {column!r} of model {model!r} records {want[model].get(column)!r}, re-scoring "
                        f"gives {value!r}")
    return None


# ---------------------------------------------------------------- commands


def bundle_command(output_dir: Path, archive: Path) -> int:
    report = bundle(output_dir, archive)
    for warning in report.warnings:
        print(f"bfcl-ext: warning: {warning}", file=sys.stderr)
    print(f"wrote {report.archive} ({report.files} files, {report.size} bytes, checksums in {PREFIX}/{SUMS})")
    if report.leaderboard:
        print(f"leaderboard row (BFCL's data_overall.csv format): {report.leaderboard}")
    if report.row:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        print("the whole leaderboard:" if report.complete else "partial (not the whole leaderboard):")
        writer.writerow(list(report.row))
        writer.writerow(list(report.row.values()))
    print(f"check it with: bfcl-ext verify {report.archive}")
    return 0


def verify_command(archive: Path) -> int:
    report = verify(archive)
    scores = ", ".join(f"{c} {a:.2%} ({n}/{t})" for c, (a, n, t) in report.scores.items()) or "none"
    print(f"verified {report.archive}: {report.files} checksums match, bfcl-eval {report.bfcl_eval}, "
          f"re-scored categories equal the recorded scores: {scores}")
    return 0
