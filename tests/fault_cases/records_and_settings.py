"""Rows: records are always valid, secrets kept out of them (issue 11 section 5), and every setting
is checked before any network call (section 6)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.conftest import read_json, result_lines, run_bfcl_ext
from tests.fault_cases import Case, Outcome

MODEL = "bfcl-ext-standin"
SECTION_RECORDS = "issue 11 §5"
SECTION_SETTINGS = "issue 11 §6"
LONG_KEY = 'sk-"q"\\b: 1.0, true}-7f3a'  # JSON's quote, backslash, a number, a literal: redacted for real
ECHOED_KEY = "sk-echo-4c8e1d2b9a"


def _ids(limit: int) -> list[str]:
    return [f"simple_python_{n}" for n in range(limit)]


def _args(out: Path, limit: int, *extra: str, model: str = MODEL) -> list[str]:
    return ["run", "--skip-vllm", "--model", model, "--test-category", "simple_python", "--limit", str(limit),
            "--output-dir", str(out), "--wait-timeout", "30", *extra]


def _score_lines(out: Path) -> list[dict[str, Any]]:
    """Every line of every BFCL score file (each must parse)."""
    paths = sorted((out / "score").rglob("*.json"))
    assert paths, "no score files"
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- §5 records are always valid


def _run_with_key(key: str) -> Callable[[Any], Outcome]:
    def scenario(ctx: Any) -> Outcome:
        standin = ctx.standin_factory(env={"VLLM_API_KEY": key})  # the stand-in requires it, as vLLM does
        out = ctx.tmp_path / "out"
        done = run_bfcl_ext(_args(out, 5, "--base-url", standin.base_url), env={"VLLM_API_KEY": key}, timeout=180)
        return Outcome(done, out, _ids(5), {"key": key})

    return scenario


def _check_records_valid_and_scores_intact(outcome: Outcome) -> None:
    out = outcome.output_dir
    summary = read_json(out / "summary.json")  # each of these raises if the file is not JSON
    manifest = read_json(out / "manifest.json")
    scores = _score_lines(out)
    assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 5, "total": 5}, summary
    assert summary["overall"]["accuracy"] == 1.0 and summary["overall"]["total"] == 5, summary["overall"]
    assert summary["status"] == "complete" and summary["model"] == MODEL
    assert manifest["settings"]["api_key"] == "<redacted>"
    assert manifest["sampling"]["temperature_sent"] == 0.001
    header = scores[0]
    assert (header["accuracy"], header["correct_count"], header["total_count"]) == (1.0, 5, 5), header
    assert (out / "score" / "data_overall.csv").is_file()
    key = outcome.notes["key"]
    if len(key) >= 8:  # searched for (a shorter key cannot be told from ordinary text): nowhere on disk
        for path in (p for p in out.rglob("*") if p.is_file()):
            assert key.encode() not in path.read_bytes(), path
            assert json.dumps(key)[1:-1].encode() not in path.read_bytes(), path


def _server_echoes_the_key(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--echo-key", "3", env={"VLLM_API_KEY": ECHOED_KEY})
    out = ctx.tmp_path / "out"
    done = run_bfcl_ext(_args(out, 8, "--base-url", standin.base_url), env={"VLLM_API_KEY": ECHOED_KEY},
                        timeout=180)
    return Outcome(done, out, _ids(8))


def _check_the_echo_is_scrubbed_everywhere(outcome: Outcome) -> None:
    out = outcome.output_dir
    forms = {ECHOED_KEY.encode(), json.dumps(ECHOED_KEY)[1:-1].encode()}
    files = [p for p in out.rglob("*") if p.is_file()]
    leaks = [str(p.relative_to(out)) for p in files if any(form in p.read_bytes() for form in forms)]
    assert not leaks, f"the echoed key is still in: {leaks}"
    echoed = [line for line in result_lines(out) if "<redacted>" in str(line.get("result"))]
    assert len(echoed) == 3, "the stand-in's echo did not reach the answers (nothing was scrubbed)"
    assert any("<redacted>" in json.dumps(line) for line in _score_lines(out)), "no scrubbed score line"
    summary = read_json(out / "summary.json")
    assert summary["categories"]["simple_python"]["correct"] == 5, summary  # the 3 refusals score wrong
    read_json(out / "manifest.json")


# ---------------------------------------------------------------- §6 every setting checked first


def _bad(args: list[str], env: Mapping[str, str] | None = None, env_file: str | None = None,
         dot_env: str | None = None) -> Callable[[Any], Outcome]:
    """A run with one bad setting; no server runs (nothing must be asked of one)."""

    def scenario(ctx: Any) -> Outcome:
        out = ctx.tmp_path / "out"
        cwd = ctx.tmp_path / "cwd"
        cwd.mkdir()
        extra: list[str] = []
        if env_file is not None:
            (ctx.tmp_path / "settings.env").write_text(env_file)
            extra = ["--env-file", str(ctx.tmp_path / "settings.env")]
        if dot_env is not None:
            (cwd / ".env").write_text(dot_env)
        done = run_bfcl_ext([*extra, *_args(out, 2, "--vllm-port", "9", *args)], env=env, timeout=60, cwd=cwd)
        return Outcome(done, out, notes={"tmp": ctx.tmp_path})

    return scenario


def _check_nothing_written(outcome: Outcome) -> None:
    tmp = outcome.notes["tmp"]
    assert not (tmp / "out").exists(), "a folder was created before the settings were checked"
    stray = [str(folder / name) for folder in (tmp, tmp / "cwd") for name in ("result", "score")
             if (folder / name).exists()]
    assert not stray, f"written outside the output folder: {stray}"


_KEY_CASES = [
    Case(f"server key {key!r}: summary.json, manifest.json, score files stay valid, numbers intact",
         SECTION_RECORDS, _run_with_key(key), 0, check=_check_records_valid_and_scores_intact)
    for key in ("1", "0", "true", '"', "\\", "e", LONG_KEY)
]

_SETTING_CASES = [
    ("--temperature nan (scored 0% with exit 0)", ["--temperature", "nan"], {}, "--temperature='nan': not a finite"),
    ("--wait-timeout nan (waited forever)", ["--wait-timeout", "nan"], {}, "--wait-timeout='nan': not a finite"),
    ("--wait-timeout inf", ["--wait-timeout", "inf"], {}, "--wait-timeout='inf': not a finite"),
    ("BFCL_EXT_RECOVERY_TIMEOUT=-inf", [], {"BFCL_EXT_RECOVERY_TIMEOUT": "-inf"},
     "BFCL_EXT_RECOVERY_TIMEOUT='-inf': not a finite"),
    ("BFCL_EXT_REQUEST_TIMEOUT=Infinity", [], {"BFCL_EXT_REQUEST_TIMEOUT": "Infinity"},
     "BFCL_EXT_REQUEST_TIMEOUT='Infinity': not a finite"),
    ("--stop-grace NaN", ["--stop-grace", "NaN"], {}, "--stop-grace='NaN': not a finite"),
    ("--model .. (wrote outside result/ and score/)", ["--model", ".."], {}, "--model='..': BFCL would write"),
    ("--model .", ["--model", "."], {}, "--model='.': BFCL would write"),
    ("--model with a newline", ["--model", "evil\nname"], {}, "--model='evil\\nname': holds a control"),
    ("--served-model-name with an escape character", ["--served-model-name", "x\x1b[2J"], {},
     "--served-model-name='x\\x1b[2J': holds a control"),
    ("--base-url with a space in the host", ["--base-url", "http://exa mple:8000/v1"], {},
     "--base-url='http://exa mple:8000/v1': contains whitespace"),
    ("VLLM_BASE_URL with a tab (urlsplit drops it)", [], {"VLLM_BASE_URL": "http://127.0.0.1\t:9/v1"},
     "VLLM_BASE_URL='http://127.0.0.1\\t:9/v1': contains whitespace"),
    ("VLLM_ENDPOINT URL with a space", [], {"VLLM_ENDPOINT": "http://gpu node:8000"},
     "VLLM_ENDPOINT='http://gpu node:8000': contains whitespace"),
    ("--vllm-endpoint host with a space", ["--vllm-endpoint", "gpu node"], {},
     "--vllm-endpoint='gpu node': contains whitespace"),
    ("--base-url with an empty host label", ["--base-url", "http://vllm..internal/v1"], {},
     "'vllm..internal' is not a valid host name"),
    ("--vllm-endpoint 999.1.1.1", ["--vllm-endpoint", "999.1.1.1"], {}, "'999.1.1.1' is not a valid IP address"),
    ("--base-url with a broken IPv6 literal", ["--base-url", "http://[::1/v1"], {}, "not a valid URL"),
    ("--search-base-url with a space", ["--search-base-url", "http://cache :8080"], {},
     "--search-base-url='http://cache :8080': contains whitespace"),
    ("BFCL_EXT_SEARCH_BASE_URL with a bad host", [], {"BFCL_EXT_SEARCH_BASE_URL": "http://ca%che:8080"},
     "'ca%che' is not a valid host name"),
]

def _check_line_text_not_shown(outcome: Outcome) -> None:
    _check_nothing_written(outcome)
    assert "sk-abc" not in outcome.done.stderr, "the line's text (it may hold a key) was shown"


_ENV_FILE_CASES = [
    Case("--env-file with a line python-dotenv cannot parse (dropped with a warning, default port used)",
         SECTION_SETTINGS, _bad([], env_file='VLLM_ENDPOINT=127.0.0.1\nVLLM_PORT = "8001\nBFCL_EXT_LIMIT=1\n'), 2,
         "line 2 cannot be parsed", check=_check_nothing_written),
    Case("./.env with a line python-dotenv cannot parse", SECTION_SETTINGS,
         _bad([], dot_env="# settings\nVLLM_API_KEY 'sk-abc'\n"), 2, "--env-file='.env': line 2 cannot be parsed",
         check=_check_line_text_not_shown),
]


# ---------------------------------------------------------------- the recovery timeout's hint


def _server_gone_for_good(ctx: Any) -> Outcome:
    standin = ctx.standin_factory("--die-after", "4")
    out = ctx.tmp_path / "out"
    done = run_bfcl_ext(_args(out, 12, "--base-url", standin.base_url, "--num-threads", "2", "--recovery-timeout",
                              "2", "--retry-rounds", "1", "--max-retries", "0"), timeout=180)
    return Outcome(done, out)


def _check_hint_names_the_recovery_timeout(outcome: Outcome) -> None:
    (line,) = [line for line in outcome.done.stderr.splitlines() if line.startswith("bfcl-ext: error:")]
    assert "--wait-timeout" not in line, line


CASES: list[Case] = [
    *_KEY_CASES,
    Case("the server echoes the key back in an error body: scrubbed from answers, scores and records",
         SECTION_RECORDS, _server_echoes_the_key, 0, check=_check_the_echo_is_scrubbed_everywhere),
    *[Case(name, SECTION_SETTINGS, _bad(args, env), 2, message, check=_check_nothing_written)
      for name, args, env, message in _SETTING_CASES],
    *_ENV_FILE_CASES,
    Case("the server stays gone after a crash: the hint names --recovery-timeout", SECTION_SETTINGS,
         _server_gone_for_good, 4, "allow longer with --recovery-timeout / BFCL_EXT_RECOVERY_TIMEOUT",
         check=_check_hint_names_the_recovery_timeout),
]
