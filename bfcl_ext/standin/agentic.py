"""The stand-in's agentic side: BFCL's memory and web-search categories, and a SerpAPI look-alike.

The oracle plays a perfect function-calling model (``/v1/chat/completions`` with ``tools``):

Memory (``memory_kv``, ``memory_rec_sum``, ``memory_vector``). Each scenario's prerequisite
conversations come first, chained through the backend's snapshot files. On the first turn of
prerequisite conversation k (of n) the oracle stores a marker with the backend's own tool
("... done k/n."), but only when the marker of conversation k-1 is in the memory dump of its
system prompt, so the chain breaks visibly wherever the state did not flow. A question is
answered from BFCL's ground truth only when the last marker ("n/n") is in the system prompt's
dump, or, failing that, in what the backend's retrieval tool returns when asked; otherwise
the answer is "I do not remember". Other prerequisite turns get a short text reply.

Web search (``web_search_base``, ``web_search_no_snippet``). By default the oracle first calls
``search_engine_query`` with keywords from the question and answers the ground truth only when
the tool returned results (``"the search failed"`` when it returned an error); results with
snippets tell ``web_search_base`` from ``web_search_no_snippet``. With
``web_search_answer="direct"`` it answers at once (and cannot tell the two apart: a wrong mode
for either spoils both).

``GET /search`` and ``/search.json`` answer as SerpAPI does for ``engine=duckduckgo``:
canned, deterministic ``organic_results`` derived from the query (a web_search question's own
keywords get its ground truth in the first snippet), a 401 for a wrong key when the stand-in
holds one, and injected 500s, 429s or a permanent outage (empty results, or 503).

BFCL's data is read through bfcl_ext.bridge, on first use.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, quote_plus, urlsplit

from bfcl_ext import bridge

MEMORY_CATEGORIES: tuple[str, ...] = ("memory_kv", "memory_rec_sum", "memory_vector")
WEB_SEARCH_CATEGORIES: tuple[str, ...] = ("web_search_base", "web_search_no_snippet")
AGENTIC_CATEGORIES: tuple[str, ...] = MEMORY_CATEGORIES + WEB_SEARCH_CATEGORIES
WEB_SEARCH_ANSWERS: tuple[str, ...] = ("search-first", "direct")
SEARCH_OUTAGES: tuple[str, ...] = ("no-results", "503")

MARKER_KEY = "bfcl_ext_oracle"  # memory_kv: snake_case, as core_memory_add requires
NOT_REMEMBERED = "I do not remember"
SEARCH_FAILED = "the search failed"
WRONG = "I do not know"
PREREQ_REPLY = "Noted, thank you."
SEARCH_TOOL = "search_engine_query"

Reply = str | list[tuple[str, dict[str, Any]]]  # a final text, or tool calls (name, arguments)


def marker(scenario: str, done: int, total: int) -> str:
    """What prerequisite conversation ``done`` (1-based) of ``total`` leaves in memory."""
    return f"bfcl-ext oracle: prerequisites of {scenario} done {done}/{total}."


def final_answer(answer: str, context: str) -> str:
    """The agentic answer format BFCL's system prompt asks for."""
    return str({"answer": answer, "context": context})


# No ground truth of BFCL's may match these (tests/test_standin_agentic.py checks every one).
WRONG_REPLY = final_answer(WRONG, "Answered wrongly on purpose by the bfcl-ext stand-in.")
NOT_REMEMBERED_REPLY = final_answer(NOT_REMEMBERED, "My memory holds no record of it.")
SEARCH_FAILED_REPLY = final_answer(SEARCH_FAILED, "The web search tool returned an error.")


# --------------------------------------------------------------------------- BFCL's data


@dataclass(frozen=True)
class _Prereq:
    raw_id: str  # as in the data file: memory_prereq_0-customer-0
    scenario: str
    index: int  # 0-based place in the scenario's chain
    total: int  # length of the scenario's chain


@dataclass(frozen=True)
class _Question:
    raw_id: str  # memory_0-customer-0, web_search_0
    scenario: str | None  # None for web search
    text: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class AgenticData:
    settings: Mapping[str, str]  # scenario -> the setting text that opens its system prompt
    prereqs: Mapping[tuple[str, str], _Prereq]  # (scenario, first user message) -> conversation
    memory_questions: Mapping[tuple[str, str], _Question]  # (scenario, question) -> entry
    web_questions: Mapping[str, _Question]  # question -> entry
    web_by_keywords: Mapping[str, _Question]  # normalised search keywords -> entry


def _entry_id(raw_id: str, category: str) -> str:
    """The id an entry has in ``category``: memory_0-... -> memory_kv_0-..., web_search_0 -> web_search_base_0."""
    family = "memory" if category.startswith("memory") else "web_search"
    return category + raw_id[len(family):]


def load_agentic_data() -> AgenticData:
    """The memory and web-search entries, read through the bridge."""
    answers = {
        gt["id"]: tuple(str(a) for a in gt["ground_truth"])
        for category in ("memory_kv", "web_search_base")
        for gt in bridge.ground_truth_entries(category)
    }
    memory = bridge.dataset_entries("memory_kv")
    web_questions = _web_questions(bridge.dataset_entries("web_search_base"), answers)
    return AgenticData(
        settings=bridge.memory_agent_settings(),
        prereqs=_prereqs(memory),
        memory_questions=_memory_questions(memory, answers),
        web_questions=web_questions,
        web_by_keywords={_normalised(search_keywords(q.text)): q for q in web_questions.values()},
    )


def _raw_id(entry_id: str, category: str) -> str:
    """An entry's id as in its shared data file: memory_kv_0-... -> memory_0-..., web_search_base_0 -> web_search_0."""
    return entry_id.replace(category, "memory" if category.startswith("memory") else "web_search", 1)


def _prereqs(memory: list[dict[str, Any]]) -> dict[tuple[str, str], _Prereq]:
    """Each scenario's prerequisite conversations, in chain order, by (scenario, first user message)."""
    chains: dict[str, list[dict[str, Any]]] = {}
    for entry in memory:
        if "prereq" in entry["id"]:
            chains.setdefault(entry["scenario"], []).append(entry)
    prereqs = {}
    for scenario, chain in chains.items():
        chain.sort(key=lambda e: int(e["id"].rsplit("-", 1)[1]))
        for index, entry in enumerate(chain):
            first = _text(entry["question"][0][0].get("content")).strip()
            prereqs[(scenario, first)] = _Prereq(_raw_id(entry["id"], "memory_kv"), scenario, index, len(chain))
    return prereqs


def _memory_questions(
    memory: list[dict[str, Any]], answers: Mapping[str, tuple[str, ...]]
) -> dict[tuple[str, str], _Question]:
    questions = {}
    for entry in memory:
        if "prereq" not in entry["id"]:
            raw_id = _raw_id(entry["id"], "memory_kv")
            question = _Question(raw_id, entry["scenario"], _last_user(entry["question"][0]), answers[raw_id])
            questions[(entry["scenario"], question.text)] = question
    return questions


def _web_questions(entries: list[dict[str, Any]], answers: Mapping[str, tuple[str, ...]]) -> dict[str, _Question]:
    questions = {}
    for entry in entries:
        raw_id = _raw_id(entry["id"], "web_search_base")
        question = _Question(raw_id, None, _last_user(entry["question"][0]), answers[raw_id])
        questions[question.text] = question
    return questions


class AgenticOracle:
    """BFCL's agentic entries, loaded on first use (a request that offers agentic tools)."""

    def __init__(self, loader: Callable[[], AgenticData] = load_agentic_data) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._data: AgenticData | None = None

    def data(self) -> AgenticData:
        with self._lock:
            if self._data is None:
                self._data = self._loader()
            return self._data


# --------------------------------------------------------------------------- the oracle


class _Options(Protocol):
    web_search_answer: str

    def is_wrong_for(self, category: str) -> bool: ...


@dataclass(frozen=True)
class _Backend:
    """A memory backend as its tools show it, and how the oracle writes and reads its marker."""

    category: str
    signature: frozenset[str]  # tool names only this backend offers

    def write(self, previous: str | None, new: str, system: str) -> tuple[str, dict[str, Any]]:
        """The call that stores ``new`` where ``previous`` (None: nothing yet) is."""
        if self.category == "memory_kv":
            if previous is None:
                return "core_memory_add", {"key": MARKER_KEY, "value": new}
            return "core_memory_replace", {"key": MARKER_KEY, "value": new}
        if self.category == "memory_rec_sum":
            if previous is None:
                return "memory_append", {"text": new}
            return "memory_replace", {"old_text": previous, "new_text": new}
        if previous is None:  # memory_vector: entries are addressed by the id add returned
            return "core_memory_add", {"text": new}
        found = re.search(r'"(\d+)":\s*' + re.escape(json.dumps(previous)), system)
        return "core_memory_update", {"vec_id": int(found[1]) if found else 0, "new_text": new}

    def retrieve(self) -> tuple[str, dict[str, Any]]:
        if self.category == "memory_kv":
            return "core_memory_retrieve", {"key": MARKER_KEY}
        if self.category == "memory_rec_sum":
            return "memory_retrieve", {}
        return "core_memory_retrieve_all", {}


_BACKENDS = (
    _Backend("memory_kv", frozenset({"core_memory_key_search", "core_memory_replace"})),
    _Backend("memory_rec_sum", frozenset({"memory_append", "memory_retrieve"})),
    _Backend("memory_vector", frozenset({"core_memory_update", "core_memory_retrieve_all"})),
)
_AGENTIC_TOOLS = frozenset().union(*(b.signature for b in _BACKENDS), {SEARCH_TOOL})


def answer_chat(
    oracle: AgenticOracle, options: _Options, messages: Sequence[Any], offered: Mapping[str, str]
) -> tuple[Reply, str | None] | None:
    """The oracle's next message in an agentic conversation, and the entry's id; None when the
    request is not one (no memory or search tools offered, or no entry matches)."""
    names = frozenset(offered)
    if not names & _AGENTIC_TOOLS:
        return None  # cheap: BFCL's data is not loaded for other requests
    messages = [m for m in messages if isinstance(m, dict)]
    data = oracle.data()
    backend = next((b for b in _BACKENDS if b.signature <= names), None)
    if backend is not None:
        return _answer_memory(data, options, backend, messages)
    if SEARCH_TOOL in names:
        return _answer_web_search(data, options, messages)
    return None


def _answer_memory(
    data: AgenticData, options: _Options, backend: _Backend, messages: list[dict[str, Any]]
) -> tuple[Reply, str | None] | None:
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    scenario = next((s for s, setting in data.settings.items() if setting in system), None)
    users = [_text(m.get("content")).strip() for m in messages if m.get("role") == "user"]
    if scenario is None or not users:
        return None
    prereq = data.prereqs.get((scenario, users[0]))
    if prereq is not None:
        entry_id = _entry_id(prereq.raw_id, backend.category)
        calls, _ = _since_last_user(messages)
        before = marker(scenario, prereq.index, prereq.total) if prereq.index else None
        if len(users) == 1 and not calls and (before is None or before in system):
            new = marker(scenario, prereq.index + 1, prereq.total)
            return [backend.write(before, new, system)], entry_id
        return PREREQ_REPLY, entry_id
    question = data.memory_questions.get((scenario, users[-1]))
    if question is None:
        return None
    entry_id = _entry_id(question.raw_id, backend.category)
    if options.is_wrong_for(backend.category):
        return WRONG_REPLY, entry_id
    total = next(p.total for p in data.prereqs.values() if p.scenario == scenario)
    done = marker(scenario, total, total)
    right = final_answer(question.answers[0], "From what you told me in our earlier conversations.")
    if done in system:
        return right, entry_id
    calls, results = _since_last_user(messages)
    if not calls:
        return [backend.retrieve()], entry_id
    if any(done in result for result in results):
        return right, entry_id
    return NOT_REMEMBERED_REPLY, entry_id


def _answer_web_search(
    data: AgenticData, options: _Options, messages: list[dict[str, Any]]
) -> tuple[Reply, str | None] | None:
    users = [_text(m.get("content")).strip() for m in messages if m.get("role") == "user"]
    question = data.web_questions.get(users[-1]) if users else None
    if question is None:
        return None
    wrong = WRONG_REPLY
    right = final_answer(question.answers[0], "Found with a web search.")
    if options.web_search_answer == "direct":
        spoiled = any(options.is_wrong_for(c) for c in WEB_SEARCH_CATEGORIES)
        return (wrong if spoiled else right), question.raw_id
    calls, results = _since_last_user(messages)
    if not calls:
        return [(SEARCH_TOOL, {"keywords": search_keywords(question.text)})], question.raw_id
    category = _search_category(results[-1] if results else "")
    if category is None:
        return SEARCH_FAILED_REPLY, question.raw_id
    entry_id = _entry_id(question.raw_id, category)
    return (wrong if options.is_wrong_for(category) else right), entry_id


def _search_category(result: str) -> str | None:
    """Which web_search category a search tool result belongs to; None for an error or no results.

    bfcl-eval hands a tool's dict to the model as JSON and its list as Python's ``str()``.
    """
    if len(result) > 1_000_000:
        return None
    try:
        results = json.loads(result)
    except ValueError:
        try:
            results = ast.literal_eval(result)
        except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError: not a result list
            return None
    if not isinstance(results, list) or not results or not all(isinstance(r, dict) for r in results):
        return None
    return "web_search_base" if all("body" in r for r in results) else "web_search_no_snippet"


def _since_last_user(messages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The tool calls (names) and tool results (texts) since the last user message."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    calls: list[str] = []
    results: list[str] = []
    for message in messages[last + 1 :]:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    calls.append(str((call.get("function") or {}).get("name", "")))
        elif message.get("role") == "tool":
            results.append(_text(message.get("content")))
    return calls, results


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user(messages: list[dict[str, Any]]) -> str:
    return next((_text(m.get("content")).strip() for m in reversed(messages) if m.get("role") == "user"), "")


_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been who what which when where how "
    "many much does did do this that these those as its it their his her they them you your i me my we our "
    "us if than then so such into about after before over under between each every all any some most more "
    "other also not no can could would should will may might must".split()
)


def search_keywords(question: str, limit: int = 32) -> str:
    """The keywords the oracle searches for: the question's first ``limit`` content words."""
    words = re.findall(r"[A-Za-z0-9]+(?:['&.-][A-Za-z0-9]+)*", question)
    return " ".join([w for w in words if w.lower() not in _STOPWORDS][:limit])


def _normalised(query: str) -> str:
    return " ".join(query.lower().split())


# --------------------------------------------------------------------------- SerpAPI

INVALID_KEY = "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"
OUT_OF_SEARCHES = "Your account has run out of searches."
NO_RESULTS = "DuckDuckGo hasn't returned any results for this query."
_RESULTS_PER_PAGE = 8


@dataclass(frozen=True)
class SearchSettings:
    api_key: str | None = None
    error_rate: float = 0.0  # share answered 500
    rate_limit_rate: float = 0.0  # share answered 429
    always_fail: str | None = None  # None, "no-results" or "503"
    seed: int = 0


class SearchService:
    """``GET /search`` (and ``/search.json``) as SerpAPI answers it, with counters and fault dice."""

    def __init__(self, settings: SearchSettings, oracle: AgenticOracle) -> None:
        self.settings = settings
        self._oracle = oracle
        self._lock = threading.Lock()
        self._dice = random.Random(f"search-{settings.seed}")  # apart from the completions' dice
        self._counts = {
            "received": 0, "ok": 0, "matched": 0, "no_results": 0, "unauthorized": 0,
            "bad_request": 0, "rate_limited": 0, "errors": 0,
        }

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def answer(self, target: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON body for a request target such as ``/search?engine=...&q=...``."""
        params = {k: v[-1] for k, v in parse_qs(urlsplit(target).query, keep_blank_values=True).items()}
        with self._lock:
            self._counts["received"] += 1
            limited = self._dice.random() < self.settings.rate_limit_rate
            failed = self._dice.random() < self.settings.error_rate
        return self._refused(params) or self._injected(limited, failed) or self._results(params)

    def _refused(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]] | None:
        """SerpAPI's 401 for a wrong key, its 400s for a missing or unknown engine or an empty query."""
        if self.settings.api_key is not None and not _same_key(params.get("api_key", ""), self.settings.api_key):
            self._count("unauthorized")
            return 401, {"error": INVALID_KEY}
        engine, query = params.get("engine", ""), params.get("q", "")
        if engine != "duckduckgo":
            self._count("bad_request")
            message = "Missing query `engine` parameter." if not engine else f"Unsupported `{engine}` search engine."
            return 400, {"error": message}
        if not query.strip():
            self._count("bad_request")
            return 400, {"error": "Missing query `q` parameter."}
        return None

    def _injected(self, limited: bool, failed: bool) -> tuple[int, dict[str, Any]] | None:
        """An injected 429, 503 (``always_fail``) or 500."""
        if limited:
            self._count("rate_limited")
            return 429, {"error": OUT_OF_SEARCHES}
        if self.settings.always_fail == "503":
            self._count("errors")
            return 503, {"error": "Service temporarily unavailable (injected by the bfcl-ext stand-in)."}
        if failed:
            self._count("errors")
            return 500, {"error": "Something went wrong (injected by the bfcl-ext stand-in)."}
        return None

    def _results(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """A 200: canned results (a web_search question's keywords get its answer), or none (``always_fail``)."""
        query, region = params.get("q", ""), params.get("kl", "wt-wt")
        body: dict[str, Any] = {
            "search_metadata": _metadata(query, region),
            "search_parameters": {"engine": "duckduckgo", "q": query, "kl": region},
        }
        if self.settings.always_fail == "no-results":
            self._count("no_results")
            body["search_information"] = {"organic_results_state": "Fully empty"}
            body["error"] = NO_RESULTS
            return 200, body
        question = self._oracle.data().web_by_keywords.get(_normalised(query))
        self._count("ok")
        if question is not None:
            self._count("matched")
        body["organic_results"] = canned_results(query, region, question.answers[0] if question else None)
        return 200, body


def _same_key(given: str, expected: str) -> bool:
    digest = hashlib.sha256(given.encode()).digest()
    return secrets.compare_digest(digest, hashlib.sha256(expected.encode()).digest())


def _metadata(query: str, region: str) -> dict[str, Any]:
    search_id = hashlib.sha256(f"{query}\0{region}".encode()).hexdigest()[:24]
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return {
        "id": search_id,
        "status": "Success",
        "json_endpoint": f"https://serpapi.com/searches/{search_id}.json",
        "created_at": now,
        "processed_at": now,
        "duckduckgo_url": f"https://duckduckgo.com/?q={quote_plus(query)}&kl={quote_plus(region)}",
        "total_time_taken": 0.01,
    }


def canned_results(query: str, region: str, answer: str | None) -> list[dict[str, Any]]:
    """SerpAPI ``organic_results``, derived from the query alone; ``answer`` goes in the first snippet."""
    digest = hashlib.sha256(f"{_normalised(query)}\0{region}".encode()).hexdigest()
    topic = " ".join(query.split()[:8])
    results = []
    for position in range(1, _RESULTS_PER_PAGE + 1):
        snippet = f"Canned result {position} of the bfcl-ext search stand-in about {topic} ({digest[:12]})."
        if answer is not None and position == 1:
            snippet = f"According to the bfcl-ext search stand-in, the answer is {answer}."
        results.append(
            {
                "position": position,
                "title": f"{topic} - result {position}",
                "link": f"https://standin.invalid/{digest[:16]}/{position}",
                "snippet": snippet,
                "favicon": "https://standin.invalid/favicon.ico",
            }
        )
    return results


def check_options(web_search_answer: str, search_always_fail: str | None) -> None:
    """Raise ValueError for a choice the stand-in does not know."""
    if web_search_answer not in WEB_SEARCH_ANSWERS:
        raise ValueError(f"web_search_answer={web_search_answer!r}: expected one of {', '.join(WEB_SEARCH_ANSWERS)}")
    if search_always_fail not in (None, *SEARCH_OUTAGES):
        raise ValueError(f"search_always_fail={search_always_fail!r}: expected one of {', '.join(SEARCH_OUTAGES)}")
