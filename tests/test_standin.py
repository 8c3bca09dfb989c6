"""The stand-in server: vLLM's endpoints and error shapes, the oracle, and injected faults."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import pytest
import requests

from bfcl_ext.standin import MALFORMED_MESSAGE_KINDS, Standin, StandinOptions

os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ext-test-"))

MODEL = "bfcl-ext-standin"


# ``standin(**options)``: tests/conftest.py's in-process stand-in


def chat(server: Standin, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=10, **kwargs)


def hello(model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello?"}]}


def bfcl_entry(category: str, entry_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An entry as generation sees it (language hints included) and its ground truth."""
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    entry = next(e for e in load_dataset_entry(category) if e["id"] == entry_id)
    if "relevance" in category:
        return entry, None
    return entry, next(g for g in load_ground_truth_entry(category) if g["id"] == entry_id)


def bfcl_chat_request(entry: dict[str, Any]) -> dict[str, Any]:
    """What bfcl-eval's OpenAICompletionsHandler sends for a single-turn entry."""
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import convert_to_tool

    tools = convert_to_tool(entry["function"], GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)
    body = {"model": MODEL, "messages": entry["question"][0], "temperature": 0.001, "store": False}
    return {**body, "tools": tools} if tools else body


def tool_calls(response: requests.Response) -> list[dict[str, Any]]:
    """``[{name: arguments}]`` as bfcl-eval decodes a function-calling answer."""
    calls = response.json()["choices"][0]["message"]["tool_calls"]
    return [{c["function"]["name"]: json.loads(c["function"]["arguments"])} for c in calls]


# ---------------------------------------------------------------- honest endpoints


def test_health_version_models_and_unknown_paths(standin: Any) -> None:
    server = standin(served_model_names=("org/model-a", "alias-b"))
    health = requests.get(f"{server.url}/health", timeout=5)
    assert (health.status_code, health.content) == (200, b"")
    assert requests.get(f"{server.url}/version", timeout=5).json() == {"version": "0.32.0"}

    models = requests.get(f"{server.url}/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["org/model-a", "alias-b"]
    assert {(m["object"], m["owned_by"], m["root"], m["parent"]) for m in models["data"]} == {
        ("model", "vllm", "org/model-a", None)
    }

    missing = requests.get(f"{server.url}/v1/nothing-here", timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong_method = requests.get(f"{server.url}/v1/chat/completions", timeout=5)
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"detail": "Method Not Allowed"})


def test_unknown_model_gets_vllms_404(standin: Any) -> None:
    server = standin()
    response = chat(server, hello("not-served"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"].startswith("The model `not-served` does not exist.")
    assert (error["type"], error["param"], error["code"]) == ("NotFoundError", "model", 404)


def test_unreadable_requests_get_vllms_400(standin: Any) -> None:
    server = standin()
    url = f"{server.url}/v1/chat/completions"
    broken = requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5)
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert "JSON decode error" in error["message"] and error["message"].startswith("1 validation error")
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "body.1", 400)

    no_messages = requests.post(url, json={"model": MODEL}, timeout=5).json()["error"]
    assert (no_messages["param"], no_messages["code"]) == ("body.messages", 400)
    as_text = requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=5)
    assert as_text.status_code == 400 and "application/json" in as_text.json()["error"]["message"]


def test_api_key_guards_v1_only(standin: Any) -> None:
    server = standin(api_key="sk-right")
    models = f"{server.url}/v1/models"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-right"}):
        refused = requests.get(models, headers=headers, timeout=5)
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
    assert requests.get(models, headers={"Authorization": "Bearer sk-right"}, timeout=5).status_code == 200
    assert chat(server, hello(), headers={"Authorization": "Bearer sk-right"}).status_code == 200
    assert chat(server, hello()).status_code == 401
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/version", timeout=5).status_code == 200
    assert "sk-right" not in repr(server.options)


# ---------------------------------------------------------------- the oracle


def test_oracle_answers_simple_python_with_its_ground_truth(standin: Any) -> None:
    server = standin()
    entry, truth = bfcl_entry("simple_python", "simple_python_0")
    response = chat(server, bfcl_chat_request(entry))
    assert response.status_code == 200
    body = response.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("chatcmpl-tool-")
    # ground truth: {"base": [10], "height": [5], "unit": ["units", ""]}: ints stay ints
    assert truth["ground_truth"] == [
        {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}
    ]
    assert tool_calls(response) == [{"calculate_triangle_area": {"base": 10, "height": 5, "unit": "units"}}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_oracle_uses_the_offered_names_and_every_acceptable_value(standin: Any) -> None:
    server = standin()
    for index in range(1, 30):
        entry, truth = bfcl_entry("simple_python", f"simple_python_{index}")
        ((name, options),) = truth["ground_truth"][0].items()
        ((answered, arguments),) = tool_calls(chat(server, bfcl_chat_request(entry)))[0].items()
        assert answered == name.replace(".", "_"), entry["id"]
        for param, value in arguments.items():
            assert any(value == o and type(value) is type(o) for o in options[param]), (entry["id"], param)
        assert {p for p, o in options.items() if "" not in o} <= set(arguments), entry["id"]


def test_oracle_declines_irrelevant_and_unknown_questions(standin: Any) -> None:
    server = standin()
    entry, _ = bfcl_entry("irrelevance", "irrelevance_0")
    irrelevant = chat(server, bfcl_chat_request(entry)).json()["choices"][0]
    assert irrelevant["finish_reason"] == "stop" and "tool_calls" not in irrelevant["message"]
    assert irrelevant["message"]["content"]

    unknown = chat(server, hello()).json()["choices"][0]["message"]
    assert unknown["content"] == "I cannot help with that." and "tool_calls" not in unknown


def test_oracle_sends_required_parameters_without_options_empty_in_their_type(standin: Any) -> None:
    from bfcl_ext.standin.oracle import _OMIT, _argument

    # live_simple_112-68-0: five required arrays whose options list is empty ([]); "" was sent
    # ("Expected type array, got str"). [] is what a model sends. (BFCL's checker still rejects
    # any value where a required parameter has no options at all, so the entry stays missed.)
    entry, truth = bfcl_entry("live_simple", "live_simple_112-68-0")
    assert truth["ground_truth"][0]["record"]["acc_routing_start"] == []
    ((arguments,),) = [call.values() for call in tool_calls(chat(standin(), bfcl_chat_request(entry)))]
    assert arguments == {
        "acc_routing_start": [], "atm_finder_start": [], "faq_link_accounts_start": [],
        "get_balance_start": [], "get_transactions_start": [], "outofscope": ["what is the weather like"],
    }
    assert _argument([], {"type": "array", "items": {"type": "string"}}, required=True) == []
    assert _argument([""], {"type": "dict"}, required=True) == {}
    # live_multiple_507-149-4: a required string whose only option is "": "" passes, still sent
    assert _argument([""], {"type": "string"}, required=True) == ""
    assert _argument(["", "x"], {"type": "string"}, required=False) == "x"
    assert _argument(["", 1], None, required=False) is _OMIT  # a parameter the function lacks


def test_identical_requests_of_two_entries_get_one_answer(standin: Any) -> None:
    """Pins a decision, not a fix: live_simple_29-7-2 and live_irrelevance_118-7-8 (likewise
    live_multiple_262-125-1 / live_irrelevance_565-173-0, live_simple_176-102-0 /
    live_irrelevance_567-175-0) send byte-identical requests, yet one expects a call and the
    other none. No model can pass both; the oracle answers as the call's entry (BFCL's order)."""
    server = standin()
    called, _ = bfcl_entry("live_simple", "live_simple_29-7-2")
    declined, _ = bfcl_entry("live_irrelevance", "live_irrelevance_118-7-8")
    assert bfcl_chat_request(called) == bfcl_chat_request(declined)
    expected = [{"uber_eat_order": {"restaurant": "McDonald's", "items": ["pizza"], "quantities": [1]}}]
    assert tool_calls(chat(server, bfcl_chat_request(declined))) == expected


def test_completions_answer_in_python_call_syntax(standin: Any) -> None:
    server = standin()
    entry, _ = bfcl_entry("simple_python", "simple_python_1")
    prompt = f"<system>{json.dumps(entry['function'])}</system>\n<user>{entry['question'][0][-1]['content']}</user>"
    response = requests.post(
        f"{server.url}/v1/completions", json={"model": MODEL, "prompt": prompt}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["object"] == "text_completion"
    assert response.json()["choices"][0]["text"] == "[math.factorial(number=5)]"


def test_wrong_modes_spoil_answers(standin: Any) -> None:
    entry, _ = bfcl_entry("simple_python", "simple_python_1")
    other, _ = bfcl_entry("multiple", "multiple_0")
    everywhere = standin(mode="wrong")
    assert tool_calls(chat(everywhere, bfcl_chat_request(entry))) != [{"math_factorial": {"number": 5}}]

    one_category = standin(mode="wrong-category:multiple")
    assert tool_calls(chat(one_category, bfcl_chat_request(entry))) == [{"math_factorial": {"number": 5}}]
    right, wrong = tool_calls(chat(standin(), bfcl_chat_request(other))), tool_calls(
        chat(one_category, bfcl_chat_request(other))
    )
    assert wrong != right and list(wrong[0]) == list(right[0])

    with pytest.raises(ValueError, match="mode="):
        StandinOptions(mode="wrong-category:nonsense")


# ---------------------------------------------------------------- faults


def test_port_stays_closed_while_loading(standin: Any) -> None:
    started = time.monotonic()
    server = standin(load_delay=0.8)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=2)
    server.wait_ready(5)
    assert time.monotonic() - started >= 0.8
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_error_rate_answers_500_in_vllms_shape(standin: Any) -> None:
    server = standin(error_rate=1.0)
    response = chat(server, hello())
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("InternalServerError", 500, None)
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v1/models", timeout=5).status_code == 200


def test_rate_limit_answers_429_with_retry_after(standin: Any) -> None:
    server = standin(rate_limit_rate=1.0)
    response = chat(server, hello())
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == 429


def test_concurrency_cap_answers_429(standin: Any) -> None:
    server = standin(max_concurrency=1, latency=0.5)
    first: list[int] = []
    slow = threading.Thread(target=lambda: first.append(chat(server, hello()).status_code))
    slow.start()
    time.sleep(0.2)
    assert chat(server, hello()).status_code == 429
    slow.join()
    assert first == [200]
    assert chat(server, hello()).status_code == 200


def test_faults_follow_the_seed(standin: Any) -> None:
    def statuses(seed: int) -> list[int]:
        server = standin(error_rate=0.5, seed=seed)
        return [chat(server, hello()).status_code for _ in range(16)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 500} <= set(first)


def test_die_after_drops_the_server(standin: Any) -> None:
    server = standin(die_after=2)
    with requests.Session() as session:  # a kept-alive connection dies too
        for _ in range(2):
            assert (
                session.post(f"{server.url}/v1/chat/completions", json=hello(), timeout=5).status_code == 200
            )
        with pytest.raises(requests.ConnectionError):
            session.post(f"{server.url}/v1/chat/completions", json=hello(), timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=5)
    server.stop()
    assert server.exit_code == 1


def test_stats_count_outcomes_and_entries(standin: Any) -> None:
    server = standin()
    entry, _ = bfcl_entry("simple_python", "simple_python_3")
    for _ in range(2):
        chat(server, bfcl_chat_request(entry))
    chat(server, hello())
    chat(server, hello("not-served"))
    stats = requests.get(f"{server.url}/standin/stats", timeout=5).json()
    assert stats == server.stats()
    assert (stats["received"], stats["ok"], stats["rejected"], stats["unmatched"]) == (4, 3, 1, 1)
    assert (stats["errors"], stats["rate_limited"], stats["in_flight"]) == (0, 0, 0)
    assert stats["entries"] == {"simple_python_3": 2}


# ---------------------------------------------------------------- bad replies: a 200 no client can use


def completion(server: Standin, prompt: str = "Hello?") -> requests.Response:
    return requests.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": prompt}, timeout=10)


@pytest.mark.parametrize("kind", ["cut", "null-message", "no-usage", "empty-choices", "string-tool-calls",
                                  "null-function", "int-content"])
def test_bad_replies_are_200s_spoiled_as_asked(standin: Any, kind: str) -> None:
    server = standin(bad_reply_rate=1.0, bad_reply_kinds=(kind,))
    for response, field in ((chat(server, hello()), "message"), (completion(server), "text")):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert int(response.headers["Content-Length"]) == len(response.content)  # what is sent, cut or not
        if kind == "cut":
            assert response.content.startswith(b'{"id": "')
            with pytest.raises(ValueError):
                json.loads(response.content)
            continue
        reply = response.json()
        if kind == "null-message":
            assert reply["choices"][0][field] is None and "usage" in reply
        elif kind == "no-usage":
            assert "usage" not in reply and reply["choices"][0][field] is not None
        elif field == "text" and kind in MALFORMED_MESSAGE_KINDS:
            assert reply["choices"][0]["text"] == 42 and "usage" in reply
        elif kind == "string-tool-calls":
            assert isinstance(json.loads(reply["choices"][0]["message"]["tool_calls"]), list)
        elif kind == "null-function":
            assert reply["choices"][0]["message"]["tool_calls"][0]["function"] is None
        elif kind == "int-content":
            assert reply["choices"][0]["message"]["content"] == 42
        else:
            assert reply["choices"] == [] and "usage" in reply
    stats = server.stats()
    assert (stats["received"], stats["ok"], stats["bad_replies"], stats["bad_reply_kinds"]) == (2, 0, 2, {kind: 2})
    assert stats["entries"] == {}  # not an answer to anything


def test_a_bad_reply_spoils_the_oracles_answer(standin: Any) -> None:
    server = standin(bad_reply_rate=1.0, bad_reply_kinds=("null-message",))
    entry, _ = bfcl_entry("simple_python", "simple_python_3")
    reply = chat(server, bfcl_chat_request(entry)).json()
    assert reply["choices"][0]["message"] is None and reply["choices"][0]["finish_reason"] == "tool_calls"


def test_bad_replies_follow_the_seed_and_leave_the_other_faults_alone(standin: Any) -> None:
    def outcomes(**options: Any) -> list[str]:
        server = standin(seed=7, **options)
        seen = []
        for _ in range(24):
            response = chat(server, hello())
            if response.status_code != 200:
                seen.append(str(response.status_code))
            else:
                try:
                    reply = response.json()
                except ValueError:
                    seen.append("cut")
                    continue
                seen.append("ok" if reply["choices"] and reply["choices"][0]["message"] and "usage" in reply
                            else "bad")
        return seen

    mixed = outcomes(error_rate=0.3, bad_reply_rate=0.4)
    assert mixed == outcomes(error_rate=0.3, bad_reply_rate=0.4)
    assert {"500", "ok"} <= set(mixed) and set(mixed) & {"cut", "bad"}, mixed
    only_500s = outcomes(error_rate=0.3)  # the same 500s, where they were without bad replies
    assert [o == "500" for o in mixed] == [o == "500" for o in only_500s]


@pytest.mark.parametrize("options", [{"bad_reply_rate": 1.5}, {"bad_reply_rate": -0.1},
                                     {"bad_reply_kinds": ("cut", "nope")}, {"bad_reply_kinds": ()}])
def test_bad_reply_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="bad_reply"):
        StandinOptions(**options)


def test_bad_reply_command_options() -> None:
    from bfcl_ext.standin import cli as standin_module

    args = standin_module._parser().parse_args(["--bad-reply-rate", "0.2", "--bad-reply-kinds", "cut, no-usage"])
    options = standin_module._options_from(args)
    assert (options.bad_reply_rate, options.bad_reply_kinds) == (0.2, ("cut", "no-usage"))
    defaults = standin_module._options_from(standin_module._parser().parse_args([]))
    assert (defaults.bad_reply_rate, defaults.bad_reply_kinds) == (0.0, standin_module.BAD_REPLY_KINDS)
    with pytest.raises(SystemExit) as exited:
        standin_module.main(["--bad-reply-kinds", "truncated"])
    assert exited.value.code == 2


# ---------------------------------------------------------------- the command


def test_command_prints_one_line_and_exits_0_on_sigterm(tmp_path: Any) -> None:
    env = {**os.environ, "STANDIN_TEST_KEY": "sk-from-env"}
    command = [
        sys.executable,
        "-m",
        "bfcl_ext.standin",
        "--port",
        "0",
        "--served-model-name",
        "a",
        "--served-model-name",
        "b",
        "--api-key-env",
        "STANDIN_TEST_KEY",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"standin: serving a, b on http://127\.0\.0\.1:(\d+) \(mode=oracle\)\n", line)
        assert match, line
        url = f"http://127.0.0.1:{match[1]}"
        assert requests.get(f"{url}/v1/models", timeout=5).status_code == 401
        keyed = requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-from-env"}, timeout=5)
        assert [m["id"] for m in keyed.json()["data"]] == ["a", "b"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.communicate()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(match[1])), timeout=2).close()


def test_command_exits_1_after_die_after() -> None:
    command = [sys.executable, "-m", "bfcl_ext.standin", "--port", "0", "--die-after", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = re.search(r":(\d+) ", process.stdout.readline())[1]
        response = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=hello(), timeout=10)
        assert response.status_code == 200
        assert process.wait(timeout=10) == 1
    finally:
        process.kill()
        process.communicate()
