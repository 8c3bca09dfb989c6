"""Is a chat reply's message one a client can read? Shared by ``run`` (bridge, on the SDK's objects)
and ``check`` (on the decoded JSON), so that both call the same replies unusable.

The OpenAI SDK builds its reply objects without validating them, so a 200 whose message has
``tool_calls`` as a string, a tool call with ``function: null`` or an integer ``content`` reaches
bfcl-eval's handler as is, and would be scored as the model's answer. Such a reply is a server
fault, like a 5xx: what is checked here is what the handlers read (``content``, and each tool
call's ``function.name`` and ``function.arguments``).
"""

from __future__ import annotations

from typing import Any

WHERE = "choices[0].message"


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of decoded JSON, or the attribute of an SDK object (None when absent)."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _kind(value: Any) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "a boolean", dict: "an object",
             list: "a list"}
    return names.get(type(value), f"a {type(value).__name__}")


def message_problem(message: Any) -> str | None:
    """Why this message cannot be the model's answer (None: it can)."""
    content = _field(message, "content")
    if content is not None and not isinstance(content, str):
        return f"{WHERE}.content that is not text ({_kind(content)})"
    tool_calls = _field(message, "tool_calls")
    if tool_calls is None:
        return None
    if not isinstance(tool_calls, list):
        return f"{WHERE}.tool_calls that is not a list ({_kind(tool_calls)})"
    for index, call in enumerate(tool_calls):
        problem = _tool_call_problem(call)
        if problem:
            return f"{WHERE}.tool_calls[{index}]{problem}"
    return None


def _tool_call_problem(call: Any) -> str | None:
    if call is None or isinstance(call, (str, int, float, bool, list)):
        return f" that is not a tool call ({'null' if call is None else _kind(call)})"
    function = _field(call, "function")
    if function is None or isinstance(function, (str, int, float, bool, list)):
        return f".function that is {'null' if function is None else _kind(function)}, not a function call"
    for name in ("name", "arguments"):
        value = _field(function, name)
        if not isinstance(value, str):
            return f".function.{name} that is not text ({'null' if value is None else _kind(value)})"
    return None
