"""Which oracle answers a completion request, and its answer as vLLM would send it.

Chat requests go to the agentic oracle (memory, web search), then the multi-turn one, then the
single-turn one; text completions (prompt mode) to the single-turn one.
"""

from __future__ import annotations

import json
from typing import Any

from bfcl_ext.standin import agentic, multiturn
from bfcl_ext.standin.oracle import Call, answer_for
from bfcl_ext.standin.render import call_text, language_of
from bfcl_ext.standin.request import last_user_text, offered_tools, prompt_of, text_of
from bfcl_ext.standin.shapes import chat_response, completion_response
from bfcl_ext.standin.state import State

Answered = tuple[dict[str, Any], str | None]  # the response payload, and the entry it answers (None: no match)


def answer_chat(state: State, body: dict[str, Any], model: str) -> Answered:
    """A ``chat.completion`` for a ``/v1/chat/completions`` body."""
    messages = body["messages"] if isinstance(body["messages"], list) else []
    context = "\n".join(text_of(m.get("content")) for m in messages if isinstance(m, dict))
    offered = offered_tools(body)
    return (_agentic(state, messages, offered, model, context)
            or _multi_turn(state, messages, offered, model, context)
            or _single_turn(state, body, messages, offered, model, context))


def _agentic(state: State, messages: list[Any], offered: dict[str, str], model: str, context: str) -> Answered | None:
    """Memory and web search: see ``agentic``."""
    found = agentic.answer_chat(state.agentic, state.options, messages, offered)
    if found is None:
        return None
    reply, entry_id = found
    answer = reply if isinstance(reply, str) else [Call(name, args, {}) for name, args in reply]
    return chat_response(model, answer, "python", offered, context), entry_id


def _multi_turn(
    state: State, messages: list[Any], offered: dict[str, str], model: str, context: str
) -> Answered | None:
    """multi_turn_*: see ``multiturn``."""
    turn = multiturn.ORACLE.answer(messages, offered, state.options.is_wrong_for)
    if turn is None:
        return None
    answer = turn.text if turn.text is not None else [Call(c.name, c.arguments, {}) for c in turn.calls]
    return turn.mark(chat_response(model, answer, "python", offered, context)), turn.entry_id


def _single_turn(
    state: State, body: dict[str, Any], messages: list[Any], offered: dict[str, str], model: str, context: str
) -> Answered:
    if offered:
        tools_text = json.dumps(body.get("tools"), ensure_ascii=False)
        case = state.oracle.for_tools(last_user_text(messages), frozenset(offered), context + tools_text)
    else:
        case = state.oracle.for_prompt(context)
    answer = answer_for(case, case is not None and state.options.is_wrong_for(case.category))
    language = language_of(case.category) if case else "python"
    return chat_response(model, answer, language, offered, context), case.id if case else None


def answer_completion(state: State, body: dict[str, Any], model: str) -> Answered:
    """A ``text_completion`` for a ``/v1/completions`` body (BFCL's prompt mode)."""
    prompt = prompt_of(body)
    case = state.oracle.for_prompt(prompt)
    answer = answer_for(case, case is not None and state.options.is_wrong_for(case.category))
    language = language_of(case.category) if case else "python"
    text = answer if isinstance(answer, str) else call_text(answer, language)
    return completion_response(model, text, prompt), case.id if case else None
