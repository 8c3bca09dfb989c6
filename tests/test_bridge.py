"""The bfcl-eval bridge's own logic: what counts as a transport failure, and result-file repair."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from bfcl_ext import bridge
from bfcl_ext.errors import ConfigError


def _status_error(status: int) -> openai.APIStatusError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    return openai.APIStatusError("error", response=response, body=None)


def _guard(outcome):
    def create(**_kwargs):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return bridge._GuardedCreate(create, bridge.RequestStats())


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
        return SimpleNamespace(choices=[1])

    bridge._GuardedCreate(create, bridge.RequestStats()).create(model="m", timeout=72000)
    assert "timeout" not in seen


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
    assert dropped == {"torn_lines": 1, "duplicates": 1, "transport_errors": 1}
    kept = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert kept == ["simple_python_0", "simple_python_1", "simple_python_6", "simple_python_2"]
    assert bridge.repair_result_files(_session(tmp_path)) == {"torn_lines": 0, "duplicates": 0, "transport_errors": 0}


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
