"""Request settings (issue 13 section 4): --max-tokens, --top-p, --seed, --extra-body.

Real processes against the stand-in, which counts the fields of every request it receives
(``request_fields`` in /standin/stats): each set setting reaches every completion request, in
function-calling mode and in prompt mode; manifest.json records them and ``compare`` shows them;
unset, nothing is added and a folder's identity is what it was. Then the parsing, in process.
Bad values and resumes with other settings are rows of the fault table
(tests/fault_cases/request_settings.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bfcl_ext.config import resolve
from bfcl_ext.errors import ConfigError
from bfcl_ext.request_settings import RequestSettings
from tests.conftest import StandinProcess, assert_outputs_match_schemas, read_json, run_bfcl_ext, start_standin

MODEL = "bfcl-ext-standin"
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
SETTINGS = ("--max-tokens", "256", "--top-p", "0.9", "--seed", "7", "--extra-body", json.dumps(THINKING_OFF))
SENT = {"max_tokens": 256, "top_p": 0.9, "seed": 7, "chat_template_kwargs": {"enable_thinking": False}}
LIMIT = 5


def _run(base_url: str, out: Path, *extra: str, model: str = MODEL, categories: str = "simple_python,multiple"
         ) -> None:
    done = run_bfcl_ext(["run", "--skip-vllm", "--base-url", base_url, "--model", model, "--test-category",
                         categories, "--limit", str(LIMIT), "--output-dir", str(out), *extra], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _requests(standin: StandinProcess) -> list[dict[str, Any]]:
    """The fields (other than the question) of every request the stand-in received, one per request."""
    stats = standin.stats()
    fields = [json.loads(key) for key, count in stats["request_fields"].items() for _ in range(count)]
    assert len(fields) == stats["received"] > 0, stats
    return fields


@dataclass(frozen=True)
class Runs:
    plain: Path  # no request settings
    plain_requests: list[dict[str, Any]]
    tuned: Path  # SETTINGS
    tuned_requests: list[dict[str, Any]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    base = tmp_path_factory.mktemp("request-settings")
    plain_standin = start_standin(base / "standin-plain")
    tuned_standin = start_standin(base / "standin-tuned")
    try:
        _run(plain_standin.base_url, base / "plain")
        _run(tuned_standin.base_url, base / "tuned", *SETTINGS)
        yield Runs(base / "plain", _requests(plain_standin), base / "tuned", _requests(tuned_standin))
    finally:
        plain_standin.stop()
        tuned_standin.stop()


def test_every_request_carries_the_settings(runs: Runs) -> None:
    assert len(runs.tuned_requests) == 2 * LIMIT
    for fields in runs.tuned_requests:
        assert {name: fields.get(name) for name in SENT} == SENT, fields
        assert fields["model"] == MODEL and fields["temperature"] == 0.001  # BFCL's own fields are kept


def test_unset_settings_add_nothing_to_the_request(runs: Runs) -> None:
    for fields in runs.plain_requests:
        assert set(fields) == {"model", "temperature", "store"}, fields  # BFCL's request, field for field


def test_the_manifest_records_them_and_null_when_not_sent(runs: Runs) -> None:
    sampling = read_json(runs.tuned / "manifest.json")["sampling"]
    assert {name: sampling[name] for name in ("max_tokens", "top_p", "seed", "extra_body")} == {
        "max_tokens": 256, "top_p": 0.9, "seed": 7, "extra_body": THINKING_OFF}
    assert read_json(runs.tuned / "manifest.json")["settings"]["extra_body"] == THINKING_OFF
    plain = read_json(runs.plain / "manifest.json")["sampling"]
    assert [plain[name] for name in ("max_tokens", "top_p", "seed", "extra_body")] == [None] * 4
    assert_outputs_match_schemas(runs.tuned)
    assert_outputs_match_schemas(runs.plain)


def test_the_identity_holds_them_only_when_set(runs: Runs) -> None:
    tuned = read_json(runs.tuned / ".bfcl-ext" / "identity.json")
    assert (tuned["max_tokens"], tuned["top_p"], tuned["seed"], tuned["extra_body"]) == (256, 0.9, 7, THINKING_OFF)
    plain = read_json(runs.plain / ".bfcl-ext" / "identity.json")
    assert set(plain) == {"model", "served_model_name", "model_revision", "temperature", "server_version",
                          "model_root"}  # as before these settings existed: older folders resume


def test_compare_shows_the_settings_that_differ(runs: Runs) -> None:
    done = run_bfcl_ext(["compare", str(runs.plain), str(runs.tuned)])
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.startswith("  sampling.")}
    assert rows["sampling.max_tokens"] == ["-", "256"], done.stdout
    assert rows["sampling.top_p"] == ["-", "0.9"]
    assert rows["sampling.seed"] == ["-", "7"]
    assert "sampling.extra_body" in rows and '{"chat_template_kwargs":' in done.stdout


def test_prompt_mode_requests_carry_them_and_max_tokens_caps_bfcls(
    standin_factory: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """BFCL's prompt handlers ask /v1/completions for what fits in the context: --max-tokens lowers that."""
    standin = standin_factory("--served-model-name", "served-qwen")
    cap = 1200  # the tiny model's 2048-token context leaves 1100-1400 tokens after these prompts
    _run(standin.base_url, tmp_path / "out", "--served-model-name", "served-qwen", "--tokenizer", str(tiny_model_dir),
         "--max-tokens", str(cap), *SETTINGS[2:], model="Qwen/Qwen3-0.6B", categories="simple_python")
    requests = _requests(standin)
    assert len(requests) == LIMIT
    assert all(fields["max_tokens"] <= cap for fields in requests) and cap in {f["max_tokens"] for f in requests}
    assert any(fields["max_tokens"] < cap for fields in requests), "BFCL's own, smaller, count was not kept"
    for fields in requests:
        assert (fields["top_p"], fields["seed"], fields["chat_template_kwargs"]) == (0.9, 7, THINKING_OFF[
            "chat_template_kwargs"]), fields
    assert read_json(tmp_path / "out" / "summary.json")["handler"].startswith("prompt: /v1/completions")


# ---------------------------------------------------------------- in process: how each is applied and parsed


def test_apply_in_chat_replaces_and_in_completions_caps_max_tokens() -> None:
    settings = RequestSettings(max_tokens=100, top_p=0.5, seed=3, extra_body={"a": 1, "b": 2})
    chat = settings.apply({"model": "m", "messages": [], "max_tokens": 16384}, completions=False)
    assert chat == {"model": "m", "messages": [], "max_tokens": 100, "top_p": 0.5, "seed": 3,
                    "extra_body": {"a": 1, "b": 2}}
    prompt = settings.apply({"prompt": "p", "max_tokens": 40, "extra_body": {"b": 0, "stop_token_ids": [1]}},
                            completions=True)
    assert prompt["max_tokens"] == 40 and prompt["extra_body"] == {"b": 2, "stop_token_ids": [1], "a": 1}
    assert settings.apply({"prompt": "p", "max_tokens": 4096}, completions=True)["max_tokens"] == 100
    assert RequestSettings().apply({"model": "m"}, completions=False) == {"model": "m"}


def _request(environ: dict[str, str]) -> RequestSettings:
    return resolve({}, environ, None).request


@pytest.mark.parametrize(("env", "raw", "expected"), [
    ("BFCL_EXT_MAX_TOKENS", "512", RequestSettings(max_tokens=512)),
    ("BFCL_EXT_TOP_P", "1", RequestSettings(top_p=1.0)),
    ("BFCL_EXT_TOP_P", "0.05", RequestSettings(top_p=0.05)),
    ("BFCL_EXT_SEED", "-3", RequestSettings(seed=-3)),
    ("BFCL_EXT_SEED", "0", RequestSettings(seed=0)),
    ("BFCL_EXT_EXTRA_BODY", '{"chat_template_kwargs": {"enable_thinking": false}}', RequestSettings(
        extra_body=THINKING_OFF)),
    ("BFCL_EXT_EXTRA_BODY", "{}", RequestSettings()),  # nothing to add
    ("BFCL_EXT_MAX_TOKENS", "", RequestSettings()),  # an empty variable: not set
])
def test_good_values(env: str, raw: str, expected: RequestSettings) -> None:
    assert _request({env: raw}) == expected


@pytest.mark.parametrize(("env", "raw", "reason"), [
    ("BFCL_EXT_MAX_TOKENS", "0", "must be at least 1"),
    ("BFCL_EXT_MAX_TOKENS", "-5", "must be at least 1"),
    ("BFCL_EXT_MAX_TOKENS", "2.5", "not an integer"),
    ("BFCL_EXT_MAX_TOKENS", "inf", "not an integer"),
    ("BFCL_EXT_TOP_P", "0", "must be greater than 0 and at most 1"),
    ("BFCL_EXT_TOP_P", "1.01", "must be greater than 0 and at most 1"),
    ("BFCL_EXT_TOP_P", "nan", "not a finite number"),
    ("BFCL_EXT_TOP_P", "-inf", "not a finite number"),
    ("BFCL_EXT_TOP_P", "high", "not a number"),
    ("BFCL_EXT_SEED", "1.5", "not an integer"),
    ("BFCL_EXT_SEED", "nan", "not an integer"),
    ("BFCL_EXT_SEED", str(2**63), "must be between"),
    ("BFCL_EXT_EXTRA_BODY", "{", "not valid JSON"),
    ("BFCL_EXT_EXTRA_BODY", "[1, 2]", "expected a JSON object"),
    ("BFCL_EXT_EXTRA_BODY", '"text"', "expected a JSON object"),
    ("BFCL_EXT_EXTRA_BODY", '{"repetition_penalty": NaN}', "NaN is not a finite number"),
    ("BFCL_EXT_EXTRA_BODY", '{"x": Infinity}', "Infinity is not a finite number"),
    ("BFCL_EXT_EXTRA_BODY", '{"x": 1e999}', "1e999 is not a finite number"),
    ("BFCL_EXT_EXTRA_BODY", '{"x": 1, "x": 2}', "the key 'x' is given twice"),
    *[("BFCL_EXT_EXTRA_BODY", json.dumps({key: 1}), f"may not set '{key}'")
      for key in ("model", "messages", "prompt", "tools", "stream", "n", "temperature", "max_tokens",
                  "max_completion_tokens", "top_p", "seed")],
])
def test_bad_values_name_the_setting_and_the_value(env: str, raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _request({env: raw})
    message = str(caught.value)
    assert message.startswith(f"{env}={raw!r}: ") and reason in message and "\n" not in message, message
