"""``bfcl-ext check``: readiness plus one real tool-call round trip, in a few seconds."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import httpx

from bfcl_ext.config import Settings
from bfcl_ext.endpoint import Endpoint
from bfcl_ext.errors import NotReadyError
from bfcl_ext.reply_shape import message_problem
from bfcl_ext.run import serving, wait_ready
from bfcl_ext.signals import Interruptions

PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
            "required": ["city"],
        },
    },
}


def tool_call_round_trip(endpoint: Endpoint, model: str, timeout: float) -> dict[str, Any]:
    """Send one chat request with a tool; return what came back (raises NotReadyError if refused).

    ``timeout`` bounds the whole reply, as in a run (``reply_deadline``): a server that sends its
    status line, headers or body a byte at a time gets a timeout once it has passed, not minutes
    later."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        "tools": [PROBE_TOOL],
        "tool_choice": "auto",
        "temperature": 0.001,
        "max_tokens": 128,
    }
    from bfcl_ext.reply_deadline import WholeReplyDeadline

    started = time.monotonic()
    try:
        with httpx.Client(timeout=timeout, transport=WholeReplyDeadline(timeout)) as client:
            response = client.post(endpoint.url("/chat/completions"), json=body, headers=endpoint.auth_headers())
    except httpx.TimeoutException as error:
        raise NotReadyError(f"tool-call request to {endpoint.base_url} failed: {type(error).__name__}: "
                            f"no whole reply within {timeout:g}s (--request-timeout)") from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise NotReadyError(f"tool-call request to {endpoint.base_url} failed: {type(error).__name__}") from None
    latency = time.monotonic() - started
    if response.status_code != 200:
        raise NotReadyError(
            f"{endpoint.url('/chat/completions')} refused a request with tools (HTTP {response.status_code}: "
            f"{_error_message(response)}); a vLLM server needs --enable-auto-tool-choice --tool-call-parser NAME"
        )
    message, problem = _usable_message(response)
    if problem is not None:
        raise NotReadyError(
            f"{endpoint.url('/chat/completions')} answered a tool call with HTTP 200 and {problem}: "
            "a server fault, not a model answer"
        )
    calls = [call for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    return {"latency_s": round(latency, 3), "tool_calls": [c.get("function", {}) for c in calls],
            "content": message.get("content")}


def _usable_message(response: httpx.Response) -> tuple[dict[str, Any], str | None]:
    """The reply's message, or what makes the reply unusable (what ``bfcl-ext run`` retries as a
    server fault): a body that is not JSON, no choices, a null message or one of the wrong shape
    (``reply_shape``), no usage."""
    try:
        payload = json.loads(response.content)
    except ValueError as error:
        detail = str(error) if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        return {}, f"a body that is not valid JSON ({len(response.content)} bytes, cut short or garbled: {detail})"
    if not isinstance(payload, dict):
        return {}, f"a body that is not a JSON object (a JSON {type(payload).__name__})"
    choices = payload.get("choices")
    if choices == []:
        return {}, "an empty reply (choices: [])"
    if not isinstance(choices, list):
        return {}, "no choices"
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if message is None:
        return {}, "a null message (choices[0].message)"
    if not isinstance(message, dict):
        return {}, "choices[0].message is not a message"
    shape = message_problem(message)
    if shape is not None:
        return {}, shape
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return {}, "no usage"
    if not all(isinstance(usage.get(name), int) for name in ("prompt_tokens", "completion_tokens")):
        return {}, "usage without prompt_tokens and completion_tokens"
    return message, None


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200]
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    return str(error.get("message", error) if isinstance(error, dict) else error)[:200]


def check(settings: Settings, interruptions: Interruptions) -> int:
    with serving(settings) as server:
        info = wait_ready(settings, server, settings.wait_timeout)
        model = settings.model_name_served or info.models[0]  # no model named: ask the first one served
        trip = tool_call_round_trip(server.endpoint, model, settings.request_timeout)
    print(f"endpoint:       {server.endpoint.base_url}")
    print(f"server version: {info.version or 'unknown'}")
    print(f"models:         {', '.join(info.models)} (asked: {model})")
    print(f"round trip:     {trip['latency_s']:.3f} s")
    if trip["tool_calls"]:
        print(f"tool call:      yes: {json.dumps(trip['tool_calls'])[:200]}")
    else:
        print("tool call:      no (the server accepted tools; the model answered in text)", file=sys.stdout)
    return 0
