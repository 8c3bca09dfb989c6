"""Rows: the request settings (issue 13 section 4): a bad --max-tokens, --top-p, --seed or --extra-body
is refused before any network call, and a resume with other request settings is refused like one
with another temperature, naming the field; unset, a folder resumes as before."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.conftest import read_json, result_lines, run_bfcl_ext
from tests.fault_cases import Case, Outcome

MODEL = "bfcl-ext-standin"
SECTION = "issue 13 §4"
THINKING_OFF = '{"chat_template_kwargs": {"enable_thinking": false}}'


def _ids(limit: int) -> list[str]:
    return [f"simple_python_{n}" for n in range(limit)]


def _args(out: Path, limit: int, *extra: str) -> list[str]:
    return ["run", "--skip-vllm", "--model", MODEL, "--test-category", "simple_python", "--limit", str(limit),
            "--output-dir", str(out), "--wait-timeout", "30", *extra]


# ---------------------------------------------------------------- bad values: nothing is asked, nothing written


def _bad(args: list[str], env: Mapping[str, str] | None = None) -> Callable[[Any], Outcome]:
    """A run with one bad setting, pointed at a port where nothing listens."""

    def scenario(ctx: Any) -> Outcome:
        out = ctx.tmp_path / "out"
        done = run_bfcl_ext(_args(out, 2, "--vllm-port", "9", *args), env=env, timeout=60)
        return Outcome(done, out, notes={"out": out})

    return scenario


def _check_nothing_written(outcome: Outcome) -> None:
    assert not outcome.notes["out"].exists(), "a folder was created before the settings were checked"


_BAD_VALUES = [
    ("--max-tokens 0", ["--max-tokens", "0"], {}, "--max-tokens='0': must be at least 1"),
    ("--max-tokens 1.5", ["--max-tokens", "1.5"], {}, "--max-tokens='1.5': not an integer"),
    ("BFCL_EXT_MAX_TOKENS=inf", [], {"BFCL_EXT_MAX_TOKENS": "inf"}, "BFCL_EXT_MAX_TOKENS='inf': not an integer"),
    ("--top-p 0", ["--top-p", "0"], {}, "--top-p='0': must be greater than 0 and at most 1"),
    ("--top-p 1.5", ["--top-p", "1.5"], {}, "--top-p='1.5': must be greater than 0 and at most 1"),
    ("--top-p nan", ["--top-p", "nan"], {}, "--top-p='nan': not a finite number"),
    ("BFCL_EXT_TOP_P=inf", [], {"BFCL_EXT_TOP_P": "inf"}, "BFCL_EXT_TOP_P='inf': not a finite number"),
    ("--seed 7.5", ["--seed", "7.5"], {}, "--seed='7.5': not an integer"),
    ("BFCL_EXT_SEED=nan", [], {"BFCL_EXT_SEED": "nan"}, "BFCL_EXT_SEED='nan': not an integer"),
    ("--extra-body that is not JSON", ["--extra-body", "{enable_thinking: false}"], {},
     "--extra-body='{enable_thinking: false}': not valid JSON"),
    ("--extra-body a list", ["--extra-body", "[1]"], {}, "--extra-body='[1]': expected a JSON object"),
    ("--extra-body with NaN", ["--extra-body", '{"repetition_penalty": NaN}'], {}, "NaN is not a finite number"),
    ("BFCL_EXT_EXTRA_BODY setting the model", [], {"BFCL_EXT_EXTRA_BODY": '{"model": "other"}'},
     "BFCL_EXT_EXTRA_BODY='{\"model\": \"other\"}': may not set 'model'"),
    ("--extra-body setting the messages", ["--extra-body", '{"messages": []}'], {}, "may not set 'messages'"),
    ("--extra-body setting top_p (a setting of its own)", ["--extra-body", '{"top_p": 0.5}'], {},
     "may not set 'top_p': its own setting, --top-p"),
]


# ---------------------------------------------------------------- a resume never mixes request settings


def _resume_with(ctx: Any, first: tuple[str, ...], second: tuple[str, ...]) -> Outcome:
    standin = ctx.standin_factory()
    out = ctx.tmp_path / "out"
    done = run_bfcl_ext(_args(out, 4, "--base-url", standin.base_url, *first), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return Outcome(run_bfcl_ext(_args(out, 8, "--base-url", standin.base_url, *second), timeout=120), out)


def _other_top_p(ctx: Any) -> Outcome:
    return _resume_with(ctx, ("--top-p", "0.9", "--seed", "7"), ("--top-p", "0.5", "--seed", "7"))


def _settings_added_to_a_plain_folder(ctx: Any) -> Outcome:
    return _resume_with(ctx, (), ("--extra-body", THINKING_OFF))


def _settings_dropped(ctx: Any) -> Outcome:
    return _resume_with(ctx, ("--max-tokens", "512"), ())


def _same_settings_resume(ctx: Any) -> Outcome:
    settings = ("--max-tokens", "512", "--top-p", "0.9", "--seed", "7", "--extra-body", THINKING_OFF)
    outcome = _resume_with(ctx, settings, settings)
    outcome.expected_ids = _ids(8)
    return outcome


def _plain_folder_resumes(ctx: Any) -> Outcome:
    outcome = _resume_with(ctx, (), ())
    outcome.expected_ids = _ids(8)
    return outcome


def _check_first_answers_untouched(outcome: Outcome) -> None:
    assert sorted(line["id"] for line in result_lines(outcome.output_dir)) == _ids(4)


def _check_resumed(outcome: Outcome) -> None:
    assert "4 already answered, 4 to ask" in outcome.done.stderr


def _check_resumed_identity_unchanged(outcome: Outcome) -> None:
    _check_resumed(outcome)
    identity = read_json(outcome.output_dir / ".bfcl-ext" / "identity.json")
    assert not {"max_tokens", "top_p", "seed", "extra_body"} & set(identity), json.dumps(identity)


CASES: list[Case] = [
    *[Case(name, SECTION, _bad(args, env), 2, message, check=_check_nothing_written)
      for name, args, env, message in _BAD_VALUES],
    Case("resume with another --top-p", SECTION, _other_top_p, 2,
         "holds answers from another source (top_p: 0.9 -> 0.5)", _check_first_answers_untouched),
    Case("resume a folder made without request settings, now with --extra-body", SECTION,
         _settings_added_to_a_plain_folder, 2,
         "(extra_body: None -> {'chat_template_kwargs': {'enable_thinking': False}})", _check_first_answers_untouched),
    Case("resume a folder made with --max-tokens, now without", SECTION, _settings_dropped, 2,
         "(max_tokens: 512 -> None)", _check_first_answers_untouched),
    Case("resume with the same request settings", SECTION, _same_settings_resume, 0, None, _check_resumed),
    Case("resume without request settings: the folder's identity is as before", SECTION, _plain_folder_resumes, 0,
         None, _check_resumed_identity_unchanged),
]
