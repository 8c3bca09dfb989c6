"""Rows: the server's API key (issue 3, end to end): the key is sent, and never shown (not in any
process's argv, not in stdout/stderr, not in any file under the output folder); a wrong key and no
key at all each stop the run with one line (exit 3) that never holds the key."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import (
    assert_one_error_line,
    completed,
    dataset_ids,
    endpoint_env,
    output_of,
    run_args,
    spawn,
    wait_exit,
)

SECTION = "issue 3: faults end to end"
KEY_VARIABLE = "BFCL_EXT_TEST_STANDIN_KEY"


def _argv_holding(secret: bytes) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if secret in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _keyed_standin(ctx: Any) -> tuple[Any, str]:
    key = f"sk-standin-{os.urandom(12).hex()}"
    return ctx.standin_factory("--api-key-env", KEY_VARIABLE, env={KEY_VARIABLE: key}), key


def _key_used(ctx: Any) -> Outcome:
    standin, key = _keyed_standin(ctx)
    out = ctx.tmp_path / "out"
    runner = spawn(run_args(out, "--limit", "20"), endpoint_env(standin, VLLM_API_KEY=key), ctx.tmp_path, "keyed")
    polls = 0
    leaks: list[str] = []
    while runner.poll() is None:
        leaks += _argv_holding(key.encode())
        polls += 1
        time.sleep(0.05)
    runner.wait()
    return Outcome(completed(runner, ctx.tmp_path, "keyed"), out, dataset_ids(20),
                   {"key": key, "polls": polls, "leaks": leaks})


def _check_key_never_shown(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    key = outcome.notes["key"]
    assert outcome.notes["polls"] > 10
    assert not outcome.notes["leaks"], outcome.notes["leaks"]
    assert key not in outcome.done.stdout and key not in outcome.done.stderr
    files = [path for path in outcome.output_dir.rglob("*") if path.is_file()]
    assert any(path.name == "manifest.json" for path in files)
    assert [str(path) for path in files if key.encode() in path.read_bytes()] == []


def _wrong_key_and_no_key(ctx: Any) -> Outcome:
    """A wrong key and no key at all, side by side; the wrong key's run is the row's outcome."""
    standin, key = _keyed_standin(ctx)
    tmp = ctx.tmp_path
    wrong = spawn(run_args(tmp / "wrong", "--limit", "5"), endpoint_env(standin, VLLM_API_KEY="not-the-key"),
                  tmp, "wrong")
    none = spawn(run_args(tmp / "none", "--limit", "5"), endpoint_env(standin), tmp, "none")
    codes = (wait_exit(wrong, 60), wait_exit(none, 60))
    assert codes == (3, 3), output_of(tmp, "wrong") + output_of(tmp, "none")
    return Outcome(completed(wrong, tmp, "wrong"), tmp / "wrong",
                   notes={"key": key, "none": completed(none, tmp, "none")})


def _check_no_key_named_and_key_not_shown(outcome: Outcome) -> None:
    key = outcome.notes["key"]
    assert key not in outcome.done.stdout + outcome.done.stderr
    assert_one_error_line(outcome.notes["none"].stderr, "no API key was sent")


CASES = [
    Case("the API key is sent and never shown (argv, output, files)", SECTION, _key_used, 0,
         check=_check_key_never_shown),
    Case("a wrong API key and no API key, side by side", SECTION, _wrong_key_and_no_key, 3,
         "rejected the API key", _check_no_key_named_and_key_not_shown),
]
