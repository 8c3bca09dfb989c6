"""Rows: input a hostile user typed (issue 11, F6-F8): argparse's errors are one line like every other
(no usage block), a port is plain ASCII digits 1-65535 wherever it is written, and the server's key is
never taken from the command line (``--api-key-file`` or VLLM_API_KEY instead).

Every name starts with ``bad_input:`` so that ``pytest tests/test_fault_table.py -k bad_input`` runs
these rows alone."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import run_bfcl_ext
from tests.fault_cases import Case, Outcome
from tests.fault_cases._helpers import dataset_ids, endpoint_env, run_args

SECTION = "issue 11: bad input (F6-F8)"
STANDIN_KEY_VARIABLE = "BFCL_EXT_TEST_STANDIN_KEY"
NOBODY_LISTENS = "http://127.0.0.1:9/v1"  # the discard port: refused at once, should a bad value get through


def _cli(args: Sequence[str], env: Mapping[str, str] | None = None) -> Callable[[Any], Outcome]:
    """bfcl-ext with ``args`` (``{out}`` is the scratch output folder); nothing listens, nothing is asked."""

    def scenario(ctx: Any) -> Outcome:
        out = ctx.tmp_path / "out"
        argv = [word.replace("{out}", str(out)) for word in args]
        return Outcome(run_bfcl_ext(argv, env=dict(env or {}), timeout=60), out)

    return scenario


def _run(*extra: str) -> list[str]:
    return [*run_args(Path("{out}"), "--wait-timeout", "1"), *extra]


def _check_one_line_only(outcome: Outcome) -> None:
    """Not only one ``bfcl-ext: error:`` line: nothing else at all (argparse used to print its usage)."""
    assert len(outcome.done.stderr.splitlines()) == 1, outcome.done.stderr
    assert "usage:" not in outcome.done.stderr + outcome.done.stdout
    assert outcome.output_dir is None or not outcome.output_dir.exists()


def _check_help_printed(outcome: Outcome) -> None:
    assert outcome.done.stdout.startswith("usage: bfcl-ext run"), outcome.done.stdout[:300]
    assert "--api-key-file" in outcome.done.stdout and "--api-key VALUE" not in outcome.done.stdout
    assert outcome.done.stderr == ""


# ---------------------------------------------------------------- F6: argparse errors are one line

_ARGPARSE_ERRORS: list[tuple[str, list[str], str]] = [
    ("run --model with no value", ["run", "--model"], "--model: expected a value after it"),
    ("run --model followed by another flag", ["run", "--model", "--skip-vllm"],
     "--model: expected a value after it, got the flag '--skip-vllm'"),
    ("--temperature -inf as two words", _run("--temperature", "-inf"),
     "--temperature='-inf': a value starting with '-' must be joined to its flag: write --temperature=-inf"),
    ("--temperature=-inf (joined: not a finite number)", _run("--temperature=-inf"),
     "--temperature='-inf': not a finite number"),
    ("an unknown flag --bogus", _run("--bogus"), "unknown argument '--bogus' (bfcl-ext run --help lists them)"),
    ("an unknown flag check --limit 3", ["check", "--limit", "3"], "unknown arguments '--limit' '3'"),
    ("a bad subcommand bogus", ["bogus"], "invalid choice: 'bogus'"),
    ("bundle without its arguments", ["bundle"], "the following arguments are required: OUTPUT_DIR"),
    ("an ambiguous abbreviation --api=VALUE (its value not shown)", _run("--api=sk-abbrev-c0ffee"),
     "--api: an abbreviation of more than one flag"),
    ("an unknown secret-looking flag --apikey VALUE (its value not shown)", _run("--apikey", "sk-unknown-c0ffee"),
     "unknown arguments '--apikey' <redacted>"),
]

# ---------------------------------------------------------------- F7: a port is plain digits 1-65535

_BAD_PORTS = [("a leading space", " 18099"), ("a plus sign", "+18099"), ("full-width digits", "１８０９９"),
              ("zero", "0"), ("a leading zero", "018099")]
_PORT_REASONS = {"0": "must be between 1 and 65535", "018099": "a leading zero: write 18099"}
_NOT_DIGITS = "not an integer: a port is plain ASCII digits"


def _port_rows() -> list[Case]:
    rows = []
    for what, port in _BAD_PORTS:
        reason = _PORT_REASONS.get(port, _NOT_DIGITS)
        url = f"http://127.0.0.1:{port}/v1"
        rows += [
            Case(f"bad_input: VLLM_PORT with {what} ({port!r})", SECTION, _cli(_run(), {"VLLM_PORT": port}), 2,
                 f"VLLM_PORT={port!r}: {reason}", _check_one_line_only),
            Case(f"bad_input: --vllm-port with {what} ({port!r})", SECTION, _cli(_run(f"--vllm-port={port}")), 2,
                 f"--vllm-port={port!r}: {reason}", _check_one_line_only),
            Case(f"bad_input: --base-url whose port has {what} ({url!r})", SECTION, _cli(_run("--base-url", url)),
                 2, f"--base-url={url!r}: {'contains whitespace' if ' ' in port else 'URL has a bad port'}",
                 _check_one_line_only),
        ]
    url = "http://127.0.0.1:0/v1"
    rows.append(Case(f"bad_input: VLLM_BASE_URL on port 0 ({url!r})", SECTION, _cli(_run(), {"VLLM_BASE_URL": url}),
                     2, f"VLLM_BASE_URL={url!r}: URL has a bad port (must be between 1 and 65535)",
                     _check_one_line_only))
    return rows


# ---------------------------------------------------------------- F8: the key never on the command line

FLAG_KEY = "sk-on-the-command-line-5e1f"
API_KEY_REFUSED = "--api-key is refused: a key on the command line shows in every user's process listing (ps)"


def _check_refused_and_key_not_echoed(outcome: Outcome) -> None:
    _check_one_line_only(outcome)
    assert FLAG_KEY not in outcome.done.stderr + outcome.done.stdout
    assert "VLLM_API_KEY" in outcome.done.stderr and "--api-key-file PATH" in outcome.done.stderr


def _key_from_a_file(ctx: Any) -> Outcome:
    key = f"sk-standin-{os.urandom(12).hex()}"
    standin = ctx.standin_factory("--api-key-env", STANDIN_KEY_VARIABLE, env={STANDIN_KEY_VARIABLE: key})
    key_file = ctx.tmp_path / "server.key"
    key_file.write_text(key + "\n")  # as `echo KEY > FILE` writes it: the line end is not part of the key
    key_file.chmod(0o600)
    out = ctx.tmp_path / "out"
    done = run_bfcl_ext(run_args(out, "--limit", "5", "--api-key-file", str(key_file)), env=endpoint_env(standin),
                        timeout=240, cwd=ctx.tmp_path)
    return Outcome(done, out, dataset_ids(5), {"key": key, "key_file": key_file})


def _check_key_sent_and_never_written(outcome: Outcome) -> None:
    assert outcome.output_dir is not None
    key = outcome.notes["key"]
    assert key not in outcome.done.stdout + outcome.done.stderr
    files = [path for path in outcome.output_dir.rglob("*") if path.is_file()]
    assert any(path.name == "manifest.json" for path in files)
    assert [str(path) for path in files if key.encode() in path.read_bytes()] == []


KEY_CONTENT = "sk-content-never-shown-77aa"


def _key_file(content: str | None, *, as_env: bool = False) -> Callable[[Any], Outcome]:
    """A run given a bad key file (None: a path that is no file); nothing listens, nothing is asked."""

    def scenario(ctx: Any) -> Outcome:
        path = ctx.tmp_path / "keys" / "server.key"
        path.parent.mkdir()
        if content is not None:
            path.write_text(content)
        out = ctx.tmp_path / "out"
        args = run_args(out, "--base-url", NOBODY_LISTENS, "--wait-timeout", "1")
        env = {"BFCL_EXT_API_KEY_FILE": str(path)} if as_env else {}
        if not as_env:
            args += ["--api-key-file", str(path)]
        return Outcome(run_bfcl_ext(args, env=env, timeout=60), out, notes={"path": path})

    return scenario


def _check_path_named_content_not(outcome: Outcome) -> None:
    _check_one_line_only(outcome)
    assert str(outcome.notes["path"]) in outcome.done.stderr
    assert KEY_CONTENT not in outcome.done.stderr + outcome.done.stdout


def _both_keys_in_the_environment(ctx: Any) -> Outcome:
    path = ctx.tmp_path / "server.key"
    path.write_text(KEY_CONTENT)
    args = run_args(ctx.tmp_path / "out", "--base-url", NOBODY_LISTENS, "--wait-timeout", "1")
    env = {"BFCL_EXT_API_KEY_FILE": str(path), "VLLM_API_KEY": "sk-env-0f0f"}
    return Outcome(run_bfcl_ext(args, env=env, timeout=60), ctx.tmp_path / "out", notes={"path": path})


CASES = [
    *[Case(f"bad_input: {name}", SECTION, _cli(args), 2, message, _check_one_line_only)
      for name, args, message in _ARGPARSE_ERRORS],
    Case("bad_input: run --help still prints the help", SECTION, _cli(["run", "--help"]), 0, None,
         _check_help_printed),
    *_port_rows(),
    Case("bad_input: --api-key VALUE on the command line", SECTION, _cli(_run("--api-key", FLAG_KEY)), 2,
         API_KEY_REFUSED, _check_refused_and_key_not_echoed),
    Case("bad_input: --api-key=VALUE on the command line", SECTION, _cli(_run(f"--api-key={FLAG_KEY}")), 2,
         API_KEY_REFUSED, _check_refused_and_key_not_echoed),
    Case("bad_input: --api-key-file holding the key (and a line end): the run is served", SECTION,
         _key_from_a_file, 0, None, _check_key_sent_and_never_written),
    Case("bad_input: --api-key-file that is empty", SECTION, _key_file(""), 2, "': the key file is empty",
         _check_path_named_content_not),
    Case("bad_input: --api-key-file that does not exist", SECTION, _key_file(None), 2,
         "': cannot read the key file (No such file or directory)", _check_path_named_content_not),
    Case("bad_input: --api-key-file holding two lines", SECTION, _key_file(f"{KEY_CONTENT}\nsecond\n"), 2,
         "': the key file must hold the key alone, on one line", _check_path_named_content_not),
    Case("bad_input: BFCL_EXT_API_KEY_FILE that is empty", SECTION, _key_file("\n", as_env=True), 2,
         "BFCL_EXT_API_KEY_FILE='", _check_path_named_content_not),
    Case("bad_input: BFCL_EXT_API_KEY_FILE and VLLM_API_KEY both in the environment", SECTION,
         _both_keys_in_the_environment, 2, "VLLM_API_KEY is set as well (environment): set one of them",
         _check_path_named_content_not),
]
