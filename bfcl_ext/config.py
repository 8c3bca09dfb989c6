"""Every setting, resolved once: flag > process environment > ``.env`` file > default.

This is the only module that looks at the environment. It returns a frozen ``Settings``
that every other module receives; bad values raise ``ConfigError`` (exit code 2) with one
line that names the setting and the value, before any network call is made.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import ipaddress
import json
import math
import os
import re
import shlex
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from bfcl_ext.endpoint import Endpoint
from bfcl_ext.errors import ConfigError
from bfcl_ext.request_settings import OWNED_KEYS, RequestSettings
from bfcl_ext.retry_policy import RetryPolicy

DEFAULT_ENV_FILE = Path(".env")
DEFAULT_PORT = 8000
DEFAULT_WAIT_TIMEOUT = 1800.0  # a 70B model read from network storage can take 20+ minutes
DEFAULT_NUM_THREADS = 64
CONTAINER_VARIABLE = "BFCL_EXT_CONTAINER"  # set by the runner images: skip mode becomes the default
APPTAINER_VARIABLES = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")  # the SIF we run in, set by Apptainer
DEFAULT_SEARCH_BASE_URL = "https://serpapi.com"
SEARCH_KEY_VARIABLE = "SERPAPI_API_KEY"  # bfcl-eval's name for it
WANDB_VARIABLE = "WANDB_BFCL_PROJECT"  # bfcl-eval uploads the scores to W&B when it is set
WANDB_PLACEHOLDER = "ENTITY:PROJECT"  # the value of bfcl-eval's .env.example: no upload
SECRET_MARKERS = ("key", "token", "secret", "password", "passwd", "credential", "auth")
SEED_RANGE = (-(2**63), 2**63 - 1)  # vLLM's (a 64-bit integer)
API_KEY_FILE_FLAG = "--api-key-file"
MAX_KEY_FILE_BYTES = 64 * 1024  # a key is a line: anything larger is the wrong file (or /dev/zero)
THINKING_OFF_EXAMPLE = '{"chat_template_kwargs": {"enable_thinking": false}}'  # Qwen3's thinking switch


@dataclass(frozen=True)
class Option:
    """One row of the settings table (README "Settings" lists the same rows)."""

    name: str  # attribute on Settings
    env: str | None  # environment / .env variable
    flag: str | None  # command-line flag (None: a secret, never taken from argv)
    default: Any
    parse: Callable[[str, str], Any]  # (setting label, raw text) -> value
    help: str
    aliases: tuple[str, ...] = ()  # upstream bfcl-eval's names for it, read only where ``env`` is set nowhere
    flag_aliases: tuple[str, ...] = ()  # upstream's flags for it


def _text(_label: str, raw: str) -> str:
    return raw


def _optional_text(_label: str, raw: str) -> str | None:
    return raw or None


MAX_REQUEST_TIMEOUT = 1_000_000  # about 11 days; a socket timeout beyond about 1e10 s overflows (OverflowError)


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str, str], Any]:
    def parse(label: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(label, raw, f"not a{'n integer' if kind is int else ' number'}") from None
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every bound, inf every lower one
            raise ConfigError(label, raw, "not a finite number")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(label, raw, f"must be {bound}")
        return value

    return parse


MAX_NUM_THREADS = 1024
AUTO_THREADS = "auto"  # concurrency that follows the server's /metrics (bfcl_ext.concurrency)


def _threads(label: str, raw: str) -> int | str:
    """A number of concurrent requests, or ``auto``."""
    if raw.strip().lower() == AUTO_THREADS:
        return AUTO_THREADS
    try:
        return _number(int, 1, MAX_NUM_THREADS)(label, raw)
    except ConfigError as error:
        if "not an integer" not in str(error):
            raise
        raise ConfigError(label, raw, "not an integer, nor 'auto'") from None


def _optional_int(low: int) -> Callable[[str, str], int | None]:
    as_int = _number(int, low)

    def parse(label: str, raw: str) -> int | None:
        return None if raw in ("", "all", "none") else as_int(label, raw)

    return parse


def _unset_or(parse: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """An optional setting: empty text means not set (None)."""

    def parse_or_none(label: str, raw: str) -> Any:
        return None if not raw.strip() else parse(label, raw)

    return parse_or_none


_PLAIN_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() also takes ' 8000', '+8000' and full-width digits


def _port_problem(text: str) -> str | None:
    """Why ``text`` is not a port as the SLURM scripts and a URL take it: ASCII digits, 1-65535, no
    leading zero; None if fine."""
    if not text:
        return "empty: give the port (or, in a URL, drop the ':')"
    if not _PLAIN_DIGITS.fullmatch(text):
        return "not an integer: a port is plain ASCII digits, without sign, blanks or other characters"
    value = int(text)
    if not 1 <= value <= 65535:
        return "must be between 1 and 65535"
    if text != str(value):
        return f"a leading zero: write {value}"
    return None


def _port(label: str, raw: str) -> int:
    problem = _port_problem(raw)
    if problem:
        raise ConfigError(label, raw, problem)
    return int(raw)


def _top_p(label: str, raw: str) -> float:
    value = _number(float, -math.inf)(label, raw)  # a finite number
    if not 0 < value <= 1:
        raise ConfigError(label, raw, "must be greater than 0 and at most 1")
    return value


def _extra_body(label: str, raw: str) -> dict[str, Any] | None:
    """A JSON object merged into every request body; none of the keys bfcl-ext and BFCL own."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float,
                           object_pairs_hook=_no_duplicate_keys)
    except _JsonProblem as problem:
        raise ConfigError(label, raw, str(problem)) from None
    except ValueError as error:
        raise ConfigError(label, raw, f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ConfigError(label, raw, f"expected a JSON object, e.g. {THINKING_OFF_EXAMPLE}")
    owned = [key for key in value if key in OWNED_KEYS]
    if owned:
        raise ConfigError(label, raw, f"may not set {owned[0]!r}: {OWNED_KEYS[owned[0]]}")
    return value or None


class _JsonProblem(ValueError):
    """A JSON text Python reads but a server would not (NaN, Infinity, 1e999) or reads ambiguously."""


def _no_constant(text: str) -> Any:
    raise _JsonProblem(f"{text} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonProblem(f"{text} is not a finite number")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise _JsonProblem(f"the key {repeated!r} is given twice")
    return dict(pairs)


def _secret(label: str, raw: str) -> str | None:
    """A key: empty means none; blanks around it are a paste error, never sent (the value is not echoed)."""
    if not raw:
        return None
    if raw.strip() != raw or not raw.strip():
        raise ConfigError(label, "<redacted>", "blank, or blanks around the key: set the key alone")
    return raw


def _boolean(label: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(label, raw, "expected 1/0, true/false, yes/no or on/off")


def _path(label: str, raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(label, raw, "empty path")
    return Path(raw)


def _words(label: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as error:
        raise ConfigError(label, raw, f"cannot split into arguments ({error})") from None


def _categories(label: str, raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.replace(" ", ",").split(",") if part.strip())
    if not names:
        raise ConfigError(label, raw, "name at least one BFCL test category")
    return names


OPTIONS: tuple[Option, ...] = (
    Option("model", "BFCL_EXT_MODEL", "--model", None, _optional_text,
           "model to score: the name the server serves, or a BFCL registry name (`bfcl-ext models`)"),
    Option("test_categories", "BFCL_EXT_TEST_CATEGORY", "--test-category", None, _categories,
           "comma-separated BFCL categories or collections (simple_python, non_live, ...)"),
    Option("vllm_endpoint", "VLLM_ENDPOINT", "--vllm-endpoint", "localhost", _text,
           "server host name or address, or a full URL (upstream's LOCAL_SERVER_ENDPOINT is read when unset)",
           aliases=("LOCAL_SERVER_ENDPOINT",)),
    Option("vllm_port", "VLLM_PORT", "--vllm-port", DEFAULT_PORT, _port,
           "server port (upstream's LOCAL_SERVER_PORT is read when unset)", aliases=("LOCAL_SERVER_PORT",)),
    Option("base_url", "VLLM_BASE_URL", "--base-url", None, _optional_text,
           "full OpenAI base URL (https, path prefix); overrides endpoint and port"),
    Option("api_key", "VLLM_API_KEY", None, None, _optional_text,
           "bearer key the server requires (environment or .env only: a flag would show in `ps`)"),
    Option("api_key_file", "BFCL_EXT_API_KEY_FILE", API_KEY_FILE_FLAG, None, _unset_or(_path),
           "file holding the server's bearer key (one line), instead of VLLM_API_KEY"),
    Option("skip_vllm", "BFCL_EXT_SKIP_VLLM", "--skip-vllm", False, _boolean,
           "do not launch vLLM: use the server already running at the endpoint (upstream: --skip-server-setup)",
           flag_aliases=("--skip-server-setup",)),
    Option("output_dir", "BFCL_EXT_OUTPUT_DIR", "--output-dir", Path("bfcl-results"),
           _path, "folder for results, scores, summary.json, manifest.json, logs"),
    Option("wait_timeout", "BFCL_EXT_WAIT_TIMEOUT", "--wait-timeout", DEFAULT_WAIT_TIMEOUT,
           _number(float, 0), "seconds to wait for the server to be ready"),
    Option("served_model_name", "BFCL_EXT_SERVED_MODEL_NAME", "--served-model-name", None, _optional_text,
           "name the server serves the model under, if not the model name"),
    Option("num_threads", "BFCL_EXT_NUM_THREADS", "--num-threads", AUTO_THREADS,
           _threads, "concurrent requests: a number, or 'auto' (follow vLLM's /metrics: more while its batch has "
           f"free slots, fewer once requests wait; {DEFAULT_NUM_THREADS} where the server has no /metrics)"),
    Option("vllm_command", "BFCL_EXT_VLLM_COMMAND", "--vllm-command", ("vllm", "serve"), _words,
           "command that starts vLLM (managed mode)"),
    Option("vllm_args", "BFCL_EXT_VLLM_ARGS", "--vllm-args", (), _words,
           "extra vLLM arguments (managed mode)"),
    Option("vllm_bind", "BFCL_EXT_VLLM_BIND", "--vllm-bind", None, _optional_text,
           "address the managed vLLM listens on (default: the endpoint host; localhost -> 127.0.0.1)"),
    Option("limit", "BFCL_EXT_LIMIT", "--limit", None, _optional_int(1),
           "only the first N entries of each category (a partial, smoke run)"),
    Option("temperature", "BFCL_EXT_TEMPERATURE", "--temperature", 0.001, _number(float, 0, 2),
           "sampling temperature sent with each request (BFCL's default)"),
    Option("max_tokens", "BFCL_EXT_MAX_TOKENS", "--max-tokens", None, _unset_or(_number(int, 1)),
           "max_tokens sent with each request (default: none, as BFCL; prompt mode: at most what BFCL leaves)"),
    Option("top_p", "BFCL_EXT_TOP_P", "--top-p", None, _unset_or(_top_p),
           "top_p sent with each request, in (0, 1] (default: none, as BFCL)"),
    Option("seed", "BFCL_EXT_SEED", "--seed", None, _unset_or(_number(int, *SEED_RANGE)),
           "sampling seed sent with each request (default: none, as BFCL)"),
    Option("extra_body", "BFCL_EXT_EXTRA_BODY", "--extra-body", None, _unset_or(_extra_body),
           f"JSON object merged into each request body, e.g. '{THINKING_OFF_EXAMPLE}' "
           "(not model, messages, tools, ...)"),
    Option("request_timeout", "BFCL_EXT_REQUEST_TIMEOUT", "--request-timeout", 600.0,
           _number(float, 1, MAX_REQUEST_TIMEOUT),
           "seconds one request may take before it counts as failed"),
    Option("max_retries", "BFCL_EXT_MAX_RETRIES", "--max-retries", 4, _number(int, 0, 50),
           "retries of one request on transport errors, 5xx and 429 (backoff with jitter, Retry-After)"),
    Option("retry_rounds", "BFCL_EXT_RETRY_ROUNDS", "--retry-rounds", 3, _number(int, 0, 50),
           "passes over entries that still failed for transport reasons"),
    Option("recovery_timeout", "BFCL_EXT_RECOVERY_TIMEOUT", "--recovery-timeout", 600.0, _number(float, 0),
           "seconds to wait for a server that went away mid-run to come back"),
    Option("tokenizer", "BFCL_EXT_TOKENIZER", "--tokenizer", None, _optional_text,
           "local tokenizer folder for BFCL registry models that format prompts on the client"),
    Option("model_revision", "BFCL_EXT_MODEL_REVISION", "--model-revision", None, _optional_text,
           "the model's revision (hub commit or tag): recorded in manifest.json; managed mode passes it to vLLM"),
    Option("stop_grace", "BFCL_EXT_STOP_GRACE", "--stop-grace", 30.0, _number(float, 0),
           "seconds the managed vLLM gets between SIGTERM and SIGKILL"),
    Option("server_facts", "BFCL_EXT_SERVER_FACTS", "--server-facts", None, _optional_text,
           "skip mode: JSON file describing the server (command, tool-call parser, GPUs, image), as the vLLM "
           "image writes it (SERVE_FACTS_FILE); recorded in manifest.json"),
    Option("runner_image", "BFCL_EXT_RUNNER_IMAGE", "--runner-image", None, _optional_text,
           "the image bfcl-ext runs from (reference, image ID or SIF path), recorded with its digest "
           "(default: the Apptainer image it runs in)"),
    Option("server_image", "BFCL_EXT_SERVER_IMAGE", "--server-image", None, _optional_text,
           "the server's image (reference, image ID or SIF path), recorded with its digest "
           "(default: the image named in the server facts)"),
    Option("embedding_model", "BFCL_EXT_EMBEDDING_MODEL", "--embedding-model", None, _optional_text,
           "memory_vector: local folder of the sentence-transformers embedding model BFCL uses "
           "(default: all-MiniLM-L6-v2 from the local Hugging Face cache, offline)"),
    Option("search_base_url", "BFCL_EXT_SEARCH_BASE_URL", "--search-base-url", DEFAULT_SEARCH_BASE_URL,
           _optional_text, "web search: SerpAPI or a SerpAPI-compatible service (a caching proxy)"),
    Option("fresh", "BFCL_EXT_FRESH", "--fresh", False, _boolean,
           "start afresh: move the folder's earlier answers, scores and records aside (previous-<time>/), "
           "never deleting them; needed when the model, server or sampling differs from the folder's"),
    Option("search_api_key", SEARCH_KEY_VARIABLE, None, None, _secret,
           "web search: the SerpAPI key (environment or .env only: never a flag, never written down)"),
)
OPTION_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. ``api_key`` is hidden from ``repr``."""

    model: str | None
    test_categories: tuple[str, ...] | None
    endpoint: Endpoint
    skip_vllm: bool
    output_dir: Path
    wait_timeout: float
    served_model_name: str | None
    num_threads: int | str  # a number, or AUTO_THREADS
    vllm_command: tuple[str, ...]
    vllm_args: tuple[str, ...]
    vllm_bind: str
    limit: int | None
    temperature: float
    max_tokens: int | None
    top_p: float | None
    seed: int | None
    extra_body: Mapping[str, Any] | None
    request_timeout: float
    max_retries: int
    retry_rounds: int
    recovery_timeout: float
    tokenizer: Path | None
    stop_grace: float
    model_revision: str | None
    server_facts: Path | None
    runner_image: str | None
    server_image: str | None
    embedding_model: Path | None
    search_base_url: str
    fresh: bool
    env_file: Path | None
    slurm_job_id: str | None = None  # SLURM's, not a user setting: seeds the managed server's port
    apptainer_image: str | None = None  # Apptainer's, not a user setting: the SIF this process runs in
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> flag / env / .env / default
    wandb_project: str | None = None  # upstream's W&B upload (WANDB_BFCL_PROJECT), done by bfcl-eval itself
    search_api_key: str | None = field(default=None, repr=False)
    api_key_file: Path | None = None  # where the key was read from (recorded; the key itself never is)
    debug: bool = False  # BFCL_EXT_DEBUG: an internal error's traceback too
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)  # the process's, when resolved

    @property
    def server_environment(self) -> dict[str, str]:
        """The environment a managed vLLM starts with: ours, less the variables that mean something
        else to vLLM (it reads VLLM_PORT as its internal port; the key is set apart, never in argv)."""
        return {key: value for key, value in self.environment.items() if key not in SERVER_HIDDEN_VARIABLES}

    @property
    def retry(self) -> RetryPolicy:
        """The one retry policy of the run, from the retry settings."""
        return RetryPolicy(request_timeout=self.request_timeout, request_retries=self.max_retries,
                           passes=self.retry_rounds, recovery_timeout=self.recovery_timeout)

    @property
    def request(self) -> RequestSettings:
        """What every completion request carries beyond BFCL's own fields."""
        return RequestSettings(self.max_tokens, self.top_p, self.seed, self.extra_body)

    @property
    def model_name_served(self) -> str:
        """The ``model`` field of every request: what the server must list in /v1/models."""
        return self.served_model_name or self.model or ""

    def redacted(self) -> dict[str, Any]:
        """Every setting as plain JSON values, secrets replaced by a marker."""
        values = {name: getattr(self, name) for name in OPTION_BY_NAME if hasattr(self, name)}
        values["base_url"] = self.endpoint.base_url
        values["api_key"] = "<redacted>" if self.endpoint.api_key else None
        values["search_api_key"] = "<redacted>" if self.search_api_key else None
        values["env_file"] = self.env_file
        values["sources"] = dict(self.sources)
        return {key: _plain(value) for key, value in sorted(values.items())}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


DEBUG_VARIABLE = "BFCL_EXT_DEBUG"
# vLLM reads VLLM_PORT itself (its internal communication port), so our meaning of it must not
# leak into a managed server's environment; VLLM_API_KEY is vLLM's own name for the key, set apart.
SERVER_HIDDEN_VARIABLES = ("VLLM_PORT", "VLLM_ENDPOINT", "VLLM_BASE_URL", "VLLM_API_KEY")


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    env_file: Path | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Build ``Settings`` from parsed flags (only those the user gave), the environment and a .env file.

    ``env_file=None`` reads ``./.env`` when it exists; an explicit file must exist.
    ``defaults`` replaces built-in defaults; inside the runner images (``BFCL_EXT_CONTAINER``
    set) skip mode is the default.
    """
    defaults = dict(defaults or {})
    if _boolean(CONTAINER_VARIABLE, environ.get(CONTAINER_VARIABLE, "")):
        defaults.setdefault("skip_vllm", True)
    apptainer_image = next((environ[name] for name in APPTAINER_VARIABLES if environ.get(name)), None)
    if apptainer_image:
        defaults.setdefault("runner_image", apptainer_image)
    dotenv_values, env_path = _read_env_file(env_file)
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        value, source = _pick(option, flags, environ, dotenv_values, defaults)
        raw[option.name] = value
        sources[option.name] = source
    settings = _build(raw, sources, env_path, environ.get("SLURM_JOB_ID"), apptainer_image)
    settings = dataclasses.replace(settings, debug=debug_requested(environ), environment=dict(environ))
    wandb_project = environ.get(WANDB_VARIABLE, "")
    if wandb_project and wandb_project != WANDB_PLACEHOLDER:  # bfcl-eval reads the process environment
        settings = dataclasses.replace(settings, wandb_project=wandb_project)
    return settings


def _read_env_file(env_file: Path | None) -> tuple[dict[str, str], Path | None]:
    from dotenv import dotenv_values  # parsed only: never written into os.environ

    path = env_file if env_file is not None else DEFAULT_ENV_FILE
    if not path.exists():
        if env_file is not None:
            raise ConfigError("--env-file", str(env_file), "file not found")
        return {}, None
    if not path.is_file():
        raise ConfigError("--env-file", str(path), "not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("--env-file", str(path), f"cannot read ({error.__class__.__name__})") from None
    _check_env_lines(path, text)
    values = dotenv_values(stream=io.StringIO(text))
    return {key: value for key, value in values.items() if value is not None}, path


def _check_env_lines(path: Path, text: str) -> None:
    """python-dotenv logs a warning for a line it cannot parse and drops it (a setting silently lost,
    a default used instead): here that is an error naming the line. Its text is not shown: it may hold a key."""
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                "--env-file", str(path), f"line {binding.original.line} cannot be parsed: expected KEY=VALUE "
                "(a value with spaces or # in quotes), a comment or a blank line",
            )


def _pick(
    option: Option,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    dotenv_values: Mapping[str, str],
    defaults: Mapping[str, Any],
) -> tuple[Any, str]:
    if option.flag is not None and flags.get(option.name) is not None:
        value = flags[option.name]
        return (option.parse(option.flag, value) if isinstance(value, str) else value), "flag"
    if option.env and option.env in environ:
        return option.parse(option.env, environ[option.env]), "environment"
    if option.env and option.env in dotenv_values:
        return option.parse(option.env, dotenv_values[option.env]), ".env"
    for alias in option.aliases:
        if alias in environ:
            return option.parse(alias, environ[alias]), f"environment ({alias})"
        if alias in dotenv_values:
            return option.parse(alias, dotenv_values[alias]), f".env ({alias})"
    if option.name in defaults:
        return defaults[option.name], "default"
    return option.default, "default"


def _build(
    raw: dict[str, Any], sources: dict[str, str], env_path: Path | None, slurm_job_id: str | None,
    apptainer_image: str | None,
) -> Settings:
    endpoint = _endpoint(raw, sources)
    for name in ("model", "served_model_name"):
        _check_model_name(_label(name, sources), raw[name])
    return Settings(
        model=raw["model"],
        test_categories=raw["test_categories"],
        endpoint=endpoint,
        skip_vllm=raw["skip_vllm"],
        output_dir=raw["output_dir"],
        wait_timeout=raw["wait_timeout"],
        served_model_name=raw["served_model_name"],
        num_threads=raw["num_threads"],
        vllm_command=_nonempty_command(raw["vllm_command"]),
        vllm_args=raw["vllm_args"],
        vllm_bind=raw["vllm_bind"] or _default_bind(endpoint.host),
        limit=raw["limit"],
        temperature=raw["temperature"],
        max_tokens=raw["max_tokens"],
        top_p=raw["top_p"],
        seed=raw["seed"],
        extra_body=raw["extra_body"],
        request_timeout=raw["request_timeout"],
        max_retries=raw["max_retries"],
        retry_rounds=raw["retry_rounds"],
        recovery_timeout=raw["recovery_timeout"],
        tokenizer=Path(raw["tokenizer"]) if raw["tokenizer"] else None,
        stop_grace=raw["stop_grace"],
        model_revision=raw["model_revision"],
        server_facts=Path(raw["server_facts"]) if raw["server_facts"] else None,
        runner_image=raw["runner_image"],
        server_image=raw["server_image"],
        embedding_model=Path(raw["embedding_model"]) if raw["embedding_model"] else None,
        search_base_url=_search_base_url(raw["search_base_url"], sources),
        search_api_key=raw["search_api_key"],
        api_key_file=raw["api_key_file"],
        fresh=raw["fresh"],
        env_file=env_path,
        slurm_job_id=slurm_job_id,
        apptainer_image=apptainer_image,
        sources=sources,
    )


MAX_FOLDER_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def _check_model_name(label: str, name: str | None) -> None:
    """BFCL writes a model's answers and scores to ``result/<name with / as _>/``: that folder must be
    one plain folder name inside the output folder."""
    if name is None:
        return
    bad = [char for char in name if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    if bad:
        raise ConfigError(label, name, f"holds a control or invisible character ({ascii(bad[0])})")
    folder = name.replace("/", "_")
    if not name.strip():
        raise ConfigError(label, name, "a blank model name")
    if folder in (".", ".."):
        raise ConfigError(label, name, f"BFCL would write its answers to result/{folder}/, outside its folder")
    if len(folder.encode("utf-8")) > MAX_FOLDER_NAME_BYTES:
        raise ConfigError(label, name, f"longer than the {MAX_FOLDER_NAME_BYTES} bytes a folder name may have")


_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # _: compose service names


def _host_problem(host: str) -> str | None:
    """Why ``host`` (a URL's host, without brackets) is neither a DNS name nor an IP address; None if fine."""
    if ":" in host or host.replace(".", "").isdigit():
        try:
            ipaddress.ip_address(host.replace("%25", "%"))  # an IPv6 zone, fe80::1%25eth0 in a URL
        except ValueError:
            return f"{host!r} is not a valid IP address" + ("" if ":" in host else " or host name")
        return None
    name = host[:-1] if host.endswith(".") else host
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return f"{host!r} is not a valid host name or IP address"
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return f"{host!r} is not a valid host name or IP address"
    return None


def _no_whitespace(label: str, value: str, shown: str | None = None) -> None:
    if any(char.isspace() for char in value):
        raise ConfigError(label, value if shown is None else shown, "contains whitespace")


def _shown_url(url: str) -> str:
    """The URL as an error message may show it: never with credentials."""
    return "<url with credentials>" if "@" in url else url


def _split_url(label: str, url: str) -> SplitResult:
    _no_whitespace(label, url, _shown_url(url))  # urlsplit drops tabs and newlines without a word
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigError(label, _shown_url(url), f"not a valid URL ({error})") from None
    port_text = _url_port_text(parts.netloc)
    problem = None if port_text is None else _port_problem(port_text)
    if problem:  # urlsplit takes port 0 and leading zeros
        raise ConfigError(label, _shown_url(url), f"URL has a bad port ({problem})")
    host_and_port = parts.netloc.rpartition("@")[2]
    if host_and_port.startswith("[") and not re.fullmatch(r"\[[^\]]*\](:\d*)?", host_and_port):
        raise ConfigError(label, _shown_url(url), "not a valid URL (text after the bracketed address)")
    return parts


def _url_port_text(netloc: str) -> str | None:
    """The port as written in a URL's netloc (split as urlsplit splits it); None when there is no colon."""
    host_and_port = netloc.rpartition("@")[2]
    if host_and_port.startswith("["):
        host_and_port = host_and_port.partition("]")[2]
    _host, colon, port = host_and_port.partition(":")
    return port if colon else None


def _search_base_url(url: str | None, sources: Mapping[str, str]) -> str:
    """SerpAPI's address or a compatible one: http(s), a host, no credentials (the key travels apart)."""
    label = _label("search_base_url", sources)
    parts = _split_url(label, url or DEFAULT_SEARCH_BASE_URL)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(label, url, "expected an http(s) URL with a host, e.g. https://serpapi.com")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(label, "<url>", "no credentials, query or fragment in the URL: the key goes in "
                          f"{SEARCH_KEY_VARIABLE}")
    problem = _host_problem(parts.hostname)
    if problem:
        raise ConfigError(label, url, problem)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _nonempty_command(words: tuple[str, ...]) -> tuple[str, ...]:
    if not words:
        raise ConfigError(OPTION_BY_NAME["vllm_command"].env or "vllm_command", "", "must name a program")
    return words


def _default_bind(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "") else host


_SOURCE_RANK = ("flag", "environment", ".env", "default")  # what wins, first to last


def _rank(source: str) -> int:
    return _SOURCE_RANK.index(source.partition(" ")[0])  # "environment (ALIAS)" ranks as "environment"


def _api_key(raw: Mapping[str, Any], sources: Mapping[str, str]) -> str | None:
    """The server's key: VLLM_API_KEY or the file BFCL_EXT_API_KEY_FILE names, whichever was set at the
    higher precedence (both at the same level is refused: which one is meant cannot be known)."""
    key_file: Path | None = raw["api_key_file"]
    if key_file is None:
        return raw["api_key"]
    file_label = _label("api_key_file", sources)
    if raw["api_key"] is not None:
        key_rank, file_rank = _rank(sources["api_key"]), _rank(sources["api_key_file"])
        if key_rank == file_rank:
            raise ConfigError(file_label, str(key_file), f"VLLM_API_KEY is set as well ({sources['api_key']}): "
                              "set one of them")
        if key_rank < file_rank:
            return raw["api_key"]
    return read_key_file(file_label, key_file)


def read_key_file(label: str, path: Path) -> str:
    """The key a file holds: its one line, without the line end. Errors name the path, never the content."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(label, str(path), f"cannot read the key file ({reason})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(label, str(path), f"larger than {MAX_KEY_FILE_BYTES // 1024} KiB: not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(label, str(path), "not UTF-8 text: not a key file") from None
    key = text.removesuffix("\n").removesuffix("\r")
    if not key.strip():
        raise ConfigError(label, str(path), "the key file is empty")
    if key.strip() != key or any(char in key for char in "\r\n"):
        raise ConfigError(label, str(path), "the key file must hold the key alone, on one line (its content is not "
                          "shown)")
    return key


def _endpoint(raw: dict[str, Any], sources: dict[str, str]) -> Endpoint:
    api_key = _api_key(raw, sources)
    if raw["base_url"]:
        label = _label("base_url", sources)
        return Endpoint(_checked_url(label, raw["base_url"], None), api_key)
    host = raw["vllm_endpoint"] or ""
    label = _label("vllm_endpoint", sources)
    if not host.strip():
        raise ConfigError(label, host, "empty host")
    if "://" in host:
        explicit_port = raw["vllm_port"] if sources["vllm_port"] != "default" else None
        return Endpoint(_checked_url(label, host, explicit_port), api_key)
    _no_whitespace(label, host)
    if any(char in host for char in "/?#@[]") or host.count(":") == 1:
        raise ConfigError(
            label, host, "expected a host name or address (put the port in VLLM_PORT, or give a full URL)"
        )
    problem = _host_problem(host)
    if problem:
        raise ConfigError(label, host, problem)
    netloc = f"[{host}]" if ":" in host else host
    return Endpoint(f"http://{netloc}:{raw['vllm_port']}/v1", api_key)


def _checked_url(label: str, url: str, port: int | None) -> str:
    """A full URL as OpenAI base URL: http(s), a host, path ending in /v1 (added when missing)."""
    parts = _split_url(label, url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(label, _shown_url(url), "URL scheme must be http or https")
    url_port = parts.port
    if not parts.hostname:
        raise ConfigError(label, url, "URL has no host")
    if parts.username or parts.password:
        raise ConfigError(label, "<url with credentials>", "put credentials in VLLM_API_KEY, not in the URL")
    problem = _host_problem(parts.hostname)
    if problem:
        raise ConfigError(label, url, problem)
    netloc = parts.netloc
    if url_port is None and port is not None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def _label(name: str, sources: Mapping[str, str]) -> str:
    option = OPTION_BY_NAME[name]
    source = sources.get(name, "")
    alias = next((alias for alias in option.aliases if source.endswith(f"({alias})")), None)
    if alias:
        return alias
    return option.flag if source == "flag" and option.flag else (option.env or option.flag or name)


def require_run_settings(settings: Settings) -> None:
    """Settings a run cannot go without (checked before any network call)."""
    if settings.wandb_project and importlib.util.find_spec("wandb") is None:
        # bfcl-eval imports wandb after scoring: the run would fail with its answers scored but unrecorded
        raise ConfigError(WANDB_VARIABLE, settings.wandb_project,
                          "upstream's W&B upload needs the wandb package, which is not installed: "
                          "pip install wandb, or unset it")
    if not settings.model:
        raise ConfigError("BFCL_EXT_MODEL/--model", "", "required: the model to score")
    if not settings.test_categories:
        raise ConfigError("BFCL_EXT_TEST_CATEGORY/--test-category", "", "required: e.g. simple_python or non_live")


def process_environment() -> Mapping[str, str]:
    """The process environment, read in this one place."""
    return os.environ


def debug_requested(environ: Mapping[str, str]) -> bool:
    """BFCL_EXT_DEBUG set: an internal error prints its traceback too (also before settings resolve)."""
    return bool(environ.get(DEBUG_VARIABLE))


def export_for_libraries(values: Mapping[str, str], defaults: Mapping[str, str] | None = None) -> None:
    """Set variables that libraries read from the process environment (bfcl-eval's project root,
    transformers' and huggingface_hub's switches): ``values`` always, ``defaults`` unless set.
    The process environment is written in this one place."""
    os.environ.update(values)
    for key, value in (defaults or {}).items():
        os.environ.setdefault(key, value)
