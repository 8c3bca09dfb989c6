"""A stand-in for a vLLM OpenAI-compatible server, for smoke tests without a GPU.

It speaks the parts of vLLM's HTTP API that bfcl-eval uses, with vLLM 0.32's status codes
and JSON shapes, and answers BFCL's single-turn questions from BFCL's own ground truth
(``mode="oracle"``), or wrongly on purpose (``mode="wrong"``, ``"wrong-category:<cat>"``).
Faults can be injected: a port that opens late, latency, replies that trickle in a byte at a time
(the body, or the status line and headers; or the readiness probes' whole replies), 500s, 429s,
replies with status 200 a client cannot use (``BAD_REPLY_KINDS``), a concurrency cap and a crash
after N requests.
``GET /standin/stats`` counts what it did, and what it was sent: ``request_fields`` counts each
distinct set of request fields other than the question (``CONTENT_FIELDS``), as sorted JSON.
Standard library only.

    python -m bfcl_ext.standin --port 8000 --served-model-name my-model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Callable

from bfcl_ext import standin_agentic, standin_metrics
from bfcl_ext import standin_multiturn

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

CONTENT_FIELDS = frozenset({"messages", "prompt", "tools"})  # the question: left out of ``request_fields``


@dataclass(frozen=True)
class _Case:
    """One BFCL test entry, as the oracle needs it."""

    id: str
    category: str
    question: str  # the last user message, stripped
    functions: tuple[dict[str, Any], ...]  # as in the data file, without language hints
    ground_truth: tuple[dict[str, Any], ...] | None  # None for (ir)relevance entries

    @property
    def names(self) -> frozenset[str]:
        """The function names as OpenAI-style clients send them ('.' -> '_')."""
        return frozenset(_tool_key(f["name"]) for f in self.functions)


def _load_bfcl_cases() -> list[_Case]:
    """Every entry of the single-turn categories, read through bfcl_eval (imported here only)."""
    # bfcl_eval creates result/, score/ and .file_locks/ under this root when imported;
    # without it they land in site-packages.
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ext-standin-"))
    from bfcl_eval.utils import (
        load_dataset_entry,
        load_ground_truth_entry,
        parse_test_category_argument,
    )

    cases = []
    for category in sorted(parse_test_category_argument(list(CATEGORIES)), key=CATEGORIES.index):
        answers: dict[str, Any] = {}
        if "relevance" not in category:
            answers = {gt["id"]: gt["ground_truth"] for gt in load_ground_truth_entry(category)}
        for entry in load_dataset_entry(category, include_language_specific_hint=False):
            cases.append(_case_from_entry(entry, category, answers.get(entry["id"])))
    return cases


def _case_from_entry(entry: dict[str, Any], category: str, ground_truth: Any) -> _Case:
    return _Case(
        id=entry["id"],
        category=category,
        question=_last_user_text(entry["question"][0]),
        functions=tuple(entry["function"]),
        ground_truth=tuple(ground_truth) if ground_truth is not None else None,
    )


# --------------------------------------------------------------------------- options

BAD_REPLY_KINDS: tuple[str, ...] = ("cut", "null-message", "no-usage", "empty-choices", "string-tool-calls",
                                     "null-function", "int-content")
"""Replies with status 200 that a client cannot use (``bad_reply_rate``): the body cut short (a
prefix of valid JSON, with the Content-Length of what is sent), ``choices[0].message`` null (on
/v1/completions: ``choices[0].text``), no ``usage``, ``choices: []``, and a message of the wrong
shape: ``tool_calls`` a string (the calls' JSON text), a tool call with ``function: null``, an
integer ``content`` (on /v1/completions, each of these three: an integer ``text``)."""
MALFORMED_MESSAGE_KINDS = ("string-tool-calls", "null-function", "int-content")


@dataclass(frozen=True)
class StandinOptions:
    """How the stand-in listens, answers and misbehaves. See the module docstring."""

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
    max_num_seqs: int | None = None  # vLLM's: completions beyond it wait for a slot (standin_metrics, /metrics)
    metrics: bool = True  # False: no /metrics (404), as another server kind
    die_after: int | None = None
    echo_key: int = 0  # the first N completions answered 400 quoting the bearer key sent (a server that leaks it)
    seed: int = 0
    version: str = "0.32.0"
    web_search_answer: str = "search-first"  # or "direct" (see standin_agentic)
    search_api_key: str | None = field(default=None, repr=False)  # /search: SerpAPI's api_key
    search_error_rate: float = 0.0
    search_rate_limit_rate: float = 0.0
    search_always_fail: str | None = None  # "no-results" or "503"

    def __post_init__(self) -> None:
        if not self.served_model_names:
            raise ValueError("served_model_names: at least one name is needed")
        _parse_mode(self.mode)
        standin_agentic.check_options(self.web_search_answer, self.search_always_fail)
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
        wrong = _parse_mode(self.mode)
        return wrong == "*" or wrong == category


def _parse_mode(mode: str) -> str | None:
    """``"oracle"`` -> None, ``"wrong"`` -> ``"*"``, ``"wrong-category:<cat>"`` -> cat."""
    if mode == "oracle":
        return None
    if mode == "wrong":
        return "*"
    prefix, _, category = mode.partition(":")
    known = (*CATEGORIES, *standin_agentic.AGENTIC_CATEGORIES, *standin_multiturn.CATEGORIES)
    if prefix == "wrong-category" and category in known:
        return category
    raise ValueError(
        f"mode={mode!r}: expected 'oracle', 'wrong' or 'wrong-category:<cat>' "
        f"with <cat> one of {', '.join(known)}"
    )


# --------------------------------------------------------------------------- oracle

_OMIT = object()  # "" in ground truth: the parameter is optional and may be left out
_NO_ANSWER = "I cannot help with that."
_DECLINE = "None of the functions I was given can do that, so I will not call any."


@dataclass(frozen=True)
class _Call:
    """A function call in plain Python values, with the schema of its parameters."""

    name: str  # the entry's own name, dots included
    arguments: dict[str, Any]
    properties: dict[str, Any]


_Answer = list[_Call] | str


class _Oracle:
    """Finds the BFCL entry a request is about. Loads BFCL's data on first use."""

    def __init__(self, loader: Callable[[], list[_Case]] = _load_bfcl_cases) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._cases: list[_Case] | None = None
        self._by_key: dict[tuple[str, frozenset[str]], list[_Case]] = {}

    def cases(self) -> list[_Case]:
        with self._lock:
            if self._cases is None:
                self._cases = self._loader()
                for case in self._cases:
                    self._by_key.setdefault((case.question, case.names), []).append(case)
            return self._cases

    def for_tools(self, question: str, names: frozenset[str], context: str) -> _Case | None:
        """The entry asking ``question`` with exactly these tools (names with '_' for '.')."""
        self.cases()
        candidates = self._by_key.get((question, names))
        if not candidates:
            candidates = [c for c in self.cases() if c.names == names and c.question in context]
        return _best(candidates, context)

    def for_prompt(self, prompt: str) -> _Case | None:
        """The entry whose question and function names all appear in a rendered prompt."""
        candidates = [
            case
            for case in self.cases()
            if case.question and case.question in prompt and _mentions_all(prompt, case)
        ]
        return _best(candidates, prompt)


def _mentions_all(text: str, case: _Case) -> bool:
    return all(f["name"] in text or _tool_key(f["name"]) in text for f in case.functions)


def _best(candidates: list[_Case], context: str) -> _Case | None:
    """Prefer a longer question, then more functions, then more of their descriptions found."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (len(c.question), len(c.functions), _described(c, context)))


def _described(case: _Case, context: str) -> int:
    """How many of the entry's function descriptions appear in ``context`` (raw or JSON-escaped)."""
    found = 0
    for function in case.functions:
        description = function.get("description", "")
        if description in context or json.dumps(description)[1:-1] in context:
            found += 1
    return found


def _tool_key(name: str) -> str:
    """A function name as OpenAI-style tools carry it: '.' is not allowed there."""
    return name.replace(".", "_")


def _answer(case: _Case | None, wrong: bool) -> _Answer:
    """What a model should say to ``case``: right, or wrong but well formed."""
    if case is None:
        return _NO_ANSWER
    if case.ground_truth is not None:
        calls = [_ground_truth_call(case, call) for call in case.ground_truth]
        return _spoiled(calls) if wrong else calls
    if ("irrelevance" in case.category) != wrong:  # irrelevance right, or relevance wrong
        return _DECLINE
    if not case.functions:  # nothing on offer: the wrong answer calls something anyway
        return [_Call("standin_wrong_call", {}, {})]
    return [_placeholder_call(case.functions[0])]


def _ground_truth_call(case: _Case, call: dict[str, Any]) -> _Call:
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
    return _Call(name, arguments, properties)


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


def _spoiled(calls: list[_Call]) -> list[_Call]:
    """The right calls, but the first carries a parameter no function has: never accepted."""
    first = calls[0]
    spoiled = _Call(first.name, {**first.arguments, "standin_wrong_argument": True}, first.properties)
    return [spoiled, *calls[1:]]


def _placeholder_call(function: dict[str, Any]) -> _Call:
    """A well-formed call of ``function`` with made-up values for its required parameters."""
    parameters = function.get("parameters", {})
    properties = parameters.get("properties", {})
    arguments = {name: _placeholder(properties.get(name, {})) for name in parameters.get("required", [])}
    return _Call(function["name"], arguments, properties)


def _placeholder(schema: dict[str, Any]) -> Any:
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    samples = {"integer": 1, "float": 1.5, "number": 1.5, "boolean": True, "array": [], "dict": {}}
    return samples.get(schema.get("type", "string"), "example")


# --------------------------------------------------------------------------- rendering


def _language(category: str) -> str:
    if category == "simple_java":
        return "java"
    if category == "simple_javascript":
        return "javascript"
    return "python"


def _tool_arguments(call: _Call, language: str) -> str:
    """``arguments`` of an OpenAI tool call: JSON; Java and JavaScript values as source text."""
    if language == "python":
        return json.dumps(call.arguments, ensure_ascii=False)
    render = _java_value if language == "java" else _js_value
    rendered = {k: render(v, call.properties.get(k, {})) for k, v in call.arguments.items()}
    return json.dumps(rendered, ensure_ascii=False)


def _call_text(calls: list[_Call], language: str) -> str:
    """The calls in BFCL's default prompt-mode syntax: ``[f(a=1, b='x'), g()]``."""
    return "[" + ", ".join(_one_call_text(call, language) for call in calls) + "]"


def _one_call_text(call: _Call, language: str) -> str:
    arguments = ", ".join(
        f"{name}={_source_value(value, call.properties.get(name, {}), language)}"
        for name, value in call.arguments.items()
    )
    return f"{call.name}({arguments})"


def _source_value(value: Any, schema: dict[str, Any], language: str) -> str:
    """A value as it is written in a call in ``language``."""
    if language == "python":
        return repr(value)
    text = _java_value(value, schema) if language == "java" else _js_value(value, schema)
    if '"' in text:  # source already (`new Foo("x")`): BFCL's parsers would not unescape it
        return text
    if isinstance(value, str) or schema.get("type") in ("String", "any", "char"):
        return json.dumps(text)  # a string literal; BFCL's parsers strip the quotes
    return text


def _java_value(value: Any, schema: dict[str, Any]) -> str:
    """``value`` as Java source that BFCL's ``java_type_converter`` turns back into it."""
    kind = schema.get("type", "String")
    element = schema.get("items", {}).get("type", "String")
    if isinstance(value, str):  # a string, or a variable's name
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "long":
        return f"{value}L"
    if kind == "float":
        return f"{value}f"
    if kind == "Array":
        return _java_array(value, element)
    if kind == "ArrayList":
        return _java_array_list(value, element)
    if kind == "HashMap" and isinstance(value, dict):
        puts = " ".join(f'put("{k}", {_java_literal(v)});' for k, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    return str(value)


_JAVA_ARRAY_TYPES = {"integer": "int", "boolean": "boolean", "double": "double", "float": "float"}


def _java_array(values: list[Any], element: str) -> str:
    items = ", ".join(_java_value(v, {"type": element}) for v in values)
    return f"new {_JAVA_ARRAY_TYPES.get(element, element)}[]{{{items}}}"


def _java_array_list(values: list[Any], element: str) -> str:
    if not values:
        return "new ArrayList<>()"
    items = ", ".join(
        json.dumps(v) if element == "String" else _java_value(v, {"type": element}) for v in values
    )
    return f"new ArrayList<>(Arrays.asList({items}))"


def _java_literal(value: Any) -> str:
    """A Java literal of unknown declared type (HashMap values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _js_value(value: Any, schema: dict[str, Any]) -> str:
    """``value`` as JavaScript source that BFCL's ``js_type_converter`` turns back into it."""
    if isinstance(value, str):  # a string, or a variable's name
        return value
    if schema.get("type") == "Bigint":
        return f"{value}n"
    return _js_literal(value)


def _js_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_js_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_js_literal(v)}" for k, v in value.items()) + "}"
    return str(value)


# --------------------------------------------------------------------------- vLLM's shapes


def _error(
    status: HTTPStatus, message: str, err_type: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """vLLM's ``ErrorResponse`` (vllm/entrypoints/serve/engine/protocol.py)."""
    return {
        "error": {
            "message": message,
            "type": err_type or status.phrase,
            "param": param,
            "code": status.value,
        }
    }


def _validation_error(
    kind: str, loc: str, msg: str, given: Any, ctx: dict[str, str] | None = None
) -> dict[str, Any]:
    """What vLLM's ``validation_exception_handler`` answers for a request it cannot read."""
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": _summary(given)}
    if ctx:
        detail["ctx"] = ctx
    return _error(HTTPStatus.BAD_REQUEST, f"1 validation error:\n  {detail}", param=loc)


def _summary(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)[:200]


def _model_card(name: str, root: str, created: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": None,
        "max_model_len": 32768,
        "permission": [
            {
                "id": f"modelperm-{_random_id()}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


def _usage(prompt: str, output: str) -> dict[str, Any]:
    """Token counts: about four characters a token, as plausible as needed."""
    prompt_tokens, completion_tokens = 1 + len(prompt) // 4, 1 + len(output) // 4
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def _chat_response(
    model: str, answer: _Answer, language: str, offered: dict[str, str], prompt: str
) -> dict[str, Any]:
    """A non-streamed ``chat.completion``: tool calls when tools were offered, else text."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
    }
    if isinstance(answer, str) or not offered:
        message["content"] = answer if isinstance(answer, str) else _call_text(answer, language)
        output, finish = message["content"], "stop"
    else:
        message["tool_calls"] = [_tool_call(call, language, offered) for call in answer]
        output, finish = json.dumps(message["tool_calls"]), "tool_calls"
    message["reasoning"] = None
    return {
        "id": f"chatcmpl-{_random_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "token_ids": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": _usage(prompt, output),
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "kv_transfer_params": None,
    }


def _tool_call(call: _Call, language: str, offered: dict[str, str]) -> dict[str, Any]:
    key = _tool_key(call.name)
    return {
        "id": f"chatcmpl-tool-{_random_id()}",
        "type": "function",
        "function": {"name": offered.get(key, key), "arguments": _tool_arguments(call, language)},
    }


def _completion_response(model: str, text: str, prompt: str) -> dict[str, Any]:
    """A non-streamed ``text_completion``."""
    return {
        "id": f"cmpl-{_random_id()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": "stop",
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": _usage(prompt, text),
        "kv_transfer_params": None,
    }


def _random_id() -> str:
    """16 hex digits, like ``vllm.utils.random_uuid``."""
    return f"{uuid.uuid4().int & (2**64 - 1):016x}"


def _bad_reply_body(payload: dict[str, Any], kind: str) -> bytes:
    """A completion ``payload`` spoiled as ``kind`` (one of ``BAD_REPLY_KINDS``), as sent."""
    if kind == "cut":  # ASCII only, so the cut never splits a character: the JSON is what is broken
        whole = json.dumps(payload).encode()
        return whole[: len(whole) // 2]
    spoiled = {**payload, "choices": [dict(choice) for choice in payload.get("choices", [])]}
    if kind == "null-message":
        for choice in spoiled["choices"][:1]:
            choice["message" if "message" in choice else "text"] = None
    elif kind == "no-usage":
        spoiled.pop("usage", None)
    elif kind == "empty-choices":
        spoiled["choices"] = []
    elif kind in MALFORMED_MESSAGE_KINDS:
        for choice in spoiled["choices"][:1]:
            if "message" in choice:
                choice["message"] = _malformed_message(dict(choice["message"] or {}), kind)
            else:
                choice["text"] = 42
    else:
        raise ValueError(f"unknown bad reply kind {kind!r}")
    return json.dumps(spoiled, ensure_ascii=False).encode()


def _malformed_message(message: dict[str, Any], kind: str) -> dict[str, Any]:
    calls = message.get("tool_calls") or [{"id": f"chatcmpl-tool-{_random_id()}", "type": "function",
                                           "function": {"name": "f", "arguments": "{}"}}]
    if kind == "string-tool-calls":
        message["tool_calls"] = json.dumps(calls)
    elif kind == "null-function":
        message["tool_calls"] = [{**calls[0], "function": None}, *calls[1:]]
    else:  # int-content
        message["content"] = 42
    return message


# --------------------------------------------------------------------------- requests


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content")).strip()
    return ""


def _text_of(content: Any) -> str:
    """Message content, whether a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _offered_tools(body: dict[str, Any]) -> dict[str, str]:
    """Offered function names by their '.'-free key; none when ``tool_choice`` is ``"none"``."""
    if body.get("tool_choice") == "none":
        return {}
    names = [
        tool.get("function", {}).get("name", "")
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and tool.get("type", "function") == "function"
    ]
    return {_tool_key(name): name for name in names if name}


def _prompt_of(body: dict[str, Any]) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


# --------------------------------------------------------------------------- state


class _State:
    """Counters, fault dice and the in-flight count, shared by all request threads."""

    def __init__(self, options: StandinOptions) -> None:
        self.options = options
        self.oracle = _Oracle()
        self.agentic = standin_agentic.AgenticOracle()
        self.search = standin_agentic.SearchService(standin_agentic.SearchSettings(
            options.search_api_key, options.search_error_rate, options.search_rate_limit_rate,
            options.search_always_fail, options.seed), self.agentic)
        self._lock = threading.Lock()
        self._dice = random.Random(options.seed)
        # dice of their own: turning bad replies on leaves a seed's 500s and 429s where they were
        self._bad_dice = random.Random(f"bad-replies-{options.seed}")
        self._in_flight = 0
        self.batch = standin_metrics.Batch(options.max_num_seqs)
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


# --------------------------------------------------------------------------- HTTP

_GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's AuthenticationMiddleware
_NOT_FOUND = {"detail": "Not Found"}


class _Handler(BaseHTTPRequestHandler):
    """One connection. HTTP/1.1 with keep-alive, like uvicorn."""

    protocol_version = "HTTP/1.1"
    timeout = 5  # uvicorn's keep-alive timeout in vLLM
    server: _Server

    # -- plumbing

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Quiet: no access log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        routes = self._routes().get(path)
        if path.startswith(_GUARDED_PREFIXES) and not self._authorized():
            self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "Unauthorized"})
        elif routes is None:
            self._send_json(HTTPStatus.NOT_FOUND, _NOT_FOUND)
        elif method not in routes:
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"detail": "Method Not Allowed"})
        else:
            routes[method](body)

    def _routes(self) -> dict[str, dict[str, Callable[[bytes], None]]]:
        return {
            "/health": {"GET": self._health},
            "/version": {"GET": self._version},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
            "/standin/stats": {"GET": self._stats},
            **({"/metrics": {"GET": self._metrics}} if self.server.options.metrics else {}),
            "/search": {"GET": self._search},  # SerpAPI's, for bfcl-eval's web search
            "/search.json": {"GET": self._search},
        }

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _authorized(self) -> bool:
        """vLLM's check: ``Authorization: Bearer <key>``, compared in constant time."""
        key = self.server.options.api_key
        if key is None:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        return secrets.compare_digest(digest, hashlib.sha256(key.encode()).digest())

    def _send_json(
        self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None, trickle: float = 0.0,
        trickle_headers: float = 0.0,
    ) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers, trickle,
                   trickle_headers)

    def _send(
        self, status: HTTPStatus, data: bytes, content_type: str | None, headers: dict[str, str] | None = None,
        trickle: float = 0.0, trickle_headers: float = 0.0,
    ) -> None:
        """The reply; with ``trickle``, its body one byte every ``trickle`` seconds (each read of the
        client gets something, the reply never seems to end); with ``trickle_headers``, its status line
        and headers so, before the body. Every byte is sent in the end, as by a slow server."""
        self.send_response(status.value, status.phrase)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if trickle_headers > 0:  # what end_headers() would write at once: the buffered head and its blank line
            head, self._headers_buffer = b"".join(self._headers_buffer) + b"\r\n", []
            if not self._trickle(head, trickle_headers):
                return
        else:
            self.end_headers()
        if trickle <= 0:
            self.wfile.write(data)
            self.wfile.flush()
            return
        self._trickle(data, trickle)

    def _trickle(self, data: bytes, every: float) -> bool:
        """``data`` one byte every ``every`` seconds; False if the server died on the way."""
        for index in range(len(data)):
            if self.server.dead:
                return False
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()
            time.sleep(every)
        return True

    def _drop(self) -> None:
        """Close the connection without an answer, as a crashed server does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- honest endpoints

    def _health(self, _body: bytes) -> None:
        slow = self.server.options.trickle_probes
        self._send(HTTPStatus.OK, b"", None, trickle=slow, trickle_headers=slow)

    def _version(self, _body: bytes) -> None:
        slow = self.server.options.trickle_probes
        self._send_json(HTTPStatus.OK, {"version": self.server.options.version}, trickle=slow, trickle_headers=slow)

    def _models(self, _body: bytes) -> None:
        names = self.server.options.served_model_names
        root = self.server.options.model_root or names[0]
        cards = [_model_card(name, root, self.server.started) for name in names]
        slow = self.server.options.trickle_probes
        self._send_json(HTTPStatus.OK, {"object": "list", "data": cards}, trickle=slow, trickle_headers=slow)

    def _stats(self, _body: bytes) -> None:
        self._send_json(HTTPStatus.OK, self.server.state.snapshot())

    def _metrics(self, _body: bytes) -> None:
        text = self.server.state.batch.metrics_text(self.server.options.served_model_names[0])
        self._send(HTTPStatus.OK, text.encode(), standin_metrics.CONTENT_TYPE)

    def _search(self, _body: bytes) -> None:
        status, payload = self.server.state.search.answer(self.path)
        self._send_json(HTTPStatus(status), payload)

    # -- completions

    def _chat(self, body: bytes) -> None:
        self._complete(body, "messages", self._answer_chat)

    def _completion(self, body: bytes) -> None:
        self._complete(body, "prompt", self._answer_completion)

    def _complete(
        self,
        raw: bytes,
        required: str,
        answer: Callable[[dict[str, Any], str], tuple[dict[str, Any], str | None]],
    ) -> None:
        """The shared path of both completion endpoints: faults, checks, then the answer."""
        state, options = self.server.state, self.server.options
        if self.server.dead:
            return self._drop()
        ordinal, fault = state.admit()
        batched = fault != "429" and state.batch.enter(lambda: self.server.dead)  # a slot, as vLLM schedules
        try:
            if fault != "429" and not batched:
                return self._drop()
            if options.die_after is not None and ordinal > options.die_after:
                return self._drop()
            if fault == "echo-key":
                return self._echo_key()
            self._respond(raw, required, answer, fault)
        finally:
            if batched:
                state.batch.leave()
            if fault != "429":
                state.release()
            if ordinal == options.die_after:
                self.close_connection = True
                self.server.crash()

    def _respond(
        self,
        raw: bytes,
        required: str,
        answer: Callable[..., tuple[dict[str, Any], str | None]],
        fault: str | None,
    ) -> None:
        state, options = self.server.state, self.server.options
        body, problem = self._parse(raw, required)
        if problem is not None:
            state.count("rejected")
            return self._send_json(HTTPStatus(problem["error"]["code"]), problem)
        state.record_fields(body)
        if fault == "429":
            state.count("rate_limited")
            message = "Too many requests (injected by the bfcl-ext stand-in). Retry later."
            return self._send_json(
                HTTPStatus.TOO_MANY_REQUESTS,
                _error(HTTPStatus.TOO_MANY_REQUESTS, message),
                {"Retry-After": "1"},
            )
        time.sleep(options.latency)
        if fault == "500":
            return self._internal_error("Internal server error (injected by the bfcl-ext stand-in).")
        try:
            payload, entry_id = answer(body, body.get("model") or options.served_model_names[0])
        except Exception as exc:  # a bug or an odd request: answer as vLLM's catch-all does
            return self._internal_error(f"{type(exc).__name__}: {exc}")
        bad = state.bad_reply()
        if bad is not None:  # not an answer: neither "ok" nor counted for its entry
            return self._send(HTTPStatus.OK, _bad_reply_body(payload, bad), "application/json")
        state.count("ok", entry_id)
        if entry_id is None:
            state.count("unmatched")
        self._send_json(HTTPStatus.OK, payload, trickle=options.trickle, trickle_headers=options.trickle_headers)

    def _internal_error(self, message: str) -> None:
        self.server.state.count("errors")
        payload = _error(HTTPStatus.INTERNAL_SERVER_ERROR, message, "InternalServerError")
        self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, payload)

    def _echo_key(self) -> None:
        """A 400 whose body quotes the bearer key back (injected): the client records it as the answer."""
        self.server.state.count("rejected")
        key = (self.headers.get("Authorization") or "").partition(" ")[2]
        message = f"Request rejected (injected by the bfcl-ext stand-in) for the key {key}"
        self._send_json(HTTPStatus.BAD_REQUEST, _error(HTTPStatus.BAD_REQUEST, message))

    def _parse(self, raw: bytes, required: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The request body, or the error vLLM would answer instead."""
        media_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            message = "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
            return {}, _error(HTTPStatus.BAD_REQUEST, message)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            pos, msg = getattr(exc, "pos", 0), getattr(exc, "msg", str(exc))
            return {}, _validation_error(
                "json_invalid", f"body.{pos}", "JSON decode error", {}, {"error": msg}
            )
        if not isinstance(body, dict):
            return {}, _validation_error(
                "model_attributes_type",
                "body",
                "Input should be a valid dictionary or object to extract fields from",
                body,
            )
        if required not in body:
            return {}, _validation_error("missing", f"body.{required}", "Field required", body)
        return body, self._check_model(body.get("model"))

    def _check_model(self, model: Any) -> dict[str, Any] | None:
        names = self.server.options.served_model_names
        if not model or model in names:
            return None
        message = f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}."
        return _error(HTTPStatus.NOT_FOUND, message, "NotFoundError", "model")

    def _answer_chat(self, body: dict[str, Any], model: str) -> tuple[dict[str, Any], str | None]:
        messages = body["messages"] if isinstance(body["messages"], list) else []
        context = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        offered = _offered_tools(body)
        agentic = standin_agentic.answer_chat(self.server.state.agentic, self.server.options, messages, offered)
        if agentic is not None:  # memory and web search: see standin_agentic
            reply, entry_id = agentic
            answer = reply if isinstance(reply, str) else [_Call(name, args, {}) for name, args in reply]
            return _chat_response(model, answer, "python", offered, context), entry_id
        turn = standin_multiturn.ORACLE.answer(messages, offered, self.server.options.is_wrong_for)
        if turn is not None:  # multi_turn_*: see standin_multiturn
            answer = turn.text if turn.text is not None else [_Call(c.name, c.arguments, {}) for c in turn.calls]
            return turn.mark(_chat_response(model, answer, "python", offered, context)), turn.entry_id
        oracle = self.server.state.oracle
        if offered:
            tools_text = json.dumps(body.get("tools"), ensure_ascii=False)
            case = oracle.for_tools(_last_user_text(messages), frozenset(offered), context + tools_text)
        else:
            case = oracle.for_prompt(context)
        answer = _answer(case, case is not None and self.server.options.is_wrong_for(case.category))
        language = _language(case.category) if case else "python"
        return _chat_response(model, answer, language, offered, context), case.id if case else None

    def _answer_completion(self, body: dict[str, Any], model: str) -> tuple[dict[str, Any], str | None]:
        prompt = _prompt_of(body)
        case = self.server.state.oracle.for_prompt(prompt)
        answer = _answer(case, case is not None and self.server.options.is_wrong_for(case.category))
        language = _language(case.category) if case else "python"
        text = answer if isinstance(answer, str) else _call_text(answer, language)
        return _completion_response(model, text, prompt), case.id if case else None


class _Server(ThreadingHTTPServer):
    """The listening socket, its open connections, and what happens when it dies."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048  # uvicorn's backlog: 64 threads connecting at once are all queued, none reset

    def __init__(self, options: StandinOptions, state: _State, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        super().__init__((options.host, port), _Handler)
        self.options = options
        self.state = state
        self.started = int(time.time())
        self.dead = False
        self.exit_code = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hang up; loud (stderr) about anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def crash(self) -> None:
        """Die like a killed process: stop listening now and drop every connection."""
        self.dead = True
        self.exit_code = 1
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        threading.Thread(target=self.shutdown, daemon=True).start()

    def close_all(self) -> None:
        """Close the listening socket and every open connection (after ``serve_forever``)."""
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- lifecycle


class _Runner:
    """Waits out ``load_delay`` with the port closed, binds, serves; stoppable at any point."""

    def __init__(self, options: StandinOptions, state: _State) -> None:
        self.options = options
        self.state = state
        self.port = options.port
        if options.port == 0 and options.load_delay > 0:
            self.port = _free_port(options.host)  # known now, bound only after the delay
        self.bound = threading.Event()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._lock = threading.Lock()

    def run(self, on_bound: Callable[[_Server], None] = lambda server: None) -> int:
        """Serve until stopped (0) or crashed after ``die_after`` (1)."""
        if self._stop.wait(self.options.load_delay):
            return 0
        server = _Server(self.options, self.state, self.port)
        with self._lock:
            if self._stop.is_set():
                server.server_close()
                return 0
            self._server = server
        self.port = server.server_address[1]
        on_bound(server)
        self.bound.set()
        try:
            server.serve_forever(poll_interval=0.05)
        finally:
            server.close_all()
        return server.exit_code

    def stop(self) -> None:
        """Ask ``run`` to return; blocks until the serving loop has ended (not from it)."""
        self._stop.set()
        with self._lock:
            server = self._server
        if server is not None:
            server.shutdown()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _banner(options: StandinOptions, server: _Server) -> str:
    host = f"[{options.host}]" if ":" in options.host else options.host
    names = ", ".join(options.served_model_names)
    return f"standin: serving {names} on http://{host}:{server.server_address[1]} (mode={options.mode})"


def serve(options: StandinOptions, ready: threading.Event | None = None) -> int:
    """Run the stand-in in this thread until SIGTERM/SIGINT (0) or a ``die_after`` crash (1).

    Prints one line once the port is bound, then sets ``ready``.
    """
    runner = _Runner(options, _State(options))

    def bound(server: _Server) -> None:
        print(_banner(options, server), flush=True)
        if ready is not None:
            ready.set()

    restore = _install_signal_handlers(runner)
    try:
        return runner.run(bound)
    finally:
        restore()


def _install_signal_handlers(runner: _Runner) -> Callable[[], None]:
    """SIGTERM and SIGINT stop the server cleanly; returns a function that undoes this."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, frame: Any) -> None:
        threading.Thread(target=runner.stop, daemon=True).start()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


class Standin:
    """The stand-in in a background thread, for tests: ``with Standin(opts) as s: s.url``."""

    def __init__(self, options: StandinOptions | None = None) -> None:
        self.options = options or StandinOptions(port=0)
        self._state = _State(self.options)
        self._runner = _Runner(self.options, self._state)
        self._thread: threading.Thread | None = None
        self._result: int | BaseException | None = None

    @property
    def port(self) -> int:
        """The port: the bound one when ``port=0`` (reserved up front when ``load_delay`` is set)."""
        return self._runner.port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:8000`` (the OpenAI base URL adds ``/v1``)."""
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"http://{host}:{self.port}"

    @property
    def exit_code(self) -> int | None:
        """What ``serve`` would have returned, once the server has stopped or crashed."""
        return self._result if isinstance(self._result, int) else None

    def start(self, timeout: float = 10.0) -> Standin:
        """Start serving. Returns once bound, or at once when ``load_delay`` keeps the port closed."""
        self._thread = threading.Thread(target=self._run, name="bfcl-ext-standin", daemon=True)
        self._thread.start()
        if self.options.load_delay == 0:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the port is bound; raise what went wrong if it never is."""
        deadline = time.monotonic() + timeout
        while not self._runner.bound.wait(0.01):
            if isinstance(self._result, BaseException):
                raise self._result
            if time.monotonic() > deadline:
                raise TimeoutError(f"stand-in not bound after {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread (also fine after a crash)."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            self._runner.stop()
        self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        """Same as ``GET /standin/stats``, readable even after the server died."""
        return self._state.snapshot()

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._result = self._runner.run()
        except BaseException as exc:  # surfaced by wait_ready
            self._result = exc


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bfcl_ext.standin",
        description="A vLLM-like OpenAI-compatible server that answers BFCL from its ground truth.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--served-model-name",
        action="append",
        dest="served_model_names",
        metavar="NAME",
        help="a model name to serve (repeatable)",
    )
    parser.add_argument("--model", help="as vLLM's: served under this name unless --served-model-name says otherwise")
    parser.add_argument("--mode", default="oracle", help="oracle | wrong | wrong-category:<category>")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="require the bearer key held by this environment variable"
    )
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds before the port opens")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each completion")
    parser.add_argument("--trickle", type=float, default=0.0, metavar="SECONDS",
                        help="send each completion's body one byte every SECONDS (a reply that never ends)")
    parser.add_argument("--trickle-headers", type=float, default=0.0, metavar="SECONDS",
                        help="send each completion's status line and headers one byte every SECONDS, then its "
                        "body (at once, or as --trickle says)")
    parser.add_argument("--trickle-probes", type=float, default=0.0, metavar="SECONDS",
                        help="send the whole reply to /health, /version and /v1/models (status line, headers, "
                        "body) one byte every SECONDS: readiness probes that never end")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of completions answered 500")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="share answered 429")
    parser.add_argument("--bad-reply-rate", type=float, default=0.0,
                        help="share of completions answered 200 with a body a client cannot use")
    parser.add_argument("--bad-reply-kinds", default=",".join(BAD_REPLY_KINDS), metavar="KIND,...",
                        help=f"which unusable bodies, drawn evenly (default all: {','.join(BAD_REPLY_KINDS)}): "
                        "cut = valid JSON cut short; null-message = choices[0].message (completions: .text) "
                        "null; no-usage = no usage; empty-choices = choices: []; string-tool-calls = tool_calls "
                        "a string; null-function = a tool call with function: null; int-content = content 42 "
                        "(completions, these three: text 42)")
    parser.add_argument("--max-concurrency", type=int, help="completions in flight beyond this get 429")
    parser.add_argument("--max-num-seqs", type=int, metavar="N",
                        help="as vLLM's: N completions run at once, the others wait (GET /metrics shows both)")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false", help="no GET /metrics (404)")
    parser.add_argument("--die-after", type=int, help="crash (exit 1) after this many completion requests")
    parser.add_argument("--echo-key", type=int, default=0, metavar="N",
                        help="answer the first N completions 400 with the bearer key quoted in the error body")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice")
    search = parser.add_argument_group("web search", "GET /search(.json): a SerpAPI stand-in (engine=duckduckgo)")
    search.add_argument("--web-search-answer", choices=standin_agentic.WEB_SEARCH_ANSWERS, default="search-first",
                        help="web_search entries: call search_engine_query first (default), or answer at once")
    search.add_argument("--search-api-key-env", metavar="VAR",
                        help="require the SerpAPI api_key held by this environment variable (401 otherwise)")
    search.add_argument("--search-error-rate", type=float, default=0.0, help="share of searches answered 500")
    search.add_argument("--search-rate-limit-rate", type=float, default=0.0, help="share of searches answered 429")
    search.add_argument("--search-always-fail", choices=standin_agentic.SEARCH_OUTAGES,
                        help="every search fails: 200 without results, or 503")
    return parser


def _options_from(args: argparse.Namespace) -> StandinOptions:
    api_key = os.environ.get("VLLM_API_KEY") or None  # read from the environment, as vLLM does
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env={args.api_key_env}: that environment variable is not set")
    search_api_key = None
    if args.search_api_key_env:
        search_api_key = os.environ.get(args.search_api_key_env)
        if not search_api_key:
            raise ValueError(f"--search-api-key-env={args.search_api_key_env}: that environment variable is not set")
    names = args.served_model_names or ([args.model] if args.model else None)
    return StandinOptions(
        host=args.host,
        port=args.port,
        served_model_names=tuple(names or StandinOptions.served_model_names),
        model_root=args.model,
        mode=args.mode,
        api_key=api_key,
        load_delay=args.load_delay,
        latency=args.latency,
        trickle=args.trickle,
        trickle_headers=args.trickle_headers,
        trickle_probes=args.trickle_probes,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        bad_reply_rate=args.bad_reply_rate,
        bad_reply_kinds=tuple(kind.strip() for kind in args.bad_reply_kinds.split(",") if kind.strip()),
        max_concurrency=args.max_concurrency,
        max_num_seqs=args.max_num_seqs,
        metrics=args.metrics,
        die_after=args.die_after,
        echo_key=args.echo_key,
        seed=args.seed,
        web_search_answer=args.web_search_answer,
        search_api_key=search_api_key,
        search_error_rate=args.search_error_rate,
        search_rate_limit_rate=args.search_rate_limit_rate,
        search_always_fail=args.search_always_fail,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bfcl_ext.standin``: serve until SIGTERM/SIGINT (0) or a crash (1)."""
    parser = _parser()
    # Flags meant for vLLM (when the stand-in plays the managed server) are accepted and ignored.
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"standin: ignoring vLLM arguments: {' '.join(ignored)}", file=sys.stderr, flush=True)
    try:
        options = _options_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return serve(options)
    except OSError as exc:
        print(f"standin: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
