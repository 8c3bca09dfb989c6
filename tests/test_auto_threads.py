"""``bfcl-ext run --num-threads auto`` end to end: against the stand-in playing a vLLM whose batch holds
``--max-num-seqs`` requests, against a server without /metrics, and the values the setting refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import assert_outputs_match_schemas, read_json, run_bfcl_ext

MODEL = "bfcl-ext-standin"


def _run(standin: Any, output: Path, categories: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return run_bfcl_ext(["run", "--skip-vllm", "--model", MODEL, "--base-url", standin.base_url,
                         "--test-category", categories, "--output-dir", str(output), "--wait-timeout", "60", *extra],
                        env=env, timeout=300)


def test_auto_grows_to_the_servers_batch_and_holds_there(standin_factory: Any, tmp_path: Path) -> None:
    seqs = 32
    standin = standin_factory("--max-num-seqs", str(seqs), "--latency", "0.2")
    done = _run(standin, tmp_path / "out", "simple_python,multiple", "--num-threads", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--num-threads auto: following http://127.0.0.1:" in done.stderr
    manifest = read_json(tmp_path / "out" / "manifest.json")
    record = manifest["concurrency"]
    assert manifest["threads"] == "auto"
    assert (record["mode"], record["min"], record["fallback_reason"]) == ("auto", 16, None)
    assert seqs <= record["max"] <= seqs * 1.5, record  # it reached the batch, and never went far beyond it
    assert record["samples"] >= 4
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["overall"]["accuracy"] == 1.0 and summary["overall"]["total"] == 600
    batch = standin.stats()["batch"]
    assert batch["peak_running"] == seqs  # the batch was full
    assert batch["peak_waiting"] <= seqs * 0.5, batch  # what waited beyond it stayed short
    assert_outputs_match_schemas(tmp_path / "out")


def test_auto_without_metrics_falls_back_to_the_fixed_default(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory("--no-metrics")
    done = _run(standin, tmp_path / "out", "simple_python", "--limit", "5", env={"BFCL_EXT_NUM_THREADS": "auto"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "--num-threads auto" in line]
    assert lines == ["bfcl-ext: --num-threads auto: no usable vLLM metrics (GET http://127.0.0.1:"
                     f"{standin.port}/metrics answered 404); 64 concurrent requests instead"], done.stderr[-2000:]
    record = read_json(tmp_path / "out" / "manifest.json")["concurrency"]
    assert (record["mode"], record["min"], record["median"], record["max"]) == ("auto", 64, 64, 64)
    assert record["fallback_reason"].endswith("/metrics answered 404")
    assert read_json(tmp_path / "out" / "summary.json")["overall"]["accuracy"] == 1.0
    assert_outputs_match_schemas(tmp_path / "out")


def test_a_fixed_number_means_exactly_that(standin_factory: Any, tmp_path: Path) -> None:
    standin = standin_factory("--latency", "0.1")
    done = _run(standin, tmp_path / "out", "simple_python", "--limit", "40", "--num-threads", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--num-threads auto" not in done.stderr
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["threads"] == 5
    record = manifest["concurrency"]
    assert (record["mode"], record["min"], record["median"], record["max"]) == ("fixed", 5, 5, 5)
    assert standin.stats()["batch"]["peak_running"] == 5
    assert_outputs_match_schemas(tmp_path / "out")


@pytest.mark.parametrize(("raw", "why"), [
    ("0", "must be between 1 and 1024"),
    ("-1", "must be between 1 and 1024"),
    ("abc", "not an integer, nor 'auto'"),
    ("1.5", "not an integer, nor 'auto'"),
    ("autox", "not an integer, nor 'auto'"),
    ("", "not an integer, nor 'auto'"),
])
def test_bad_values_exit_2_with_one_line(raw: str, why: str) -> None:
    done = run_bfcl_ext(["run", "--skip-vllm", "--model", MODEL, "--test-category", "simple_python",
                         "--num-threads", raw], timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"bfcl-ext: error: --num-threads={raw!r}: {why}"], done.stderr


def test_auto_is_read_from_flag_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bfcl_ext.config import resolve

    monkeypatch.chdir(tmp_path)  # no stray ./.env
    assert resolve({}, {"BFCL_EXT_NUM_THREADS": "auto"}).num_threads == "auto"
    assert resolve({"num_threads": "AUTO"}, {}).num_threads == "auto"
    assert resolve({"num_threads": "7"}, {"BFCL_EXT_NUM_THREADS": "auto"}).num_threads == 7
