"""Replies with status 200 that a client cannot use: the kinds, and a good reply spoiled as one."""

from __future__ import annotations

import json
from typing import Any

from bfcl_ext.standin.shapes import random_id

BAD_REPLY_KINDS: tuple[str, ...] = ("cut", "null-message", "no-usage", "empty-choices", "string-tool-calls",
                                     "null-function", "int-content")
"""Replies with status 200 that a client cannot use (``bad_reply_rate``): the body cut short (a
prefix of valid JSON, with the Content-Length of what is sent), ``choices[0].message`` null (on
/v1/completions: ``choices[0].text``), no ``usage``, ``choices: []``, and a message of the wrong
shape: ``tool_calls`` a string (the calls' JSON text), a tool call with ``function: null``, an
integer ``content`` (on /v1/completions, each of these three: an integer ``text``)."""
MALFORMED_MESSAGE_KINDS = ("string-tool-calls", "null-function", "int-content")


def bad_reply_body(payload: dict[str, Any], kind: str) -> bytes:
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
    calls = message.get("tool_calls") or [{"id": f"chatcmpl-tool-{random_id()}", "type": "function",
                                           "function": {"name": "f", "arguments": "{}"}}]
    if kind == "string-tool-calls":
        message["tool_calls"] = json.dumps(calls)
    elif kind == "null-function":
        message["tool_calls"] = [{**calls[0], "function": None}, *calls[1:]]
    else:  # int-content
        message["content"] = 42
    return message
