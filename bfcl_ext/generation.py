"""Ask the server about every pending entry, concurrently, without losing or duplicating one.

Answers are appended to BFCL's result files as they arrive (so a kill loses at most the
requests in flight). An entry whose request failed for transport reasons is not written: it
is asked again in a later pass, and after the last pass it is reported as failed. When the
server goes away, new requests wait while one thread waits for it to come back.

Nothing makes the run wait forever: an answer that cannot be written (``OutputError``) or any
other exception in a worker (``WorkerError``) stops the run as a signal does (no new request,
answers in flight may land for ``IN_FLIGHT_GRACE_S``) and ends up in ``GenerationReport.fatal``;
a pass also ends when no worker is left to answer.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bfcl_ext import bridge
from bfcl_ext.concurrency import Concurrency, Limiter
from bfcl_ext.errors import BfclExtError, WorkerError
from bfcl_ext.retry_policy import RetryPolicy

IN_FLIGHT_GRACE_S = 10.0  # after a stop request, how long answers already asked for may still land


@dataclass
class GenerationReport:
    answered: int = 0
    failed_ids: list[str] = field(default_factory=list)
    entries_retried: int = 0
    passes: int = 0
    recoveries: int = 0
    abandoned_reason: str | None = None
    stopped: bool = False
    first_request_at: float | None = None
    fatal: BfclExtError | None = None  # what stopped the run early (the first one), to raise once files are safe
    concurrency: dict[str, Any] = field(default_factory=dict)  # Concurrency.record(): mode, min/median/max cap


class ServerGate:
    """Pauses new requests while the server is away; gives up after the recovery timeout."""

    def __init__(self, is_ready_now: Callable[[], bool], wait_ready: Callable[[], str | None]) -> None:
        self._is_ready_now = is_ready_now
        self._wait_ready = wait_ready  # returns None when ready again, else why not
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self.abandoned_reason: str | None = None
        self.recoveries = 0

    def wait_open(self) -> bool:
        self._open.wait()
        return self.abandoned_reason is None

    def report_failure(self) -> None:
        with self._lock:
            if not self._open.is_set() or self.abandoned_reason is not None:
                return
            if self._is_ready_now():
                return  # one bad request, not a missing server
            self._open.clear()
        print("bfcl-ext: the server went away; pausing requests until it is ready again", file=sys.stderr)
        reason: str | None = "the wait for the server failed"
        try:
            reason = self._wait_ready()
        finally:  # whatever happens, the threads waiting on the gate are let go
            with self._lock:
                if reason is None:
                    self.recoveries += 1
                    print("bfcl-ext: the server is back; carrying on", file=sys.stderr)
                else:
                    self.abandoned_reason = reason
                self._open.set()


def generate(
    session: bridge.Session,
    entries: list[dict[str, Any]],
    *,
    threads: int | Concurrency,
    policy: RetryPolicy,
    gate: ServerGate,
    stop: threading.Event,
    progress: Any,
    debug: bool = False,
) -> GenerationReport:
    """Run up to ``1 + policy.passes`` passes over ``entries``; each pass asks again what failed before.
    ``threads``: a fixed number, or a ``Concurrency`` whose cap may change while it runs (auto).
    ``debug`` (Settings.debug): a worker's internal error prints its traceback too."""
    report = GenerationReport()
    remaining = entries
    concurrency = threads if isinstance(threads, Concurrency) else Concurrency(threads)
    concurrency.start()
    try:
        for attempt in range(policy.passes + 1):
            if attempt:
                report.entries_retried += len(remaining)
                stop.wait(policy.before_pass(attempt))  # a stop request ends the wait
            report.passes += 1
            remaining = _one_pass(session, remaining, concurrency, gate, stop, progress, report, debug)
            if not remaining or stop.is_set() or gate.abandoned_reason or report.fatal:
                break
    finally:
        concurrency.stop()
    report.concurrency = concurrency.record()
    report.failed_ids = sorted(entry["id"] for entry in remaining)
    report.recoveries = gate.recoveries
    report.abandoned_reason = gate.abandoned_reason
    report.stopped = stop.is_set()
    return report


def _one_pass(
    session: bridge.Session,
    entries: list[dict[str, Any]],
    concurrency: Concurrency,
    gate: ServerGate,
    stop: threading.Event,
    progress: Any,
    report: GenerationReport,
    debug: bool,
) -> list[dict[str, Any]]:
    """One pass; returns the entries still without an answer. Honours ``depends_on`` (memory)."""
    by_id = {entry["id"]: entry for entry in entries}
    waiting_on = {entry["id"]: set(entry.get("depends_on", [])) & by_id.keys() for entry in entries}
    children: dict[str, list[str]] = {}
    for entry_id, parents in waiting_on.items():
        for parent in parents:
            children.setdefault(parent, []).append(entry_id)

    work: queue.Queue[dict[str, Any] | None] = queue.Queue()
    done: queue.Queue[tuple[str, bool, BfclExtError | None]] = queue.Queue()
    for entry in sorted((by_id[i] for i, parents in waiting_on.items() if not parents), key=bridge.sort_key):
        work.put(entry)

    limiter, over = concurrency.limiter, threading.Event()  # over: the pass is done, workers still waiting go
    workers: list[threading.Thread] = []

    def add_workers() -> None:  # up to the cap (which an auto run raises while it runs)
        while len(workers) < min(limiter.cap, max(1, len(entries))):
            worker = threading.Thread(target=_worker, args=(session, work, done, gate, stop, report, debug,
                                                            limiter, over), daemon=True)
            worker.start()
            workers.append(worker)

    add_workers()
    answered: set[str] = set()
    settled = 0
    stop_seen_at: float | None = None
    while settled < len(entries):
        if stop_seen_at is None and report.fatal is None and not stop.is_set():
            add_workers()
        if stop.is_set() or report.fatal is not None:
            if stop_seen_at is None:
                stop_seen_at = time.monotonic()
                _drain(work)  # nothing new is sent; each worker ends once the request it holds is done
                for _ in workers:
                    work.put(None)
            if time.monotonic() - stop_seen_at > IN_FLIGHT_GRACE_S:
                break
        try:
            entry_id, ok, fatal = done.get(timeout=0.2)
        except queue.Empty:
            if all(not w.is_alive() for w in workers) and done.empty():  # workers gone: nothing more comes
                if stop_seen_at is None and report.fatal is None:  # nobody told them to go
                    report.fatal = WorkerError(
                        f"internal error in a worker: every worker thread is gone with {len(entries) - settled} "
                        "entries still unanswered; the answers already written are kept"
                    )
                break
            continue
        settled += 1
        if fatal is not None and report.fatal is None:
            report.fatal = fatal
        if ok:
            answered.add(entry_id)
            report.answered += 1
            progress.update(1)
            for child in children.get(entry_id, []):
                waiting_on[child].discard(entry_id)
                if not waiting_on[child] and not stop.is_set() and report.fatal is None:
                    work.put(by_id[child])
        else:
            settled += _settle_descendants(entry_id, children, waiting_on)
    over.set()  # a worker waiting for a slot goes; one holding a slot takes its None
    limiter.wake_all()
    for _ in workers:
        work.put(None)
    return [entry for entry in entries if entry["id"] not in answered]


def _settle_descendants(entry_id: str, children: dict[str, list[str]], waiting_on: dict[str, set[str]]) -> int:
    """An entry that failed blocks those that depend on it for this pass: count them settled."""
    count = 0
    for child in children.get(entry_id, []):
        if waiting_on[child]:
            waiting_on[child] = set()
            count += 1 + _settle_descendants(child, children, waiting_on)
    return count


def _drain(work: queue.Queue[Any]) -> None:
    try:
        while True:
            work.get_nowait()
    except queue.Empty:
        pass


def _worker(
    session: bridge.Session,
    work: queue.Queue[dict[str, Any] | None],
    done: queue.Queue[tuple[str, bool, BfclExtError | None]],
    gate: ServerGate,
    stop: threading.Event,
    report: GenerationReport,
    debug: bool,
    limiter: Limiter,
    over: threading.Event,
) -> None:
    """Every entry taken is settled on ``done``, whatever happens: an exception is reported as fatal.
    A slot of ``limiter`` is taken before an entry, and given back once its answer is settled."""
    while limiter.acquire(over):
        try:
            entry = work.get()
            if entry is None:
                return
            limiter.working(1)
            try:
                ok = _ask(session, entry, gate, stop, report)
            except BfclExtError as error:  # an answer that cannot be written: the user can act on it
                done.put((entry["id"], False, error))
            except BaseException as error:  # noqa: BLE001 - a bug: it stops the run, it never hangs it
                done.put((entry["id"], False, _worker_error(entry["id"], error, debug)))
            else:
                done.put((entry["id"], ok, None))
            finally:
                limiter.working(-1)
        finally:
            limiter.release()


def _ask(
    session: bridge.Session, entry: dict[str, Any], gate: ServerGate, stop: threading.Event, report: GenerationReport
) -> bool:
    """Ask about one entry and write the answer; False: no answer this time (asked again in a later pass)."""
    if stop.is_set() or report.fatal is not None or not gate.wait_open():
        return False
    if report.first_request_at is None:
        report.first_request_at = time.time()
    try:
        line = bridge.answer(session, entry)
    except bridge.TransportError as error:
        _log_transport_failure(entry["id"], error)
        gate.report_failure()
        return False
    bridge.write_answer(session, line)
    return True


def _worker_error(entry_id: str, error: BaseException, debug: bool) -> WorkerError:
    """One line: what was raised, and where (``debug``, BFCL_EXT_DEBUG=1: the traceback too)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    message = f"{type(error).__name__}: {error}".rstrip(": ")
    wrapped = WorkerError(f"internal error in a worker while answering {entry_id}: {message}{where}; "
                          "the answers already written are kept")
    wrapped.__cause__ = error
    return wrapped


def _log_transport_failure(entry_id: str, error: Exception) -> None:
    print(f"bfcl-ext: {entry_id}: no answer ({error}); it will be asked again", file=sys.stderr)
