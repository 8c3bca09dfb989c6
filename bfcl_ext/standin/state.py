"""What all request threads share: counters, the fault dice, the in-flight count, the oracles."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

from bfcl_ext.standin import agentic, metrics
from bfcl_ext.standin.oracle import Oracle
from bfcl_ext.standin.options import StandinOptions
from bfcl_ext.standin.request import CONTENT_FIELDS


class State:
    """Counters, fault dice and the in-flight count, shared by all request threads."""

    def __init__(self, options: StandinOptions) -> None:
        self.options = options
        self.oracle = Oracle()
        self.agentic = agentic.AgenticOracle()
        self.search = agentic.SearchService(agentic.SearchSettings(
            options.search_api_key, options.search_error_rate, options.search_rate_limit_rate,
            options.search_always_fail, options.seed), self.agentic)
        self._lock = threading.Lock()
        self._dice = random.Random(options.seed)
        # dice of their own: turning bad replies on leaves a seed's 500s and 429s where they were
        self._bad_dice = random.Random(f"bad-replies-{options.seed}")
        self._in_flight = 0
        self.batch = metrics.Batch(options.max_num_seqs)
        self._counts = {"received": 0, "ok": 0, "errors": 0, "rate_limited": 0, "rejected": 0, "unmatched": 0,
                        "bad_replies": 0}
        self._bad_reply_kinds: dict[str, int] = {}
        self._entries: dict[str, int] = {}
        self._request_fields: dict[str, int] = {}

    def admit(self) -> tuple[int, str | None]:
        """Count one completion request; return its ordinal and its fault, if any."""
        with self._lock:
            self._counts["received"] += 1
            ordinal = self._counts["received"]
            limited = self._dice.random() < self.options.rate_limit_rate
            failed = self._dice.random() < self.options.error_rate
            cap = self.options.max_concurrency
            if limited or (cap is not None and self._in_flight >= cap):
                return ordinal, "429"
            self._in_flight += 1
            if ordinal <= self.options.echo_key:
                return ordinal, "echo-key"
            return ordinal, "500" if failed else None

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def bad_reply(self) -> str | None:
        """Whether the answer about to be sent goes out spoiled instead, and how (``BAD_REPLY_KINDS``)."""
        if self.options.bad_reply_rate <= 0:
            return None
        with self._lock:
            if self._bad_dice.random() >= self.options.bad_reply_rate:
                return None
            kind = self._bad_dice.choice(self.options.bad_reply_kinds)
            self._counts["bad_replies"] += 1
            self._bad_reply_kinds[kind] = self._bad_reply_kinds.get(kind, 0) + 1
            return kind

    def count(self, outcome: str, entry_id: str | None = None) -> None:
        with self._lock:
            self._counts[outcome] += 1
            if entry_id is not None:
                self._entries[entry_id] = self._entries.get(entry_id, 0) + 1

    def record_fields(self, body: dict[str, Any]) -> None:
        """Count a parsed request's fields other than the question (max_tokens, top_p, extra body, ...)."""
        key = json.dumps({k: v for k, v in body.items() if k not in CONTENT_FIELDS}, sort_keys=True)
        with self._lock:
            self._request_fields[key] = self._request_fields.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snapshot = {**self._counts, "in_flight": self._in_flight, "entries": dict(self._entries),
                        "bad_reply_kinds": dict(self._bad_reply_kinds), "request_fields": dict(self._request_fields)}
        return {**snapshot, "search": self.search.snapshot(), "batch": self.batch.snapshot()}
