"""A completion request's body checked as vLLM checks it: the body, or the error vLLM answers instead."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from bfcl_ext.standin.shapes import error_body, validation_error

Problem = dict[str, Any]  # vLLM's ErrorResponse; its ``error.code`` is the status


def parse_body(
    content_type: str | None, raw: bytes, required: str, served_names: Sequence[str]
) -> tuple[dict[str, Any], Problem | None]:
    """The request body, or the error vLLM would answer instead."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        message = "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
        return {}, error_body(HTTPStatus.BAD_REQUEST, message)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        pos, msg = getattr(exc, "pos", 0), getattr(exc, "msg", str(exc))
        return {}, validation_error("json_invalid", f"body.{pos}", "JSON decode error", {}, {"error": msg})
    if not isinstance(body, dict):
        return {}, validation_error(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
    if required not in body:
        return {}, validation_error("missing", f"body.{required}", "Field required", body)
    return body, check_model(body.get("model"), served_names)


def check_model(model: Any, served_names: Sequence[str]) -> Problem | None:
    """vLLM's 404 for a model it does not serve (none named: the first is meant)."""
    if not model or model in served_names:
        return None
    message = f"The model `{model}` does not exist. Valid aliases: {', '.join(served_names)}."
    return error_body(HTTPStatus.NOT_FOUND, message, "NotFoundError", "model")
