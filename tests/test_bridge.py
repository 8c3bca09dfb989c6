"""The bfcl-eval bridge's own logic: what counts as a transport failure, and result-file repair."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from bfcl_ext import bridge
from bfcl_ext.errors import ConfigError
from bfcl_ext.retry_policy import RetryPolicy


def _status_error(status: int) -> openai.APIStatusError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    return openai.APIStatusError("error", response=response, body=None)


def _policy(retries: int, timeout: float = 600.0) -> RetryPolicy:
    return RetryPolicy(request_timeout=timeout, request_retries=retries, passes=0, recovery_timeout=0.0)


def _guard(outcome):
    def create(**_kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return bridge._GuardedCreate(create, bridge.RequestStats(), _policy(retries=0))


@pytest.mark.parametrize("status", [401, 404, 408, 500, 502, 503])
def test_server_side_statuses_are_transport_errors(status: int) -> None:
    with pytest.raises(bridge.TransportError):
        _guard(_status_error(status)).create(model="m")


def test_connection_errors_and_rate_limits_are_transport_errors() -> None:
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    with pytest.raises(bridge.TransportError):
        _guard(openai.APIConnectionError(request=request)).create(model="m")
    limited = openai.RateLimitError("slow down", response=httpx.Response(429, request=request), body=None)
    with pytest.raises(bridge.TransportError):  # not RateLimitError: upstream would retry it forever
        _guard(limited).create(model="m")


@pytest.mark.parametrize("response", [SimpleNamespace(choices=[]), SimpleNamespace(choices=None), SimpleNamespace()])
def test_an_answer_without_choices_is_a_transport_error(response) -> None:
    with pytest.raises(bridge.TransportError, match="without choices"):
        _guard(response).create(model="m")


def test_a_bad_request_is_the_models_answer_not_a_transport_error() -> None:
    with pytest.raises(openai.BadRequestError):
        _guard(openai.BadRequestError("too long", response=httpx.Response(
            400, request=httpx.Request("POST", "http://x")), body=None)).create(model="m")


def test_upstream_timeout_is_replaced_by_ours() -> None:
    seen = {}

    def create(**kwargs):
        seen.update(kwargs)
        return _usable_reply()

    bridge._GuardedCreate(create, bridge.RequestStats(), _policy(retries=0)).create(model="m", timeout=72000)
    assert "timeout" not in seen


# ---------------------------------------------------------------- a 200 the client cannot use


def _usable_reply() -> SimpleNamespace:
    return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="hi", tool_calls=None))],
                           usage=SimpleNamespace(prompt_tokens=3, completion_tokens=1))


@pytest.fixture
def bad_replies() -> Iterator[Callable[[str], Any]]:
    """``start(kind)``: an in-process stand-in whose every completion is an unusable reply of that kind."""
    import os
    import tempfile

    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ext-test-"))
    from bfcl_ext.standin import Standin, StandinOptions

    started: list[Standin] = []

    def start(kind: str) -> Standin:
        server = Standin(StandinOptions(port=0, bad_reply_rate=1.0, bad_reply_kinds=(kind,))).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


UNUSABLE = {  # what the guard says of each kind, on /v1/chat/completions and on /v1/completions
    "cut": ("the body is not valid JSON", "the body is not valid JSON"),
    "null-message": ("choices[0].message is null", "choices[0].text is null"),
    "no-usage": ("no usage", "no usage"),
    "empty-choices": ("an empty reply: the server answered without choices (choices: [])",) * 2,
    "string-tool-calls": ("choices[0].message.tool_calls that is not a list (a string)", "choices[0].text is not text"),
    "null-function": ("choices[0].message.tool_calls[0].function that is null, not a function call",
                      "choices[0].text is not text"),
    "int-content": ("choices[0].message.content that is not text (a number)", "choices[0].text is not text"),
}


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_unusable_replies_through_the_real_sdk_are_retried_then_transport_errors(bad_replies, kind: str) -> None:
    """What the OpenAI SDK does with each (found by trying): a cut body raises json.JSONDecodeError
    from create, unwrapped and not retried; a null message, no usage and choices: [] come back as
    objects (built without validation) that bfcl-eval's handlers then fail on."""
    server = bad_replies(kind)
    stats = bridge.RequestStats()
    client = bridge.make_client(f"{server.url}/v1", None, _policy(timeout=10.0, retries=2), stats)
    waits: list[float] = []
    for guard in (client.chat.completions, client.completions):
        guard.sleep = waits.append
    chat_said, completion_said = UNUSABLE[kind]
    with pytest.raises(bridge.TransportError) as raised:
        client.chat.completions.create(model="bfcl-ext-standin", messages=[{"role": "user", "content": "Hi?"}])
    assert str(raised.value).startswith(f"unusable reply (HTTP 200, 3 tries): {chat_said}"), raised.value
    with pytest.raises(bridge.TransportError, match=re.escape(completion_said)):
        client.completions.create(model="bfcl-ext-standin", prompt="Hi?")
    counted = stats.as_dict()
    assert (counted["calls"], counted["http_requests_sent"], counted["bad_replies"]) == (2, 6, 6)
    assert counted["retried_requests"] == 4 and counted["http_ok"] == 6 and counted["connection_errors"] == 0
    assert server.stats()["bad_replies"] == 6
    assert len(waits) == 4 and all(0.375 <= wait <= 1.0 for wait in waits), waits  # the SDK's backoff: 0.5 s, 1 s


def test_a_bad_reply_then_a_good_one_is_the_good_one() -> None:
    replies = [SimpleNamespace(choices=[SimpleNamespace(message=None)], usage=None), _usable_reply()]
    stats = bridge.RequestStats()
    guard = bridge._GuardedCreate(lambda **_kwargs: replies.pop(0), stats, _policy(retries=3))
    waits: list[float] = []
    guard.sleep = waits.append
    assert guard.create(model="m").choices[0].message.content == "hi"
    assert stats.bad_replies == 1 and stats.calls == 1 and len(waits) == 1 and 0.375 <= waits[0] <= 0.5


@pytest.mark.parametrize("reply, said", [
    (SimpleNamespace(choices=[None], usage=None), "choices[0] is null"),
    (SimpleNamespace(choices=[SimpleNamespace(message="hi")], usage=None), "choices[0].message is not a message"),
    (SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="hi"))],
                     usage=SimpleNamespace(prompt_tokens=None, completion_tokens=1)), "usage without prompt_tokens"),
    ("<html>a login page</html>", "without choices"),  # what the SDK returns for a 200 that is not JSON
    ([1, 2], "without choices"),  # and for JSON that is not an object
])
def test_other_unusable_shapes(reply: Any, said: str) -> None:
    with pytest.raises(bridge.TransportError, match=re.escape(said)):
        _guard(reply).create(model="m")


def test_a_body_the_sdk_cannot_parse_is_a_transport_error() -> None:
    import json as json_module

    with pytest.raises(bridge.TransportError, match="not valid JSON"):
        _guard(json_module.JSONDecodeError("Expecting value", "", 0)).create(model="m")


@pytest.mark.parametrize("result, transport", [
    ("Error during inference: 'NoneType' object has no attribute 'content'", True),  # message: null (chat)
    ("Error during inference: 'NoneType' object has no attribute 'prompt_tokens'", True),  # no usage
    ("Error during inference: 'NoneType' object has no attribute 'text'", True),  # choices: [null] (completions)
    ("Error during inference: Unterminated string starting at: line 1 column 416 (char 415)", True),  # cut
    ("Error during inference: Expecting value: line 1 column 1 (char 0)", True),  # an empty body
    ("Error during inference: Connection error.", True),
    ("Error during inference: bad call syntax", False),  # the model's failure: its answer
    ("Error during inference: 'NoneType' object has no attribute 'split'", False),
    ("Expecting value: line 1 column 1 (char 0)", False),  # a model's text answer, not an error line
    (None, False),
])
def test_old_error_lines_for_unusable_replies_count_as_unanswered(result: Any, transport: bool) -> None:
    assert bridge._is_transport_error_answer(result) is transport


def _session(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(result_dir=tmp_path / "result", model_dir="model")


def test_repair_drops_torn_duplicate_and_transport_error_lines(tmp_path: Path) -> None:
    folder = tmp_path / "result" / "model" / "non_live"
    folder.mkdir(parents=True)
    path = folder / "BFCL_v4_simple_python_result.json"
    good = [json.dumps({"id": f"simple_python_{i}", "result": []}) for i in range(3)]
    lines = [
        good[0], good[1], good[0],
        json.dumps({"id": "simple_python_5", "result": "Error during inference: Connection error."}),
        json.dumps({"id": "simple_python_6", "result": "Error during inference: bad call syntax"}),
        good[2],
    ]
    path.write_text("\n".join(lines) + "\n" + '{"id": "simple_python_9", "res')
    dropped = bridge.repair_result_files(_session(tmp_path))
    assert dropped == {"torn_lines": 1, "duplicates": 1, "transport_errors": 1, "unknown_ids": 0}
    kept = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert kept == ["simple_python_0", "simple_python_1", "simple_python_6", "simple_python_2"]
    assert bridge.repair_result_files(_session(tmp_path)) == {"torn_lines": 0, "duplicates": 0, "transport_errors": 0,
                                                               "unknown_ids": 0}


def test_damaged_dataset_file_is_reported(tmp_path: Path) -> None:
    damaged = tmp_path / "BFCL_v4_simple_python.json"
    damaged.write_text('{"id": "simple_python_0"}\n{"id": "simple_py')
    with pytest.raises(ConfigError, match=r"BFCL_v4_simple_python.json:2.*not valid JSON"):
        bridge._check_json_lines("simple_python", damaged)
    with pytest.raises(ConfigError, match="missing file"):
        bridge._check_json_lines("simple_python", tmp_path / "absent.json")


def test_installed_datasets_are_intact_and_hashed() -> None:
    categories = bridge.expand_categories(["single_turn"])
    bridge.check_datasets(categories)
    hashes = bridge.dataset_hashes(["simple_python", "irrelevance"])
    assert len(hashes["simple_python"]["dataset"]) == 64 and hashes["irrelevance"]["ground_truth"] is None


def _session_raising(error: Exception, tmp_path: Path) -> bridge.Session:
    def inference(_entry: Any, _include_input_log: bool, _exclude_state_log: bool) -> Any:
        raise error

    handler = SimpleNamespace(inference=inference, registry_dir_name="m")
    return bridge.Session(handler, "m", "test", tmp_path / "result", tmp_path / "score", bridge.RequestStats())


def test_a_tool_that_meets_a_full_disk_stops_the_run_instead_of_failing_the_model(tmp_path: Path) -> None:
    import errno

    from bfcl_ext.errors import OutputError

    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "memory_snapshot" / "x.json"))
    with pytest.raises(OutputError, match="x.json: No space left on device"):
        bridge.answer(_session_raising(full, tmp_path), {"id": "memory_kv_prereq_0-customer-0"})


def test_other_exceptions_in_a_conversation_are_the_models_answer(tmp_path: Path) -> None:
    import errno

    for error in (ValueError("bad call"), OSError(errno.ENOENT, "No such file")):
        line = bridge.answer(_session_raising(error, tmp_path), {"id": "multi_turn_base_0"})
        assert line["result"].startswith("Error during inference:")
