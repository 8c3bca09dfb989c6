"""The stand-in's HTTP side: vLLM's routes, its API-key check, slow and dropped replies, and a
server that can die like a killed process. What to answer comes from ``answers``."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bfcl_ext.standin import metrics
from bfcl_ext.standin.answers import Answered, answer_chat, answer_completion
from bfcl_ext.standin.faults import bad_reply_body
from bfcl_ext.standin.options import StandinOptions
from bfcl_ext.standin.shapes import error_body, model_card
from bfcl_ext.standin.state import State
from bfcl_ext.standin.validation import parse_body

_Answerer = Callable[[State, dict[str, Any], str], Answered]  # answer_chat or answer_completion

_GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # vLLM's AuthenticationMiddleware
_NOT_FOUND = {"detail": "Not Found"}


class _Handler(BaseHTTPRequestHandler):
    """One connection. HTTP/1.1 with keep-alive, like uvicorn."""

    protocol_version = "HTTP/1.1"
    timeout = 5  # uvicorn's keep-alive timeout in vLLM
    server: Server

    # -- plumbing

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        super().finish()

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Quiet: no access log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        routes = self._routes().get(path)
        if path.startswith(_GUARDED_PREFIXES) and not self._authorized():
            self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "Unauthorized"})
        elif routes is None:
            self._send_json(HTTPStatus.NOT_FOUND, _NOT_FOUND)
        elif method not in routes:
            self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"detail": "Method Not Allowed"})
        else:
            routes[method](body)

    def _routes(self) -> dict[str, dict[str, Callable[[bytes], None]]]:
        return {
            "/health": {"GET": self._health},
            "/version": {"GET": self._version},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completion},
            "/standin/stats": {"GET": self._stats},
            **({"/metrics": {"GET": self._metrics}} if self.server.options.metrics else {}),
            "/search": {"GET": self._search},  # SerpAPI's, for bfcl-eval's web search
            "/search.json": {"GET": self._search},
        }

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _authorized(self) -> bool:
        """vLLM's check: ``Authorization: Bearer <key>``, compared in constant time."""
        key = self.server.options.api_key
        if key is None:
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        return secrets.compare_digest(digest, hashlib.sha256(key.encode()).digest())

    def _send_json(
        self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None, trickle: float = 0.0,
        trickle_headers: float = 0.0,
    ) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers, trickle,
                   trickle_headers)

    def _send(
        self, status: HTTPStatus, data: bytes, content_type: str | None, headers: dict[str, str] | None = None,
        trickle: float = 0.0, trickle_headers: float = 0.0,
    ) -> None:
        """The reply; with ``trickle``, its body one byte every ``trickle`` seconds (each read of the
        client gets something, the reply never seems to end); with ``trickle_headers``, its status line
        and headers so, before the body. Every byte is sent in the end, as by a slow server."""
        self.send_response(status.value, status.phrase)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if trickle_headers > 0:  # what end_headers() would write at once: the buffered head and its blank line
            head, self._headers_buffer = b"".join(self._headers_buffer) + b"\r\n", []
            if not self._trickle(head, trickle_headers):
                return
        else:
            self.end_headers()
        if trickle <= 0:
            self.wfile.write(data)
            self.wfile.flush()
            return
        self._trickle(data, trickle)

    def _trickle(self, data: bytes, every: float) -> bool:
        """``data`` one byte every ``every`` seconds; False if the server died on the way."""
        for index in range(len(data)):
            if self.server.dead:
                return False
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()
            time.sleep(every)
        return True

    def _drop(self) -> None:
        """Close the connection without an answer, as a crashed server does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- honest endpoints

    def _health(self, _body: bytes) -> None:
        slow = self.server.options.trickle_probes
        self._send(HTTPStatus.OK, b"", None, trickle=slow, trickle_headers=slow)

    def _version(self, _body: bytes) -> None:
        slow = self.server.options.trickle_probes
        self._send_json(HTTPStatus.OK, {"version": self.server.options.version}, trickle=slow, trickle_headers=slow)

    def _models(self, _body: bytes) -> None:
        names = self.server.options.served_model_names
        root = self.server.options.model_root or names[0]
        cards = [model_card(name, root, self.server.started) for name in names]
        slow = self.server.options.trickle_probes
        self._send_json(HTTPStatus.OK, {"object": "list", "data": cards}, trickle=slow, trickle_headers=slow)

    def _stats(self, _body: bytes) -> None:
        self._send_json(HTTPStatus.OK, self.server.state.snapshot())

    def _metrics(self, _body: bytes) -> None:
        text = self.server.state.batch.metrics_text(self.server.options.served_model_names[0])
        self._send(HTTPStatus.OK, text.encode(), metrics.CONTENT_TYPE)

    def _search(self, _body: bytes) -> None:
        status, payload = self.server.state.search.answer(self.path)
        self._send_json(HTTPStatus(status), payload)

    # -- completions

    def _chat(self, body: bytes) -> None:
        self._complete(body, "messages", answer_chat)

    def _completion(self, body: bytes) -> None:
        self._complete(body, "prompt", answer_completion)

    def _complete(self, raw: bytes, required: str, answer: _Answerer) -> None:
        """The shared path of both completion endpoints: faults, checks, then the answer."""
        if self.server.dead:
            return self._drop()
        state = self.server.state
        ordinal, fault = state.admit()
        batched = fault != "429" and state.batch.enter(lambda: self.server.dead)  # a slot, as vLLM schedules
        try:
            self._admitted(raw, required, answer, ordinal, fault, batched)
        finally:
            self._settle(ordinal, fault, batched)

    def _admitted(
        self, raw: bytes, required: str, answer: _Answerer, ordinal: int, fault: str | None, batched: bool
    ) -> None:
        """A counted request: dropped (no slot, or past ``die_after``), the leaked key, or answered."""
        die_after = self.server.options.die_after
        if (fault != "429" and not batched) or (die_after is not None and ordinal > die_after):
            return self._drop()
        if fault == "echo-key":
            return self._echo_key()
        self._respond(raw, required, answer, fault)

    def _settle(self, ordinal: int, fault: str | None, batched: bool) -> None:
        """Give back the slot and the in-flight place; crash after the ``die_after``-th request."""
        state = self.server.state
        if batched:
            state.batch.leave()
        if fault != "429":
            state.release()
        if ordinal == self.server.options.die_after:
            self.close_connection = True
            self.server.crash()

    def _respond(self, raw: bytes, required: str, answer: _Answerer, fault: str | None) -> None:
        body = self._accepted(raw, required)
        if body is None:
            return None
        if fault == "429":
            return self._rate_limited()
        time.sleep(self.server.options.latency)
        if fault == "500":
            return self._internal_error("Internal server error (injected by the bfcl-ext stand-in).")
        self._answer(body, answer)

    def _accepted(self, raw: bytes, required: str) -> dict[str, Any] | None:
        """The parsed body, its fields counted; None once vLLM's error for it is sent."""
        state = self.server.state
        body, problem = parse_body(self.headers.get("Content-Type"), raw, required,
                                   self.server.options.served_model_names)
        if problem is not None:
            state.count("rejected")
            self._send_json(HTTPStatus(problem["error"]["code"]), problem)
            return None
        state.record_fields(body)
        return body

    def _answer(self, body: dict[str, Any], answer: _Answerer) -> None:
        """The oracle's answer: sent as is, spoiled (``bad_reply_rate``), or a 500 if answering failed."""
        state, options = self.server.state, self.server.options
        try:
            payload, entry_id = answer(state, body, body.get("model") or options.served_model_names[0])
        except Exception as exc:  # a bug or an odd request: answer as vLLM's catch-all does
            return self._internal_error(f"{type(exc).__name__}: {exc}")
        bad = state.bad_reply()
        if bad is not None:  # not an answer: neither "ok" nor counted for its entry
            return self._send(HTTPStatus.OK, bad_reply_body(payload, bad), "application/json")
        state.count("ok", entry_id)
        if entry_id is None:
            state.count("unmatched")
        self._send_json(HTTPStatus.OK, payload, trickle=options.trickle, trickle_headers=options.trickle_headers)

    def _rate_limited(self) -> None:
        self.server.state.count("rate_limited")
        message = "Too many requests (injected by the bfcl-ext stand-in). Retry later."
        self._send_json(HTTPStatus.TOO_MANY_REQUESTS, error_body(HTTPStatus.TOO_MANY_REQUESTS, message),
                        {"Retry-After": "1"})

    def _internal_error(self, message: str) -> None:
        self.server.state.count("errors")
        payload = error_body(HTTPStatus.INTERNAL_SERVER_ERROR, message, "InternalServerError")
        self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, payload)

    def _echo_key(self) -> None:
        """A 400 whose body quotes the bearer key back (injected): the client records it as the answer."""
        self.server.state.count("rejected")
        key = (self.headers.get("Authorization") or "").partition(" ")[2]
        message = f"Request rejected (injected by the bfcl-ext stand-in) for the key {key}"
        self._send_json(HTTPStatus.BAD_REQUEST, error_body(HTTPStatus.BAD_REQUEST, message))


class Server(ThreadingHTTPServer):
    """The listening socket, its open connections, and what happens when it dies."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048  # uvicorn's backlog: 64 threads connecting at once are all queued, none reset

    def __init__(self, options: StandinOptions, state: State, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        super().__init__((options.host, port), _Handler)
        self.options = options
        self.state = state
        self.started = int(time.time())
        self.dead = False
        self.exit_code = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hang up; loud (stderr) about anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def crash(self) -> None:
        """Die like a killed process: stop listening now and drop every connection."""
        self.dead = True
        self.exit_code = 1
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        threading.Thread(target=self.shutdown, daemon=True).start()

    def close_all(self) -> None:
        """Close the listening socket and every open connection (after ``serve_forever``)."""
        self.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
