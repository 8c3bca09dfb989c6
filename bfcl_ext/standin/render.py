"""Calls as a model writes them: OpenAI tool-call ``arguments`` (JSON; Java and JavaScript values
as source text) and BFCL's prompt-mode syntax ``[f(a=1, b='x')]``."""

from __future__ import annotations

import json
from typing import Any

from bfcl_ext.standin.oracle import Call


def language_of(category: str) -> str:
    if category == "simple_java":
        return "java"
    if category == "simple_javascript":
        return "javascript"
    return "python"


def tool_arguments(call: Call, language: str) -> str:
    """``arguments`` of an OpenAI tool call: JSON; Java and JavaScript values as source text."""
    if language == "python":
        return json.dumps(call.arguments, ensure_ascii=False)
    render = _java_value if language == "java" else _js_value
    rendered = {k: render(v, call.properties.get(k, {})) for k, v in call.arguments.items()}
    return json.dumps(rendered, ensure_ascii=False)


def call_text(calls: list[Call], language: str) -> str:
    """The calls in BFCL's default prompt-mode syntax: ``[f(a=1, b='x'), g()]``."""
    return "[" + ", ".join(_one_call_text(call, language) for call in calls) + "]"


def _one_call_text(call: Call, language: str) -> str:
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
