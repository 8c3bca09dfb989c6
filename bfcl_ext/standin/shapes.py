"""vLLM's JSON shapes: errors, model cards, chat and text completions (vLLM 0.32)."""

from __future__ import annotations

import json
import time
import uuid
from http import HTTPStatus
from typing import Any

from bfcl_ext.standin.oracle import Answer, Call
from bfcl_ext.standin.request import tool_key
from bfcl_ext.standin.render import call_text, tool_arguments


def error_body(
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


def validation_error(
    kind: str, loc: str, msg: str, given: Any, ctx: dict[str, str] | None = None
) -> dict[str, Any]:
    """What vLLM's ``validation_exception_handler`` answers for a request it cannot read."""
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": _summary(given)}
    if ctx:
        detail["ctx"] = ctx
    return error_body(HTTPStatus.BAD_REQUEST, f"1 validation error:\n  {detail}", param=loc)


def _summary(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)[:200]


def model_card(name: str, root: str, created: int) -> dict[str, Any]:
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
                "id": f"modelperm-{random_id()}",
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


def chat_response(
    model: str, answer: Answer, language: str, offered: dict[str, str], prompt: str
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
        message["content"] = answer if isinstance(answer, str) else call_text(answer, language)
        output, finish = message["content"], "stop"
    else:
        message["tool_calls"] = [_tool_call(call, language, offered) for call in answer]
        output, finish = json.dumps(message["tool_calls"]), "tool_calls"
    message["reasoning"] = None
    return {
        "id": f"chatcmpl-{random_id()}",
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


def _tool_call(call: Call, language: str, offered: dict[str, str]) -> dict[str, Any]:
    key = tool_key(call.name)
    return {
        "id": f"chatcmpl-tool-{random_id()}",
        "type": "function",
        "function": {"name": offered.get(key, key), "arguments": tool_arguments(call, language)},
    }


def completion_response(model: str, text: str, prompt: str) -> dict[str, Any]:
    """A non-streamed ``text_completion``."""
    return {
        "id": f"cmpl-{random_id()}",
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


def random_id() -> str:
    """16 hex digits, like ``vllm.utils.random_uuid``."""
    return f"{uuid.uuid4().int & (2**64 - 1):016x}"
