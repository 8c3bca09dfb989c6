"""What a completion request asks: the question, the offered tools, the prompt (plain reading,
no checks; see ``validation``)."""

from __future__ import annotations

from typing import Any

CONTENT_FIELDS = frozenset({"messages", "prompt", "tools"})  # the question: left out of ``request_fields``


def tool_key(name: str) -> str:
    """A function name as OpenAI-style tools carry it: '.' is not allowed there."""
    return name.replace(".", "_")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content")).strip()
    return ""


def text_of(content: Any) -> str:
    """Message content, whether a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def offered_tools(body: dict[str, Any]) -> dict[str, str]:
    """Offered function names by their '.'-free key; none when ``tool_choice`` is ``"none"``."""
    if body.get("tool_choice") == "none":
        return {}
    names = [
        tool.get("function", {}).get("name", "")
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and tool.get("type", "function") == "function"
    ]
    return {tool_key(name): name for name in names if name}


def prompt_of(body: dict[str, Any]) -> str:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""
