"""The retry policy: when the runner tries again, how often, and how long it waits in between.

One frozen object, built by ``config`` from the user's settings (``Settings.retry``) and handed to
everything that retries: the request guard and the OpenAI SDK's own retries (``bridge.make_client``),
the web search client (``bridge.install_web_search``), the passes over entries that still failed
(``generation.generate``) and the wait for a server that stopped answering (``run``). No other
module holds a retry count, a backoff or a pause of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    request_timeout: float  # seconds for one request's whole reply
    request_retries: int  # retries of one request (connection errors, 5xx, 429, an unusable 200, a search)
    passes: int  # passes over the entries that still failed, after the first
    recovery_timeout: float  # seconds a server that stopped answering gets to come back
    probe_timeout: float = 5.0  # one readiness probe, asking whether the server is still there

    def before_request_retry(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1, 2, ...) of a request: the OpenAI SDK's own (0.5 s
        doubling, at most 8 s, less 0-25%), so an unusable 200 is paced like a 5xx the SDK retries."""
        return min(0.5 * 2.0 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())

    def before_search_retry(self, attempt: int) -> float:
        """The wait before retry ``attempt`` of a web search: 2, 4, 8 ... s, at most 30."""
        return _doubling(attempt)

    def before_pass(self, attempt: int) -> float:
        """The wait before pass ``attempt`` (1, 2, ...) over the entries still failed: 2, 4, 8 ... s, at most 30."""
        return _doubling(attempt)


def _doubling(attempt: int) -> float:
    return min(2.0**attempt, 30.0)
