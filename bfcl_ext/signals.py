"""Ctrl-C and SIGTERM (scancel, a SLURM time limit): stop cleanly, with the documented exit code.

Outside generation a signal raises ``Interrupted`` at once (a readiness wait simply ends).
During generation it only sets ``stop``: no new request is sent, answers in flight may still
land, and ``raise_if_stopped`` raises once the files are consistent. A second signal while
deferred raises at once, except a SIGTERM that follows the first within ``REPEAT_WINDOW``
seconds: that is one request delivered twice (SLURM signals every process of a job, and a
wrapper script may pass the same signal on), not a user insisting.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from bfcl_ext.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, BfclExtError

REPEAT_WINDOW = 2.0  # seconds within which a second SIGTERM counts as the first one again


class Interrupted(BfclExtError):
    def __init__(self, signum: int) -> None:
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        super().__init__(f"stopped by {name}; answers so far are kept; run the same command again to resume")
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED


class Interruptions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.stop = threading.Event()
        self.signum: int | None = None
        self._deferred = False
        self._clock = clock
        self._first_at: float | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        now = self._clock()
        if self._is_repeat(signum, now):
            print("bfcl-ext: SIGTERM again: already stopping (a second one after "
                  f"{REPEAT_WINDOW:g} s stops at once)", file=sys.stderr)
            return
        already = self.stop.is_set()
        self.signum = signum
        self._first_at = self._first_at if already else now
        self.stop.set()
        if not self._deferred or already:
            raise Interrupted(signum)

    def _is_repeat(self, signum: int, now: float) -> bool:
        return (self._deferred and signum == signal.SIGTERM and self.signum == signal.SIGTERM
                and self._first_at is not None and now - self._first_at < REPEAT_WINDOW)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def raise_if_stopped(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)
