"""``StandinOptions``: how the stand-in listens, answers (its mode) and misbehaves (its faults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bfcl_ext.standin import agentic, multiturn
from bfcl_ext.standin.faults import BAD_REPLY_KINDS
from bfcl_ext.standin.oracle import CATEGORIES


@dataclass(frozen=True)
class StandinOptions:
    """How the stand-in listens, answers and misbehaves. See the package docstring (bfcl_ext.standin)."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_names: tuple[str, ...] = ("bfcl-ext-standin",)
    model_root: str | None = None  # /v1/models' root, as vLLM's: what --model loaded (default: the first name)
    mode: str = "oracle"
    api_key: str | None = field(default=None, repr=False)
    load_delay: float = 0.0
    latency: float = 0.0
    trickle: float = 0.0  # seconds between the bytes of each completion's body (a reply that never ends)
    trickle_headers: float = 0.0  # the same for its status line and headers (sent before the body)
    trickle_probes: float = 0.0  # /health, /version and /v1/models: their whole reply, a byte every so many seconds
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    bad_reply_rate: float = 0.0  # share of completions answered 200 with an unusable body
    bad_reply_kinds: tuple[str, ...] = BAD_REPLY_KINDS  # drawn from evenly
    max_concurrency: int | None = None
    max_num_seqs: int | None = None  # vLLM's: completions beyond it wait for a slot (metrics, /metrics)
    metrics: bool = True  # False: no /metrics (404), as another server kind
    die_after: int | None = None
    echo_key: int = 0  # the first N completions answered 400 quoting the bearer key sent (a server that leaks it)
    seed: int = 0
    version: str = "0.32.0"
    web_search_answer: str = "search-first"  # or "direct" (see agentic)
    search_api_key: str | None = field(default=None, repr=False)  # /search: SerpAPI's api_key
    search_error_rate: float = 0.0
    search_rate_limit_rate: float = 0.0
    search_always_fail: str | None = None  # "no-results" or "503"

    def __post_init__(self) -> None:
        if not self.served_model_names:
            raise ValueError("served_model_names: at least one name is needed")
        parse_mode(self.mode)
        agentic.check_options(self.web_search_answer, self.search_always_fail)
        for name in ("error_rate", "rate_limit_rate", "bad_reply_rate", "search_error_rate", "search_rate_limit_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be between 0 and 1")
        unknown = [kind for kind in self.bad_reply_kinds if kind not in BAD_REPLY_KINDS]
        if unknown or not self.bad_reply_kinds:
            raise ValueError(f"bad_reply_kinds={','.join(self.bad_reply_kinds)!r}: expected one or more of "
                             f"{', '.join(BAD_REPLY_KINDS)}")
        for name in ("load_delay", "latency", "trickle", "trickle_headers", "trickle_probes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must not be negative")
        for name in ("max_concurrency", "max_num_seqs", "die_after"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be at least 1")

    def is_wrong_for(self, category: str) -> bool:
        """Whether entries of ``category`` get a wrong answer."""
        wrong = parse_mode(self.mode)
        return wrong == "*" or wrong == category


def parse_mode(mode: str) -> str | None:
    """``"oracle"`` -> None, ``"wrong"`` -> ``"*"``, ``"wrong-category:<cat>"`` -> cat."""
    if mode == "oracle":
        return None
    if mode == "wrong":
        return "*"
    prefix, _, category = mode.partition(":")
    known = (*CATEGORIES, *agentic.AGENTIC_CATEGORIES, *multiturn.CATEGORIES)
    if prefix == "wrong-category" and category in known:
        return category
    raise ValueError(
        f"mode={mode!r}: expected 'oracle', 'wrong' or 'wrong-category:<cat>' "
        f"with <cat> one of {', '.join(known)}"
    )
