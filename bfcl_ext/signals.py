"""Ctrl-C and SIGTERM (scancel, a SLURM time limit): stop cleanly, with the documented exit code.

Outside generation a signal raises ``Interrupted`` at once (a readiness wait simply ends).
During generation it only sets ``stop``: no new request is sent, answers in flight may still
land, and ``raise_if_stopped`` raises once the files are consistent. A second signal while
deferred raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from bfcl_ext.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, BfclExtError


class Interrupted(BfclExtError):
    def __init__(self, signum: int) -> None:
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        super().__init__(f"stopped by {name}; answers so far are kept; run the same command again to resume")
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED


class Interruptions:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signum: int | None = None
        self._deferred = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        already = self.stop.is_set()
        self.signum = signum
        self.stop.set()
        if not self._deferred or already:
            raise Interrupted(signum)

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
