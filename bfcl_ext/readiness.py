"""Is the server ready? ``/health`` answers 200 and ``/v1/models`` lists the served model.

``probe`` makes one attempt; ``wait_until_ready`` polls until a deadline. Every failure is a
``NotReadyError`` subclass (exit code 3) whose message is one line that names the URL and
says what to do. The API key never appears in a message.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from bfcl_ext.endpoint import Endpoint
from bfcl_ext.errors import NotReadyError

try:  # urllib3 >= 2; older versions leave only the socket.gaierror in the chain
    from urllib3.exceptions import NameResolutionError
except ImportError:  # pragma: no cover
    NameResolutionError = socket.gaierror  # type: ignore[misc,assignment]

MAX_REQUEST_TIMEOUT = 10.0
MIN_REQUEST_TIMEOUT = 0.5  # a request given 0 s would fail at once and hide the real condition
LOG_TAIL_LINES = 20
LISTED_MODELS_SHOWN = 10
BODY_EXCERPT_CHARS = 60
ENDPOINT_SETTINGS = "VLLM_ENDPOINT / VLLM_BASE_URL"
CA_HINT = "set REQUESTS_CA_BUNDLE and SSL_CERT_FILE to a PEM file that includes its CA certificate"


@dataclass(frozen=True)
class ServerInfo:
    """What a ready server told us."""

    version: str | None  # from GET <root>/version; None when absent
    models: list[str]  # ids from GET <base>/models
    models_payload: dict[str, Any]  # the raw /v1/models JSON, for the manifest
    waited_s: float


# --- errors ---------------------------------------------------------------------------------


class NameNotResolved(NotReadyError):
    """DNS failure: retrying will not help."""

    def __init__(self, host: str, url: str) -> None:
        super().__init__(
            f"cannot resolve host {host!r} ({ENDPOINT_SETTINGS}) for {url}; "
            "check the host name and that this machine can reach that network"
        )
        self.host = host
        self.url = url
        self.condition = f"cannot resolve host {host!r}"


class ConnectionRefused(NotReadyError):
    """Nothing listens on the port (yet: a loading vLLM keeps its port closed)."""

    def __init__(self, host: str, port: int, url: str) -> None:
        address = _address(host, port)
        super().__init__(
            f"nothing is listening on {address} ({url}); start the server there, "
            f"or point {ENDPOINT_SETTINGS} at the one that is running"
        )
        self.url = url
        self.condition = "connection refused"


class TLSFailure(NotReadyError):
    """Certificate or handshake failure: retrying will not help."""

    def __init__(self, url: str, reason: str, hint: str) -> None:
        super().__init__(f"TLS with {url} failed ({reason}); {hint}")
        self.url = url
        self.condition = f"TLS failed ({reason})"


class AuthFailure(NotReadyError):
    """401/403: the key is missing or wrong, which retrying will not change."""

    def __init__(self, url: str, status: int, key_sent: bool) -> None:
        if key_sent:
            what = "the server rejected the API key; set VLLM_API_KEY to the key the server was started with"
        else:
            what = "no API key was sent; set VLLM_API_KEY (or --api-key-file) to the server's key"
        super().__init__(f"{url} answered {status}: {what}")
        self.url = url
        self.status = status
        self.key_sent = key_sent
        self.condition = f"{_path(url)} answered {status}"


class ModelNotListed(NotReadyError):
    """The server answers but does not serve the model under the name we were given."""

    def __init__(self, url: str, model: str, listed: list[str], waited_s: float | None = None) -> None:
        waited = f" after {waited_s:.0f}s" if waited_s is not None else ""
        super().__init__(
            f"{url} does not list model {model!r}{waited} (it lists: {_listing(listed)}); "
            "pass --served-model-name with the name the server uses"
        )
        self.url = url
        self.model = model
        self.listed = listed
        self.condition = f"model {model!r} not listed (it lists: {_listing(listed)})"


class ServerNotReady(NotReadyError):
    """Any other condition that may pass: 5xx, /health not 200, a slow or dropped request."""

    def __init__(self, url: str, condition: str) -> None:
        super().__init__(f"{url} is not ready: {condition}; wait for it to finish loading, or check its log")
        self.url = url
        self.condition = condition


WAIT_TIMEOUT_SETTING = "--wait-timeout / BFCL_EXT_WAIT_TIMEOUT"
RECOVERY_TIMEOUT_SETTING = "--recovery-timeout / BFCL_EXT_RECOVERY_TIMEOUT"  # a server that went away mid-run


class ReadinessTimeout(NotReadyError):
    """The deadline passed while the server was still not ready."""

    def __init__(
        self, base_url: str, model: str, waited_s: float, last: str, timeout_setting: str = WAIT_TIMEOUT_SETTING
    ) -> None:
        super().__init__(
            f"{base_url} (model {model!r}) was not ready after {waited_s:.0f}s (last: {last}); "
            f"check the server's log, or allow longer with {timeout_setting}"
        )
        self.base_url = base_url
        self.waited_s = waited_s
        self.last = last


class ServerExited(NotReadyError):
    """The server process we launched is gone, so there is nothing left to wait for."""

    def __init__(self, base_url: str, waited_s: float, log_tail: str) -> None:
        message = f"the server process exited before {base_url} was ready (after {waited_s:.0f}s); see its log"
        if log_tail:
            message += ", last lines:\n" + "\n".join(f"  | {line}" for line in log_tail.splitlines())
        super().__init__(message)
        self.base_url = base_url
        self.log_tail = log_tail


_TRANSIENT = (ConnectionRefused, ModelNotListed, ServerNotReady)


# --- one attempt ----------------------------------------------------------------------------


def probe(endpoint: Endpoint, served_model_name: str, request_timeout: float = MAX_REQUEST_TIMEOUT) -> ServerInfo:
    """One readiness check; raises the ``NotReadyError`` subclass for what went wrong."""
    with _session() as session:
        return _probe(session, endpoint, served_model_name, request_timeout)


def _session() -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=0)  # the wait loop is the retry policy
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _probe(session: requests.Session, endpoint: Endpoint, model: str, timeout: float) -> ServerInfo:
    _check_health(session, endpoint, timeout)
    payload = _models_payload(session, endpoint, timeout)
    models = _model_ids(payload)
    if model not in models and (model or not models):  # an empty name accepts any served model
        raise ModelNotListed(endpoint.url("/models"), model, models)
    version = _server_version(session, endpoint, timeout)
    return ServerInfo(version=version, models=models, models_payload=payload, waited_s=0.0)


def _check_health(session: requests.Session, endpoint: Endpoint, timeout: float) -> None:
    url = endpoint.root_url("/health")
    response = _get(session, endpoint, url, timeout)
    _raise_for_auth(response, endpoint, url)
    # A 404 means the server (or a gateway in front of it) has no /health at all, which
    # waiting will not change; the model listing below is then the only readiness signal.
    if response.status_code not in (200, 404):
        raise ServerNotReady(url, f"{_path(url)} answered {response.status_code}")


def _models_payload(session: requests.Session, endpoint: Endpoint, timeout: float) -> dict[str, Any]:
    url = endpoint.url("/models")
    response = _get(session, endpoint, url, timeout)
    _raise_for_auth(response, endpoint, url)
    if response.status_code != 200:
        raise ServerNotReady(url, f"{_path(url)} answered {response.status_code}{_base_url_hint(response, endpoint)}")
    try:
        payload = response.json()
    except ValueError:
        raise ServerNotReady(url, _not_json(response, endpoint)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        not_a_list = f"{_path(url)} answered JSON that is not a model list; is {endpoint.base_url} an OpenAI base URL?"
        raise ServerNotReady(url, not_a_list)
    return payload


def _model_ids(payload: dict[str, Any]) -> list[str]:
    return [item["id"] for item in payload["data"] if isinstance(item, dict) and isinstance(item.get("id"), str)]


def _server_version(session: requests.Session, endpoint: Endpoint, timeout: float) -> str | None:
    """Best effort: not every OpenAI-compatible server has ``/version``."""
    try:
        response = _whole_get(session, endpoint.root_url("/version"), endpoint.auth_headers(), timeout)
        payload = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
    version = payload.get("version") if isinstance(payload, dict) else None
    return version if isinstance(version, str) else None


def _get(session: requests.Session, endpoint: Endpoint, url: str, timeout: float) -> requests.Response:
    try:
        return _whole_get(session, url, endpoint.auth_headers(), timeout)
    except requests.RequestException as exc:
        raise _request_failure(exc, url, timeout) from None


WHOLE_REPLY_GRACE_S = 0.5  # past the timeout, for requests' own ReadTimeout to come first when it is one


def _whole_get(session: requests.Session, url: str, headers: dict[str, str], timeout: float) -> requests.Response:
    """``session.get`` with its whole reply bounded by ``timeout``: requests' timeout bounds each read
    only, so a server that sends its status line, headers or body a byte at a time kept one probe
    (and the wait, whatever --wait-timeout said) going for minutes. The request runs in a daemon
    thread, left to end on its own when the reply is not complete in time (the session is closed)."""
    done: dict[str, Any] = {}

    def fetch() -> None:
        try:
            done["response"] = session.get(url, headers=headers, timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=fetch, name="bfcl-ext-readiness-probe", daemon=True)
    worker.start()
    worker.join(timeout + WHOLE_REPLY_GRACE_S)
    if worker.is_alive():
        raise requests.exceptions.ReadTimeout(f"no whole reply from {url} within {timeout:g}s")
    if "error" in done:
        raise done["error"]
    return done["response"]  # type: ignore[no-any-return]


def _raise_for_auth(response: requests.Response, endpoint: Endpoint, url: str) -> None:
    if response.status_code in (401, 403):
        raise AuthFailure(url, response.status_code, key_sent=bool(endpoint.api_key))


def _base_url_hint(response: requests.Response, endpoint: Endpoint) -> str:
    return f" (is {endpoint.base_url} the server's OpenAI base URL?)" if response.status_code == 404 else ""


def _not_json(response: requests.Response, endpoint: Endpoint) -> str:
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    excerpt = " ".join(response.text[:BODY_EXCERPT_CHARS].split())
    return (
        f"{_path(response.url)} answered {response.status_code} with a {kind} body, not JSON ({excerpt!r}); "
        f"is {endpoint.base_url} the server's OpenAI base URL, not a proxy or login page?"
    )


# --- what a failed request means ------------------------------------------------------------


def _request_failure(exc: requests.RequestException, url: str, timeout: float) -> NotReadyError:
    host, port = _host_port(url)
    causes = list(_causes(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        return _tls_failure(url, causes)
    # NameResolutionError/NewConnectionError subclass urllib3's ConnectTimeoutError, so the
    # cause chain is checked before the timeout class.
    if any(isinstance(cause, (socket.gaierror, NameResolutionError)) for cause in causes):
        return NameNotResolved(host, url)
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return ConnectionRefused(host, port, url)
    if isinstance(exc, requests.exceptions.Timeout):
        return ServerNotReady(url, f"{_path(url)} did not answer within {timeout:.0f}s")
    root = causes[-1]
    return ServerNotReady(url, f"connection to {_address(host, port)} failed ({type(root).__name__}: {root})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps, outermost first: requests -> urllib3 -> socket/ssl errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = _wrapped(current)


def _wrapped(exc: BaseException) -> BaseException | None:
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError
    if isinstance(reason, BaseException):
        return reason
    if exc.__cause__ is not None or exc.__context__ is not None:
        return exc.__cause__ or exc.__context__
    return next((arg for arg in exc.args if isinstance(arg, BaseException)), None)


def _tls_failure(url: str, causes: list[BaseException]) -> TLSFailure:
    verify_error = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if verify_error is not None:
        reason = verify_error.verify_message or "certificate verify failed"
        return TLSFailure(url, reason, f"if the server's certificate is self-signed or from a private CA, {CA_HINT}")
    ssl_error = next((c for c in causes if isinstance(c, ssl.SSLError)), causes[-1])
    reason = getattr(ssl_error, "reason", None) or str(ssl_error)
    hint = f"if the server speaks plain HTTP, use an http:// URL; if it uses a private CA, {CA_HINT}"
    return TLSFailure(url, str(reason), hint)


def _host_port(url: str) -> tuple[str, int]:
    endpoint = Endpoint(url)
    return endpoint.host, endpoint.port


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


def _listing(models: list[str]) -> str:
    if not models:
        return "no models"
    shown = ", ".join(repr(model) for model in models[:LISTED_MODELS_SHOWN])
    more = len(models) - LISTED_MODELS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# --- waiting --------------------------------------------------------------------------------


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def wait_until_ready(
    endpoint: Endpoint,
    served_model_name: str,
    timeout: float,
    *,
    process_alive: Callable[[], bool] | None = None,
    process_log_tail: Callable[[], str] | None = None,
    progress: Callable[[str], None] = _print_to_stderr,
    poll_interval: float = 0.5,
    progress_interval: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    name_may_vanish: bool = False,
    timeout_setting: str | None = None,
) -> ServerInfo:
    """Poll ``probe`` until ready or ``timeout`` seconds pass.

    ``name_may_vanish``: a server that is coming BACK (a restarted container or pod) has no DNS
    name while it is down, so an unresolved name is then waited out like a refused connection.
    ``timeout_setting``: the setting a timeout message tells the user to raise (default: the
    readiness timeout; ``RECOVERY_TIMEOUT_SETTING`` when waiting for a server to come back, which is
    also the default when ``name_may_vanish`` is set).

    Refused connections, 5xx, a /health that is not 200, slow requests and a model not listed
    yet are waited out; DNS, TLS and auth failures raise at once, and so does the death of the
    process (``process_alive``) that was launched to serve.
    """
    start = clock()
    deadline = start + timeout
    next_progress = start
    with _session() as session:
        while True:
            if process_alive is not None and not process_alive():
                raise ServerExited(endpoint.base_url, clock() - start, _log_tail(process_log_tail, endpoint))
            try:
                info = _probe(session, endpoint, served_model_name, _request_timeout(deadline - clock()))
                return replace(info, waited_s=clock() - start)
            except _TRANSIENT as exc:
                last = exc
            except NameNotResolved as exc:
                if not name_may_vanish:
                    raise
                last = exc
            now = clock()
            if now >= deadline:
                setting = timeout_setting or (RECOVERY_TIMEOUT_SETTING if name_may_vanish else WAIT_TIMEOUT_SETTING)
                raise _timed_out(endpoint, served_model_name, now - start, last, setting)
            if now >= next_progress:
                progress(_progress_line(endpoint, served_model_name, now - start, timeout, last.condition))
                next_progress = now + progress_interval
            sleep(min(poll_interval, deadline - now))


def _request_timeout(remaining: float) -> float:
    return max(MIN_REQUEST_TIMEOUT, min(MAX_REQUEST_TIMEOUT, remaining))


def _timed_out(
    endpoint: Endpoint, model: str, waited_s: float, last: NotReadyError, timeout_setting: str = WAIT_TIMEOUT_SETTING
) -> NotReadyError:
    if isinstance(last, ModelNotListed):
        return ModelNotListed(last.url, model, last.listed, waited_s)
    return ReadinessTimeout(endpoint.base_url, model, waited_s, last.condition, timeout_setting)


def _progress_line(endpoint: Endpoint, model: str, elapsed: float, timeout: float, condition: str) -> str:
    return f"waiting for {endpoint.base_url} (model {model}): {elapsed:.0f}s of {timeout:.0f}s, last: {condition}"


def _log_tail(process_log_tail: Callable[[], str] | None, endpoint: Endpoint) -> str:
    if process_log_tail is None:
        return ""
    lines = [line for line in process_log_tail().splitlines() if line.strip()][-LOG_TAIL_LINES:]
    return _redact("\n".join(lines), endpoint.api_key)


def _redact(text: str, secret: str | None) -> str:
    # vLLM logs its non-default arguments at start-up, --api-key included.
    return text.replace(secret, "***") if secret else text
