"""The web search client bfcl-eval's tool calls through (bridge._SearchService), against small local
servers that misbehave the ways a search service can: bounded in time, retried, never leaking the key."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bfcl_ext import bridge
from bfcl_ext.retry_policy import RetryPolicy

KEY = "serp-key-7c1e"


def _serve(respond: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            respond(self)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _drip(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    try:
        for _ in range(400):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        pass


def _echo_key_in_error(handler: BaseHTTPRequestHandler) -> None:
    body = json.dumps({"error": f"bad request for {handler.path}"}).encode()
    handler.send_response(400)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _policy(timeout: float, retries: int) -> RetryPolicy:
    return RetryPolicy(request_timeout=timeout, request_retries=retries, passes=0, recovery_timeout=0.0)


@pytest.fixture
def dripping() -> Iterator[str]:
    yield from _serve(_drip)


def _failures_of(service: bridge._SearchService) -> tuple[dict, list[str]]:
    failures: list[str] = []
    bridge._tool_failures.current = failures
    try:
        return service.search({"engine": "duckduckgo", "q": "x"}), failures
    finally:
        bridge._tool_failures.current = None


def test_a_body_sent_a_byte_at_a_time_is_bounded_by_the_request_timeout(dripping: str) -> None:
    stats = bridge.SearchStats()
    service = bridge._SearchService(dripping, KEY, _policy(timeout=1.0, retries=1), stats=stats)
    started = time.monotonic()
    payload, failures = _failures_of(service)
    took = time.monotonic() - started
    assert took < 8, f"the search took {took:.1f} s with a 1 s timeout"  # 2 attempts + a 2 s backoff
    assert failures == ["web search: the search service took over 1 s to answer"]
    assert "429" not in payload["error"]  # upstream retries anything with 429 in it forever
    assert (stats.calls, stats.failed, stats.retried) == (1, 1, 1)


def test_an_error_that_echoes_the_request_never_carries_the_key() -> None:
    for url in _serve(_echo_key_in_error):
        service = bridge._SearchService(url, KEY, _policy(timeout=5.0, retries=0), stats=bridge.SearchStats())
        payload, failures = _failures_of(service)
        assert failures and KEY not in " ".join(failures) and KEY not in json.dumps(payload)
