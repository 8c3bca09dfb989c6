"""The single-turn oracle: finds the BFCL entry a request is about and answers it from BFCL's
ground truth (right, or wrong but well formed on purpose), as plain calls (``Call``) or text."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bfcl_ext import bridge
from bfcl_ext.standin.request import last_user_text, tool_key

CATEGORIES: tuple[str, ...] = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_relevance",
    "irrelevance",
    "live_irrelevance",
)
"""The single-turn categories the oracle knows, in the order ties between entries are broken."""


@dataclass(frozen=True)
class Case:
    """One BFCL test entry, as the oracle needs it."""

    id: str
    category: str
    question: str  # the last user message, stripped
    functions: tuple[dict[str, Any], ...]  # as in the data file, without language hints
    ground_truth: tuple[dict[str, Any], ...] | None  # None for (ir)relevance entries

    @property
    def names(self) -> frozenset[str]:
        """The function names as OpenAI-style clients send them ('.' -> '_')."""
        return frozenset(tool_key(f["name"]) for f in self.functions)


def load_cases() -> list[Case]:
    """Every entry of the single-turn categories, read through the bridge."""
    bridge.use_scratch_project_root()
    cases = []
    for category in sorted(bridge.expand_categories(CATEGORIES), key=CATEGORIES.index):
        answers: dict[str, Any] = {}
        if "relevance" not in category:
            answers = {gt["id"]: gt["ground_truth"] for gt in bridge.ground_truth_entries(category)}
        for entry in bridge.dataset_entries(category):
            cases.append(_case_from_entry(entry, category, answers.get(entry["id"])))
    return cases


def _case_from_entry(entry: dict[str, Any], category: str, ground_truth: Any) -> Case:
    return Case(
        id=entry["id"],
        category=category,
        question=last_user_text(entry["question"][0]),
        functions=tuple(entry["function"]),
        ground_truth=tuple(ground_truth) if ground_truth is not None else None,
    )


_OMIT = object()  # "" in ground truth: the parameter is optional and may be left out
_NO_ANSWER = "I cannot help with that."
_DECLINE = "None of the functions I was given can do that, so I will not call any."


@dataclass(frozen=True)
class Call:
    """A function call in plain Python values, with the schema of its parameters."""

    name: str  # the entry's own name, dots included
    arguments: dict[str, Any]
    properties: dict[str, Any]


Answer = list[Call] | str


class Oracle:
    """Finds the BFCL entry a request is about. Loads BFCL's data on first use."""

    def __init__(self, loader: Callable[[], list[Case]] = load_cases) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._cases: list[Case] | None = None
        self._by_key: dict[tuple[str, frozenset[str]], list[Case]] = {}

    def cases(self) -> list[Case]:
        with self._lock:
            if self._cases is None:
                self._cases = self._loader()
                for case in self._cases:
                    self._by_key.setdefault((case.question, case.names), []).append(case)
            return self._cases

    def for_tools(self, question: str, names: frozenset[str], context: str) -> Case | None:
        """The entry asking ``question`` with exactly these tools (names with '_' for '.')."""
        self.cases()
        candidates = self._by_key.get((question, names))
        if not candidates:
            candidates = [c for c in self.cases() if c.names == names and c.question in context]
        return _best(candidates, context)

    def for_prompt(self, prompt: str) -> Case | None:
        """The entry whose question and function names all appear in a rendered prompt."""
        candidates = [
            case
            for case in self.cases()
            if case.question and case.question in prompt and _mentions_all(prompt, case)
        ]
        return _best(candidates, prompt)


def _mentions_all(text: str, case: Case) -> bool:
    return all(f["name"] in text or tool_key(f["name"]) in text for f in case.functions)


def _best(candidates: list[Case], context: str) -> Case | None:
    """Prefer a longer question, then more functions, then more of their descriptions found."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (len(c.question), len(c.functions), _described(c, context)))


def _described(case: Case, context: str) -> int:
    """How many of the entry's function descriptions appear in ``context`` (raw or JSON-escaped)."""
    found = 0
    for function in case.functions:
        description = function.get("description", "")
        if description in context or json.dumps(description)[1:-1] in context:
            found += 1
    return found


def answer_for(case: Case | None, wrong: bool) -> Answer:
    """What a model should say to ``case``: right, or wrong but well formed."""
    if case is None:
        return _NO_ANSWER
    if case.ground_truth is not None:
        calls = [_ground_truth_call(case, call) for call in case.ground_truth]
        return _spoiled(calls) if wrong else calls
    if ("irrelevance" in case.category) != wrong:  # irrelevance right, or relevance wrong
        return _DECLINE
    if not case.functions:  # nothing on offer: the wrong answer calls something anyway
        return [Call("standin_wrong_call", {}, {})]
    return [_placeholder_call(case.functions[0])]


def _ground_truth_call(case: Case, call: dict[str, Any]) -> Call:
    """The first acceptable form of one ground-truth call ``{name: {param: [options]}}``."""
    ((name, options),) = call.items()
    parameters = next((f["parameters"] for f in case.functions if f["name"] == name), {})
    properties, required = parameters.get("properties", {}), parameters.get("required", [])
    arguments = {}
    for param, accepted in options.items():
        schema = properties.get(param)
        value = _argument(accepted, schema, required=param in required)
        if value is not _OMIT:
            arguments[param] = value
    return Call(name, arguments, properties)


def _argument(accepted: Any, schema: dict[str, Any] | None, required: bool) -> Any:
    """One parameter's value (``schema`` None: the function has no such parameter), or _OMIT.
    Ground truth sometimes names parameters the function does not have (left out when allowed)
    or offers nothing but "" (or nothing at all) for a required one: that is sent empty, as a
    model would, in the parameter's declared type ("" for a string, [] for an array)."""
    if schema is None and isinstance(accepted, list) and "" in accepted:
        return _OMIT
    value = _first_acceptable(accepted)
    if value is _OMIT and required:
        return _empty(schema or {})
    return value


_EMPTY: dict[str, type] = {
    "array": list, "tuple": list, "Array": list, "ArrayList": list, "dict": dict, "HashMap": dict
}


def _empty(schema: dict[str, Any]) -> Any:
    """An empty value of a parameter's declared type; "" for strings and anything else."""
    return _EMPTY.get(schema.get("type", "string"), str)()


def _first_acceptable(options: Any) -> Any:
    """The first option that is not "" (which marks an omittable parameter), made concrete."""
    if not isinstance(options, list):
        return _concrete(options)
    for option in options:
        if option != "":
            return _concrete(option)
    return _OMIT


def _concrete(value: Any) -> Any:
    """Dicts in ground truth map each key to its options; pick one for every key."""
    if isinstance(value, dict):
        picked = {key: _first_acceptable(options) for key, options in value.items()}
        return {key: item for key, item in picked.items() if item is not _OMIT}
    if isinstance(value, list):
        return [_concrete(item) if isinstance(item, dict) else item for item in value]
    return value


def _spoiled(calls: list[Call]) -> list[Call]:
    """The right calls, but the first carries a parameter no function has: never accepted."""
    first = calls[0]
    spoiled = Call(first.name, {**first.arguments, "standin_wrong_argument": True}, first.properties)
    return [spoiled, *calls[1:]]


def _placeholder_call(function: dict[str, Any]) -> Call:
    """A well-formed call of ``function`` with made-up values for its required parameters."""
    parameters = function.get("parameters", {})
    properties = parameters.get("properties", {})
    arguments = {name: _placeholder(properties.get(name, {})) for name in parameters.get("required", [])}
    return Call(function["name"], arguments, properties)


def _placeholder(schema: dict[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    samples = {"integer": 1, "float": 1.5, "number": 1.5, "boolean": True, "array": [], "dict": {}}
    return samples.get(schema.get("type", "string"), "example")
