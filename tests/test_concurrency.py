"""--num-threads auto: reading vLLM's /metrics, the controller's decisions, the stand-in's batch and /metrics."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

import pytest
import requests

from bfcl_ext import concurrency
from bfcl_ext.concurrency import AutoConcurrency, MetricsReader, MetricsUnavailable, parse_metrics
from bfcl_ext.standin import Standin, StandinOptions

os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-ext-test-"))

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 7.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-8B"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-8B"} 0.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-8B"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="Qwen/Qwen3-8B",reason="capacity"} 99.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.25
"""


def test_vllms_gauges_are_summed_over_engines() -> None:
    assert parse_metrics(VLLM_METRICS) == (12.0, 3.0)
    assert parse_metrics("vllm:num_requests_running 2\nvllm:num_requests_waiting 1e0\n") == (2.0, 1.0)


@pytest.mark.parametrize(("text", "why"), [
    ("", "no vllm:num_requests_running or vllm:num_requests_waiting"),
    ("<html>Not Found</html>", "no vllm:num_requests_running or vllm:num_requests_waiting"),
    ("vllm:num_requests_running 1\n", "no vllm:num_requests_waiting"),
    ("vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\n", "has the value 'NaN'"),
    ("vllm:num_requests_running x\nvllm:num_requests_waiting 0\n", "has the value 'x'"),
    ("vllm:num_requests_running -1\nvllm:num_requests_waiting 0\n", "has the value '-1'"),
])
def test_other_servers_metrics_are_unusable(text: str, why: str) -> None:
    with pytest.raises(MetricsUnavailable, match=why):
        parse_metrics(text)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cap_grows_while_nothing_waits_drops_by_what_waits_and_holds() -> None:
    clock = Clock()
    auto = AutoConcurrency(lambda: (0, 0), start=16, maximum=64, hold_s=5.0, clock=clock)
    auto.limiter.busy = 16
    assert auto.step(16, 0) == 20  # busy at the cap, nothing waits: a quarter more
    auto.limiter.busy = 5
    assert auto.step(5, 0) == 20  # the cap is not used: no growth
    auto.limiter.busy = 20
    assert auto.step(20, 1) == 20  # a short queue (slack 1): held
    clock.now = 4.0
    assert auto.step(20, 0) == 20  # still held
    clock.now = 6.0
    assert auto.step(20, 0) == 25
    auto.limiter.busy = 25
    assert auto.step(18, 7) == 19  # 7 wait, 1 may: 6 fewer, held again
    clock.now = 20.0
    for _ in range(20):
        auto.limiter.busy = auto.limiter.cap
        auto.step(0, 0)
    assert auto.limiter.cap == 64  # never beyond the maximum


def test_a_failed_read_holds_the_cap_and_the_record_has_min_median_max() -> None:
    readings = iter([(16, 0), MetricsUnavailable("down"), (16, 20)])

    def read() -> tuple[float, float]:
        value = next(readings, (0, 0))
        if isinstance(value, Exception):
            raise value
        return value

    auto = AutoConcurrency(read, start=16, maximum=64, poll_s=0.01)
    auto.limiter.busy = 100  # every slot busy
    auto.start()
    time.sleep(0.3)
    auto.stop()
    record = auto.record()
    assert auto.samples[:4] == [16, 20, 20, 1]  # grew, held on the failed read, then 20 waited (slack 1)
    assert auto.failed_reads == 1
    assert record["mode"] == "auto" and record["min"] == 1 and record["max"] >= 20
    assert record["samples"] == len(auto.samples) and record["fallback_reason"] is None


def test_fixed_concurrency_records_itself() -> None:
    record = concurrency.Concurrency(8).record()
    assert (record["mode"], record["min"], record["median"], record["max"]) == ("fixed", 8, 8, 8)
    fallback = concurrency.Concurrency(64, fallback_reason="GET x answered 404").record()
    assert (fallback["mode"], fallback["max"], fallback["fallback_reason"]) == ("auto", 64, "GET x answered 404")


# ---------------------------------------------------------------- the stand-in's batch and /metrics


# ``standin(**options)``: tests/conftest.py's in-process stand-in


def _hello(server: Standin, statuses: list[int]) -> None:
    body = {"model": "bfcl-ext-standin", "messages": [{"role": "user", "content": "Hello?"}]}
    statuses.append(requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).status_code)


def _metrics(server: Standin, **kwargs: Any) -> requests.Response:
    return requests.get(server.url.removesuffix("/v1") + "/metrics", timeout=5, **kwargs)


def test_standin_holds_requests_beyond_max_num_seqs_and_shows_them_waiting(standin: Any) -> None:
    server = standin(max_num_seqs=3, latency=0.6, api_key="sekrit")
    idle = _metrics(server)  # unguarded by the API key, as vLLM's
    assert idle.status_code == 200 and idle.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert parse_metrics(idle.text) == (0.0, 0.0)
    assert 'vllm:num_requests_waiting{engine="0",model_name="bfcl-ext-standin"} 0.0' in idle.text

    statuses: list[int] = []
    headers = {"Authorization": "Bearer sekrit"}
    threads = [threading.Thread(target=lambda: _hello_with(server, statuses, headers)) for _ in range(5)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert parse_metrics(_metrics(server).text) == (3.0, 2.0)
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    assert statuses == [200] * 5  # held, never refused
    assert 1.1 < took < 5  # two rounds of 0.6 s
    assert parse_metrics(_metrics(server).text) == (0.0, 0.0)
    batch = server.stats()["batch"]
    assert (batch["peak_running"], batch["peak_waiting"], batch["max_num_seqs"]) == (3, 2, 3)


def _hello_with(server: Standin, statuses: list[int], headers: dict[str, str]) -> None:
    body = {"model": "bfcl-ext-standin", "messages": [{"role": "user", "content": "Hello?"}]}
    response = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=30, headers=headers)
    statuses.append(response.status_code)


def test_standin_without_max_num_seqs_runs_everything_at_once(standin: Any) -> None:
    server = standin(latency=0.5)
    statuses: list[int] = []
    threads = [threading.Thread(target=_hello, args=(server, statuses)) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.25)
    assert parse_metrics(_metrics(server).text) == (4.0, 0.0)
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4


def test_the_reader_sends_the_key_and_names_what_is_wrong(standin: Any) -> None:
    server = standin()
    root = server.url.removesuffix("/v1")
    reader = MetricsReader(f"{root}/metrics", {"Authorization": "Bearer k"})
    assert reader.read() == (0.0, 0.0)
    with pytest.raises(MetricsUnavailable, match=r"GET .*/nothing answered 404"):
        MetricsReader(f"{root}/nothing", {}).read()
    with pytest.raises(MetricsUnavailable, match=r"failed \(ConnectionError\)"):
        MetricsReader("http://127.0.0.1:9/metrics", {}, timeout=2).read()


def test_standin_rejects_a_bad_max_num_seqs() -> None:
    with pytest.raises(ValueError, match="max_num_seqs=0"):
        StandinOptions(max_num_seqs=0)


def test_auto_asks_the_servers_root_for_metrics_with_the_key(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway may guard every path: the bearer key goes with GET /metrics, on the server's root."""
    import types

    from bfcl_ext import run
    from bfcl_ext.config import resolve
    from bfcl_ext.endpoint import Endpoint

    asked: list[tuple[str, dict[str, str]]] = []

    class Reader:
        def __init__(self, url: str, headers: dict[str, str]) -> None:
            asked.append((url, headers))
            self.url = url

        def read(self) -> tuple[float, float]:
            raise MetricsUnavailable(f"GET {self.url} answered 401")

        def close(self) -> None:
            pass

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(concurrency, "MetricsReader", Reader)
    settings = resolve({"num_threads": "auto"}, {})
    server = types.SimpleNamespace(endpoint=Endpoint("https://gw.example.org/prefix/v1", "k3y"))
    chosen = run._concurrency(settings, server)  # type: ignore[arg-type]
    assert asked == [("https://gw.example.org/prefix/metrics", {"Authorization": "Bearer k3y"})]
    assert isinstance(chosen, concurrency.Concurrency) and chosen.record()["max"] == 64
    assert chosen.record()["fallback_reason"] == "GET https://gw.example.org/prefix/metrics answered 401"
    assert capsys.readouterr().err.count("\n") == 1
    assert run._concurrency(resolve({"num_threads": "9"}, {}), server) == 9  # type: ignore[arg-type]
