"""A stand-in for a vLLM OpenAI-compatible server, for smoke tests without a GPU.

It speaks the parts of vLLM's HTTP API that bfcl-eval uses, with vLLM 0.32's status codes
and JSON shapes, and answers BFCL's single-turn questions from BFCL's own ground truth
(``mode="oracle"``), or wrongly on purpose (``mode="wrong"``, ``"wrong-category:<cat>"``);
multi-turn, memory and web-search entries likewise (``multiturn``, ``agentic``).
Faults can be injected: a port that opens late, latency, replies that trickle in a byte at a time
(the body, or the status line and headers; or the readiness probes' whole replies), 500s, 429s,
replies with status 200 a client cannot use (``BAD_REPLY_KINDS``), a concurrency cap and a crash
after N requests.
``GET /standin/stats`` counts what it did, and what it was sent: ``request_fields`` counts each
distinct set of request fields other than the question (``CONTENT_FIELDS``), as sorted JSON.
Standard library only, besides bfcl_ext itself: BFCL's data through ``bfcl_ext.bridge``, the
environment through ``bfcl_ext.config``.

    python -m bfcl_ext.standin --port 8000 --served-model-name my-model

Modules, one idea each: ``cli`` (flags), ``options`` (what the flags become), ``lifecycle``
(bind, serve, stop; ``Standin`` for tests), ``server`` (HTTP: routes, key, slow and dropped
replies), ``validation`` (vLLM's request checks), ``answers`` (which oracle answers), ``oracle``
(single-turn ground truth), ``multiturn``, ``agentic``, ``render`` (calls as source text),
``shapes`` (vLLM's JSON), ``faults`` (unusable 200 replies), ``state`` (counters and fault dice),
``metrics`` (the batch and ``/metrics``), ``request`` (reading a request's question and tools).
"""

from __future__ import annotations

from bfcl_ext.standin.cli import main
from bfcl_ext.standin.faults import BAD_REPLY_KINDS, MALFORMED_MESSAGE_KINDS
from bfcl_ext.standin.lifecycle import Standin, serve
from bfcl_ext.standin.oracle import CATEGORIES
from bfcl_ext.standin.options import StandinOptions
from bfcl_ext.standin.request import CONTENT_FIELDS

__all__ = [
    "BAD_REPLY_KINDS",
    "CATEGORIES",
    "CONTENT_FIELDS",
    "MALFORMED_MESSAGE_KINDS",
    "Standin",
    "StandinOptions",
    "main",
    "serve",
]
