"""No hang, ever (issue 11, section 2): an answer that cannot be written, an exception in a worker
thread, workers that are all gone. Each run stops within seconds with one line, keeps every answer
written before the fault, and exits with its documented code (6: output, 1: internal).

How the faults are made, without privileges and without touching the machine:

* read-only results folder: the run goes on in a private mount namespace (``unshare -rm``: a user
  namespace mapping the caller to root, plus a mount namespace). Once some answers are on disk,
  ``<out>/result`` is bind-mounted onto itself and that bind remounted read-only: every later
  open for writing there fails with EROFS. chmod would not do: root, and root in a user namespace,
  write anyway. (A read-only remount of the whole folder would fail with EBUSY while the run holds
  its lock file open for writing; a fresh bind mount over ``result/`` has no writer yet.)
* disk full: the output folder is a tmpfs of 201 MiB in the same kind of namespace (the run's
  preflight wants 200 MiB free); once some answers are on disk, a filler file takes every page
  left: the next write that needs a page fails with ENOSPC, possibly half-way through a line. The
  tmpfs dies with the namespace, so the driver copies the output folder out before it ends.
* a FIFO at a result file's path mid-run: the file is moved away and ``mkfifo`` made in its place;
  then the file is put back and the same command run again.
* exception in a worker, every worker gone: the real ``bfcl-ext`` run through a few lines of
  Python that patch it first (``bridge.answer`` raises on the 21st call; ``generation._worker``
  answers three entries and then leaves, the way a thread killed by a bug would).

Where ``unshare -rm`` or a tmpfs mount is refused (a container without user namespaces), the two
namespace rows fail, saying why: CI's machines allow them, and a row that cannot run proves nothing.
Every run has a subprocess timeout of 60 s: a hang fails the row instead of blocking the suite.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fault_cases import Case, Outcome

SECTION = "issue 11 section 2: no hang, ever"
MODEL = "bfcl-ext-standin"
CATEGORY = "simple_python"
HANG_S = 60  # a run still going after this is a hang: the row fails
STOP_AFTER_FAULT_S = 15.0  # the in-flight grace is 10 s; with the stand-in's 0.05 s requests it takes ~1 s
FAULT_AFTER_LINES = 20
TMPFS_SIZE = "201m"  # just over the 200 MiB preflight


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _run_args(out: Path, port: int) -> tuple[list[str], dict[str, str]]:
    args = ["run", "--skip-vllm", "--model", MODEL, "--test-category", CATEGORY, "--output-dir", str(out),
            "--wait-timeout", "30", "--num-threads", "4"]
    return args, {"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(port)}


def _ids_on_disk(out: Path) -> list[str]:
    """Ids of the whole lines on disk (a line still being written is not counted)."""
    ids = []
    for path in sorted((out / "result").rglob("*_result.json")):
        for line in path.read_bytes().split(b"\n")[:-1]:
            try:
                ids.append(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                pass
    return ids


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("bfcl-ext: error:")]
    return lines[0] if lines else ""


def _check_kept_and_quick(outcome: Outcome, at_least_before: int = FAULT_AFTER_LINES - 4) -> None:
    """Every answer on disk at the fault is still there, and the run ended soon after the fault."""
    notes = outcome.notes
    assert outcome.output_dir is not None
    kept = set(_ids_on_disk(outcome.output_dir))
    before = set(notes["ids_at_fault"])
    assert len(before) >= at_least_before, notes  # the fault came after some answers...
    assert before <= kept, f"answers written before the fault are gone: {sorted(before - kept)[:10]}"
    assert len(kept) < 400, "...and before the run could finish"
    assert notes["stopped_after_fault_s"] < STOP_AFTER_FAULT_S, notes
    leftovers = [str(p) for p in outcome.output_dir.rglob("*.tmp")]
    assert not leftovers, f"half-written temporaries left behind: {leftovers}"
    summary = outcome.output_dir / "summary.json"
    if summary.exists():  # written if the disk still took it; never half a file
        recorded = json.loads(summary.read_text())
        assert recorded["status"] == "incomplete", recorded["status"]
        assert recorded["entries"]["answered"] == len(kept)


# ---------------------------------------------------------------- read-only folder, full disk


@functools.lru_cache(maxsize=1)
def _namespaces_refused() -> str | None:
    """None when ``unshare -rm`` can mount a tmpfs here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    with tempfile.TemporaryDirectory(prefix="bfcl-ext-ns-probe-") as folder:
        try:
            probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder],
                                   capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"unshare -rm failed: {error}"
    if probe.returncode != 0:
        return f"unshare -rm cannot mount a tmpfs here: {(probe.stderr or probe.stdout).strip()[:200]}"
    return None


def _in_namespace(context: Any, fault: str) -> Outcome:
    refused = _namespaces_refused()
    if refused:
        raise AssertionError(f"this row needs a private mount namespace with a tmpfs: {refused}")
    standin = context.standin_factory("--latency", "0.05")
    work = context.tmp_path
    mount = work / "mnt"
    mount.mkdir()
    out = mount / "out"
    args, env = _run_args(out, standin.port)
    spec = {
        "fault": fault, "mount": str(mount), "out": str(out), "copy_to": str(work / "out-copy"),
        "argv": [sys.executable, "-m", "bfcl_ext", *args], "env": _clean_env(env), "cwd": str(work),
        "stdout": str(work / "run.stdout"), "stderr": str(work / "run.stderr"), "notes": str(work / "notes.json"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    driver = subprocess.run(
        ["unshare", "-rm", sys.executable, "-m", "tests.fault_cases.no_hang", str(work / "spec.json")],
        cwd=_repo_root(), env=_clean_env({"PYTHONPATH": str(_repo_root())}), capture_output=True, text=True,
        timeout=HANG_S + 60, check=False,
    )
    assert driver.returncode == 0, f"the namespace driver failed:\n{driver.stdout[-2000:]}\n{driver.stderr[-3000:]}"
    notes = json.loads((work / "notes.json").read_text())
    assert not notes["hung"], f"bfcl-ext still running {HANG_S}s after start: a hang"
    done = subprocess.CompletedProcess(spec["argv"], notes["returncode"], Path(spec["stdout"]).read_text(),
                                       Path(spec["stderr"]).read_text())
    kept = Path(spec["copy_to"]) if fault == "disk-full" else out
    return Outcome(done, kept, notes=notes)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    from tests.conftest import clean_environment

    return clean_environment(extra)


def _check_result_file_named(cause: str) -> Any:
    def check(outcome: Outcome) -> None:
        line = _error_line(outcome.done.stderr)
        assert f"{outcome.notes['out']}/result/{MODEL}/" in line and f"_{CATEGORY}_result.json: {cause}" in line, line
        assert "run the same command again" in line, line
        _check_kept_and_quick(outcome)

    return check


def _driver(spec_path: str) -> int:
    """Runs inside ``unshare -rm``: start bfcl-ext, make the fault once some answers are on disk,
    wait for the end (killing a hang), and write down what happened."""
    spec = json.loads(Path(spec_path).read_text())
    mount, out = Path(spec["mount"]), Path(spec["out"])
    if spec["fault"] == "disk-full":
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)], check=True)
    started = time.monotonic()
    with open(spec["stdout"], "wb") as stdout, open(spec["stderr"], "wb") as stderr:
        process = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=spec["env"], stdout=stdout, stderr=stderr)
    ids_at_fault: list[str] = []
    fault_at = None
    while process.poll() is None and time.monotonic() - started < HANG_S:
        if fault_at is None and (out / "result").is_dir() and len(_ids_on_disk(out)) >= FAULT_AFTER_LINES:
            ids_at_fault = _ids_on_disk(out)
            _make_fault(spec["fault"], mount, out)
            fault_at = time.monotonic()
        time.sleep(0.01)
    hung = process.poll() is None
    if hung:
        process.kill()
    returncode = process.wait()
    if spec["fault"] == "disk-full":
        shutil.copytree(out, spec["copy_to"], symlinks=True)
    Path(spec["notes"]).write_text(json.dumps({
        "returncode": returncode, "hung": hung, "fault_made": fault_at is not None, "ids_at_fault": ids_at_fault,
        "stopped_after_fault_s": (time.monotonic() - fault_at) if fault_at else None, "out": str(out),
    }))
    return 0


def _make_fault(fault: str, mount: Path, out: Path) -> None:
    if fault == "read-only":
        result = str(out / "result")
        subprocess.run(["mount", "--bind", result, result], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", result], check=True)
        return
    with open(mount / "filler", "wb") as filler:  # every page the tmpfs has left
        block = b"\0" * 2**20
        try:
            while True:
                filler.write(block)
                filler.flush()
        except OSError:
            pass
    try:
        (mount / "probe").write_bytes(b"\0" * 8192)
    except OSError:
        return
    raise AssertionError("the tmpfs is not full")


# ---------------------------------------------------------------- a FIFO swapped in mid-run


def _fifo_swapped_in(context: Any) -> Outcome:
    """Once some answers are on disk, the result file is moved away and a FIFO made at its path
    (no reader: an open for writing blocks forever). Then the user puts the file back and reruns."""
    standin = context.standin_factory("--latency", "0.05")
    out = context.tmp_path / "out"
    args, env = _run_args(out, standin.port)
    argv = [sys.executable, "-m", "bfcl_ext", *args]
    process = subprocess.Popen(argv, cwd=context.tmp_path, env=_clean_env(env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    result_file = out / "result" / MODEL / "non_live" / f"BFCL_v4_{CATEGORY}_result.json"
    moved = result_file.with_name("moved-away.jsonl")
    deadline = time.monotonic() + HANG_S
    while not (result_file.is_file() and len(_ids_on_disk(out)) >= FAULT_AFTER_LINES):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the fault"
        time.sleep(0.01)
    ids_at_fault = _ids_on_disk(out)
    result_file.rename(moved)
    os.mkfifo(result_file)
    fault_at = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"bfcl-ext still running {HANG_S}s after a FIFO took its result file's place") from None
    stopped_after = time.monotonic() - fault_at
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    kept = [json.loads(line)["id"] for line in moved.read_bytes().split(b"\n")[:-1]]
    result_file.unlink()
    moved.rename(result_file)
    rerun = subprocess.run(argv, cwd=context.tmp_path, env=_clean_env(env), capture_output=True, text=True,
                           timeout=HANG_S, check=False)
    notes = {"ids_at_fault": ids_at_fault, "kept": kept, "stopped_after_fault_s": stopped_after,
             "result_file": str(result_file), "rerun": rerun}
    return Outcome(done, out, notes=notes)


def _check_fifo_swapped_in(outcome: Outcome) -> None:
    notes = outcome.notes
    line = _error_line(outcome.done.stderr)
    assert f"{notes['result_file']}: not a regular file (a FIFO)" in line, line
    assert notes["stopped_after_fault_s"] < STOP_AFTER_FAULT_S, notes
    assert set(notes["ids_at_fault"]) <= set(notes["kept"]), "answers written before the FIFO came are gone"
    assert len(notes["kept"]) < 400
    rerun = notes["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert outcome.output_dir is not None
    assert sorted(_ids_on_disk(outcome.output_dir)) == sorted(f"{CATEGORY}_{n}" for n in range(400))
    assert f"{len(notes['kept'])} already answered" in rerun.stderr, rerun.stderr[-2000:]


# ---------------------------------------------------------------- a worker raises; every worker gone


INJECT_RAISE = """
import json, sys, threading, time
from bfcl_ext import bridge, cli
real, calls, lock = bridge.answer, [0], threading.Lock()
def answer(session, entry):
    with lock:
        calls[0] += 1
        n = calls[0]
    if n == 21:
        time.sleep(0.3)  # the 20 asked before have landed
        with open(sys.argv[1], "w") as notes:
            json.dump({"ids_at_fault": sorted(bridge.answered_ids(session)), "entry": entry["id"],
                       "fault_at": time.time()}, notes)
        raise RuntimeError("injected fault in a worker")
    return real(session, entry)
bridge.answer = answer
sys.exit(cli.main(sys.argv[2:]))
"""

INJECT_VANISH = """
import json, sys, threading, time
from bfcl_ext import bridge, cli, generation
real = generation._worker
def vanishing(session, work, done, *rest):
    taken = [0]
    class Limited:
        def get(self):
            taken[0] += 1
            entry = work.get()
            if taken[0] <= 3:
                return entry
            with open(sys.argv[1] + f".{threading.get_ident()}", "w") as notes:
                json.dump({"ids_at_fault": sorted(bridge.answered_ids(session)), "fault_at": time.time()}, notes)
            return None  # took an entry and is gone without a word
    real(session, Limited(), done, *rest)
generation._worker = vanishing
sys.exit(cli.main(sys.argv[2:]))
"""


def _injected(context: Any, program: str) -> Outcome:
    standin = context.standin_factory("--latency", "0.05")
    out = context.tmp_path / "out"
    notes_path = context.tmp_path / "notes.json"
    args, env = _run_args(out, standin.port)
    argv = [sys.executable, "-c", program, str(notes_path), *args]
    done = subprocess.run(argv, cwd=context.tmp_path, env=_clean_env(env), capture_output=True, text=True,
                          timeout=HANG_S, check=False)
    ended = time.time()
    written = [json.loads(path.read_text()) for path in sorted(context.tmp_path.glob("notes.json*"))]
    assert written, f"the fault was never injected\n{done.stderr[-3000:]}"
    notes = {
        "ids_at_fault": sorted({i for note in written for i in note["ids_at_fault"]}),
        "stopped_after_fault_s": ended - min(note["fault_at"] for note in written),
        "faults": written,
    }
    return Outcome(done, out, notes=notes)


def _check_worker_raise(outcome: Outcome) -> None:
    line = _error_line(outcome.done.stderr)
    entry = outcome.notes["faults"][0]["entry"]
    assert f"internal error in a worker while answering {entry}: RuntimeError: injected fault in a worker" in line
    _check_kept_and_quick(outcome)


def _check_all_gone(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    assert len(outcome.notes["faults"]) == 4, outcome.notes  # each of the 4 threads left
    assert len(_ids_on_disk(outcome.output_dir)) == 12  # three answers each, then gone
    assert "with 388 entries still unanswered" in _error_line(outcome.done.stderr)
    _check_kept_and_quick(outcome, at_least_before=3)


CASES = [
    Case("results folder turns read-only during the run", SECTION,
         lambda context: _in_namespace(context, "read-only"), 6, "Read-only file system",
         _check_result_file_named("Read-only file system")),
    Case("disk fills up during the run (201 MiB tmpfs, then a filler)", SECTION,
         lambda context: _in_namespace(context, "disk-full"), 6, "No space left on device",
         _check_result_file_named("No space left on device")),
    Case("a FIFO (mkfifo) put at a result file's path during the run, then the file put back", SECTION,
         _fifo_swapped_in, 6, "not a regular file (a FIFO)", _check_fifo_swapped_in),
    Case("an exception in a worker thread", SECTION,
         lambda context: _injected(context, INJECT_RAISE), 1, "internal error in a worker while answering",
         _check_worker_raise),
    Case("every worker thread is gone", SECTION,
         lambda context: _injected(context, INJECT_VANISH), 1, "every worker thread is gone", _check_all_gone),
]


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1]))
