"""The stand-in's multi-turn oracle: matching, look-alike entries, wrong answers, and full runs.

Most tests play whole entries in this process, the way bfcl-eval's ``inference_multi_turn_FC``
does (user turn, model steps, calls executed by bfcl-eval's own executor, results appended),
and score them with bfcl-eval's ``multi_turn_checker``. The end-to-end tests run the real
``bfcl-ext run`` against the stand-in as a process.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pytest
import requests

from bfcl_ext.standin import multiturn as standin_multiturn
from bfcl_ext.standin import Standin, StandinOptions
from bfcl_ext.standin.multiturn import (
    CANNOT,
    CATEGORIES,
    DONE,
    PROBE_ID_PREFIX,
    Call,
    MultiTurnOracle,
    Reply,
    parse_call,
)
from tests.conftest import read_json, run_bfcl_ext

os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ext-test-"))

MODEL = "standin-oracle"
_serial = itertools.count()


# ---------------------------------------------------------------- BFCL's data and a driver


@cache
def dataset(category: str) -> dict[str, dict[str, Any]]:
    from bfcl_eval.utils import load_dataset_entry

    return {entry["id"]: entry for entry in load_dataset_entry(category)}


@cache
def truth(category: str) -> dict[str, list[list[str]]]:
    from bfcl_eval.utils import load_ground_truth_entry

    return {gt["id"]: gt["ground_truth"] for gt in load_ground_truth_entry(category)}


def raw_entry(entry_id: str) -> dict[str, Any]:
    return copy.deepcopy(dataset(entry_id.rsplit("_", 1)[0])[entry_id])


def ground_truth(entry_id: str) -> list[list[str]]:
    return truth(entry_id.rsplit("_", 1)[0])[entry_id]


@pytest.fixture(scope="module")
def oracle() -> MultiTurnOracle:
    return MultiTurnOracle()


def _call_source(tool_call: dict[str, Any]) -> str:
    """A tool call as bfcl-eval decodes it for execution (``convert_to_function_call``)."""
    arguments = json.loads(tool_call["function"]["arguments"])
    return f"{tool_call['function']['name']}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def play(
    oracle: MultiTurnOracle, entry_id: str, is_wrong: Callable[[str], bool] = lambda category: False
) -> tuple[list[list[list[str]]], list[list[Reply]]]:
    """Play an entry as bfcl-eval's ``inference_multi_turn_FC`` does: the decoded calls of each
    step of each turn (what the checker scores), and the oracle's replies, by turn."""
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    raw = raw_entry(entry_id)
    model = f"test_driver_{next(_serial)}"
    long_context = "long_context" in entry_id

    def execute(calls: list[str]) -> list[str]:
        results, _ = execute_multi_turn_func_call(
            calls, raw["initial_config"], raw["involved_classes"], model, raw["id"], long_context=long_context
        )
        return results

    execute([])
    names = {f["name"] for f in raw["function"]}
    messages: list[dict[str, Any]] = []
    decoded_turns, reply_turns = [], []
    for index, turn in enumerate(raw["question"]):
        if str(index) in raw.get("missed_function", {}):
            names |= {f["name"] for f in raw["missed_function"][str(index)]}
            turn = [{"role": "user", "content": DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC}]
        messages.extend(turn)
        decoded, replies = [], []
        for _ in range(21):  # bfcl-eval's MAXIMUM_STEP_LIMIT is 20
            reply = oracle.answer(messages, names, is_wrong)
            assert reply is not None, (entry_id, index, "not recognised")
            replies.append(reply)
            if reply.text is not None:
                messages.append({"role": "assistant", "content": reply.text})
                break
            tool_calls = [
                {"id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in reply.calls
            ]
            payload = reply.mark({"choices": [{"message": {"role": "assistant", "tool_calls": tool_calls}}]})
            messages.append(payload["choices"][0]["message"])
            sources = [_call_source(c) for c in tool_calls]
            for result, tool_call in zip(execute(sources), tool_calls, strict=True):
                messages.append({"role": "tool", "content": result, "tool_call_id": tool_call["id"]})
            decoded.append(sources)
        decoded_turns.append(decoded)
        reply_turns.append(replies)
    return decoded_turns, reply_turns


def check(entry_id: str, decoded: list[list[list[str]]]) -> dict[str, Any]:
    """bfcl-eval's verdict on a played entry."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    category = entry_id.rsplit("_", 1)[0]
    model = f"test_checker_{next(_serial)}"
    return multi_turn_checker(decoded, ground_truth(entry_id), raw_entry(entry_id), category, model)


@lru_cache(maxsize=1)
def oracle_entries() -> dict[str, standin_multiturn.Entry]:
    return {entry.id: entry for entry in standin_multiturn.load_entries()}


def parsed_truth(entry_id: str, turn: int) -> tuple[Call, ...]:
    return oracle_entries()[entry_id].turns[turn]


# ---------------------------------------------------------------- parsing the ground truth


def test_ground_truth_calls_get_keyword_arguments_and_json_values() -> None:
    parameters = {"sort": ("file_name",), "mean": ("numbers",), "cd": ("folder",)}
    assert parse_call("sort('final_report.pdf')", parameters) == Call("sort", {"file_name": "final_report.pdf"})
    assert parse_call("mean([1, 2.5])", parameters) == Call("mean", {"numbers": [1, 2.5]})
    assert parse_call("cd(folder=('a', 'b'))", parameters).arguments == {"folder": ["a", "b"]}  # as JSON has it
    assert parse_call("f(x=True, y=None)", {}).source() == "f(x=True,y=None)"
    for bad in ("x.y()", "f(g())", "f(1)", "1 + 2"):
        with pytest.raises(ValueError):
            parse_call(bad, parameters)


def test_every_ground_truth_call_uses_documented_parameter_names() -> None:
    entries = list(oracle_entries().values())
    assert sorted({e.category for e in entries}) == sorted(CATEGORIES)
    assert len(entries) == 800
    calls, not_offered = 0, set()
    for entry in entries:
        raw = raw_entry(entry.id)
        docs = {f["name"]: f for f in raw["function"]}
        docs.update({f["name"]: f for held in raw.get("missed_function", {}).values() for f in held})
        assert len(entry.turns) == len(entry.users) == len(entry.tools) == len(raw["question"]), entry.id
        for turn, truth_calls in enumerate(entry.turns):
            for call in truth_calls:
                calls += 1
                if call.name not in entry.tools[turn]:
                    not_offered.add((entry.id, turn, call.name))
                assert set(call.arguments) <= set(docs[call.name]["parameters"]["properties"]), (entry.id, call)
    assert calls > 4000
    # A slip in BFCL's data: turn 1 calls tail, held back until turn 3. The oracle calls it all
    # the same (bfcl-eval executes it; the checker wants its result in turn 1).
    assert not_offered == {("multi_turn_miss_func_49", 1, "tail")}


# ---------------------------------------------------------------- matching


def test_first_step_calls_the_turns_ground_truth_then_a_tool_result_ends_the_turn(oracle: MultiTurnOracle) -> None:
    raw = raw_entry("multi_turn_base_0")
    names = {f["name"] for f in raw["function"]}
    messages: list[dict[str, Any]] = list(raw["question"][0])
    first = oracle.answer(messages, names)
    assert first is not None and first.entry_id == "multi_turn_base_0" and not first.probe
    assert [c.source() for c in first.calls] == [
        "cd(folder='document')", "mkdir(dir_name='temp')", "mv(source='final_report.pdf',destination='temp')"
    ]
    tool_calls = [{"id": f"chatcmpl-tool-{i}", "type": "function",
                   "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                  for i, c in enumerate(first.calls)]
    messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
    messages.extend({"role": "tool", "content": "{}", "tool_call_id": t["id"]} for t in tool_calls)
    done = oracle.answer(messages, names)
    assert done is not None and done.text == DONE and not done.calls

    messages.append({"role": "assistant", "content": DONE})
    messages.extend(raw["question"][1])
    second = oracle.answer(messages, names)
    assert second is not None and [c.source() for c in second.calls] == [
        "cd(folder='temp')", "grep(file_name='final_report.pdf',pattern='budget analysis')"
    ]
    # one turn too many, or an unknown first message: not a multi-turn request
    assert oracle.answer([*messages, {"role": "user", "content": "And now?"}], names) is None
    assert oracle.answer([{"role": "user", "content": "Hello?"}], names) is None


def test_miss_func_is_told_from_base_by_its_tools(oracle: MultiTurnOracle) -> None:
    base, miss = raw_entry("multi_turn_base_0"), raw_entry("multi_turn_miss_func_0")
    assert base["question"][0] == miss["question"][0]
    full = {f["name"] for f in base["function"]}
    held_back = {f["name"] for f in miss["function"]}
    assert full - held_back == {"sort"}
    for names, expected in ((full, "multi_turn_base_0"), (held_back, "multi_turn_miss_func_0")):
        reply = oracle.answer(base["question"][0], names)
        assert reply is not None and reply.entry_id == expected

    decoded, replies = play(oracle, "multi_turn_miss_func_0")
    assert {r.entry_id for turn in replies for r in turn} == {"multi_turn_miss_func_0"}
    assert [r.text for r in replies[2]] == [CANNOT]  # "sort it", without sort: ground truth []
    assert decoded[3] == [["sort(file_name='final_report.pdf')"]]  # sort is back, with bfcl-eval's prompt
    assert check("multi_turn_miss_func_0", decoded) == {"valid": True}


def test_long_context_lookalike_is_told_apart_by_a_read_only_probe(oracle: MultiTurnOracle) -> None:
    # Same question, same tools, different answers in the first turn: nothing seen tells them apart
    assert raw_entry("multi_turn_base_38")["question"] == raw_entry("multi_turn_long_context_38")["question"]
    assert ground_truth("multi_turn_base_38")[0] != ground_truth("multi_turn_long_context_38")[0]
    for entry_id in ("multi_turn_base_38", "multi_turn_long_context_38"):
        decoded, replies = play(oracle, entry_id)
        probe, answer, done = replies[0]
        assert probe.probe and len(probe.calls) == 1 and not probe.calls[0].arguments
        marked = probe.mark({"choices": [{"message": {"tool_calls": [{"id": "chatcmpl-tool-0123abcd"}]}}]})
        assert marked["choices"][0]["message"]["tool_calls"][0]["id"] == f"{PROBE_ID_PREFIX}0123abcd"
        assert answer.entry_id == entry_id and answer.calls == parsed_truth(entry_id, 0)
        assert done.text == DONE
        assert check(entry_id, decoded) == {"valid": True}, entry_id


def test_long_context_lookalike_is_told_apart_by_earlier_results(oracle: MultiTurnOracle) -> None:
    # Turn 2 differs; the results of turns 0 and 1 already show which world this is: no probe
    assert ground_truth("multi_turn_base_8")[2] != ground_truth("multi_turn_long_context_8")[2]
    for entry_id in ("multi_turn_base_8", "multi_turn_long_context_8"):
        decoded, replies = play(oracle, entry_id)
        assert not any(r.probe for turn in replies for r in turn)
        assert replies[2][0].entry_id == entry_id and replies[2][0].calls == parsed_truth(entry_id, 2)
        assert check(entry_id, decoded) == {"valid": True}, entry_id


def test_miss_param_lookalike_is_answered_as_base_and_not_repeated(oracle: MultiTurnOracle) -> None:
    # miss_param_195 asks what base_195 asks in turn 0, in the same world, but expects [] there
    # (the date is in the question) and the booking in turn 1: booked in turn 0, it must not be
    # booked twice; the checker still wants a call in turn 1, so a read-only one comes.
    assert raw_entry("multi_turn_miss_param_195")["question"][0] == raw_entry("multi_turn_base_195")["question"][0]
    assert ground_truth("multi_turn_miss_param_195")[0] == []
    decoded, replies = play(oracle, "multi_turn_miss_param_195")
    assert replies[0][0].entry_id == "multi_turn_base_195"
    assert [c.name for c in replies[0][0].calls] == ["get_flight_cost", "book_flight"]
    assert replies[1][0].entry_id == "multi_turn_miss_param_195"
    assert [c.name for c in replies[1][0].calls] == ["get_flight_cost"]
    assert check("multi_turn_miss_param_195", decoded) == {"valid": True}


def test_miss_param_180_cannot_be_told_from_base_180(oracle: MultiTurnOracle) -> None:
    """The one entry a perfect model loses: miss_param_180 asks turns 0-3 word for word as
    base_180 does, in the same world, yet expects the flight booked after turn 2 ("cancel my
    booking") where base_180 expects it cancelled. The oracle answers as base_180."""
    base, miss = raw_entry("multi_turn_base_180"), raw_entry("multi_turn_miss_param_180")
    assert base["question"][:4] == miss["question"][:4] and base["question"][4] != miss["question"][4]
    assert base["initial_config"] == miss["initial_config"]
    assert ground_truth("multi_turn_base_180")[2] == ["cancel_booking(access_token='abc123xyz', booking_id='3426812')"]
    assert [c.split("(")[0] for c in ground_truth("multi_turn_miss_param_180")[2]] == ["get_flight_cost", "book_flight"]
    decoded, replies = play(oracle, "multi_turn_miss_param_180")
    assert {r.entry_id for turn in replies[:4] for r in turn} == {"multi_turn_base_180"}
    verdict = check("multi_turn_miss_param_180", decoded)
    assert not verdict["valid"] and verdict["error_type"] == "multi_turn:instance_state_mismatch"
    assert check("multi_turn_base_180", play(oracle, "multi_turn_base_180")[0]) == {"valid": True}


def test_wrong_answers_fail_the_checker_for_that_category_only(oracle: MultiTurnOracle) -> None:
    wrong_base = lambda category: category == "multi_turn_base"  # noqa: E731
    for entry_id in ("multi_turn_base_0", "multi_turn_base_38"):
        decoded, replies = play(oracle, entry_id, wrong_base)
        answered = [c for turn in replies for r in turn if not r.probe for c in r.calls]
        assert answered and all(c.arguments.get("standin_wrong_argument") is True for c in answered)
        assert not check(entry_id, decoded)["valid"], entry_id
    for entry_id in ("multi_turn_long_context_38", "multi_turn_miss_func_0"):
        assert check(entry_id, play(oracle, entry_id, wrong_base)[0]) == {"valid": True}, entry_id


def test_other_requests_never_load_the_multi_turn_data() -> None:
    from bfcl_ext.standin.oracle import load_cases as _load_bfcl_cases

    def fail() -> list[Any]:
        raise AssertionError("multi-turn data loaded")

    loads = []
    lazy = MultiTurnOracle(loader=fail, classes=lambda: loads.append(1) or standin_multiturn._function_classes())
    single_turn = _load_bfcl_cases()
    started = time.perf_counter()
    for case in single_turn:
        assert lazy.answer([{"role": "user", "content": case.question}], case.names) is None, case.id
    per_request = (time.perf_counter() - started) / len(single_turn)
    assert lazy.answer([{"role": "user", "content": "Hi"}], set()) is None
    assert loads == [1]  # the function docs are read once
    assert per_request < 0.001, per_request
    assert lazy.may_be_multi_turn({f["name"] for f in raw_entry("multi_turn_miss_func_0")["function"]})


# ---------------------------------------------------------------- over HTTP


def chat_request(entry_id: str, turn_messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What bfcl-eval's OpenAICompletionsHandler sends on the first step of a first turn."""
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import convert_to_tool

    raw = raw_entry(entry_id)
    tools = convert_to_tool(raw["function"], GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)
    return {"model": MODEL, "messages": turn_messages, "temperature": 0.001, "store": False, "tools": tools}


def test_standin_answers_tool_calls_and_spoils_them_in_wrong_modes() -> None:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    # base_2 starts as long_context_2 does (and unlike miss_param_2)
    raw = raw_entry("multi_turn_base_2")
    assert raw["question"][0] == raw_entry("multi_turn_long_context_2")["question"][0]
    assert raw["question"][0] != raw_entry("multi_turn_miss_param_2")["question"][0]
    request = chat_request("multi_turn_base_2", raw["question"][0])
    modes = ("oracle", "wrong-category:multi_turn_base", "wrong-category:multi_turn_long_context")
    servers = {mode: Standin(StandinOptions(port=0, served_model_names=(MODEL,), mode=mode)).start() for mode in modes}

    def ask(server: Standin, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        return choice["message"]

    def calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]

    right = [("cd", {"folder": "documents"}), ("touch", {"file_name": "TeamNotes.txt"})]
    try:
        first = {mode: ask(server, request) for mode, server in servers.items()}
        assert calls(first["oracle"]) == right
        assert not any(c["id"].startswith(PROBE_ID_PREFIX) for c in first["oracle"]["tool_calls"])
        assert servers["oracle"].stats()["entries"] == {"multi_turn_base_2": 1}
        # answered differently now, base_2 and long_context_2 are told apart first
        answers = {}
        for mode in modes[1:]:
            (probe,) = first[mode]["tool_calls"]
            assert probe["id"].startswith(PROBE_ID_PREFIX) and json.loads(probe["function"]["arguments"]) == {}
            (result,), _ = execute_multi_turn_func_call(
                [_call_source(probe)], raw["initial_config"], raw["involved_classes"], f"test_http_{next(_serial)}",
                raw["id"],
            )
            follow_up = [*request["messages"], {"role": "assistant", "content": None, "tool_calls": [probe]},
                         {"role": "tool", "content": result, "tool_call_id": probe["id"]}]
            answers[mode] = calls(ask(servers[mode], {**request, "messages": follow_up}))
            entries = servers[mode].stats()["entries"]  # the probe counts for either look-alike
            assert sum(entries.values()) == 2 and entries["multi_turn_base_2"] >= 1
    finally:
        for server in servers.values():
            server.stop()
    assert answers["wrong-category:multi_turn_base"] == [
        (name, {**arguments, "standin_wrong_argument": True}) for name, arguments in right
    ]
    assert answers["wrong-category:multi_turn_long_context"] == right


# ---------------------------------------------------------------- end to end


def run_multi_turn(port: int, output_dir: Path, category: str, *limit: str) -> dict[str, Any]:
    env = {"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(port)}
    done = run_bfcl_ext(["run", "--skip-vllm", "--model", MODEL, "--test-category", category, *limit,
                         "--output-dir", str(output_dir), "--wait-timeout", "120"], env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return read_json(output_dir / "summary.json")


def test_bfcl_ext_scores_the_oracle_100_percent_in_every_multi_turn_category(
    standin_factory: Any, tmp_path: Path
) -> None:
    standin = standin_factory("--served-model-name", MODEL)
    summary = run_multi_turn(standin.port, tmp_path / "out", "multi_turn", "--limit", "5")
    assert set(summary["categories"]) == set(CATEGORIES)
    for category, score in summary["categories"].items():
        assert (score["correct"], score["total"], score["accuracy"]) == (5, 5, 1.0), category
    stats = standin.stats()
    assert stats["unmatched"] == 0 and stats["errors"] == 0
    assert stats["ok"] > 20 * 2  # several steps an entry


def test_bfcl_ext_scores_the_oracle_100_percent_on_all_of_multi_turn_base(
    standin_factory: Any, tmp_path: Path
) -> None:
    standin = standin_factory("--served-model-name", MODEL)
    started = time.monotonic()
    summary = run_multi_turn(standin.port, tmp_path / "out", "multi_turn_base")
    assert summary["categories"]["multi_turn_base"] == {"accuracy": 1.0, "correct": 200, "total": 200}
    assert time.monotonic() - started < 120


def test_bfcl_ext_scores_a_wrong_category_lower(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory("--served-model-name", MODEL, "--mode", "wrong-category:multi_turn_base")
    summary = run_multi_turn(standin.port, tmp_path / "out", "multi_turn_base,multi_turn_miss_func", "--limit", "3")
    assert summary["categories"]["multi_turn_base"]["correct"] == 0
    assert summary["categories"]["multi_turn_miss_func"]["correct"] == 3
