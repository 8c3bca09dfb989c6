"""One wait for every test (and the benchmark): poll until something holds, fail with what was awaited.

``wait_until`` is the only polling loop; the helpers below are the conditions the tests wait on.
``gone`` is asked every round so that a server or run that exits fails the wait at once, with its
reason, instead of at the deadline. Like ``readiness.wait_until_ready``, the clock and the sleep can
be injected.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitFailed(AssertionError):
    """The awaited condition never held: the deadline passed, or what it depended on went away."""


def wait_until(
    ready: Callable[[], T],
    *,
    within: float,
    what: str,
    poll: float = 0.2,
    gone: Callable[[], str | None] = lambda: None,
    explain: Callable[[], str] = lambda: "",
    failure: type[Exception] = WaitFailed,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``ready`` until it returns something true, and return that.

    ``gone`` returns a reason when waiting is pointless (the process exited); ``explain`` adds
    context (a log's tail) to the failure, raised as ``failure``.
    """
    deadline = clock() + within
    while True:
        outcome = ready()
        if outcome:
            return outcome
        reason = gone()
        if reason is None and clock() >= deadline:
            reason = f"not after {within:g} s"
        if reason is not None:
            context = explain()
            raise failure(f"{what}: {reason}" + (f"\n{context}" if context else ""))
        sleep(poll)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status ``url`` answers with, or None when nothing answers (no proxy in the way)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def answers_200(url: str, timeout: float = 2.0) -> Callable[[], bool]:
    return lambda: http_status(url, timeout) == 200


def exited(process: object, name: str) -> Callable[[], str | None]:
    """A ``gone`` for a ``subprocess.Popen``: the reason once it has exited."""

    def reason() -> str | None:
        code = process.poll()  # type: ignore[attr-defined]
        return None if code is None else f"{name} exited with code {code}"

    return reason
