"""A deadline for the whole reply, not only for each read.

httpx's timeout bounds each read of a reply, so a server that sends a byte a second never trips it
and one request can last forever. ``WholeReplyDeadline`` bounds the body too: the reply must be
complete ``timeout`` seconds after the request left, or it is an ``httpx.ReadTimeout``, which the
OpenAI SDK retries like any other timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx


class WholeReplyDeadline(httpx.HTTPTransport):
    def __init__(self, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.timeout
        response = super().handle_request(request)
        response.stream = _DeadlineStream(response.stream, deadline, self.timeout, request)
        return response


class _DeadlineStream(httpx.SyncByteStream):
    def __init__(self, stream: Any, deadline: float, timeout: float, request: httpx.Request) -> None:
        self.stream, self.deadline, self.timeout, self.request = stream, deadline, timeout, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            if time.monotonic() > self.deadline:
                raise httpx.ReadTimeout(f"the reply was not complete after {self.timeout:g}s", request=self.request)
            yield chunk

    def close(self) -> None:
        self.stream.close()
