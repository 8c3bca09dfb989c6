"""Where the OpenAI-compatible server is: one typed value, built once by ``config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Endpoint:
    """The server's OpenAI base URL (``.../v1``) and its bearer key.

    ``api_key`` is kept out of ``repr`` so that it never lands in a log or a traceback.
    """

    base_url: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def server_root(self) -> str:
        """The URL that ``/health`` and ``/version`` hang from: the base URL without ``/v1``."""
        root = self.base_url.rstrip("/")
        return root[: -len("/v1")] if root.endswith("/v1") else root

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        if parts.port is not None:
            return parts.port
        return 443 if parts.scheme == "https" else 80

    def url(self, path: str) -> str:
        """``url("/models")`` -> ``<base_url>/models``; ``url("/health", root=True)`` see ``root_url``."""
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def root_url(self, path: str) -> str:
        return self.server_root.rstrip("/") + "/" + path.lstrip("/")

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def with_port(self, port: int) -> Endpoint:
        """The same endpoint on another port (managed mode moves off a port that is taken)."""
        parts = urlsplit(self.base_url)
        netloc = f"{parts.hostname}:{port}"
        if parts.hostname and ":" in parts.hostname:  # IPv6 literal
            netloc = f"[{parts.hostname}]:{port}"
        return Endpoint(parts._replace(netloc=netloc).geturl(), self.api_key)
