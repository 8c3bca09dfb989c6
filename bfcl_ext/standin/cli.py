"""``python -m bfcl_ext.standin``: its flags (vLLM's where they overlap), and serving until stopped."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from bfcl_ext.config import process_environment
from bfcl_ext.standin import agentic
from bfcl_ext.standin.faults import BAD_REPLY_KINDS
from bfcl_ext.standin.lifecycle import serve
from bfcl_ext.standin.options import StandinOptions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bfcl_ext.standin",
        description="A vLLM-like OpenAI-compatible server that answers BFCL from its ground truth.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--served-model-name",
        action="append",
        dest="served_model_names",
        metavar="NAME",
        help="a model name to serve (repeatable)",
    )
    parser.add_argument("--model", help="as vLLM's: served under this name unless --served-model-name says otherwise")
    parser.add_argument("--mode", default="oracle", help="oracle | wrong | wrong-category:<category>")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="require the bearer key held by this environment variable"
    )
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds before the port opens")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each completion")
    parser.add_argument("--trickle", type=float, default=0.0, metavar="SECONDS",
                        help="send each completion's body one byte every SECONDS (a reply that never ends)")
    parser.add_argument("--trickle-headers", type=float, default=0.0, metavar="SECONDS",
                        help="send each completion's status line and headers one byte every SECONDS, then its "
                        "body (at once, or as --trickle says)")
    parser.add_argument("--trickle-probes", type=float, default=0.0, metavar="SECONDS",
                        help="send the whole reply to /health, /version and /v1/models (status line, headers, "
                        "body) one byte every SECONDS: readiness probes that never end")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of completions answered 500")
    parser.add_argument("--rate-limit-rate", type=float, default=0.0, help="share answered 429")
    parser.add_argument("--bad-reply-rate", type=float, default=0.0,
                        help="share of completions answered 200 with a body a client cannot use")
    parser.add_argument("--bad-reply-kinds", default=",".join(BAD_REPLY_KINDS), metavar="KIND,...",
                        help=f"which unusable bodies, drawn evenly (default all: {','.join(BAD_REPLY_KINDS)}): "
                        "cut = valid JSON cut short; null-message = choices[0].message (completions: .text) "
                        "null; no-usage = no usage; empty-choices = choices: []; string-tool-calls = tool_calls "
                        "a string; null-function = a tool call with function: null; int-content = content 42 "
                        "(completions, these three: text 42)")
    parser.add_argument("--max-concurrency", type=int, help="completions in flight beyond this get 429")
    parser.add_argument("--max-num-seqs", type=int, metavar="N",
                        help="as vLLM's: N completions run at once, the others wait (GET /metrics shows both)")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false", help="no GET /metrics (404)")
    parser.add_argument("--die-after", type=int, help="crash (exit 1) after this many completion requests")
    parser.add_argument("--echo-key", type=int, default=0, metavar="N",
                        help="answer the first N completions 400 with the bearer key quoted in the error body")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice")
    search = parser.add_argument_group("web search", "GET /search(.json): a SerpAPI stand-in (engine=duckduckgo)")
    search.add_argument("--web-search-answer", choices=agentic.WEB_SEARCH_ANSWERS, default="search-first",
                        help="web_search entries: call search_engine_query first (default), or answer at once")
    search.add_argument("--search-api-key-env", metavar="VAR",
                        help="require the SerpAPI api_key held by this environment variable (401 otherwise)")
    search.add_argument("--search-error-rate", type=float, default=0.0, help="share of searches answered 500")
    search.add_argument("--search-rate-limit-rate", type=float, default=0.0, help="share of searches answered 429")
    search.add_argument("--search-always-fail", choices=agentic.SEARCH_OUTAGES,
                        help="every search fails: 200 without results, or 503")
    return parser


def _options_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> StandinOptions:
    """The options the flags ask for; keys are read from ``environ`` (default: the process's)."""
    environ = process_environment() if environ is None else environ
    names = args.served_model_names or ([args.model] if args.model else None)
    return StandinOptions(
        host=args.host,
        port=args.port,
        served_model_names=tuple(names or StandinOptions.served_model_names),
        model_root=args.model,
        mode=args.mode,
        api_key=_api_key(args, environ),
        load_delay=args.load_delay,
        latency=args.latency,
        trickle=args.trickle,
        trickle_headers=args.trickle_headers,
        trickle_probes=args.trickle_probes,
        error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate,
        bad_reply_rate=args.bad_reply_rate,
        bad_reply_kinds=tuple(kind.strip() for kind in args.bad_reply_kinds.split(",") if kind.strip()),
        max_concurrency=args.max_concurrency,
        max_num_seqs=args.max_num_seqs,
        metrics=args.metrics,
        die_after=args.die_after,
        echo_key=args.echo_key,
        seed=args.seed,
        web_search_answer=args.web_search_answer,
        search_api_key=_search_api_key(args, environ),
        search_error_rate=args.search_error_rate,
        search_rate_limit_rate=args.search_rate_limit_rate,
        search_always_fail=args.search_always_fail,
    )


def _api_key(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The bearer key to require: ``--api-key-env``'s variable, else VLLM_API_KEY (as vLLM reads it)."""
    if not args.api_key_env:
        return environ.get("VLLM_API_KEY") or None
    api_key = environ.get(args.api_key_env)
    if not api_key:
        raise ValueError(f"--api-key-env={args.api_key_env}: that environment variable is not set")
    return api_key


def _search_api_key(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The SerpAPI key ``/search`` requires: ``--search-api-key-env``'s variable, else none."""
    if not args.search_api_key_env:
        return None
    search_api_key = environ.get(args.search_api_key_env)
    if not search_api_key:
        raise ValueError(f"--search-api-key-env={args.search_api_key_env}: that environment variable is not set")
    return search_api_key


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``python -m bfcl_ext.standin``: serve until SIGTERM/SIGINT (0) or a crash (1). Keys named by
    the flags are read from ``environ`` (default: the process environment, read by config)."""
    parser = _parser()
    # Flags meant for vLLM (when the stand-in plays the managed server) are accepted and ignored.
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"standin: ignoring vLLM arguments: {' '.join(ignored)}", file=sys.stderr, flush=True)
    try:
        options = _options_from(args, process_environment() if environ is None else environ)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return serve(options)
    except OSError as exc:
        print(f"standin: cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
