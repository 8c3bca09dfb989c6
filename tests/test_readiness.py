"""Readiness against a real local HTTP(S) server; a fake clock where real time adds nothing."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bfcl_ext.endpoint import Endpoint
from bfcl_ext.errors import EXIT_NOT_READY, NotReadyError
from bfcl_ext.readiness import (
    AuthFailure,
    ConnectionRefused,
    ModelNotListed,
    NameNotResolved,
    ReadinessTimeout,
    ServerExited,
    ServerInfo,
    TLSFailure,
    probe,
    wait_until_ready,
)

MODEL = "served-model"
KEY = "s3cret-key-abc"


# --- a configurable fake server -------------------------------------------------------------


@dataclass
class Behaviour:
    health_status: int = 200
    models: list[str] = field(default_factory=lambda: [MODEL])
    required_key: str | None = None
    models_body: bytes | None = None  # raw /v1/models body instead of the JSON list
    version: str | None = "0.0-fake"
    health_delay: float = 0.0
    seen_auth: list[str | None] = field(default_factory=list)


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                time.sleep(behaviour.health_delay)
                self._send(behaviour.health_status, b"", "text/plain")
            elif self.path == "/v1/models":
                self._models()
            elif self.path == "/version" and behaviour.version is not None:
                self._send(200, json.dumps({"version": behaviour.version}).encode(), "application/json")
            else:
                self._send(404, b'{"detail":"Not Found"}', "application/json")

        def _models(self) -> None:
            auth = self.headers.get("Authorization")
            behaviour.seen_auth.append(auth)
            if behaviour.required_key and auth != f"Bearer {behaviour.required_key}":
                self._send(401, b'{"error":"Unauthorized"}', "application/json")
            elif behaviour.models_body is not None:
                self._send(200, behaviour.models_body, "text/html; charset=utf-8")
            else:
                data = [{"id": name, "object": "model", "owned_by": "vllm"} for name in behaviour.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class FakeServer:
    """Bound at once (so the port is known) but listening only after ``listen_after`` seconds:
    until then a connection is refused, as with a vLLM that is still loading."""

    def __init__(self, behaviour: Behaviour, listen_after: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour), bind_and_activate=False)
        self.httpd.server_bind()
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        if not listen_after:
            self.httpd.server_activate()
        self._thread = threading.Thread(target=self._serve, args=(listen_after,), daemon=True)
        self._thread.start()

    def _serve(self, listen_after: float) -> None:
        if listen_after:
            time.sleep(listen_after)
            self.httpd.server_activate()
        self.httpd.serve_forever(poll_interval=0.05)

    def endpoint(self, api_key: str | None = None, scheme: str = "http") -> Endpoint:
        return Endpoint(f"{scheme}://127.0.0.1:{self.port}/v1", api_key)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(behaviour: Behaviour | None = None, **kwargs: object) -> FakeServer:
        server = FakeServer(behaviour or Behaviour(), **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def _no_proxy_or_ca_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class FakeTime:
    """``clock`` and ``sleep`` for wait_until_ready: sleeping only moves the clock."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self._on_sleep:
            self._on_sleep(len(self.sleeps))


def _wait(
    endpoint: Endpoint,
    timeout: float,
    fake: FakeTime | None = None,
    *,
    lines: list[str] | None = None,
    poll_interval: float = 2.0,
    **kwargs: object,
) -> ServerInfo:
    timing = {"clock": fake.clock, "sleep": fake.sleep} if fake else {}
    progress = lines.append if lines is not None else (lambda _line: None)
    return wait_until_ready(
        endpoint, MODEL, timeout, progress=progress, poll_interval=poll_interval, **timing, **kwargs
    )


# --- ready ----------------------------------------------------------------------------------


def test_ready_immediately_returns_models_version_and_payload(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(models=["other", MODEL]))
    lines: list[str] = []

    info = _wait(server.endpoint(), 30, lines=lines)

    assert info.models == ["other", MODEL]
    assert info.version == "0.0-fake"
    assert info.models_payload["object"] == "list"
    assert [item["id"] for item in info.models_payload["data"]] == ["other", MODEL]
    assert 0 <= info.waited_s < 5
    assert lines == []


def test_probe_sends_the_key_and_tolerates_a_missing_version(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(required_key=KEY, version=None))

    info = probe(server.endpoint(KEY), MODEL)

    assert info.version is None
    assert server.behaviour.seen_auth == [f"Bearer {KEY}"]


def test_health_404_means_no_health_endpoint_and_models_decide(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(health_status=404))

    assert probe(server.endpoint(), MODEL).models == [MODEL]


def test_port_that_opens_after_a_second_is_waited_for(serve: Callable[..., FakeServer]) -> None:
    server = serve(listen_after=1.0)
    with pytest.raises(ConnectionRefused):
        probe(server.endpoint(), MODEL)

    info = _wait(server.endpoint(), 15, poll_interval=0.1)

    assert info.waited_s >= 1.0
    assert info.models == [MODEL]


def test_model_listed_late_is_waited_for(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(models=[]))
    fake = FakeTime(on_sleep=lambda n: server.behaviour.models.append(MODEL) if n == 3 else None)

    info = _wait(server.endpoint(), 60, fake)

    assert info.models == [MODEL]
    assert info.waited_s == pytest.approx(6.0)


# --- transient conditions, then a timeout ---------------------------------------------------


def test_port_never_open_times_out_with_connection_refused() -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        started = time.monotonic()

        with pytest.raises(ReadinessTimeout) as caught:
            _wait(Endpoint(f"http://127.0.0.1:{port}/v1"), 1.0, poll_interval=0.1)

    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    assert "last: connection refused" in str(caught.value)
    assert f"http://127.0.0.1:{port}/v1" in str(caught.value)
    assert caught.value.exit_code == EXIT_NOT_READY


def test_health_503_forever_times_out_naming_503_and_reports_progress(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(health_status=503))
    fake = FakeTime()
    lines: list[str] = []

    with pytest.raises(ReadinessTimeout) as caught:
        _wait(server.endpoint(), 60, fake, lines=lines, progress_interval=15.0)

    assert "last: /health answered 503" in str(caught.value)
    assert "after 60s" in str(caught.value)
    assert fake.now - 1000.0 == pytest.approx(60.0)
    base_url = server.endpoint().base_url
    assert lines[0] == f"waiting for {base_url} (model {MODEL}): 0s of 60s, last: /health answered 503"
    elapsed = [int(line.split(": ")[1].split("s of")[0]) for line in lines]
    assert elapsed == [0, 16, 32, 48]  # polls every 2 s, a line at most every 15 s


def test_model_never_listed_raises_model_not_listed_with_what_is_served(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(models=["meta-llama/Llama-3.1-8B-Instruct"]))
    with pytest.raises(ModelNotListed) as at_once:
        probe(server.endpoint(), MODEL)
    fake = FakeTime()

    with pytest.raises(ModelNotListed) as caught:
        _wait(server.endpoint(), 20, fake)

    for error in (at_once.value, caught.value):
        assert "'meta-llama/Llama-3.1-8B-Instruct'" in str(error)
        assert "--served-model-name" in str(error)
        assert error.listed == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert "after 20s" in str(caught.value)
    assert len(fake.sleeps) == 10


def test_html_instead_of_json_times_out_with_a_clear_condition(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(models_body=b"<!DOCTYPE html><html><body>Sign in</body></html>"))

    with pytest.raises(ReadinessTimeout) as caught:
        _wait(server.endpoint(), 10, FakeTime())

    message = str(caught.value)
    assert "/v1/models answered 200 with a text/html body, not JSON" in message
    assert "<!DOCTYPE html>" in message
    assert "\n" not in message


def test_slow_health_counts_as_a_request_timeout(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(health_delay=3.0))
    started = time.monotonic()

    with pytest.raises(ReadinessTimeout) as caught:
        _wait(server.endpoint(), 1.0, poll_interval=0.1)

    assert time.monotonic() - started < 2.5
    assert "/health did not answer within" in str(caught.value)


# --- permanent conditions: raised at once ---------------------------------------------------


def test_unresolvable_host_fails_at_once() -> None:
    fake = FakeTime()

    with pytest.raises(NameNotResolved) as caught:
        _wait(Endpoint("http://nonexistent.invalid:8000/v1"), 600, fake)

    assert "cannot resolve host 'nonexistent.invalid'" in str(caught.value)
    assert "VLLM_ENDPOINT" in str(caught.value)
    assert fake.sleeps == []


def test_401_without_a_key_says_no_key_was_sent(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(required_key=KEY))
    fake = FakeTime()

    with pytest.raises(AuthFailure) as caught:
        _wait(server.endpoint(), 600, fake)

    assert "no API key was sent; set VLLM_API_KEY" in str(caught.value)
    assert f"http://127.0.0.1:{server.port}/v1/models answered 401" in str(caught.value)
    assert fake.sleeps == []
    assert server.behaviour.seen_auth == [None]


def test_wrong_key_is_rejected_without_echoing_it(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(required_key=KEY))
    wrong = "wrong-key-123456"
    fake = FakeTime()

    with pytest.raises(AuthFailure) as caught:
        _wait(server.endpoint(wrong), 600, fake)

    assert "the server rejected the API key" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.args)
    assert fake.sleeps == []
    assert _wait(server.endpoint(KEY), 5).models == [MODEL]


def test_process_exit_stops_the_wait_with_the_log_tail(serve: Callable[..., FakeServer]) -> None:
    server = serve(Behaviour(health_status=503))
    alive = iter([True, True, False])
    log = f"INFO non-default args: {{'api_key': ['{KEY}']}}\n\ntorch.OutOfMemoryError: CUDA out of memory\n"
    fake = FakeTime()

    with pytest.raises(ServerExited) as caught:
        _wait(server.endpoint(KEY), 600, fake, process_alive=lambda: next(alive), process_log_tail=lambda: log)

    message = str(caught.value)
    assert "torch.OutOfMemoryError: CUDA out of memory" in message
    assert "'api_key': ['***']" in message
    assert KEY not in message
    assert "after 4s" in message
    assert len(fake.sleeps) == 2


def test_every_error_is_a_not_ready_error() -> None:
    errors = (
        NameNotResolved, ConnectionRefused, TLSFailure, AuthFailure, ModelNotListed, ReadinessTimeout, ServerExited
    )
    assert all(issubclass(error, NotReadyError) for error in errors)


# --- TLS ------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with ``cryptography`` or the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _self_signed_with_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    return cert, key


def _self_signed_with_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture
def tls_server(serve: Callable[..., FakeServer], tmp_path: Path) -> tuple[FakeServer, Path]:
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return serve(tls=context), cert


def test_self_signed_certificate_is_a_tls_failure_naming_the_ca_setting(tls_server: tuple[FakeServer, Path]) -> None:
    server, _ = tls_server
    fake = FakeTime()

    with pytest.raises(TLSFailure) as caught:
        _wait(server.endpoint(scheme="https"), 600, fake)

    assert f"https://127.0.0.1:{server.port}/health" in str(caught.value)
    assert "self-signed" in str(caught.value)
    assert "REQUESTS_CA_BUNDLE" in str(caught.value)
    assert fake.sleeps == []


def test_self_signed_certificate_is_trusted_through_requests_ca_bundle(
    tls_server: tuple[FakeServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))

    assert probe(server.endpoint(scheme="https"), MODEL).models == [MODEL]


def test_https_to_a_plain_http_server_is_a_tls_failure(serve: Callable[..., FakeServer]) -> None:
    server = serve()
    fake = FakeTime()

    with pytest.raises(TLSFailure) as caught:
        _wait(server.endpoint(scheme="https"), 600, fake)

    assert "use an http:// URL" in str(caught.value)
    assert fake.sleeps == []
