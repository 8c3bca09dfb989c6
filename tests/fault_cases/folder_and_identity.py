"""Rows: one run per output folder (issue 11 section 3), and a resume never mixes sources (section 4)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import BFCL_EXT, clean_environment, read_json, result_lines, run_bfcl_ext
from tests.fault_cases import Case, Outcome
from tests.support.waiting import exited, wait_until

MODEL = "bfcl-ext-standin"


def _ids(limit: int) -> list[str]:
    return [f"simple_python_{n}" for n in range(limit)]


def _args(base_url: str, out: Path, limit: int, *extra: str, model: str = MODEL) -> list[str]:
    return ["run", "--skip-vllm", "--model", model, "--base-url", base_url, "--test-category", "simple_python",
            "--limit", str(limit), "--output-dir", str(out), "--wait-timeout", "30", *extra]


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*BFCL_EXT, *args], env=clean_environment(), cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_answers(out: Path, count: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    wait_until(lambda: (out / "result").exists() and len(result_lines(out)) >= count, within=timeout, poll=0.02,
               what=f"{count} answers", gone=exited(process, "bfcl-ext"),
               explain=lambda: process.stderr.read() if process.stderr and process.poll() is not None else "")


# ---------------------------------------------------------------- one run per folder


def _second_run_while_the_first_holds_the_folder(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--latency", "0.05")
    out = ctx.tmp_path / "out"
    first = _spawn(_args(standin.base_url, out, 40, "--num-threads", "2"), ctx.tmp_path)
    _wait_for_answers(out, 2, first)
    second = run_bfcl_ext(_args(standin.base_url, out, 40), timeout=60)
    first_out, first_err = first.communicate(timeout=120)
    return Outcome(second, out, _ids(40), {"first": subprocess.CompletedProcess(first.args, first.returncode,
                                                                                  first_out, first_err),
                                           "first_pid": first.pid})


def _check_first_finished_alone(outcome: Outcome) -> None:
    first = outcome.notes["first"]
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"pid {outcome.notes['first_pid']} on host" in outcome.done.stderr
    assert sorted(line["id"] for line in result_lines(outcome.output_dir)) == sorted(outcome.expected_ids)


def _lock_left_by_a_killed_run(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--latency", "0.05")
    out = ctx.tmp_path / "out"
    first = _spawn(_args(standin.base_url, out, 30, "--num-threads", "2"), ctx.tmp_path)
    _wait_for_answers(out, 2, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    return Outcome(run_bfcl_ext(_args(standin.base_url, out, 30), timeout=120), out, _ids(30))


# ---------------------------------------------------------------- a resume never mixes sources


def _resume_with(ctx: Any, first_standin: tuple[str, ...], second_standin: tuple[str, ...],
                 second_extra: tuple[str, ...] = (), model: str = MODEL) -> Outcome:
    out = ctx.tmp_path / "out"
    standin = ctx.standin_factory(*first_standin)
    first = run_bfcl_ext(_args(standin.base_url, out, 5, model=model), timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    other = ctx.standin_factory(*second_standin)
    return Outcome(run_bfcl_ext(_args(other.base_url, out, 10, *second_extra, model=model), timeout=120), out)


def _other_temperature(ctx: Any) -> Outcome:
    return _resume_with(ctx, (), (), ("--temperature", "0.7"))


def _other_model_root(ctx: Any) -> Outcome:
    # the same served name, another model behind it (vLLM lists what it loaded as the model's root)
    return _resume_with(ctx, (), ("--served-model-name", "/models/other-checkpoint", "--served-model-name", MODEL))


def _check_first_answers_untouched(outcome: Outcome) -> None:
    assert sorted(line["id"] for line in result_lines(outcome.output_dir)) == _ids(5)


def _fresh_moves_the_old_answers_aside(ctx: Any) -> Outcome:
    outcome = _resume_with(ctx, (), (), ("--temperature", "0.7", "--fresh"))
    outcome.expected_ids = _ids(10)
    return outcome


def _check_moved_aside(outcome: Outcome) -> None:
    out = outcome.output_dir
    (previous,) = out.glob("previous-*")
    old = [json.loads(line)["id"] for path in (previous / "result").rglob("*_result.json")
           for line in path.read_text().splitlines()]
    assert sorted(old) == _ids(5), "the earlier answers were not kept"
    assert (previous / "summary.json").is_file()
    assert read_json(out / "summary.json")["categories"]["simple_python"]["total"] == 10
    assert json.loads((out / ".bfcl-ext" / "identity.json").read_text())["temperature"] == 0.7
    assert "the earlier answers were moved to" in outcome.done.stderr


def _same_source_resumes(ctx: Any) -> Outcome:
    outcome = _resume_with(ctx, (), ())
    outcome.expected_ids = _ids(10)
    return outcome


def _check_resumed(outcome: Outcome) -> None:
    assert "5 already answered, 5 to ask" in outcome.done.stderr


CASES = [
    Case("second run on a folder in use", "11.3", _second_run_while_the_first_holds_the_folder, 2,
         "in use by another bfcl-ext run (pid", _check_first_finished_alone),
    Case("folder lock left by a SIGKILLed run", "11.3", _lock_left_by_a_killed_run, 0),
    Case("resume with another temperature", "11.4", _other_temperature, 2,
         "holds answers from another source (temperature: 0.001 -> 0.7)", _check_first_answers_untouched),
    Case("resume against another model behind the same name", "11.4", _other_model_root, 2,
         "model_root: 'bfcl-ext-standin' -> '/models/other-checkpoint'", _check_first_answers_untouched),
    Case("--fresh moves the old answers aside", "11.4", _fresh_moves_the_old_answers_aside, 0, None,
         _check_moved_aside),
    Case("resume from the same source", "11.4", _same_source_resumes, 0, None, _check_resumed),
]
