"""A deadline for the whole reply, not only for each read.

httpx's timeout bounds each read, write and connect on its own, so a server that sends a byte a
second (of its status line, its headers or its body) never trips it and one request can last
forever. httpx has no total timeout (encode/httpx#1450, open), so ``WholeReplyDeadline`` makes one:
each request gets a deadline ``timeout`` seconds after it is handed to the transport, and every
socket operation made for it (connect, TLS, sending, each read of the status line, headers and
body) is given at most the time left to that deadline. When it has passed, the read (or write, or
connect) in progress ends at once with httpx's ``ReadTimeout`` (``WriteTimeout``,
``ConnectTimeout``), which the OpenAI SDK retries like any other timeout.

The deadline is kept per thread: set when the request starts, kept while its body is read in the
same thread (as httpx's sync client and the OpenAI SDK do), cleared when the response is closed.
The transport speaks HTTP/1.1 only (httpx's default), where a connection serves one request at a
time, in the thread that sent it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx


class _Deadline:
    """One request's deadline (an object, so that a response closes only its own)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = time.monotonic() + timeout

    def message(self) -> str:
        return f"the reply was not complete after {self.timeout:g}s (--request-timeout)"


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with each timeout capped at the time left to the deadline of
    the request the calling thread is serving (none set: the timeouts as given)."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner
        self._local = threading.local()

    # -- the current thread's deadline

    def start(self, timeout: float) -> _Deadline:
        deadline = _Deadline(timeout)
        self._local.deadline = deadline
        return deadline

    def finish(self, deadline: _Deadline) -> None:
        if getattr(self._local, "deadline", None) is deadline:
            self._local.deadline = None

    def capped(self, timeout: float | None, error: type[httpcore.TimeoutException]) -> tuple[float | None, bool]:
        """The timeout to use now, and whether it is the deadline's (not the caller's own)."""
        deadline: _Deadline | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout, False
        left = deadline.at - time.monotonic()
        if left <= 0:
            raise error(deadline.message())
        if timeout is not None and timeout <= left:
            return timeout, False
        return left, True

    def timed_out(self, error: type[httpcore.TimeoutException], exc: Exception) -> Exception:
        """``exc`` (a timeout of an operation the deadline cut short), named for what it was."""
        deadline: _Deadline | None = getattr(self._local, "deadline", None)
        return error(deadline.message()) if deadline is not None else exc

    def call(
        self, error: type[httpcore.TimeoutException], timeout: float | None, operation: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """``operation(*args, timeout=..., **kwargs)`` with the timeout capped."""
        limit, by_deadline = self.capped(timeout, error)
        try:
            return operation(*args, timeout=limit, **kwargs)
        except error as exc:
            if by_deadline:
                raise self.timed_out(error, exc) from exc
            raise

    # -- httpcore.NetworkBackend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.call(
            httpcore.ConnectTimeout,
            timeout,
            self.inner.connect_tcp,
            host,
            port,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self.call(
            httpcore.ConnectTimeout, timeout, self.inner.connect_unix_socket, path, socket_options=socket_options
        )
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection's stream whose reads, writes and TLS handshake end at the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self.inner, self.backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self.backend.call(httpcore.ReadTimeout, timeout, self.inner.read, max_bytes)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.backend.call(httpcore.WriteTimeout, timeout, self.inner.write, buffer)

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        stream = self.backend.call(
            httpcore.ConnectTimeout, timeout, self.inner.start_tls, ssl_context, server_hostname=server_hostname
        )
        return _DeadlineStream(stream, self.backend)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class WholeReplyDeadline(httpx.HTTPTransport):
    def __init__(self, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        # httpx.HTTPTransport takes no network backend, and building httpcore's pool ourselves would
        # copy its construction (TLS context, proxies, limits). So, here only: the pool it built
        # (ConnectionPool, HTTPProxy or SOCKSProxy: all keep the backend in ``_network_backend``, read
        # only when a connection is made, and none is made yet) gets the backend wrapped. Checked
        # against httpx 0.28.1 / httpcore 1.0.9; a pool without that attribute fails here, loudly.
        pool = self._pool
        inner = getattr(pool, "_network_backend", None)
        if not isinstance(inner, httpcore.NetworkBackend) or getattr(pool, "connections", None):
            raise RuntimeError(
                f"httpcore {httpcore.__version__}: its connection pool does not keep its network "
                "backend where bfcl_ext.reply_deadline expects it; the whole-reply deadline cannot "
                "be set"
            )
        self._deadlines = _DeadlineBackend(inner)
        pool._network_backend = self._deadlines

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = self._deadlines.start(self.timeout)
        try:
            response = super().handle_request(request)
        except BaseException:
            self._deadlines.finish(deadline)
            raise
        response.stream = _BodyStream(response.stream, self._deadlines, deadline)
        return response


class _BodyStream(httpx.SyncByteStream):
    """The response body as httpx gives it (its reads bounded by the backend); closing it ends the
    request's deadline."""

    def __init__(self, stream: Any, backend: _DeadlineBackend, deadline: _Deadline) -> None:
        self.stream, self.backend, self.deadline = stream, backend, deadline

    def __iter__(self) -> Iterator[bytes]:
        yield from self.stream

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            self.backend.finish(self.deadline)
