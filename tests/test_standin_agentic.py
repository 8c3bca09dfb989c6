"""The stand-in's agentic side: the memory and web-search oracle, and its SerpAPI look-alike.

Unit tests send what bfcl-eval's OpenAICompletionsHandler sends (BFCL's own system prompts,
memory dumps and tool schemas); the drive tests run bfcl-eval's handler and memory backends
in this process; the end-to-end tests run ``bfcl-ext run`` against the stand-in process.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bfcl_ext.standin import agentic
from bfcl_ext.standin import Standin, StandinOptions
from tests.conftest import BFCL_EXT, clean_environment, read_json, run_bfcl_ext

os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ext-test-"))

MODEL = "bfcl-ext-standin"
BACKENDS = ("memory_kv", "memory_rec_sum", "memory_vector")


@pytest.fixture
def standin() -> Iterator[Any]:
    """``standin(**options)`` starts one in this process on a free port; all are stopped afterwards."""
    started: list[Standin] = []

    def start(**options: Any) -> Standin:
        options.setdefault("served_model_names", (MODEL,))
        server = Standin(StandinOptions(port=0, **options)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ---------------------------------------------------------------- BFCL's requests, built with BFCL's own code


def entries(category: str) -> list[dict[str, Any]]:
    from bfcl_eval.utils import load_dataset_entry

    return load_dataset_entry(category)


def ground_truth(category: str, entry_id: str) -> list[str]:
    from bfcl_eval.utils import load_ground_truth_entry

    raw_id = entry_id.replace(category, "memory" if category.startswith("memory") else "web_search", 1)
    return next(g["ground_truth"] for g in load_ground_truth_entry(category) if g["id"] == raw_id)


def prereqs(category: str, scenario: str) -> list[dict[str, Any]]:
    chain = [e for e in entries(category) if "prereq" in e["id"] and e["scenario"] == scenario]
    return sorted(chain, key=lambda e: int(e["id"].rsplit("-", 1)[1]))


def question(category: str, scenario: str, index: int = 0) -> dict[str, Any]:
    return [e for e in entries(category) if "prereq" not in e["id"] and e.get("scenario") == scenario][index]


class _VectorDump:
    """memory_vector's ``_dump_core_memory_to_context`` without its embedding model."""

    def __init__(self, store: dict[int, str]) -> None:
        self.store = store

    def _dump_core_memory_to_context(self) -> str:
        return json.dumps(self.store, indent=4)


def memory_instance(category: str, texts: list[str]) -> Any:
    """A memory backend holding ``texts`` (what the snapshot of earlier conversations gave it)."""
    if category == "memory_kv":
        from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.memory_kv import MemoryAPI_kv

        instance = MemoryAPI_kv()
        instance.core_memory = {"user_name": "someone"}
        instance.core_memory.update((agentic.MARKER_KEY, text) for text in texts)
        return instance
    if category == "memory_rec_sum":
        from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.memory_rec_sum import MemoryAPI_rec_sum

        instance = MemoryAPI_rec_sum()
        instance.memory = "The user likes tea. " + " ".join(texts)
        return instance
    return _VectorDump({0: "The user likes tea.", **{3 + i: t for i, t in enumerate(texts)}})


def first_messages(entry: dict[str, Any], memory: Any = None) -> list[dict[str, Any]]:
    """The first request's messages, with the memory system prompt bfcl-eval adds."""
    from bfcl_eval.model_handler.utils import add_memory_instruction_system_prompt

    turns = copy.deepcopy(entry["question"])
    if memory is not None:
        category = entry["id"].rsplit("_", 1)[0].replace("_prereq", "")
        turns = add_memory_instruction_system_prompt(turns, category, entry["scenario"], memory)
    return turns[0]


def request(entry: dict[str, Any], messages: list[dict[str, Any]], model: str = MODEL) -> dict[str, Any]:
    from bfcl_eval.constants.enums import ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import convert_to_tool

    tools = convert_to_tool(entry["function"], GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)
    return {"model": model, "messages": messages, "temperature": 0.001, "store": False, "tools": tools}


def ask(server: Standin, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]


def calls_of(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]


def followed_by(messages: list[dict[str, Any]], message: dict[str, Any], *results: str) -> list[dict[str, Any]]:
    """The history after the assistant's ``message`` and the tool results bfcl-eval appends."""
    ids = [c["id"] for c in message.get("tool_calls") or []]
    tool_messages = [{"role": "tool", "content": r, "tool_call_id": i} for r, i in zip(results, ids, strict=True)]
    return [*messages, message, *tool_messages]


def passes(answer: str | None, truth: list[str]) -> bool:
    from bfcl_eval.eval_checker.agentic_eval.agentic_checker import agentic_checker

    return answer is not None and agentic_checker(answer, truth)["valid"]


# ---------------------------------------------------------------- memory: prerequisites store a chained marker


WRITES = {  # backend -> (first write, later write)
    "memory_kv": ("core_memory_add", "core_memory_replace"),
    "memory_rec_sum": ("memory_append", "memory_replace"),
    "memory_vector": ("core_memory_add", "core_memory_update"),
}


@pytest.mark.parametrize("category", BACKENDS)
def test_prerequisites_store_a_marker_only_where_the_previous_one_arrived(standin: Any, category: str) -> None:
    server = standin()
    chain = prereqs(category, "customer")
    total = len(chain)
    assert total == 10

    first = first_messages(chain[0], memory_instance(category, []))
    message = ask(server, request(chain[0], first))
    ((name, args),) = calls_of(message)
    assert name == WRITES[category][0]
    assert agentic.marker("customer", 1, total) in json.dumps(args)
    if category == "memory_kv":
        assert args == {"key": "bfcl_ext_oracle", "value": agentic.marker("customer", 1, total)}

    # the tool's result comes back: a short text reply, no second write
    after = ask(server, request(chain[0], followed_by(first, message, '{"status": "Key-value pair added."}')))
    assert not calls_of(after) and after["content"] == agentic.PREREQ_REPLY

    # a later turn of the same conversation: text only
    later = [*first, {"role": "assistant", "content": "ok"}, chain[0]["question"][1][0]]
    reply = ask(server, request(chain[0], later))
    assert not calls_of(reply) and reply["content"] == agentic.PREREQ_REPLY

    # conversation 4 sees marker 3/10 in its memory dump: it replaces it with 4/10
    seen = first_messages(chain[3], memory_instance(category, [agentic.marker("customer", 3, total)]))
    ((name, args),) = calls_of(ask(server, request(chain[3], seen)))
    assert name == WRITES[category][1]
    assert agentic.marker("customer", 4, total) in json.dumps(args)
    if category == "memory_rec_sum":
        assert args["old_text"] == agentic.marker("customer", 3, total)
    if category == "memory_vector":
        assert args["vec_id"] == 3  # the id in the dump, not a guess

    # conversation 4 with marker 2/10 (conversation 3 lost): the chain is not mended
    stale = first_messages(chain[3], memory_instance(category, [agentic.marker("customer", 2, total)]))
    reply = ask(server, request(chain[3], stale))
    assert not calls_of(reply) and reply["content"] == agentic.PREREQ_REPLY

    entries_seen = server.stats()["entries"]
    assert entries_seen[f"{category}_prereq_0-customer-0"] == 3
    assert entries_seen[f"{category}_prereq_3-customer-3"] == 2


RETRIEVE = {"memory_kv": "core_memory_retrieve", "memory_rec_sum": "memory_retrieve",
            "memory_vector": "core_memory_retrieve_all"}


@pytest.mark.parametrize("category", BACKENDS)
def test_questions_are_answered_only_from_a_complete_memory(standin: Any, category: str) -> None:
    server = standin()
    entry = question(category, "customer", 2)
    truth = ground_truth(category, entry["id"])
    done = agentic.marker("customer", 10, 10)

    complete = ask(server, request(entry, first_messages(entry, memory_instance(category, [done]))))
    assert not calls_of(complete) and passes(complete["content"], truth)

    partial = first_messages(entry, memory_instance(category, [agentic.marker("customer", 9, 10)]))
    message = ask(server, request(entry, partial))
    assert calls_of(message) == [(RETRIEVE[category], {"key": "bfcl_ext_oracle"} if category == "memory_kv" else {})]
    found = ask(server, request(entry, followed_by(partial, message, json.dumps({"value": done}))))
    assert passes(found["content"], truth)
    missing = ask(server, request(entry, followed_by(partial, message, '{"error": "Key not found."}')))
    assert not calls_of(missing) and agentic.NOT_REMEMBERED in missing["content"]
    assert not passes(missing["content"], truth)

    # another scenario's marker proves nothing about this one
    other = first_messages(entry, memory_instance(category, [agentic.marker("student", 10, 10)]))
    assert calls_of(ask(server, request(entry, other)))
    assert server.stats()["entries"][entry["id"]] == 5


# ---------------------------------------------------------------- web search


def web_entry(index: int = 0) -> dict[str, Any]:
    return entries("web_search_base")[index]


def test_web_search_searches_first_and_tells_the_categories_apart(standin: Any) -> None:
    server = standin()
    entry = web_entry(0)
    truth = ground_truth("web_search_base", entry["id"])
    messages = first_messages(entry)
    message = ask(server, request(entry, messages))
    ((name, args),) = calls_of(message)
    assert name == "search_engine_query"
    assert args == {"keywords": agentic.search_keywords(entry["question"][0][-1]["content"])}
    assert "tea" in args["keywords"] and " the " not in f" {args['keywords']} "

    # bfcl-eval hands a list result over as Python's str(), a dict result as JSON
    with_snippets = str([{"title": "t", "href": "https://x.invalid", "body": "b"}])
    without = str([{"title": "t", "href": "https://x.invalid"}])
    for result, entry_id in ((with_snippets, "web_search_base_0"), (without, "web_search_no_snippet_0")):
        answer = ask(server, request(entry, followed_by(messages, message, result)))
        assert passes(answer["content"], truth)
        assert server.stats()["entries"][entry_id] == 1

    failures = [json.dumps({"error": "Failed to retrieve the search results from server. Please try again later."}),
                "Error during execution: boom", "[]", str([{"title": "t"}])[:-3]]
    for result in failures:
        answer = ask(server, request(entry, followed_by(messages, message, result)))
        assert agentic.SEARCH_FAILED in answer["content"] and not passes(answer["content"], truth), result

    direct = standin(web_search_answer="direct")
    at_once = ask(direct, request(entry, messages))
    assert not calls_of(at_once) and passes(at_once["content"], truth)


def test_wrong_modes_spoil_agentic_answers(standin: Any) -> None:
    memory_entry = question("memory_kv", "customer", 0)
    memory_truth = ground_truth("memory_kv", memory_entry["id"])
    memory_messages = first_messages(memory_entry, memory_instance("memory_kv", [agentic.marker("customer", 10, 10)]))
    web = web_entry(1)
    web_truth = ground_truth("web_search_base", web["id"])
    web_messages = first_messages(web)
    snippets = str([{"title": "t", "href": "https://x.invalid", "body": "b"}])
    no_snippets = str([{"title": "t", "href": "https://x.invalid"}])

    def answers(server: Standin) -> tuple[str, str, str]:
        memory = ask(server, request(memory_entry, memory_messages))["content"]
        search = ask(server, request(web, web_messages))
        base = ask(server, request(web, followed_by(web_messages, search, snippets)))["content"]
        bare = ask(server, request(web, followed_by(web_messages, search, no_snippets)))["content"]
        return memory, base, bare

    memory, base, bare = answers(standin())
    assert passes(memory, memory_truth) and passes(base, web_truth) and passes(bare, web_truth)
    memory, base, bare = answers(standin(mode="wrong"))
    assert not passes(memory, memory_truth) and not passes(base, web_truth) and not passes(bare, web_truth)
    memory, base, bare = answers(standin(mode="wrong-category:web_search_no_snippet"))
    assert passes(memory, memory_truth) and passes(base, web_truth) and not passes(bare, web_truth)
    memory, base, bare = answers(standin(mode="wrong-category:memory_rec_sum"))
    assert passes(memory, memory_truth) and passes(base, web_truth) and passes(bare, web_truth)
    direct = standin(mode="wrong-category:web_search_base", web_search_answer="direct")
    assert not passes(ask(direct, request(web, web_messages))["content"], web_truth)


def test_fixed_answers_never_pass_and_right_answers_always_do() -> None:
    from bfcl_eval.utils import load_ground_truth_entry

    data = agentic.load_agentic_data()
    truths = load_ground_truth_entry("memory_kv") + load_ground_truth_entry("web_search_base")
    assert len(truths) == 255 and len(data.memory_questions) + len(data.web_questions) == 255
    fixed = [agentic.WRONG_REPLY, agentic.NOT_REMEMBERED_REPLY, agentic.SEARCH_FAILED_REPLY, agentic.PREREQ_REPLY]
    for truth in truths:
        assert not any(passes(text, truth["ground_truth"]) for text in fixed), truth["id"]
    for found in (*data.memory_questions.values(), *data.web_questions.values()):
        truth = next(t["ground_truth"] for t in truths if t["id"] == found.raw_id)
        assert passes(agentic.final_answer(found.answers[0], "x"), truth), found.raw_id
    # each web_search question searches for its own keywords
    assert len(data.web_by_keywords) == len(data.web_questions) == 100
    assert sum(p.index == p.total - 1 for p in data.prereqs.values()) == 5  # one chain per scenario


def test_other_requests_never_load_the_agentic_data() -> None:
    def refuse() -> agentic.AgenticData:
        raise AssertionError("loaded")

    oracle = agentic.AgenticOracle(refuse)
    options = StandinOptions()
    assert agentic.answer_chat(oracle, options, [{"role": "user", "content": "hi"}], {}) is None
    assert agentic.answer_chat(oracle, options, [], {"math_factorial": "math.factorial"}) is None
    with pytest.raises(AssertionError, match="loaded"):
        agentic.answer_chat(oracle, options, [], {"search_engine_query": "search_engine_query"})
    for bad in ({"web_search_answer": "later"}, {"search_always_fail": "sometimes"}, {"search_error_rate": 1.5},
                {"search_rate_limit_rate": -0.1}, {"mode": "wrong-category:memory_nothing"}):
        with pytest.raises(ValueError):
            StandinOptions(**bad)
    assert "secret" not in repr(StandinOptions(search_api_key="secret"))


# ---------------------------------------------------------------- the SerpAPI look-alike


def search(server: Standin, path: str = "/search", **params: Any) -> requests.Response:
    query = {"engine": "duckduckgo", "q": "bfcl ext standin", "kl": "wt-wt", **params}
    return requests.get(f"{server.url}{path}", params={k: v for k, v in query.items() if v is not None}, timeout=10)


def test_search_answers_serpapis_shape_deterministically(standin: Any) -> None:
    server = standin(api_key="sk-vllm")  # vLLM's key guards /v1 only, as vLLM's does
    response = search(server, source="python", output="json")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["search_metadata"]["status"] == "Success"
    assert body["search_parameters"] == {"engine": "duckduckgo", "q": "bfcl ext standin", "kl": "wt-wt"}
    results = body["organic_results"]
    assert [r["position"] for r in results] == list(range(1, 9))
    assert all({"position", "title", "link", "snippet"} <= set(r) for r in results)
    assert all(r["link"].startswith("https://") for r in results)
    assert search(server, "/search.json").json()["organic_results"] == results
    assert search(server, q="something else").json()["organic_results"] != results

    entry = web_entry(5)
    keywords = agentic.search_keywords(entry["question"][0][-1]["content"])
    first = search(server, q=keywords).json()["organic_results"][0]
    assert ground_truth("web_search_base", entry["id"])[0] in first["snippet"]

    assert search(server, q="").status_code == 400
    assert search(server, q=None).json() == {"error": "Missing query `q` parameter."}
    other = search(server, engine="google")
    assert (other.status_code, other.json()) == (400, {"error": "Unsupported `google` search engine."})
    assert server.stats()["search"] == {"received": 7, "ok": 4, "matched": 1, "no_results": 0, "unauthorized": 0,
                                        "bad_request": 3, "rate_limited": 0, "errors": 0}


def test_search_checks_the_key_when_it_holds_one(standin: Any) -> None:
    server = standin(search_api_key="serp-right")
    for key in (None, "", "serp-wrong", "serp-right-not"):
        refused = search(server, api_key=key)
        assert (refused.status_code, refused.json()) == (401, {"error": agentic.INVALID_KEY})
    assert search(server, api_key="serp-right").status_code == 200
    stats = server.stats()["search"]
    assert (stats["unauthorized"], stats["ok"]) == (4, 1)
    assert search(standin(), api_key="anything").status_code == 200  # no key held: any key will do


def test_search_faults_on_demand(standin: Any) -> None:
    failing = search(standin(search_error_rate=1.0))
    assert failing.status_code == 500 and "error" in failing.json()
    limited = search(standin(search_rate_limit_rate=1.0))
    assert (limited.status_code, limited.json()) == (429, {"error": agentic.OUT_OF_SEARCHES})
    down = standin(search_always_fail="503")
    assert search(down).status_code == 503 and "error" in search(down).json()
    assert down.stats()["search"]["errors"] == 2
    empty = search(standin(search_always_fail="no-results"))
    assert empty.status_code == 200
    body = empty.json()
    assert "organic_results" not in body and body["search_metadata"]["status"] == "Success"
    assert body["error"] == agentic.NO_RESULTS
    # the completions' fault options leave the search alone, and the other way round
    calm = standin(error_rate=1.0, rate_limit_rate=1.0)
    assert search(calm).status_code == 200
    hello = {"model": MODEL, "messages": [{"role": "user", "content": "Hello?"}]}
    assert requests.post(f"{standin(search_error_rate=1.0).url}/v1/chat/completions", json=hello,
                         timeout=10).status_code == 200

    def statuses(seed: int) -> list[int]:
        server = standin(search_error_rate=0.4, search_rate_limit_rate=0.2, seed=seed)
        return [search(server).status_code for _ in range(24)]

    first = statuses(3)
    assert first == statuses(3) and {200, 429, 500} <= set(first)


def test_serpapi_client_and_bfcl_eval_tool_talk_to_it(standin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unpatched path: bfcl-eval's WebSearchAPI -> serpapi.GoogleSearch -> GET <BACKEND>/search."""
    from serpapi import GoogleSearch
    from serpapi.serp_api_client import SerpApiClient

    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code.web_search import WebSearchAPI

    server = standin(search_api_key="serp-key")
    monkeypatch.setattr(SerpApiClient, "BACKEND", server.url)
    params = {"engine": "duckduckgo", "q": "bfcl ext", "kl": "wt-wt", "api_key": "serp-key"}
    assert len(GoogleSearch(dict(params)).get_dict()["organic_results"]) == 8
    assert GoogleSearch({**params, "api_key": "wrong"}).get_dict() == {"error": agentic.INVALID_KEY}

    entry = web_entry(2)
    keywords = agentic.search_keywords(entry["question"][0][-1]["content"])
    monkeypatch.setenv("SERPAPI_API_KEY", "serp-key")
    tool = WebSearchAPI()
    results = tool.search_engine_query(keywords, max_results=3)
    assert len(results) == 3 and set(results[0]) == {"title", "href", "body"}
    assert ground_truth("web_search_base", entry["id"])[0] in results[0]["body"]
    tool._load_scenario({"show_snippet": False})
    assert set(tool.search_engine_query(keywords)[0]) == {"title", "href"}
    monkeypatch.setenv("SERPAPI_API_KEY", "wrong")
    assert "error" in tool.search_engine_query(keywords)
    assert server.stats()["search"]["matched"] == 2


# ---------------------------------------------------------------- the command line


def test_command_lists_the_options_and_takes_the_search_key_from_the_environment(tmp_path: Path) -> None:
    shown = subprocess.run([*BFCL_EXT, "standin", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--web-search-answer", "--search-api-key-env", "--search-error-rate", "--search-rate-limit-rate",
                 "--search-always-fail"):
        assert flag in shown
    unset = subprocess.run([*BFCL_EXT, "standin", "--port", "0", "--search-api-key-env", "NO_SUCH_VARIABLE_HERE"],
                           capture_output=True, text=True, env=clean_environment(), timeout=60)
    assert unset.returncode == 2 and "NO_SUCH_VARIABLE_HERE" in unset.stderr

    command = [*BFCL_EXT, "standin", "--port", "0", "--search-api-key-env", "TEST_SERP_KEY",
               "--search-always-fail", "503"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_environment({"TEST_SERP_KEY": "serp-from-env"}))
    try:
        port = process.stdout.readline().rsplit(":", 1)[1].split()[0]
        assert "serp-from-env" not in Path(f"/proc/{process.pid}/cmdline").read_text()
        url = f"http://127.0.0.1:{port}/search"
        assert requests.get(url, params={"engine": "duckduckgo", "q": "x"}, timeout=5).status_code == 401
        keyed = requests.get(url, params={"engine": "duckduckgo", "q": "x", "api_key": "serp-from-env"}, timeout=5)
        assert keyed.status_code == 503
    finally:
        process.terminate()
        process.communicate(timeout=10)


# ---------------------------------------------------------------- bfcl-eval's handler, driven in this process


def drive(server: Standin, model: str, run: list[dict[str, Any]], result_dir: Path) -> dict[str, dict[str, Any]]:
    """Answer ``run`` in order with bfcl-eval's own handler and backends; score the questions as
    bfcl-eval's evaluator does. Returns {entry id: score}."""
    from bfcl_eval.eval_checker.eval_runner import _evaluate_single_agentic_entry
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler
    from bfcl_eval.utils import populate_initial_settings_for_memory_test_cases

    handler_class = type("Handler", (OpenAICompletionsHandler,),
                         {"_build_client_kwargs": lambda _self: {"api_key": "x", "base_url": f"{server.url}/v1"}})
    handler = handler_class(model, 0.001, model, True)
    scores = {}
    for entry in populate_initial_settings_for_memory_test_cases(copy.deepcopy(run), result_dir):
        result, _ = handler.inference(copy.deepcopy(entry), False, True)
        if "prereq" not in entry["id"]:
            category = entry["id"].rsplit("_", 1)[0]
            scores[entry["id"]] = _evaluate_single_agentic_entry(
                handler, entry["id"], result, ground_truth(category, entry["id"]), entry, model, category)
    return scores


def test_drive_memory_state_must_flow_from_every_prerequisite(standin: Any, tmp_path: Path) -> None:
    model = f"drive-{uuid.uuid4().hex[:8]}"
    server = standin(served_model_names=(model, f"{model}-b", f"{model}-c"))
    chain = prereqs("memory_kv", "healthcare")
    questions = [question("memory_kv", "healthcare", i) for i in range(3)]

    complete = drive(server, model, [*chain, *questions], tmp_path / "complete")
    assert all(score["valid"] for score in complete.values()), complete
    snapshot = next((tmp_path / "complete").rglob("healthcare_final.json"))
    assert read_json(snapshot)["core_memory"] == {"bfcl_ext_oracle": agentic.marker("healthcare", 5, 5)}

    broken = drive(server, f"{model}-b", [*chain[:-1], *questions], tmp_path / "broken")  # last one never ran
    assert not any(score["valid"] for score in broken.values())
    assert all(agentic.NOT_REMEMBERED in score["last_non_fc_message"] for score in broken.values())

    skipped = drive(server, f"{model}-c", [*chain[:2], *chain[3:], *questions], tmp_path / "gap")  # a gap mid-chain
    assert not any(score["valid"] for score in skipped.values())
    assert read_json(next((tmp_path / "gap").rglob("healthcare_final.json")))["core_memory"] == {
        "bfcl_ext_oracle": agentic.marker("healthcare", 2, 5)
    }


# ---------------------------------------------------------------- end to end: bfcl-ext run against the stand-in


CATEGORIES = ("memory_kv", "memory_rec_sum", "web_search_base", "web_search_no_snippet")


def run_agentic(standin: Any, output: Path, categories: str, limit: int, *extra: str,
                key: str = "serp-e2e") -> subprocess.CompletedProcess[str]:
    env = {"SERPAPI_API_KEY": key, "BFCL_EXT_SEARCH_BASE_URL": f"http://127.0.0.1:{standin.port}"}
    args = ["run", "--skip-vllm", "--model", MODEL, "--base-url", standin.base_url, "--test-category", categories,
            "--limit", str(limit), "--output-dir", str(output), "--wait-timeout", "60", *extra]
    return run_bfcl_ext(args, env=env)


def test_run_scores_100_on_memory_and_web_search(standin_factory: Any, tmp_path: Path) -> None:
    server = standin_factory("--served-model-name", MODEL, "--search-api-key-env", "STANDIN_SERP_KEY",
                             env={"STANDIN_SERP_KEY": "serp-e2e"})
    done = run_agentic(server, tmp_path / "out", ",".join(CATEGORIES), 3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = read_json(tmp_path / "out" / "summary.json")
    for category in CATEGORIES:
        assert summary["categories"][category] == {"accuracy": 1.0, "correct": 3, "total": 3}, category
    for backend in ("kv", "rec_sum"):
        snapshot = next((tmp_path / "out").rglob(f"memory/{backend}/memory_snapshot/customer_final.json"))
        assert agentic.marker("customer", 10, 10) in snapshot.read_text()
    stats = server.stats()
    assert stats["search"]["matched"] == 6 and stats["search"]["unauthorized"] == 0
    assert {f"memory_kv_prereq_{n}-customer-{n}" for n in range(10)} <= set(stats["entries"])
    assert {"web_search_base_2", "web_search_no_snippet_2"} <= set(stats["entries"])

    refused = run_agentic(server, tmp_path / "wrong-key", "web_search_base", 1, "--max-retries", "0",
                          "--retry-rounds", "0", key="serp-not-this")
    assert refused.returncode == 4 and server.stats()["search"]["unauthorized"] == 1


@pytest.mark.parametrize("outage", ["no-results", "503"])
def test_run_with_search_always_failing_gives_no_right_answer(standin_factory: Any, tmp_path: Path,
                                                              outage: str) -> None:
    server = standin_factory("--served-model-name", MODEL, "--search-always-fail", outage)
    done = run_agentic(server, tmp_path / "out", "web_search_base,web_search_no_snippet", 2,
                       "--max-retries", "0", "--retry-rounds", "0")
    scores = list(read_json(tmp_path / "out" / "summary.json")["categories"].values())
    assert len(scores) == 2 and server.stats()["search"]["received"] >= 4
    if outage == "no-results":  # a search that found nothing: answered, and wrong
        assert done.returncode == 0, done.stderr[-2000:]
        assert [(score["correct"], score["total"]) for score in scores] == [(0, 2), (0, 2)]
    else:  # a broken search service: the entries stay unanswered
        assert done.returncode == 4, done.stderr[-2000:]
        assert [(score["correct"], score["missing"]) for score in scores] == [(None, 2), (None, 2)]
    for line in (tmp_path / "out").rglob("*_result.json"):
        assert "Zhang Yiming" not in line.read_text()


def test_run_wrong_category_spoils_only_that_category(standin_factory: Any, tmp_path: Path) -> None:
    server = standin_factory("--served-model-name", MODEL, "--mode", "wrong-category:web_search_no_snippet")
    done = run_agentic(server, tmp_path / "out", "web_search_base,web_search_no_snippet", 2)
    assert done.returncode == 0, done.stderr[-2000:]
    categories = read_json(tmp_path / "out" / "summary.json")["categories"]
    assert categories["web_search_base"]["correct"] == 2 and categories["web_search_no_snippet"]["correct"] == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
