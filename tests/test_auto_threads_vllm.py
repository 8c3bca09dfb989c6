"""``--num-threads auto`` against a REAL vLLM on the CPU: its /metrics carries the gauges auto reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from bfcl_ext.concurrency import parse_metrics
from tests.conftest import VLLM_SERVED_NAME, assert_outputs_match_schemas, read_json, result_lines, run_bfcl_ext
from tests.support.vllm_cpu import VllmServer

pytestmark = pytest.mark.vllm
LIMIT = 4


def test_auto_reads_vllms_metrics_and_completes_entries(vllm_server: VllmServer, tmp_path: Path) -> None:
    metrics = requests.get(f"http://127.0.0.1:{vllm_server.port}/metrics", timeout=30)
    assert metrics.status_code == 200
    running, waiting = parse_metrics(metrics.text)
    assert running >= 0 and waiting >= 0

    out = tmp_path / "out"
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", VLLM_SERVED_NAME, "--test-category", "simple_python",
         "--limit", str(LIMIT), "--output-dir", str(out), "--num-threads", "auto"],
        env={"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(vllm_server.port)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"--num-threads auto: following http://127.0.0.1:{vllm_server.port}/metrics" in done.stderr
    assert "no usable vLLM metrics" not in done.stderr
    record = read_json(out / "manifest.json")["concurrency"]
    assert (record["mode"], record["fallback_reason"], record["min"]) == ("auto", None, 16)
    assert sorted(line["id"] for line in result_lines(out)) == [f"simple_python_{i}" for i in range(LIMIT)]
    assert read_json(out / "summary.json")["status"] == "complete"
    assert_outputs_match_schemas(out)
