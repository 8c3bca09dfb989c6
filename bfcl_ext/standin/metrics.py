"""The stand-in's batch and its ``/metrics``, as vLLM's scheduler and Prometheus endpoint show them.

A completion holds one of ``max_num_seqs`` batch slots while it is answered; one that finds every
slot taken waits (``vllm:num_requests_waiting``) until a slot frees, as vLLM's scheduler queues it.
Without ``max_num_seqs`` every request is running at once. ``GET /metrics`` is vLLM's text format
(a gauge per engine and model), unguarded by the API key like vLLM's. Standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's


class Batch:
    """Running and waiting completions; ``enter`` blocks while ``max_num_seqs`` are running."""

    def __init__(self, max_num_seqs: int | None) -> None:
        self.max_num_seqs = max_num_seqs
        self._condition = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.peak_running = 0
        self.peak_waiting = 0

    def enter(self, dead: Callable[[], bool] = lambda: False) -> bool:
        """Take a slot, waiting for one if need be; False if the server died meanwhile (no slot held)."""
        with self._condition:
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
            try:
                while self.max_num_seqs is not None and self.running >= self.max_num_seqs:
                    if dead():
                        return False
                    self._condition.wait(0.1)
            finally:
                self.waiting -= 1
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            return True

    def leave(self) -> None:
        with self._condition:
            self.running -= 1
            self._condition.notify()

    def snapshot(self) -> dict[str, int | None]:
        with self._condition:
            return {"running": self.running, "waiting": self.waiting, "peak_running": self.peak_running,
                    "peak_waiting": self.peak_waiting, "max_num_seqs": self.max_num_seqs}

    def metrics_text(self, model_name: str) -> str:
        with self._condition:
            running, waiting = self.running, self.waiting
        labels = f'{{engine="0",model_name="{_label_value(model_name)}"}}'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} {float(waiting)}\n"
        )


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
