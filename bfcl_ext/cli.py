"""The ``bfcl-ext`` command: parse, resolve settings, dispatch, turn errors into exit codes.

Kept light on purpose: ``bfcl-ext --help`` must not import bfcl-eval or the OpenAI SDK.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bfcl_ext import __version__
from bfcl_ext.config import OPTIONS, Settings, process_environment, resolve
from bfcl_ext.errors import EXIT_INTERRUPTED, BfclExtError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bfcl-ext",
        description="Score a model on the Berkeley Function Calling Leaderboard (bfcl-eval), served by vLLM "
        "or any OpenAI-compatible server. Settings: flag > environment > .env > default.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bfcl-ext {__version__}")
    parser.add_argument("--env-file", type=Path, default=None, help="settings file (default ./.env if present)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv, environ)
    except BfclExtError as error:
        print(f"bfcl-ext: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("bfcl-ext: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - last resort: one line, traceback only on request
        print(f"bfcl-ext: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        if environ.get("BFCL_EXT_DEBUG"):
            traceback.print_exc()
        return 1


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

        return check(settings, environ, interruptions)
    from bfcl_ext.run import run

    return run(settings, environ, ["bfcl-ext", *argv], interruptions)


def _list_models() -> int:
    from bfcl_ext import bridge

    for name, facts in bridge.registry_models().items():
        mode = "FC" if facts["function_calling"] else "prompt"
        print(f"{name}\t{mode}\t{facts['handler']}")
    return 0
