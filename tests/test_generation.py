"""generation.generate with a fake session: a worker that raises, an answer that cannot be written,
workers that vanish. Whatever happens, generate returns within seconds (never a hang), keeps what
was written, and says in ``report.fatal`` what stopped it."""

from __future__ import annotations

import errno
import os
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bfcl_ext import bridge, generation
from bfcl_ext.config import resolve
from bfcl_ext.errors import EXIT_INTERNAL, EXIT_OUTPUT, OutputError, WorkerError
from bfcl_ext.retry_policy import RetryPolicy

BOUND_S = 30.0  # generate must return well within this; a hang fails the test instead of blocking it


class Progress:
    def __init__(self) -> None:
        self.count = 0

    def update(self, n: int) -> None:
        self.count += n


class Fake:
    """bridge.answer and bridge.write_answer stand-ins; records what was asked and written."""

    def __init__(self, *, raise_on: dict[str, BaseException] | None = None,
                 write_raise_on: dict[str, BaseException] | None = None, delay: dict[str, float] | None = None):
        self.raise_on = raise_on or {}
        self.write_raise_on = write_raise_on or {}
        self.delay = delay or {}
        self.asked: list[str] = []
        self.written: list[str] = []
        self.lock = threading.Lock()

    def answer(self, _session: Any, entry: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.asked.append(entry["id"])
        time.sleep(self.delay.get(entry["id"], 0.001))
        if entry["id"] in self.raise_on:
            raise self.raise_on[entry["id"]]
        return {"id": entry["id"], "result": "ok"}

    def write_answer(self, _session: Any, line: dict[str, Any]) -> None:
        if line["id"] in self.write_raise_on:
            raise self.write_raise_on[line["id"]]
        with self.lock:
            self.written.append(line["id"])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    fake = Fake()
    monkeypatch.setattr(bridge, "answer", fake.answer)
    monkeypatch.setattr(bridge, "write_answer", fake.write_answer)
    monkeypatch.setattr(bridge, "sort_key", lambda entry: entry["id"])  # no bfcl-eval import here
    return fake


def entries(count: int) -> list[dict[str, Any]]:
    return [{"id": f"e_{i:03d}"} for i in range(count)]


def always_ready_gate(wait_ready: Any = lambda: None) -> generation.ServerGate:
    return generation.ServerGate(lambda: True, wait_ready)


def _policy(passes: int) -> RetryPolicy:
    return RetryPolicy(request_timeout=600.0, request_retries=0, passes=passes, recovery_timeout=0.0)


def generate_bounded(todo: list[dict[str, Any]], *, threads: int = 4, passes: int = 2, debug: bool = False,
                     gate: generation.ServerGate | None = None) -> tuple[generation.GenerationReport, float]:
    """generate() in a thread: returns its report and how long it took, or fails after BOUND_S."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["report"] = generation.generate(
                None, todo, threads=threads, policy=_policy(passes), gate=gate or always_ready_gate(),  # type: ignore[arg-type]
                stop=threading.Event(), progress=Progress(), debug=debug,
            )
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            box["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    took = time.monotonic() - started
    assert not thread.is_alive(), f"generate() still waiting after {BOUND_S:.0f}s: a hang"
    if "error" in box:
        raise box["error"]
    return box["report"], took


def test_everything_answered_without_fault(fake: Fake) -> None:
    report, _ = generate_bounded(entries(50))
    assert report.fatal is None
    assert report.answered == 50 and report.failed_ids == []
    assert sorted(fake.written) == [e["id"] for e in entries(50)]


def test_an_exception_in_a_worker_stops_the_run_with_one_line(fake: Fake) -> None:
    fake.raise_on["e_020"] = RuntimeError("injected fault")
    report, took = generate_bounded(entries(200), threads=4)
    assert took < 5, f"{took:.1f}s"
    assert isinstance(report.fatal, WorkerError) and report.fatal.exit_code == EXIT_INTERNAL
    message = str(report.fatal)
    assert "\n" not in message
    assert message.startswith("internal error in a worker while answering e_020: RuntimeError: injected fault")
    assert "test_generation.py:" in message  # where it was raised
    assert isinstance(report.fatal.__cause__, RuntimeError)
    assert report.passes == 1, "no retry pass after a fatal error"
    assert "e_020" not in fake.written and "e_020" in report.failed_ids
    assert {f"e_{i:03d}" for i in range(20)} <= set(fake.written)  # answered before the fault: kept
    assert len(fake.asked) < 40, "requests went on after the fault"
    assert set(report.failed_ids) == {e["id"] for e in entries(200)} - set(fake.written)


def test_a_base_exception_in_a_worker_is_caught_too(fake: Fake) -> None:
    fake.raise_on["e_005"] = SystemExit(3)  # would end the thread silently
    report, took = generate_bounded(entries(30), threads=2)
    assert took < 5
    assert isinstance(report.fatal, WorkerError)
    assert "while answering e_005: SystemExit: 3" in str(report.fatal)


def test_bfcl_ext_debug_prints_the_workers_traceback(fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake.raise_on["e_002"] = KeyError("missing")
    generate_bounded(entries(5), threads=1)
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no stray ./.env
    debug = resolve({}, {"BFCL_EXT_DEBUG": "1"}).debug  # as the CLI resolves it
    report, _ = generate_bounded(entries(5), threads=1, debug=debug)
    assert "Traceback" in capsys.readouterr().err and isinstance(report.fatal, WorkerError)


def test_an_answer_that_cannot_be_written_stops_the_run(fake: Fake) -> None:
    fault = OutputError("/out/result/x_result.json", "No space left on device")
    fake.write_raise_on["e_010"] = fault
    report, took = generate_bounded(entries(200), threads=4)
    assert took < 5
    assert report.fatal is fault and report.fatal.exit_code == EXIT_OUTPUT
    assert report.passes == 1
    assert {f"e_{i:03d}" for i in range(10)} <= set(fake.written)
    assert len(fake.asked) < 30


def test_answers_in_flight_when_the_run_stops_still_land(fake: Fake) -> None:
    fake.delay["e_000"] = 1.0  # asked first, still in flight when e_001 fails to be written
    fake.write_raise_on["e_001"] = OutputError("/out/f", "Read-only file system")
    report, took = generate_bounded(entries(20), threads=2)
    assert isinstance(report.fatal, OutputError)
    assert "e_000" in fake.written and report.answered >= 1
    assert 0.9 < took < 5
    assert fake.asked[:2] == ["e_000", "e_001"] and len(fake.asked) <= 3


def test_a_run_whose_workers_are_all_gone_ends(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    real_worker = generation._worker

    def vanishing(session: Any, work: Any, done: Any, *rest: Any) -> None:
        """Answers three entries, then takes a fourth and is gone without a word (a thread killed)."""
        taken = 0

        class Limited:
            def get(self) -> Any:
                nonlocal taken
                taken += 1
                entry = work.get()
                return entry if taken <= 3 else None

        real_worker(session, Limited(), done, *rest)

    monkeypatch.setattr(generation, "_worker", vanishing)
    report, took = generate_bounded(entries(100), threads=4)
    assert took < 5
    assert isinstance(report.fatal, WorkerError)
    assert "every worker thread is gone" in str(report.fatal)
    assert len(fake.written) == 12 and report.answered == 12
    assert len(report.failed_ids) == 88


def test_a_failing_readiness_wait_lets_the_other_threads_go(fake: Fake) -> None:
    def broken_wait() -> str | None:
        time.sleep(0.2)
        raise ValueError("bad readiness payload")

    gate = generation.ServerGate(lambda: False, broken_wait)
    fake.raise_on["e_003"] = bridge.TransportError("connection reset")
    report, took = generate_bounded(entries(40), threads=4, gate=gate)
    assert took < 5
    assert isinstance(report.fatal, WorkerError)
    assert "ValueError: bad readiness payload" in str(report.fatal)
    assert gate.abandoned_reason is not None and gate.wait_open() is False  # open: nobody waits on it


# ---------------------------------------------------------------- bridge.write_answer on a failing disk


class FailingHandler:
    """Writes like upstream's handler.write, but the disk fills half-way through the line."""

    registry_dir_name = "fake-model"

    def __init__(self, fail: int | None) -> None:
        self.fail = fail

    def write(self, line: dict[str, Any], result_dir: Path, update_mode: bool) -> None:
        from bfcl_eval.utils import extract_test_category_from_id, get_directory_structure_by_id

        folder = result_dir / self.registry_dir_name / get_directory_structure_by_id(line["id"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{bridge._version_prefix()}_{extract_test_category_from_id(line['id'])}_result.json"
        text = json.dumps(line) + "\n"
        with path.open("a") as handle:
            if self.fail is None:
                handle.write(text)
                return
            handle.write(text[: len(text) // 2])
            handle.flush()
            raise OSError(self.fail, os.strerror(self.fail))


def session_with(handler: Any, tmp_path: Path) -> bridge.Session:
    return bridge.Session(handler, "fake-model", "fc", tmp_path / "result", tmp_path / "score", bridge.RequestStats())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_write_answer_names_the_file_and_cuts_off_half_a_line(tmp_path: Path, code: int) -> None:
    session = session_with(FailingHandler(None), tmp_path)
    bridge.write_answer(session, {"id": "simple_python_0", "result": "first"})
    (path,) = list((tmp_path / "result").rglob("*_result.json"))
    before = path.read_text()
    session.handler.fail = code
    with pytest.raises(OutputError) as raised:
        bridge.write_answer(session, {"id": "simple_python_1", "result": "second"})
    assert raised.value.exit_code == EXIT_OUTPUT
    assert str(path) in str(raised.value) and os.strerror(code) in str(raised.value)
    assert path.read_text() == before, "a torn line was left behind"


def test_write_answer_names_the_folder_it_cannot_create(tmp_path: Path) -> None:
    session = session_with(FailingHandler(None), tmp_path)
    (tmp_path / "result").write_text("a file where the results folder should be")
    with pytest.raises(OutputError) as raised:
        bridge.write_answer(session, {"id": "simple_python_0", "result": "x"})
    assert str(tmp_path / "result") in str(raised.value)


def test_auto_concurrency_grows_to_the_servers_batch_and_holds_there(
    fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that runs 24 at once (the rest wait): the cap grows from 8 to about 24 and stays near it;
    every entry is answered once."""
    from bfcl_ext.concurrency import AutoConcurrency

    batch, lock, in_flight, peak = 24, threading.Lock(), [0], [0]

    def answer(_session: Any, entry: dict[str, Any]) -> dict[str, Any]:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        with lock:
            in_flight[0] -= 1
        return {"id": entry["id"], "result": "ok"}

    def read() -> tuple[float, float]:
        with lock:
            return min(in_flight[0], batch), max(0, in_flight[0] - batch)

    monkeypatch.setattr(bridge, "answer", answer)
    auto = AutoConcurrency(read, start=8, maximum=256, poll_s=0.02, hold_s=0.3)
    box: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: box.update(report=generation.generate(
        None, entries(3000), threads=auto, policy=_policy(0), gate=always_ready_gate(),  # type: ignore[arg-type]
        stop=threading.Event(), progress=Progress())), daemon=True)
    worker.start()
    worker.join(BOUND_S)
    assert not worker.is_alive(), "a hang"
    report = box["report"]
    assert report.fatal is None and report.answered == 3000
    assert sorted(fake.written) == sorted(e["id"] for e in entries(3000))
    record = report.concurrency
    assert record["mode"] == "auto" and record["min"] == 8 and record["samples"] > 10
    assert batch * 0.75 <= record["median"] <= batch * 1.3, auto.samples
    assert batch <= record["max"] <= batch * 1.5, auto.samples
    assert peak[0] <= record["max"]


def test_a_stop_request_lets_workers_waiting_for_a_slot_go(fake: Fake) -> None:
    """Workers beyond a lowered cap wait for a slot; a stop ends the run all the same, in seconds."""
    from bfcl_ext.concurrency import AutoConcurrency

    fake.delay = {f"e_{i:03d}": 0.2 for i in range(100)}
    auto = AutoConcurrency(lambda: (1, 50), start=16, maximum=32, poll_s=0.02)  # always waiting: the cap drops to 1
    stop = threading.Event()
    box: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: box.update(report=generation.generate(
        None, entries(100), threads=auto, policy=_policy(2), gate=always_ready_gate(),  # type: ignore[arg-type]
        stop=stop, progress=Progress())), daemon=True)
    worker.start()
    time.sleep(0.6)
    stop.set()
    worker.join(BOUND_S)
    assert not worker.is_alive(), "a hang"
    report = box["report"]
    assert report.stopped and report.fatal is None
    assert report.answered == len(fake.written) < 100
    assert report.concurrency["min"] == 1
