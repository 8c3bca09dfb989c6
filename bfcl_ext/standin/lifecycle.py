"""The stand-in's life: closed port while "loading", bound, serving until stopped (signals) or
crashed; ``serve`` for the command, ``Standin`` in a background thread for tests."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from bfcl_ext.standin.options import StandinOptions
from bfcl_ext.standin.server import Server
from bfcl_ext.standin.state import State


class Runner:
    """Waits out ``load_delay`` with the port closed, binds, serves; stoppable at any point."""

    def __init__(self, options: StandinOptions, state: State) -> None:
        self.options = options
        self.state = state
        self.port = options.port
        if options.port == 0 and options.load_delay > 0:
            self.port = _free_port(options.host)  # known now, bound only after the delay
        self.bound = threading.Event()
        self._stop = threading.Event()
        self._server: Server | None = None
        self._lock = threading.Lock()

    def run(self, on_bound: Callable[[Server], None] = lambda server: None) -> int:
        """Serve until stopped (0) or crashed after ``die_after`` (1)."""
        if self._stop.wait(self.options.load_delay):
            return 0
        server = Server(self.options, self.state, self.port)
        with self._lock:
            if self._stop.is_set():
                server.server_close()
                return 0
            self._server = server
        self.port = server.server_address[1]
        on_bound(server)
        self.bound.set()
        try:
            server.serve_forever(poll_interval=0.05)
        finally:
            server.close_all()
        return server.exit_code

    def stop(self) -> None:
        """Ask ``run`` to return; blocks until the serving loop has ended (not from it)."""
        self._stop.set()
        with self._lock:
            server = self._server
        if server is not None:
            server.shutdown()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _banner(options: StandinOptions, server: Server) -> str:
    host = f"[{options.host}]" if ":" in options.host else options.host
    names = ", ".join(options.served_model_names)
    return f"standin: serving {names} on http://{host}:{server.server_address[1]} (mode={options.mode})"


def serve(options: StandinOptions, ready: threading.Event | None = None) -> int:
    """Run the stand-in in this thread until SIGTERM/SIGINT (0) or a ``die_after`` crash (1).

    Prints one line once the port is bound, then sets ``ready``.
    """
    runner = Runner(options, State(options))

    def bound(server: Server) -> None:
        print(_banner(options, server), flush=True)
        if ready is not None:
            ready.set()

    restore = _install_signal_handlers(runner)
    try:
        return runner.run(bound)
    finally:
        restore()


def _install_signal_handlers(runner: Runner) -> Callable[[], None]:
    """SIGTERM and SIGINT stop the server cleanly; returns a function that undoes this."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, frame: Any) -> None:
        threading.Thread(target=runner.stop, daemon=True).start()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


class Standin:
    """The stand-in in a background thread, for tests: ``with Standin(opts) as s: s.url``."""

    def __init__(self, options: StandinOptions | None = None) -> None:
        self.options = options or StandinOptions(port=0)
        self._state = State(self.options)
        self._runner = Runner(self.options, self._state)
        self._thread: threading.Thread | None = None
        self._result: int | BaseException | None = None

    @property
    def port(self) -> int:
        """The port: the bound one when ``port=0`` (reserved up front when ``load_delay`` is set)."""
        return self._runner.port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:8000`` (the OpenAI base URL adds ``/v1``)."""
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"http://{host}:{self.port}"

    @property
    def exit_code(self) -> int | None:
        """What ``serve`` would have returned, once the server has stopped or crashed."""
        return self._result if isinstance(self._result, int) else None

    def start(self, timeout: float = 10.0) -> Standin:
        """Start serving. Returns once bound, or at once when ``load_delay`` keeps the port closed."""
        self._thread = threading.Thread(target=self._run, name="bfcl-ext-standin", daemon=True)
        self._thread.start()
        if self.options.load_delay == 0:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the port is bound; raise what went wrong if it never is."""
        deadline = time.monotonic() + timeout
        while not self._runner.bound.wait(0.01):
            if isinstance(self._result, BaseException):
                raise self._result
            if time.monotonic() > deadline:
                raise TimeoutError(f"stand-in not bound after {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread (also fine after a crash)."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            self._runner.stop()
        self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        """Same as ``GET /standin/stats``, readable even after the server died."""
        return self._state.snapshot()

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._result = self._runner.run()
        except BaseException as exc:  # surfaced by wait_ready
            self._result = exc
