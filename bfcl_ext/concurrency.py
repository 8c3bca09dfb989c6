"""How many requests are in flight at once: a fixed number, or one that follows vLLM's ``/metrics``.

``--num-threads auto``: a controller thread reads the server's Prometheus gauges
``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` every ``POLL_S`` seconds. While
nothing waits and our requests fill the cap, the cap grows (by a quarter, at least 2) up to
``AUTO_MAX``; once requests wait beyond a small queue (``slack``), it drops by what waits and holds
for ``HOLD_S``. A failed read holds the cap where it is. A server without those gauges (another
server kind) gets the fixed default instead, said once at the start (``MetricsUnavailable``).

Workers take a slot of the ``Limiter`` before they take an entry; a lower cap lets the workers
beyond it finish the request they hold and then wait. The cap is sampled at each poll: the manifest
records its min, median and max.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

AUTO = "auto"
AUTO_START = 16  # workers at the start of an auto run
AUTO_MAX = 256  # the most an auto run ever has in flight (4x the fixed default)
POLL_S = 0.5
HOLD_S = 5.0  # after requests waited, how long the cap does not grow again
METRICS_TIMEOUT_S = 5.0
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


class MetricsUnavailable(Exception):
    """The server's /metrics cannot be used: why, in a few words."""


def parse_metrics(text: str) -> tuple[float, float]:
    """(running, waiting), each summed over its series (engines, models); raises ``MetricsUnavailable``."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or match["name"] not in (RUNNING, WAITING):
            continue
        try:
            value = float(match["value"])
        except ValueError:
            raise MetricsUnavailable(f"{match['name']} has the value {match['value'][:40]!r}") from None
        if not math.isfinite(value) or value < 0:
            raise MetricsUnavailable(f"{match['name']} has the value {match['value'][:40]!r}")
        totals[match["name"]] = totals.get(match["name"], 0.0) + value
    missing = [name for name in (RUNNING, WAITING) if name not in totals]
    if missing:
        raise MetricsUnavailable(f"no {' or '.join(missing)} in it")
    return totals[RUNNING], totals[WAITING]


class MetricsReader:
    """GET <server root>/metrics, with the bearer key when one is set (a gateway may guard every path)."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = METRICS_TIMEOUT_S) -> None:
        import requests

        self.url = url
        self._headers = headers
        self._timeout = timeout
        self._session = requests.Session()

    def read(self) -> tuple[float, float]:
        import requests

        try:
            response = self._session.get(self.url, headers=self._headers, timeout=self._timeout)
        except requests.RequestException as error:
            raise MetricsUnavailable(f"GET {self.url} failed ({type(error).__name__})") from None
        if response.status_code != 200:
            raise MetricsUnavailable(f"GET {self.url} answered {response.status_code}")
        return parse_metrics(response.text)

    def close(self) -> None:
        self._session.close()


class Limiter:
    """At most ``cap`` slots held at once; ``busy`` counts the holders that are asking the server."""

    def __init__(self, cap: int) -> None:
        self._condition = threading.Condition()
        self._cap = max(1, cap)
        self.active = 0
        self.busy = 0

    @property
    def cap(self) -> int:
        return self._cap

    def set_cap(self, cap: int) -> None:
        with self._condition:
            self._cap = max(1, cap)
            self._condition.notify_all()

    def acquire(self, give_up: threading.Event) -> bool:
        """A slot, once one is free; False (no slot) once ``give_up`` is set."""
        with self._condition:
            while self.active >= self._cap:
                if give_up.is_set():
                    return False
                self._condition.wait(1.0)  # woken by a release, a new cap or wake_all; the timeout is a backstop
            if give_up.is_set():
                return False
            self.active += 1
            return True

    def wake_all(self) -> None:
        """Every waiter looks again (at ``give_up``, say)."""
        with self._condition:
            self._condition.notify_all()

    def release(self) -> None:
        with self._condition:
            self.active -= 1
            self._condition.notify()

    def working(self, delta: int) -> None:
        with self._condition:
            self.busy += delta


class Concurrency:
    """A fixed cap: ``threads`` slots, always."""

    mode = "fixed"

    def __init__(self, threads: int, fallback_reason: str | None = None) -> None:
        self.limiter = Limiter(threads)
        self.fallback_reason = fallback_reason
        if fallback_reason is not None:
            self.mode = AUTO

    def start(self) -> None:
        """Nothing to follow."""

    def stop(self) -> None:
        """Nothing to stop."""

    def record(self) -> dict[str, Any]:
        cap = self.limiter.cap
        return {"mode": self.mode, "min": cap, "median": cap, "max": cap, "samples": 1, "start": cap,
                "maximum": cap, "fallback_reason": self.fallback_reason}


class AutoConcurrency(Concurrency):
    """The cap follows the server's running and waiting requests (see the module docstring)."""

    mode = AUTO

    def __init__(self, read: Callable[[], tuple[float, float]], *, start: int = AUTO_START, maximum: int = AUTO_MAX,
                 poll_s: float = POLL_S, hold_s: float = HOLD_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(min(start, maximum))
        self._read = read
        self.maximum = maximum
        self.start_cap = min(start, maximum)
        self._poll_s = poll_s
        self._hold_s = hold_s
        self._clock = clock
        self._held_until = -math.inf
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.samples: list[int] = [self.limiter.cap]
        self.failed_reads = 0

    def step(self, running: float, waiting: float) -> int:
        """One decision from one reading of the server; returns the new cap."""
        del running  # the server's batch includes other clients': what waits is what counts
        cap, now = self.limiter.cap, self._clock()
        slack = max(1, cap // 16)  # a short queue keeps the batch full between our requests
        if waiting > slack:
            cap = max(1, cap - math.ceil(waiting) + slack)
            self._held_until = now + self._hold_s
        elif waiting > 0:
            self._held_until = now + self._hold_s
        elif now >= self._held_until and self.limiter.busy >= 0.75 * cap:
            cap = min(self.maximum, cap + max(2, cap // 4))
        self.limiter.set_cap(cap)
        return cap

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bfcl-ext-concurrency", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(1.0)  # a read in progress may finish on its own (a daemon thread): never a wait

    def _loop(self) -> None:
        while not self._stopped.wait(self._poll_s):
            try:
                running, waiting = self._read()
            except Exception:  # noqa: BLE001 - a failed read holds the cap; the requests say what is wrong
                self.failed_reads += 1
                cap = self.limiter.cap
            else:
                cap = self.step(running, waiting)
            with self._lock:
                self.samples.append(cap)

    def record(self) -> dict[str, Any]:
        with self._lock:
            samples = list(self.samples)
        return {"mode": AUTO, "min": min(samples), "median": statistics.median(samples), "max": max(samples),
                "samples": len(samples), "start": self.start_cap, "maximum": self.maximum,
                "fallback_reason": None}
