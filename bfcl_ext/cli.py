"""The ``bfcl-ext`` command: parse, resolve settings, dispatch, turn errors into exit codes.

Kept light on purpose: ``bfcl-ext --help`` must not import bfcl-eval or the OpenAI SDK.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bfcl_ext import __version__
from bfcl_ext.config import (
    API_KEY_FILE_FLAG,
    OPTIONS,
    Settings,
    debug_requested,
    is_secret_name,
    process_environment,
    resolve,
)
from bfcl_ext.errors import EXIT_CONFIG, EXIT_INTERRUPTED, BfclExtError

EXIT_CODES_HELP = """exit codes:
  0    every selected entry answered and scored
  1    internal error, also in a worker thread (one line; BFCL_EXT_DEBUG=1 adds the traceback; answers kept)
  2    bad configuration (the message names the setting and the value)
  3    server not ready, unreachable, or refusing the key
  4    entries still without an answer after retries (listed; results so far kept; rerun to finish)
  5    verify: the bundle is damaged, unsafe, or does not re-score to its recorded scores (first difference named)
  6    an answer could not be written: read-only folder, disk full, no permission, quota (the file and the
       cause named; the run stops at once, answers already written kept; rerun to finish)
  130  interrupted (Ctrl-C)      143  terminated (SIGTERM, e.g. scancel or a SLURM time limit)
"""


API_KEY_FLAG = "--api-key"
API_KEY_FLAG_REFUSED = (
    f"{API_KEY_FLAG} is refused: a key on the command line shows in every user's process listing (ps); "
    f"set VLLM_API_KEY in the environment or .env, or give {API_KEY_FILE_FLAG} PATH (a file holding the key)"
)


class UsageError(BfclExtError):
    """Arguments argparse could not take (a flag without its value, an unknown flag or command)."""

    exit_code = EXIT_CONFIG


class _Parser(argparse.ArgumentParser):
    """An argparse error is one line (``main`` prints it), not the usage block and argparse's own exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _RefuseKeyFlag(argparse.Action):
    """``--api-key VALUE``: refused while parsing, so that the value goes nowhere (not even an error line)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(API_KEY_FLAG_REFUSED)


def _add_settings(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    for option in OPTIONS:
        if (names is not None and option.name not in names) or option.flag is None:
            continue
        env = f" [env {option.env}]" if option.env else ""
        if isinstance(option.default, bool):
            parser.add_argument(
                option.flag, *option.flag_aliases, dest=option.name, action=argparse.BooleanOptionalAction,
                default=None,
                help=option.help + env,
            )
        else:
            parser.add_argument(option.flag, *option.flag_aliases, dest=option.name, default=None, metavar="VALUE",
                                help=option.help + env)
    parser.add_argument(API_KEY_FLAG, nargs="?", action=_RefuseKeyFlag, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bfcl-ext",
        description="Score a model on the Berkeley Function Calling Leaderboard (bfcl-eval), served by vLLM "
        "or any OpenAI-compatible server. Settings: flag > environment > .env > default.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bfcl-ext {__version__}")
    parser.add_argument("--env-file", type=Path, default=None, help="settings file (default ./.env if present)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    run = commands.add_parser("run", help="launch vLLM (or use a running server), generate, score",
                              epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_settings(run)
    check = commands.add_parser("check", help="is the server ready, and does it answer a tool call?")
    _add_settings(check, [o.name for o in OPTIONS if o.name not in ("test_categories", "limit", "num_threads",
                                                                   "retry_rounds", "recovery_timeout", "tokenizer",
                                                                   "server_facts", "runner_image", "server_image",
                                                                   "embedding_model", "search_base_url", "fresh")])
    commands.add_parser("models", help="list BFCL's registry models (scored with BFCL's own handlers)")
    bundle = commands.add_parser("bundle", help="pack a run (results, scores, summary, manifest, server log) into a "
                                 "reproducible .tar.gz with SHA256SUMS")
    bundle.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR", help="the run's --output-dir")
    bundle.add_argument("-o", "--output", type=Path, required=True, metavar="NAME.tar.gz", help="archive to write")
    verify = commands.add_parser("verify", help="check a bundle: checksums, bfcl-eval version, re-score equals the "
                                 "recorded scores", epilog=EXIT_CODES_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("archive", type=Path, metavar="NAME.tar.gz")
    compare = commands.add_parser("compare", help="per-category accuracy of runs side by side, and the recorded "
                                  "settings that differ")
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="output folders or bundles (two or more)")
    compare.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                         help="also write the tables as Markdown")
    compare.add_argument("--chart", type=Path, default=None, metavar="FILE.png", help="also draw per-category "
                         "accuracy as grouped bars (PNG)")
    # parsed by the stand-in itself (see main): listed here for --help
    commands.add_parser("standin", help="serve the OpenAI-compatible stand-in (oracle, faults); standin --help")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(process_environment() if environ is None else environ)  # a snapshot: we set BFCL_PROJECT_ROOT later
    if argv[:1] == ["standin"]:
        from bfcl_ext import standin

        return standin.main(argv[1:])
    try:
        args = _parse(argv)
        return _dispatch(args, argv, environ)
    except BfclExtError as error:
        print(f"bfcl-ext: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("bfcl-ext: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - last resort: one line, traceback only on request
        print(f"bfcl-ext: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        if debug_requested(environ):
            traceback.print_exc()
        return 1


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except UsageError as error:
        raise UsageError(_usage_line(str(error), argv)) from None


COMMANDS = ("run", "check", "models", "bundle", "verify", "compare", "standin")
_MISSING_VALUE = re.compile(r"argument (\S+): expected (?:one|at most one) argument")
_AMBIGUOUS = re.compile(r"ambiguous option: (\S+) could match (.*)")
_UNRECOGNIZED = "unrecognized arguments: "


def _usage_line(message: str, argv: Sequence[str]) -> str:
    """argparse's message, made to name the flag and the value the user gave."""
    missing = _MISSING_VALUE.fullmatch(message)
    if missing:
        return _missing_value_line(missing.group(1).split("/"), argv)
    ambiguous = _AMBIGUOUS.fullmatch(message)
    if ambiguous:
        flag = ambiguous.group(1).partition("=")[0]  # the value is not shown: the flag may be meant for a key
        return f"{flag}: an abbreviation of more than one flag ({ambiguous.group(2)}): write the flag in full"
    if message.startswith(_UNRECOGNIZED):
        return _unrecognized_line(message[len(_UNRECOGNIZED):].split(" "), argv)
    return message


def _missing_value_line(flags: Sequence[str], argv: Sequence[str]) -> str:
    at = next((n for n, word in enumerate(argv) if _names_flag(word, flags)
               and (n + 1 == len(argv) or argv[n + 1].startswith("-"))), None)
    flag = argv[at] if at is not None else flags[-1]
    after = argv[at + 1] if at is not None and at + 1 < len(argv) else None
    if after is None:
        return f"{flag}: expected a value after it"
    if re.match(r"--?[A-Za-z]", after) and not re.fullmatch(r"-(inf|infinity|nan)", after, re.IGNORECASE):
        return f"{flag}: expected a value after it, got the flag {after!r}"
    # argparse reads a word starting with '-' as a flag unless it is a plain negative number
    return f"{flag}={after!r}: a value starting with '-' must be joined to its flag: write {flag}={after}"


def _names_flag(word: str, flags: Sequence[str]) -> bool:
    """``word`` is one of ``flags``, or an abbreviation argparse took for one (``--temp``)."""
    return word in flags or (word.startswith("--") and any(flag.startswith(word) for flag in flags))


def _unrecognized_line(words: Sequence[str], argv: Sequence[str]) -> str:
    shown = [_shown_word(word, words[n - 1] if n else "") for n, word in enumerate(words)]
    command = next((word for word in argv if word in COMMANDS), None)
    help_command = f"bfcl-ext {command} --help" if command else "bfcl-ext --help"
    return f"unknown argument{'s' if len(shown) > 1 else ''} {' '.join(shown)} ({help_command} lists them)"


def _shown_word(word: str, before: str) -> str:
    """An unknown word as an error may show it: the value of anything named like a secret is hidden."""
    name, equals, _value = word.partition("=")
    if equals and is_secret_name(name):
        return f"{name}=<redacted>"
    if before.startswith("-") and "=" not in before and is_secret_name(before):
        return "<redacted>"
    return repr(word)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    flags: dict[str, Any] = {o.name: getattr(args, o.name, None) for o in OPTIONS}
    return resolve(flags, environ, args.env_file)


def _dispatch(args: argparse.Namespace, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if args.command == "models":
        return _list_models()
    if args.command == "bundle":
        from bfcl_ext.bundle import bundle_command

        return bundle_command(args.output_dir, args.output)
    if args.command == "verify":
        from bfcl_ext.bundle import verify_command

        return verify_command(args.archive)
    if args.command == "compare":
        from bfcl_ext.compare import compare_command

        return compare_command(args.runs, args.markdown, args.chart)
    settings = _settings(args, environ)
    from bfcl_ext.signals import Interruptions

    interruptions = Interruptions()
    interruptions.install()
    if args.command == "check":
        from bfcl_ext.check import check

        return check(settings, interruptions)
    from bfcl_ext.run import run

    return run(settings, ["bfcl-ext", *argv], interruptions)


def _list_models() -> int:
    from bfcl_ext import bridge

    for name, facts in bridge.registry_models().items():
        mode = "FC" if facts["function_calling"] else "prompt"
        print(f"{name}\t{mode}\t{facts['handler']}")
    return 0
