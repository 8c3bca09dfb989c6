"""What bfcl-ext adds to every completion request beyond BFCL's own: max tokens, top_p, a seed and
an extra body (``--max-tokens``, ``--top-p``, ``--seed``, ``--extra-body``).

A setting left unset adds nothing: the request is BFCL's, field for field. A set one goes on
every request, in both modes, at the one place every request passes (``bridge._GuardedCreate``):

- function-calling (``/v1/chat/completions``): each field as given, replacing any value a
  handler sets itself;
- prompt (``/v1/completions``): BFCL's prompt handlers set ``max_tokens`` to what fits in the
  context (at most 4096): ``--max-tokens`` lowers that, never raises it past the room the prompt
  leaves; top_p and the seed as given; the extra body is merged over the handler's own
  (``stop_token_ids``, ``skip_special_tokens``), its keys winning.

The extra body may not hold the fields BFCL and bfcl-ext own (``OWNED_KEYS``): config refuses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What an extra body may not set, and why: the question, the reply's shape, or a setting of its own.
OWNED_KEYS: Mapping[str, str] = {
    "model": "the served model name (--served-model-name)",
    "messages": "BFCL's question",
    "prompt": "BFCL's question",
    "tools": "BFCL's functions",
    "stream": "bfcl-ext reads one whole reply",
    "stream_options": "bfcl-ext reads one whole reply",
    "n": "BFCL scores one answer",
    "temperature": "its own setting, --temperature",
    "max_tokens": "its own setting, --max-tokens",
    "max_completion_tokens": "its own setting, --max-tokens",
    "top_p": "its own setting, --top-p",
    "seed": "its own setting, --seed",
}
IDENTITY_FIELDS = ("max_tokens", "top_p", "seed", "extra_body")  # recorded in a folder's identity only when set


@dataclass(frozen=True)
class RequestSettings:
    """The request settings of a run; None: not set (nothing is added to the request)."""

    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    extra_body: Mapping[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """Every field, None where not sent (manifest.json ``sampling``)."""
        return {name: _plain(getattr(self, name)) for name in IDENTITY_FIELDS}

    def identity(self) -> dict[str, Any]:
        """The fields that are set: a run without them has the identity it had before they existed."""
        return {name: value for name, value in self.record().items() if value is not None}

    def apply(self, kwargs: Mapping[str, Any], *, completions: bool) -> dict[str, Any]:
        """``kwargs`` of one ``create`` call, with these settings added (``completions``: prompt mode)."""
        out = dict(kwargs)
        if self.max_tokens is not None:
            handler_cap = out.get("max_tokens") if completions else None
            out["max_tokens"] = min(self.max_tokens, handler_cap) if isinstance(handler_cap, int) else self.max_tokens
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.seed is not None:
            out["seed"] = self.seed
        if self.extra_body:
            out["extra_body"] = {**(out.get("extra_body") or {}), **self.extra_body}
        return out


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value
