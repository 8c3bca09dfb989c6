"""Rows: a reply that never ends. httpx's timeout bounds each read, so a server that sends a byte
every second (of its body, or of its status line and headers) kept one request going for minutes;
--request-timeout now bounds the whole reply, headers included. bfcl-ext check's round trip, and the
readiness probes of a run and of check (--wait-timeout), are bounded the same way."""

from __future__ import annotations

import socket
import time
from typing import Any

from tests.conftest import read_json, run_bfcl_ext
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import cli, dataset_ids, endpoint_env, run_args
from tests.support.waiting import wait_until

SECTION = "issue 11: no hang, ever"
TIMEOUT = 2.0  # --request-timeout
TRICKLE = 1.0  # seconds per byte: a reply of a few hundred bytes takes minutes
HEADER_TRICKLE = 0.5  # seconds per byte of the status line and headers (about 130 bytes: a minute a try)
TRIES = 2  # --max-retries 1


def _trickled_replies(ctx: Any, *trickle: str) -> Outcome:
    standin = ctx.standin_factory(*(trickle or ("--trickle", str(TRICKLE))))
    out = ctx.tmp_path / "out"
    started = time.monotonic()
    done = cli(run_args(out, "--limit", "2", "--request-timeout", str(TIMEOUT), "--max-retries", "1",
                        "--retry-rounds", "0"), endpoint_env(standin), ctx.tmp_path)  # fmt: skip
    return Outcome(done, out, dataset_ids(2), {"took": time.monotonic() - started, "standin": standin})


def _check_bounded_and_unanswered(outcome: Outcome) -> None:
    # 2 entries x 2 tries x 2 s, plus start-up; a reply as sent would take minutes
    assert outcome.notes["took"] < 120, outcome.notes["took"]
    assert outcome.output_dir is not None
    summary = read_json(outcome.output_dir / "summary.json")
    assert summary["entries"]["failed"] == 2 and summary["entries"]["answered"] == 0, summary["entries"]
    assert summary["requests"]["retried_requests"] >= 2, summary["requests"]
    assert outcome.notes["standin"].stats()["ok"] >= 4  # each try reached the stand-in, none came back whole


def _trickled_headers(ctx: Any) -> Outcome:
    return _trickled_replies(ctx, "--trickle-headers", str(HEADER_TRICKLE))


def _check_headers_bounded(outcome: Outcome) -> None:
    _check_bounded_and_unanswered(outcome)
    # Each try gives up after about TIMEOUT: 2 entries x 2 tries x 2 s, plus start-up and the SDK's
    # backoff, took 8 s here; bounded per read only, one try alone waits a minute for its headers.
    assert outcome.notes["took"] < 45, outcome.notes["took"]
    assert outcome.notes["standin"].stats()["ok"] == 2 * TRIES  # each try reached it once: not one came back
    assert outcome.output_dir is not None
    results = outcome.output_dir / "result"
    on_disk = [line for path in results.rglob("*_result.json") for line in path.read_text().splitlines()]
    assert not [line for line in on_disk if line.strip()], on_disk[:2]  # no answer for entries never answered


def _check_trickled(*trickle: str) -> Any:
    """``bfcl-ext check`` against a reply that trickles: it asked with requests, whose timeout bounds
    each read only, so the one round trip took minutes."""

    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory(*trickle)
        started = time.monotonic()
        done = run_bfcl_ext(["check", "--skip-vllm", "--base-url", standin.base_url, "--wait-timeout", "30",
                             "--request-timeout", str(TIMEOUT)], cwd=ctx.tmp_path, timeout=90)
        return Outcome(done, notes={"took": time.monotonic() - started})

    return scenario


def _check_check_bounded(outcome: Outcome) -> None:
    assert outcome.notes["took"] < 30, outcome.notes["took"]  # start-up and one 2 s try; as sent, minutes


PROBE_TRICKLE = 0.5  # seconds per byte of /health, /version and /v1/models (status line, headers, body)
WAIT = 5  # --wait-timeout


def _wait_for_port(port: int, timeout: float = 60.0) -> None:
    def opens() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(opens, within=timeout, poll=0.05, what=f"the stand-in's port {port} open")


def _probes_trickled(command: str) -> Any:
    """Readiness probes whose replies trickle a byte every 0.5 s: requests' timeout bounds each read only,
    so one probe took minutes and --wait-timeout 5 waited that long (a run and check alike)."""

    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory("--trickle-probes", str(PROBE_TRICKLE), wait=False)  # /health trickles too
        _wait_for_port(standin.port)
        out = ctx.tmp_path / "out"
        args = run_args(out, "--limit", "2") if command == "run" else ["check", "--skip-vllm"]
        started = time.monotonic()
        done = cli([*args, "--wait-timeout", str(WAIT)], endpoint_env(standin), ctx.tmp_path, timeout=120)
        return Outcome(done, out, notes={"took": time.monotonic() - started, "standin": standin})

    return scenario


def _check_wait_bounded(outcome: Outcome) -> None:
    assert outcome.notes["took"] < 30, outcome.notes["took"]  # start-up and a 5 s wait; as sent, minutes
    assert outcome.notes["standin"].stats()["ok"] == 0  # no question was asked of a server never ready


HUGE = "1e10"  # a socket timeout this long overflows: OverflowError from socket.settimeout


def _huge_timeout(command: str) -> Any:
    """--request-timeout 1e10 ("no limit, really"): every request raised OverflowError before it was
    sent, which the run wrote as each entry's answer and scored 0% with exit 0 (check: internal error)."""

    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory()
        out = ctx.tmp_path / "out"
        args = (run_args(out, "--limit", "2", "--max-retries", "0", "--retry-rounds", "0") if command == "run"
                else ["check", "--skip-vllm", "--wait-timeout", "30"])
        done = cli([*args, "--request-timeout", HUGE], endpoint_env(standin), ctx.tmp_path, timeout=120)
        return Outcome(done, out, notes={"standin": standin})

    return scenario


def _check_refused_before_asking(outcome: Outcome) -> None:
    assert outcome.output_dir is not None and not outcome.output_dir.exists(), "a folder was written"
    assert outcome.notes["standin"].stats()["ok"] == 0  # nothing was asked


CASES = [
    Case("replies that trickle a byte a second (--request-timeout 2 bounds the whole reply)", SECTION,
         _trickled_replies, 4, "2 entries have no answer after retries", check=_check_bounded_and_unanswered),
    Case("replies whose status line and headers trickle a byte every 0.5 s (--request-timeout 2 bounds them too)",
         SECTION, _trickled_headers, 4, "2 entries have no answer after retries", check=_check_headers_bounded),
    Case("check against replies that trickle a byte a second (--request-timeout 2 bounds its round trip)",
         SECTION, _check_trickled("--trickle", str(TRICKLE)), 3, "ReadTimeout: no whole reply within 2s",
         check=_check_check_bounded),
    Case("check against a status line and headers that trickle (--request-timeout 2 bounds them too)",
         SECTION, _check_trickled("--trickle-headers", str(HEADER_TRICKLE)), 3,
         "ReadTimeout: no whole reply within 2s", check=_check_check_bounded),
    Case("readiness probes whose replies trickle a byte every 0.5 s: run --wait-timeout 5 ends then", SECTION,
         _probes_trickled("run"), 3, "was not ready after", check=_check_wait_bounded),
    Case("readiness probes whose replies trickle a byte every 0.5 s: check --wait-timeout 5 ends then", SECTION,
         _probes_trickled("check"), 3, "was not ready after", check=_check_wait_bounded),
    Case("run --request-timeout 1e10 (each request's OverflowError was scored as the model's answer, exit 0)",
         SECTION, _huge_timeout("run"), 2, "--request-timeout='1e10': must be between 1 and 1000000",
         check=_check_refused_before_asking),
    Case("check --request-timeout 1e10 (internal error: OverflowError)", SECTION, _huge_timeout("check"), 2,
         "--request-timeout='1e10': must be between 1 and 1000000", check=_check_refused_before_asking),
]
