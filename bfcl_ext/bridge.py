"""The one module that imports ``bfcl_eval``: registry, datasets, handlers, result files, checker.

bfcl-eval is used as a library, never copied: its datasets, its model handlers (prompt
formatting, tool compilation, response decoding, multi-turn execution) and its evaluator.
What bfcl_ext adds here is the glue upstream lacks: a model served under any name becomes a
registry entry at run time, the handler gets an OpenAI client configured by us (base URL, key,
timeout, retries), and transport failures raise instead of being written down as answers.

Import cost: ``expand_categories`` and ``dataset_path`` touch only light modules; everything
else imports the evaluator (about 1 s: the registry is read without its handlers, see
registry.py), and needs ``use_project_root`` first.
"""

from __future__ import annotations

import copy
import errno
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bfcl_ext import registry
from bfcl_ext.config import export_for_libraries, process_environment
from bfcl_ext.errors import ConfigError
from bfcl_ext.provenance import sha256_file
from bfcl_ext.reply_shape import message_problem
from bfcl_ext.request_settings import RequestSettings
from bfcl_ext.retry_policy import RetryPolicy

BFCL_EVAL_VERSION = "2026.3.23"
CATEGORY_SETTING = "BFCL_EXT_TEST_CATEGORY/--test-category"
NEEDS_TORCH = {"memory_vector"}
NEEDS_INTERNET = {"web_search_base", "web_search_no_snippet"}


class TransportError(Exception):
    """The server did not produce a model answer (connection, timeout, 5xx, 429, malformed body)."""


# ---------------------------------------------------------------- light: no evaluator import


def _package_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("bfcl-eval", "not installed",
                          "run scripts/install.sh in the bfcl_ext repository (bfcl-ext is not on PyPI)")
    return Path(next(iter(spec.submodule_search_locations)))


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bfcl-eval")
    except PackageNotFoundError:
        return None


def expand_categories(names: Sequence[str]) -> list[str]:
    """Category and collection names -> the categories they stand for, in BFCL's order."""
    from bfcl_eval.constants.category_mapping import ALL_CATEGORIES, TEST_COLLECTION_MAPPING

    wanted: set[str] = set()
    for name in names:
        if name in TEST_COLLECTION_MAPPING:
            wanted.update(TEST_COLLECTION_MAPPING[name])
        elif name in ALL_CATEGORIES:
            wanted.add(name)
        else:
            known = ", ".join(list(TEST_COLLECTION_MAPPING) + list(ALL_CATEGORIES))
            raise ConfigError(CATEGORY_SETTING, name, f"unknown BFCL test category; known: {known}")
    return [category for category in ALL_CATEGORIES if category in wanted]


def scoring_categories() -> list[str]:
    """Every category BFCL's overall is made of (format_sensitivity is not one)."""
    from bfcl_eval.constants.category_mapping import ALL_SCORING_CATEGORIES

    return list(ALL_SCORING_CATEGORIES)


def dataset_path(category: str) -> Path:
    """The category's main prompt file (several categories share one: memory_*, web_search_*)."""
    return _data_dir() / f"{_version_prefix()}_{_data_name(category)}.json"


def ground_truth_path(category: str) -> Path:
    return _data_dir() / "possible_answer" / f"{_version_prefix()}_{_data_name(category)}.json"


def _data_dir() -> Path:
    return _package_dir() / "data"


def _data_name(category: str) -> str:
    """The stem of a category's data files: memory_kv, memory_vector and memory_rec_sum share
    BFCL_v4_memory.json; web_search_base and web_search_no_snippet share BFCL_v4_web_search.json."""
    if category.startswith("memory_"):
        return "memory"
    if category.startswith("web_search_"):
        return "web_search"
    return category


def _prompt_files(category: str) -> list[Path]:
    """Every file a category's prompts are read from (memory: the prerequisite conversations too;
    format_sensitivity: its id map and the categories it draws its entries from)."""
    files = [dataset_path(category)]
    if category.startswith("memory_"):
        files += sorted((_data_dir() / "memory_prereq_conversation").glob("*.json"))
    if category == "format_sensitivity":
        files += [dataset_path(source) for source in _format_sensitivity_sources()]
    return files


def _truth_files(category: str) -> list[Path]:
    if category == "format_sensitivity":
        return [ground_truth_path(source) for source in _format_sensitivity_sources()]
    path = ground_truth_path(category)
    return [path] if path.exists() else []  # irrelevance-type categories have no ground truth


def _format_sensitivity_sources() -> list[str]:
    """The categories format_sensitivity draws from: the keys of its id map (checked by check_datasets)."""
    try:
        with dataset_path("format_sensitivity").open(encoding="utf-8") as handle:
            id_map = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return []
    return sorted(id_map) if isinstance(id_map, dict) else []


def _digest(paths: Sequence[Path]) -> str | None:
    """One file: its sha256 (as recorded before files were shared). Several: sha256 over each
    file's sha256 and name, so a change to any of them shows."""
    if not paths:
        return None
    if len(paths) == 1:
        return sha256_file(paths[0])
    import hashlib

    listing = "".join(f"{sha256_file(path)}  {path.relative_to(_data_dir())}\n" for path in paths)
    return hashlib.sha256(listing.encode()).hexdigest()


def dataset_hashes(categories: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """sha256 of each category's prompts and ground truth (None where a category has none)."""
    return {
        category: {"dataset": _digest(_prompt_files(category)), "ground_truth": _digest(_truth_files(category))}
        for category in categories
    }


def check_datasets(categories: Iterable[str]) -> None:
    """Every data file a category reads exists and parses, each entry with an id (a damaged install fails here)."""
    for category in categories:
        if category == "format_sensitivity":
            _check_id_map(category, dataset_path(category))
        for path in _prompt_files(category) + _truth_files(category):
            if path != dataset_path("format_sensitivity"):
                _check_json_lines(category, path)


def _check_id_map(category: str, path: Path) -> None:
    """format_sensitivity's file is one JSON object: source category -> entry ids."""
    if not path.exists():
        raise ConfigError("bfcl-eval data", str(path), f"missing file for category {category}; reinstall bfcl-eval")
    try:
        id_map = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError("bfcl-eval data", str(path), "not valid JSON; reinstall bfcl-eval") from None
    if not isinstance(id_map, dict) or not all(isinstance(ids, list) for ids in id_map.values()):
        raise ConfigError("bfcl-eval data", str(path), "not a map of categories to entry ids; reinstall bfcl-eval")


def _check_json_lines(category: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError("bfcl-eval data", str(path), f"missing file for category {category}; reinstall bfcl-eval")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError("bfcl-eval data", f"{path}:{number}", "not valid JSON; reinstall bfcl-eval") from None
            if not isinstance(entry, dict) or "id" not in entry:
                raise ConfigError("bfcl-eval data", f"{path}:{number}", "entry without id; reinstall bfcl-eval")


def use_project_root(root: Path) -> None:
    """Point bfcl-eval's import-time folders (result/, score/, .file_locks/) at ``root``.

    Must run before the evaluator is imported: otherwise bfcl-eval creates them inside
    site-packages, which fails on a read-only image.
    """
    import sys

    root = root.resolve()
    loaded = sys.modules.get("bfcl_eval.constants.eval_config")
    if loaded is not None and Path(loaded.PROJECT_ROOT).resolve() != root:
        raise RuntimeError(f"bfcl-eval was already imported with project root {loaded.PROJECT_ROOT}")
    # prompt-mode handlers load tokenizers with transformers: never wait on a hub we cannot reach
    export_for_libraries({"BFCL_PROJECT_ROOT": str(root), "TOKENIZERS_PARALLELISM": "false"},
                         defaults={"HF_HUB_OFFLINE": "1"})


# ---------------------------------------------------------------- the registry


def registry_models() -> dict[str, dict[str, Any]]:
    """BFCL's own registry: name -> display name, mode, handler."""
    return {
        name: {
            "display_name": config.display_name,
            "function_calling": bool(config.is_fc_model),
            "handler": registry.handler_name(config),
        }
        for name, config in sorted(_registry_table().items())
    }


def is_registry_model(name: str) -> bool:
    return name in _registry_table()


def _registry_table() -> dict[str, Any]:
    """bfcl-eval's MODEL_CONFIG_MAPPING, read without importing every handler (see registry.py)."""
    return registry.registry_module().MODEL_CONFIG_MAPPING  # type: ignore[no-any-return]


def _register_served_model(registry_name: str, served_name: str) -> None:
    """Make a model BFCL has never heard of scoreable in function-calling mode (chat + tools)."""
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler

    table = _registry_table()
    config = registry.registry_module().ModelConfig(
        model_name=served_name,
        # upstream writes its leaderboard CSVs with ",".join, unquoted: a comma here would shift every column
        display_name=f"{served_name.replace(',', ';')} (FC; bfcl-ext)",
        url="",
        org="",
        license="",
        model_handler=OpenAICompletionsHandler,
        input_price=None,
        output_price=None,
        is_fc_model=True,
        underscore_to_dot=True,  # tool names have '.' replaced by '_' on the way out
    )
    table[registry_name] = config
    # The evaluator maps result folder names back with '_' -> '/'; make that name resolve too.
    table.setdefault(registry_name.replace("/", "_").replace("_", "/"), config)


# ---------------------------------------------------------------- the client bfcl-eval's handlers use


@dataclass
class RequestStats:
    """What went over the wire (retries happen inside the OpenAI client; these count them)."""

    sent: int = 0
    ok: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    bad_replies: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_call(self) -> None:
        with self.lock:
            self.calls += 1

    def count_bad_reply(self) -> None:
        with self.lock:
            self.bad_replies += 1

    def count_sent(self) -> None:
        with self.lock:
            self.sent += 1

    def count_response(self, status: int) -> None:
        with self.lock:
            if status < 400:
                self.ok += 1
            else:
                self.errors_by_status[str(status)] = self.errors_by_status.get(str(status), 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "http_requests_sent": self.sent,
            "http_ok": self.ok,
            "http_errors_by_status": dict(sorted(self.errors_by_status.items())),
            # a request sent that got no HTTP answer at all: refused, reset, timed out
            "connection_errors": max(0, self.sent - self.ok - sum(self.errors_by_status.values())),
            "retried_requests": max(0, self.sent - self.calls),
            # an HTTP 200 the client could not use (body not JSON, no choices, null message, no usage)
            "bad_replies": self.bad_replies,
        }


class _GuardedCreate:
    """Wraps ``client.<x>.completions.create``: our timeout, no silent bad answers, no endless 429 loop.

    A reply with status 200 that the handler cannot use (a body that is not JSON, no choices, a
    null message or text, no usage) is a server fault like a 5xx, never the model's answer. The
    OpenAI SDK retries no 200, so it is retried here as the policy says (as many times as the SDK
    retries a 5xx, with the SDK's backoff), then raised as ``TransportError``.
    Every request also gets the run's request settings (``request_settings``: max tokens, top_p,
    seed, extra body; nothing when none is set).
    """

    def __init__(
        self, create: Callable[..., Any], stats: RequestStats, policy: RetryPolicy,
        request: RequestSettings | None = None, completions: bool = False,
    ) -> None:
        import time

        self._create = create
        self._stats = stats
        self.policy = policy
        self.request = request or RequestSettings()
        self.completions = completions  # /v1/completions (prompt mode), else chat
        self.sleep: Callable[[float], None] = time.sleep

    def create(self, **kwargs: Any) -> Any:
        import openai

        kwargs.pop("timeout", None)  # upstream passes 72000 s; the client's timeout applies instead
        kwargs = self.request.apply(kwargs, completions=self.completions)
        self._stats.count_call()
        problem = "no attempt"
        retries = self.policy.request_retries
        for attempt in range(retries + 1):
            if attempt:
                self.sleep(self.policy.before_request_retry(attempt))
            try:
                response = self._create(**kwargs)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
                raise TransportError(_describe(error)) from None
            except openai.APIStatusError as error:
                if error.status_code in (401, 403, 404, 408, 409) or error.status_code >= 500:
                    raise TransportError(_describe(error)) from None
                raise  # 400 and friends: the request itself was refused; upstream scores it as wrong
            except _unparseable_errors() as error:  # the SDK could not read the body of a 200
                problem = _describe_unparseable(error)
            else:
                problem = _unusable(response)
                if problem is None:
                    return response
            self._stats.count_bad_reply()
        tries = f", {retries + 1} tries" if retries else ""
        raise TransportError(f"unusable reply (HTTP 200{tries}): {problem}")


def _unparseable_errors() -> tuple[type[BaseException], ...]:
    """What the OpenAI SDK raises, from ``create``, on a body it cannot read (found by trying):
    a body that is not JSON, cut short or empty: ``json.JSONDecodeError`` (not wrapped);
    with strict validation, a body that does not fit the schema: ``APIResponseValidationError``."""
    import openai
    import pydantic

    return (json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError, pydantic.ValidationError)


def _describe_unparseable(error: BaseException) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"the body is not valid JSON (cut short or garbled: {error})"
    if isinstance(error, UnicodeDecodeError):
        return "the body is not valid UTF-8"
    return f"the body does not fit the OpenAI schema ({type(error).__name__})"


def _unusable(response: Any) -> str | None:
    """Why a parsed reply is not one the handler can read (None: it is). bfcl-eval's handlers read
    ``choices[0].message`` (chat: its content and tool calls, ``reply_shape``) or ``choices[0].text``
    (completions) and ``usage``'s two token counts; the SDK builds its objects without validation,
    so a null, missing or wrongly typed one gets through."""
    from openai.types import Completion

    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return "an empty reply: the server answered without choices" + (" (choices: [])" if choices == [] else "")
    choice = choices[0]
    if choice is None:
        return "choices[0] is null"
    if isinstance(response, Completion):
        if not isinstance(getattr(choice, "text", None), str):
            return "choices[0].text is null" if getattr(choice, "text", None) is None else "choices[0].text is not text"
    else:
        message = getattr(choice, "message", None)
        if message is None:
            return "choices[0].message is null"
        if not hasattr(message, "content"):
            return "choices[0].message is not a message"
        shape = message_problem(message)
        if shape is not None:
            return shape
    usage = getattr(response, "usage", None)
    if usage is None:
        return "no usage"
    if not all(isinstance(getattr(usage, name, None), int) for name in ("prompt_tokens", "completion_tokens")):
        return "usage without prompt_tokens and completion_tokens"
    return None


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    text = type(error).__name__ + (f" (HTTP {status})" if status else "")
    cause = error.__cause__ or error.__context__
    return f"{text}: {cause.__class__.__name__}" if cause and not status else text


class _GuardedClient:
    """Looks like ``openai.OpenAI`` to a handler; the two completion endpoints are guarded."""

    def __init__(self, client: Any, stats: RequestStats, policy: RetryPolicy, request: RequestSettings) -> None:
        from types import SimpleNamespace

        self._client = client
        self.chat = SimpleNamespace(completions=_GuardedCreate(client.chat.completions.create, stats, policy, request))
        self.completions = _GuardedCreate(client.completions.create, stats, policy, request, completions=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def make_client(
    base_url: str, api_key: str | None, policy: RetryPolicy, stats: RequestStats,
    request: RequestSettings | None = None,
) -> Any:
    """The OpenAI client of the run: the policy's timeout bounds each whole reply, the SDK retries
    connection errors, 429 and 5xx and the guard an unusable 200, ``policy.request_retries`` times each."""
    import httpx
    import openai

    from bfcl_ext.reply_deadline import WholeReplyDeadline

    http_client = httpx.Client(
        event_hooks={
            "request": [lambda _request: stats.count_sent()],
            "response": [lambda response: stats.count_response(response.status_code)],
        },
        timeout=policy.request_timeout,
        transport=WholeReplyDeadline(
            policy.request_timeout, limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        ),
    )
    client = openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "EMPTY",  # vLLM without --api-key ignores it; the SDK insists on one
        timeout=policy.request_timeout,
        max_retries=policy.request_retries,
        http_client=http_client,
    )
    return _GuardedClient(client, stats, policy, request or RequestSettings())


# ---------------------------------------------------------------- a session: handler + files


@dataclass
class Session:
    handler: Any
    registry_name: str
    mode: str
    result_dir: Path
    score_dir: Path
    stats: RequestStats
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model_dir(self) -> str:
        return self.handler.registry_dir_name


def open_session(
    model: str,
    served_name: str,
    client: Any,
    stats: RequestStats,
    temperature: float,
    output_dir: Path,
) -> Session:
    """A handler for ``model`` that talks to our client, and the folders it writes to. A handler
    that formats prompts on the client still needs its tokenizer: ``load_tokenizer``, once the
    server is ready."""
    handler, registered = _new_handler(model, served_name, temperature)
    handler.client = client
    name = type(handler).__name__
    if _is_prompt_handler(handler):
        style = "BFCL's function-calling format" if handler.is_fc_model else "prompt mode"
        mode = (f"prompt: /v1/completions, prompts formatted by BFCL's {name} on the client ({style}): "
                f"{model!r} is a BFCL registry name")
    elif registered:
        mode = (f"function-calling: /v1/chat/completions with tools, the calls parsed by the server's tool parser: "
                f"{model!r} is not a BFCL registry name")
    else:
        mode = f"function-calling: /v1/chat/completions with tools (BFCL's {name}): {model!r} is a BFCL registry name"
    return Session(handler, model, mode, output_dir / "result", output_dir / "score", stats)


def model_to_load(model: str) -> str:
    """What a managed vLLM loads for ``model``: a BFCL registry name of a model served locally (one
    whose handler formats prompts on the client, e.g. ``Qwen/Qwen3-8B-FC``) names its Hugging Face
    model (``Qwen/Qwen3-8B``), as upstream serves it; any other name is loaded as given."""
    from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler

    config = _registry_table().get(model)
    if config is None or not issubclass(registry.handler_class(config), OSSHandler):
        return model
    return str(config.model_name)


def needs_tokenizer(session: Session) -> bool:
    return _is_prompt_handler(session.handler)


def _new_handler(model: str, served_name: str, temperature: float) -> tuple[Any, bool]:
    """BFCL's handler for ``model``, without a client (a name BFCL does not know is registered first)."""
    table = _registry_table()
    registered = model not in table
    if registered:
        _register_served_model(model, served_name)
    config = table[model]
    handler = _openai_compatible(model, registry.handler_class(config))(
        model_name=config.model_name, temperature=temperature, registry_name=model, is_fc_model=config.is_fc_model
    )
    if not _is_prompt_handler(handler):
        handler.model_name = served_name  # the `model` field of each request
    return handler, registered


def _openai_compatible(model: str, handler_class: type) -> type:
    """The handler class, made to build without OPENAI_API_KEY (its client is replaced by ours).

    Handlers for vendor APIs (Anthropic, Gemini, ...) cannot talk to an OpenAI-compatible server.
    """
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler
    from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler

    if issubclass(handler_class, OSSHandler):
        return handler_class
    if not issubclass(handler_class, OpenAICompletionsHandler):
        raise ConfigError(
            "BFCL_EXT_MODEL/--model", model,
            f"BFCL's registry scores this model through {handler_class.__name__}, a vendor API; bfcl-ext talks to "
            "OpenAI-compatible servers: use the name your server serves (it is then scored in function-calling mode)",
        )
    return type(handler_class.__name__, (handler_class,), {"_build_client_kwargs": lambda _self: {"api_key": "unused"}})


def _is_prompt_handler(handler: Any) -> bool:
    from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler

    return isinstance(handler, OSSHandler)


def load_tokenizer(session: Session, served_name: str, tokenizer: Path | None, served_root: str | None) -> str:
    """What upstream's spin_up_local_server does for a server it did not start, minus its unbounded,
    unauthenticated readiness loop and its hub downloads: the tokenizer and context length of a
    handler that formats prompts on the client, offline. ``--tokenizer`` when given; else the
    Hugging Face cache (the server has filled it by now: a managed vLLM, compose's shared cache), else
    the folder the server loaded (``root`` in /v1/models, readable here for SLURM's --model-path).
    Returns where it was found."""
    from transformers import AutoConfig, AutoTokenizer

    handler = session.handler
    hub_id = handler.model_name_huggingface
    if tokenizer is not None:
        sources = [str(tokenizer)]
    else:
        sources = [hub_id] + ([served_root] if served_root and Path(served_root).is_dir() else [])
    problems = []
    for source in sources:
        try:
            handler.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=True)
            model_config = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=True)
        except (OSError, ValueError) as error:
            problems.append(f"{source}: {str(error).splitlines()[0][:160]}")
            continue
        handler.max_context_length = getattr(model_config, "max_position_embeddings", None) or (
            handler.tokenizer.model_max_length
        )
        handler.model_path_or_id = served_name  # the `model` field of each request
        return source
    looked = "--tokenizer" if tokenizer is not None else "the Hugging Face cache, then the folder the server loaded"
    raise ConfigError(
        "BFCL_EXT_TOKENIZER/--tokenizer",
        str(tokenizer) if tokenizer else None,
        f"{type(handler).__name__} formats prompts on the client and needs the tokenizer of {hub_id} on "
        f"local disk ({looked}; nothing is downloaded): " + "; ".join(problems),
    )


# ---------------------------------------------------------------- entries and result files


def load_entries(categories: Sequence[str], limit: int | None = None) -> list[dict[str, Any]]:
    """The test entries to answer, in BFCL's order, with BFCL's own preprocessing (``select_entries``)."""
    from bfcl_eval.utils import load_dataset_entry

    return select_entries([entry for category in categories for entry in load_dataset_entry(category)], limit)


def select_entries(entries: Sequence[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` questions of each category of ``entries`` (all of them without a limit).

    ``limit`` counts a category's questions: a memory question keeps the prerequisite
    conversations it depends on, or it would be asked of an empty memory.
    """
    if not limit:
        return list(entries)
    by_category: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_category.setdefault(category_of(entry["id"]), []).append(entry)
    return [entry for group in by_category.values() for entry in _first_questions(group, limit)]


def _first_questions(entries: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    questions = [entry for entry in entries if "prereq" not in entry["id"]][:limit]
    needed = {entry["id"] for entry in questions} | {
        parent for entry in questions for parent in entry.get("depends_on", [])
    }
    return [entry for entry in entries if entry["id"] in needed]


def result_files(session: Session) -> list[Path]:
    """The model's result files, each a regular file (or a link to one); anything else at a result
    path is an ``OutputError`` naming it (never opened: a FIFO would block the run forever)."""
    base = session.result_dir / session.model_dir
    paths = sorted(base.rglob("*_result.json")) if base.exists() else []
    for path in paths:
        _require_regular_file(path)
    return paths


def _require_regular_file(path: Path) -> None:
    import stat

    from bfcl_ext.errors import OutputError

    try:
        linked = stat.S_ISLNK(os.lstat(path).st_mode)
        mode = os.stat(path).st_mode  # a link is followed, to see what it stands for
    except FileNotFoundError:
        raise OutputError(path, "not a regular file (a link to nothing); remove it") from None
    except OSError as error:
        raise OutputError(path, error.strerror or str(error)) from None
    if not stat.S_ISREG(mode):
        kind = _file_kind(mode)
        raise OutputError(path, f"not a regular file ({'a link to ' + kind if linked else kind}); remove it "
                          "or move it away")


def _require_regular_files_under(folder: Path) -> None:
    """Every file under ``folder`` a regular file (or a link to one), as ``_require_regular_file``."""
    for directory, _, names in os.walk(folder):
        for name in names:
            _require_regular_file(Path(directory) / name)


def _file_kind(mode: int) -> str:
    import stat

    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "something else")


def result_file_name(entry_id: str) -> str:
    """The result file BFCL's handler appends ``entry_id``'s answer to, relative to the model's folder."""
    from bfcl_eval.utils import extract_test_category_from_id, get_directory_structure_by_id

    return (f"{get_directory_structure_by_id(entry_id)}/"
            f"{_version_prefix()}_{extract_test_category_from_id(entry_id)}_result.json")


def result_path(session: Session, entry_id: str) -> Path:
    return session.result_dir / session.model_dir / result_file_name(entry_id)


def ids_by_result_file(entries: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """The ids each result file (``result_file_name``) may hold: those of ``entries`` BFCL writes there."""
    by_file: dict[str, set[str]] = {}
    for entry in entries:
        by_file.setdefault(result_file_name(entry["id"]), set()).add(entry["id"])
    return by_file


def entry_ids_by_file(session: Session, entries: Iterable[dict[str, Any]]) -> dict[Path, set[str]]:
    base = session.result_dir / session.model_dir
    return {base / name: ids for name, ids in ids_by_result_file(entries).items()}


def repair_result_files(session: Session, entries: Sequence[dict[str, Any]] = ()) -> dict[str, int]:
    """Keep only complete, parseable result lines, each id once; rewrite a file atomically if needed.

    A run killed mid-write can leave a torn last line; an older tool may have written
    "Error during inference" answers for transport failures. Both are dropped (and asked again).
    In the files of ``entries`` (every entry of the run's categories, not only those selected), a
    line whose id is none of them is no answer either (an edited id BFCL cannot even sort,
    ``simple_python_0x``): dropped, and its entry, if missing, asked again.
    """
    dropped = {"torn_lines": 0, "duplicates": 0, "transport_errors": 0, "unknown_ids": 0}
    known = entry_ids_by_file(session, entries)
    for path in result_files(session):
        kept, changed = _clean_lines(path, dropped, known.get(path))
        if changed:
            _atomic_write_lines(path, kept)
    return dropped


def _clean_lines(path: Path, dropped: dict[str, int], known: set[str] | None) -> tuple[list[str], bool]:
    seen: set[str] = set()
    kept: list[str] = []
    raw = path.read_bytes()
    changed = bool(raw) and not raw.endswith(b"\n")
    # split on "\n" only: str.splitlines() also splits at U+2028 and U+0085, which a JSON line written
    # with ensure_ascii=False (upstream's) may hold unescaped
    for raw_line in filter(None, raw.split(b"\n")):
        try:
            line = raw_line.decode("utf-8")
            entry = json.loads(line)
            entry_id = entry["id"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            dropped["torn_lines"] += 1
            changed = True
            continue
        if not isinstance(entry_id, str) or (known is not None and entry_id not in known):
            dropped["unknown_ids"] += 1
            changed = True
        elif entry_id in seen:
            dropped["duplicates"] += 1
            changed = True
        elif _is_transport_error_answer(entry.get("result")):
            dropped["transport_errors"] += 1
            changed = True
        else:
            seen.add(entry_id)
            kept.append(line)
    return kept, changed


def _is_transport_error_answer(result: Any) -> bool:
    """An "Error during inference" line an older version wrote for a server fault, not a model answer:
    a failed connection, a 5xx or 429, or a 200 the client could not use (the body not JSON: the
    SDK's JSONDecodeError; a null message or no usage: the handler's AttributeError on None)."""
    import re

    if not (isinstance(result, str) and result.startswith("Error during inference:")):
        return False
    markers = ("Connection", "Timeout", "InternalServerError", "RateLimit", "HTTP 5", "JSONDecodeError",
               "APIResponseValidationError")
    unusable_reply = (
        r"line \d+ column \d+ \(char \d+\)$"  # str(JSONDecodeError): "Expecting value: line 1 column 1 (char 0)"
        r"|'NoneType' object has no attribute '(choices|message|content|tool_calls|text|usage|prompt_tokens"
        r"|completion_tokens)'"
    )
    return any(marker in result for marker in markers) or re.search(unusable_reply, result) is not None


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    _atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def answered_ids(session: Session) -> set[str]:
    ids: set[str] = set()
    for path in result_files(session):
        with path.open(encoding="utf-8") as handle:
            ids.update(json.loads(line)["id"] for line in handle if line.strip())
    return ids


def pending_entries(session: Session, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries with no answer on disk yet, prepared the way upstream's generate prepares them."""
    _registry_table()  # installed before _llm_response_generation imports it
    from bfcl_eval._llm_response_generation import (
        clean_up_memory_prereq_entries,
        populate_initial_settings_for_memory_test_cases,
        populate_initial_settings_for_web_search_test_cases,
    )
    from bfcl_eval.utils import is_format_sensitivity, sort_key

    done = answered_ids(session)
    todo = [copy.deepcopy(entry) for entry in entries if entry["id"] not in done]
    if session.handler.is_fc_model:
        todo = [entry for entry in todo if not is_format_sensitivity(entry["id"])]
    todo = clean_up_memory_prereq_entries(todo)
    todo = populate_initial_settings_for_memory_test_cases(todo, session.result_dir / session.model_dir)
    todo = populate_initial_settings_for_web_search_test_cases(todo)
    return sorted(todo, key=sort_key)


def category_of(entry_id: str) -> str:
    from bfcl_eval.utils import extract_test_category_from_id

    return extract_test_category_from_id(entry_id, remove_prereq=True)


def sort_key(entry: dict[str, Any]) -> Any:
    from bfcl_eval.utils import sort_key as bfcl_sort_key

    return bfcl_sort_key(entry)


def answer(session: Session, entry: dict[str, Any]) -> dict[str, Any]:
    """Ask the model about one entry; returns the line to write, or raises ``TransportError``.

    Exceptions other than transport errors are the model's doing (a malformed call that breaks
    a multi-turn execution, a request the server refuses as invalid): upstream writes them as
    the answer and scores them wrong, and so do we. A tool that broke under the model (a web
    search that failed) is not the model's doing: the whole entry is asked again later.
    """
    _forget_tool_state(session, entry)
    tool_failures: list[str] = []
    _tool_failures.current = tool_failures
    try:
        result, metadata = session.handler.inference(copy.deepcopy(entry), False, False)
    except TransportError:
        raise
    except Exception as error:  # noqa: BLE001 - upstream's own rule: the model's failure is its answer
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
            # a tool's own file (a memory backend saving its state) met a full or read-only disk
            from bfcl_ext.errors import OutputError

            raise OutputError(error.filename or session.result_dir, error.strerror or str(error)) from error
        if isinstance(error.__cause__, TransportError) or isinstance(error.__context__, TransportError):
            raise TransportError(str(error)) from None
        result, metadata = f"Error during inference: {error}", {"error_type": type(error).__name__}
    finally:
        _tool_failures.current = None
        _forget_tool_state(session, entry)
    if tool_failures:
        raise TransportError(f"a tool failed under the model: {tool_failures[0]}")
    return {"id": entry["id"], "result": result, **metadata}


DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
_tool_failures = threading.local()  # .current: the failures of the entry this thread is answering


def _forget_tool_state(session: Session, entry: dict[str, Any]) -> None:
    """Drop the tool instances (file system, memory, ...) bfcl-eval keeps per entry in a module global.

    Upstream creates them once per process and reuses them on every later call for the same
    entry id, so an entry asked again after a transport failure would start from the state its
    failed attempt left behind. Dropping them before each attempt gives every attempt the
    entry's initial state; dropping them after keeps memory flat over thousands of entries.
    """
    import re

    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    model = getattr(session.handler, "model_name_underline_replaced", None)
    if model is None or not entry.get("involved_classes"):
        return
    for class_name in entry["involved_classes"]:
        name = re.sub(r"[-./:]", "_", f"{model}_{entry['id']}_{class_name}_instance")
        vars(multi_turn_utils).pop(name, None)


def write_answer(session: Session, line: dict[str, Any]) -> None:
    """Append one answer; a single writer at a time, flushed before returning.

    An answer that cannot be written (read-only folder, disk full, no permission, quota, something
    other than a regular file put at its path) raises ``OutputError`` naming the file and the
    cause; a line cut short by a full disk is cut off again, so the file keeps whole lines only
    (and every answer written before).
    """
    from bfcl_ext.errors import OutputError

    path = result_path(session, line["id"])  # the file upstream's handler.write appends to
    with session.write_lock:
        if os.path.lexists(path):
            _require_regular_file(path)  # a FIFO put there mid-run would block handler.write's open forever
        try:
            size: int | None = path.stat().st_size
        except FileNotFoundError:
            size = 0
        except OSError:
            size = None  # not knowable: nothing is cut off
        try:
            session.handler.write(line, result_dir=session.result_dir, update_mode=False)
        except OSError as error:
            try:
                if size is not None and path.stat().st_size > size:
                    os.truncate(path, size)
            except OSError:
                pass  # then the next run's repair_result_files drops the torn last line
            raise OutputError(error.filename or path, error.strerror or str(error)) from error


def sort_result_files(session: Session, entries: Sequence[dict[str, Any]]) -> None:
    """Sort the result files of ``entries`` by id, atomically (upstream's sort truncates and rewrites
    in place, so a kill or a signal in the middle would lose answers already on disk). Other files
    (categories this run did not repair) stay as they are."""
    ours = entry_ids_by_file(session, entries)
    for path in result_files(session):
        if path not in ours:
            continue
        lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        ordered = [line for _, line in sorted(((sort_key(json.loads(line)), line) for line in lines),
                                              key=lambda pair: pair[0])]
        if ordered != lines:
            _atomic_write_lines(path, ordered)


# ---------------------------------------------------------------- memory: the backend's state on resume


def restore_memory_snapshots(session: Session, entries: Sequence[dict[str, Any]]) -> list[str]:
    """Make each memory scenario's state equal what its answered prerequisites left; returns what changed.

    bfcl-eval's memory backends keep their state in files beside the results
    (``memory_snapshot/<scenario>_final.json``, plus one checkpoint per prerequisite
    conversation), written at the end of each prerequisite, before its answer reaches the
    result file. A kill in between leaves a state one conversation ahead of the answers: asked
    again, that conversation would be applied twice. So on every start the state is rebuilt
    from the checkpoint of the last prerequisite whose answer is on disk (or cleared when none is).
    A scenario whose questions are all answered needs no state; one whose checkpoint is lost has
    its prerequisite conversations asked again (they are not scored; its questions' answers stay).
    """
    from bfcl_eval.utils import get_directory_structure_by_id

    answered = answered_ids(session)
    changes: list[str] = []
    for chain in _prerequisite_chains(entries):
        first = chain[0]
        questions = [e["id"] for e in entries if "prereq" not in e["id"] and e.get("scenario") == first["scenario"]
                     and category_of(e["id"]) == category_of(first["id"])]
        if all(question in answered for question in questions):
            continue
        done = []
        for entry in chain:  # only a prefix can be answered: each depends on all before it
            if entry["id"] not in answered:
                break
            done.append(entry["id"])
        model_results = session.result_dir / session.model_dir
        folder = model_results / get_directory_structure_by_id(first["id"]) / "memory_snapshot"
        state = folder / f"{first['scenario']}_final.json"
        saved = _checkpoint(folder, done[-1]) if done else None
        if done and saved is None:
            _forget_answers(session, {entry["id"] for entry in chain})
            changes.append(f"{state.name}: the checkpoint of {done[-1]} is missing or damaged; the "
                           f"{len(done)} prerequisite conversations of {first['scenario']} are asked again")
            done = []
        if not done:
            if state.exists():
                state.unlink()
                changes.append(f"{state.name}: cleared (no prerequisite answered yet)")
            continue
        if not state.exists() or state.read_bytes() != saved:
            _atomic_write_bytes(state, saved)
            changes.append(f"{state.name}: restored from {done[-1]}.json")
    return changes


def _checkpoint(folder: Path, entry_id: str) -> bytes | None:
    try:
        saved = (folder / "prereq_checkpoints" / f"{entry_id}.json").read_bytes()
        json.loads(saved)
    except (OSError, ValueError):
        return None
    return saved


def _forget_answers(session: Session, ids: set[str]) -> None:
    """Drop these entries' lines from the result files (atomically), so that they are asked again."""
    for path in result_files(session):
        lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        kept = [line for line in lines if json.loads(line)["id"] not in ids]
        if len(kept) != len(lines):
            _atomic_write_lines(path, kept)


def _prerequisite_chains(entries: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each memory category's prerequisite conversations per scenario, in the order they build on each other."""
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in entries:
        if "prereq" in entry["id"] and "scenario" in entry:
            chains.setdefault((category_of(entry["id"]), entry["scenario"]), []).append(entry)
    return [sorted(chain, key=lambda e: len(e.get("depends_on", []))) for chain in chains.values()]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# ---------------------------------------------------------------- web search: SerpAPI, bounded, failures seen


@dataclass
class SearchStats:
    calls: int = 0
    failed: int = 0
    retried: int = 0  # requests sent again after a failure (5xx, 429, no answer, a bad body)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, ok: bool, retries: int) -> None:
        with self.lock:
            self.calls += 1
            self.failed += 0 if ok else 1
            self.retried += retries


class _SearchService:
    """What bfcl-eval's web search tool calls instead of ``serpapi.GoogleSearch``.

    Upstream's client waits up to 60,000 s for an answer, retries a 429 forever, puts the key
    in error messages (the request URL), and hands any other failure to the model as the
    tool's result, to be scored as if the model had failed. Here a request is bounded,
    retried a few times with backoff, and a search that still fails is recorded for the entry
    being answered, so the entry is asked again instead of scored (see ``answer``).
    """

    RETRYABLE = {408, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, api_key: str, policy: RetryPolicy, stats: SearchStats) -> None:
        self._url = base_url.rstrip("/") + "/search"
        self._api_key = api_key
        self._timeout = policy.request_timeout
        self._policy = policy
        self.stats = stats

    def client(self, params: dict[str, Any]) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(get_dict=lambda: self.search(params))

    def search(self, params: dict[str, Any]) -> dict[str, Any]:
        import time

        query = {key: value for key, value in params.items() if key != "api_key" and value is not None}
        query.update(api_key=self._api_key, output="json", source="python")
        problem = "no attempt"
        for attempt in range(self._policy.request_retries + 1):
            if attempt:
                time.sleep(self._policy.before_search_retry(attempt))
            payload, problem, retry = self._once(query)
            if payload is not None:
                self.stats.count(ok=True, retries=attempt)
                return payload
            if not retry:
                break
        self.stats.count(ok=False, retries=attempt)
        failures = getattr(_tool_failures, "current", None)
        if failures is not None:
            failures.append(f"web search: {problem}".replace(self._api_key, "<redacted>") if self._api_key
                            else f"web search: {problem}")
        # never "429" in this text: upstream would retry it forever
        return {"error": "The search service failed; the search was not run."}

    def _once(self, query: dict[str, Any]) -> tuple[dict[str, Any] | None, str, bool]:
        """(results, why not, worth retrying); messages never carry the URL (the key is in it)."""
        import time

        import requests

        # requests' timeout bounds each read, not the answer: a body sent a byte at a time would
        # never time out. The whole answer gets the request timeout: then the connection is closed.
        deadline = time.monotonic() + self._timeout
        try:
            with requests.get(self._url, params=query, timeout=self._timeout, stream=True) as response:
                if response.status_code != 200:
                    return (None, f"HTTP {response.status_code} from the search service",
                            response.status_code in self.RETRYABLE)
                watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (response,))
                watchdog.start()
                try:
                    body = response.content
                finally:
                    watchdog.cancel()
        except (requests.RequestException, AttributeError, ValueError) as error:
            if time.monotonic() >= deadline:  # the watchdog closed it (urllib3 may then raise odd errors)
                return None, f"the search service took over {self._timeout:g} s to answer", True
            return None, f"{type(error).__name__} (no answer from the search service)", True
        if time.monotonic() >= deadline:
            return None, f"the search service took over {self._timeout:g} s to answer", True
        try:
            payload = json.loads(bytes(body))
        except ValueError:
            return None, "the search service answered with a body that is not JSON", True
        if not isinstance(payload, dict):
            return None, "the search service answered with JSON that is not an object", False
        if "organic_results" in payload:
            return payload, "", False
        if "hasn't returned any results" in str(payload.get("error", "")):
            # SerpAPI's answer to a query that found nothing: the search worked. Upstream would tell
            # the model "Failed to retrieve the search results from server"; an empty list is the truth.
            return {**payload, "organic_results": []}, "", False
        error = str(payload.get("error", "no results field"))
        return None, f"the search service answered without results ({error[:80]})", False


def _abort(response: Any) -> None:
    """Wake a read blocked on ``response``: shut its socket down (closing the response from another
    thread does not). The socket sits under urllib3 and http.client; without one, close."""
    import socket

    sock = getattr(getattr(response.raw, "_connection", None), "sock", None)
    if sock is None:
        sock = getattr(getattr(getattr(getattr(response.raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        else:
            response.close()
    except OSError:
        pass


def install_web_search(base_url: str, api_key: str, policy: RetryPolicy) -> SearchStats:
    """Route bfcl-eval's web search tool through ``_SearchService`` (module attribute, set once per run)."""
    from bfcl_eval.eval_checker.multi_turn_eval.func_source_code import web_search

    stats = SearchStats()
    web_search.GoogleSearch = _SearchService(base_url, api_key, policy, stats).client
    return stats


# ---------------------------------------------------------------- memory_vector


def load_memory_vector() -> None:
    """Import bfcl-eval's vector memory backend, which loads its embedding model at import time
    (``bfcl_ext.embeddings.use_embedding_model`` says which, first)."""
    importlib.import_module("bfcl_eval.eval_checker.multi_turn_eval.func_source_code.memory_vector")


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class CategoryScore:
    accuracy: float
    correct: int
    total: int


def evaluate(
    session: Session, categories: Sequence[str], partial: bool, selected: set[str] | None = None
) -> dict[str, CategoryScore]:
    """Score each category with BFCL's checker; write BFCL's score files and leaderboard CSVs.

    ``selected``: the entries to score (the run's selection); answers on disk to other entries of
    the same category (an earlier run's, with a larger ``--limit``) are left as they are, unscored.
    """
    _registry_table()  # installed before eval_runner imports it
    from bfcl_eval.eval_checker import eval_runner
    from bfcl_eval.eval_checker.eval_runner_helper import (
        generate_leaderboard_csv,
        update_leaderboard_table_with_local_score_file,
    )
    from bfcl_eval.utils import (
        get_directory_structure_by_category,
        get_file_name_by_category,
        is_memory_prereq,
        load_file,
    )

    session.score_dir.mkdir(parents=True, exist_ok=True)
    _require_regular_files_under(session.score_dir)  # BFCL opens its score files and CSVs: a FIFO would block
    table: dict[str, Any] = {}
    scores: dict[str, CategoryScore] = {}
    model_results = session.result_dir / session.model_dir
    for category in categories:
        if is_memory_prereq(category):
            continue
        path = model_results / get_directory_structure_by_category(category) / get_file_name_by_category(
            category, is_result_file=True
        )
        if not path.exists():
            continue
        results = sorted((line for line in load_file(path) if selected is None or line["id"] in selected),
                         key=sort_key)
        eval_runner.evaluate_task(
            category, session.result_dir, session.score_dir, results, session.model_dir,
            session.handler, table, allow_missing=partial,
        )
        scores[category] = _read_score(session, category)
    update_leaderboard_table_with_local_score_file(table, session.score_dir)
    # an output folder reused for another model holds its scores too: the row is this model's, and
    # counts the categories scored here only (an earlier run's score files of others stay unread)
    table = {name: {category: score for category, score in row.items() if category in scores}
             for name, row in table.items() if name == session.model_dir}
    try:
        generate_leaderboard_csv(table, session.score_dir)
    except (ValueError, ZeroDivisionError, KeyError) as error:  # statistics.stdev needs two latencies
        print(f"bfcl-ext: leaderboard CSV not written ({type(error).__name__}: {error})")
    return scores


def rescore(
    model: str, served_name: str, result_dir: Path, score_dir: Path, categories: Sequence[str], partial: bool,
    limit: int | None = None,
) -> dict[str, CategoryScore]:
    """Score answers already on disk again, with no server: BFCL's checker writes into ``score_dir``.

    The handler is built as for a run (it decodes the answers) but gets no client and, for
    prompt-mode models, no tokenizer: decoding needs neither. Only the entries a run with
    ``limit`` selects are scored, as the run scored them.
    """
    handler, _ = _new_handler(model, served_name, temperature=0.0)
    selected = {entry["id"] for entry in load_entries(categories, limit)}
    session = Session(handler, model, "re-score", result_dir, score_dir, RequestStats())
    return evaluate(session, categories, partial, selected)


def _read_score(session: Session, category: str) -> CategoryScore:
    from bfcl_eval.utils import get_directory_structure_by_category

    path = (
        session.score_dir / session.model_dir / get_directory_structure_by_category(category)
        / f"{_version_prefix()}_{category}_score.json"
    )
    with path.open(encoding="utf-8") as handle:
        header = json.loads(handle.readline())
    return CategoryScore(header["accuracy"], header["correct_count"], header["total_count"])


def _version_prefix() -> str:
    from bfcl_eval.constants.category_mapping import VERSION_PREFIX

    return VERSION_PREFIX


# ---------------------------------------------------------------- the stand-in's reading (bfcl_ext.standin)
# The stand-in reads BFCL's data and runs its multi-turn executor, never its evaluator; each of
# these imports bfcl_eval on first use, under a scratch project root unless one is already set.


def use_scratch_project_root() -> None:
    """A throwaway BFCL_PROJECT_ROOT, unless one is set: bfcl-eval creates result/, score/ and
    .file_locks/ under it when imported (without it they land in site-packages)."""
    import tempfile

    if "BFCL_PROJECT_ROOT" not in process_environment():
        export_for_libraries({"BFCL_PROJECT_ROOT": tempfile.mkdtemp(prefix="bfcl-ext-standin-")})


def dataset_entries(category: str) -> list[dict[str, Any]]:
    """The category's entries as bfcl-eval loads them (functions populated), without language hints."""
    use_scratch_project_root()
    from bfcl_eval.utils import load_dataset_entry

    return load_dataset_entry(category, include_language_specific_hint=False)


def ground_truth_entries(category: str) -> list[dict[str, Any]]:
    """The category's ground truth, one ``{"id", "ground_truth"}`` per entry."""
    use_scratch_project_root()
    from bfcl_eval.utils import load_ground_truth_entry

    return load_ground_truth_entry(category)


def memory_agent_settings() -> dict[str, str]:
    """Memory scenario -> the setting text that opens its system prompt."""
    use_scratch_project_root()
    from bfcl_eval.constants.default_prompts import MEMORY_AGENT_SETTINGS

    return dict(MEMORY_AGENT_SETTINGS)


def added_functions_prompt() -> str:
    """The user prompt bfcl-eval sends with a miss_func entry's held-back functions (FC mode)."""
    use_scratch_project_root()
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC

    return DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC


def multi_turn_doc_files() -> list[Path]:
    """bfcl-eval's multi-turn function docs, one JSON-lines file per class, sorted."""
    use_scratch_project_root()
    from bfcl_eval.constants.eval_config import MULTI_TURN_FUNC_DOC_PATH

    return sorted(MULTI_TURN_FUNC_DOC_PATH.glob("*.json"))


def execute_multi_turn_calls(
    calls: list[str], initial_config: dict[str, Any], involved_classes: list[str], model_name: str,
    entry_id: str, long_context: bool,
) -> tuple[list[str], dict[str, Any]]:
    """bfcl-eval's ``execute_multi_turn_func_call``: the calls' results and the class instances,
    kept in its module's globals under names made from ``model_name`` (see ``forget_multi_turn_model``)."""
    use_scratch_project_root()
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    return multi_turn_utils.execute_multi_turn_func_call(
        calls, initial_config, involved_classes, model_name, entry_id, long_context=long_context)


def forget_multi_turn_model(model_name: str) -> None:
    """Drop every instance ``execute_multi_turn_calls`` keeps for ``model_name``."""
    import re

    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    prefix = re.sub(r"[-./:]", "_", f"{model_name}_")
    namespace = vars(multi_turn_utils)
    for key in [k for k in list(namespace) if k.startswith(prefix)]:
        namespace.pop(key, None)
