"""The one module that imports ``bfcl_eval``: registry, datasets, handlers, result files, checker.

bfcl-eval is used as a library, never copied: its datasets, its model handlers (prompt
formatting, tool compilation, response decoding, multi-turn execution) and its evaluator.
What bfcl_ext adds here is the glue upstream lacks: a model served under any name becomes a
registry entry at run time, the handler gets an OpenAI client configured by us (base URL, key,
timeout, retries), and transport failures raise instead of being written down as answers.

Import cost: ``expand_categories`` and ``dataset_path`` touch only light modules; everything
else imports the evaluator (5-9 s), and needs ``use_project_root`` first.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bfcl_ext.errors import ConfigError
from bfcl_ext.provenance import sha256_file

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
        raise ConfigError("bfcl-eval", "not installed", "run scripts/install.sh (or pip install 'bfcl-ext[full]')")
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


def dataset_path(category: str) -> Path:
    from bfcl_eval.constants.category_mapping import VERSION_PREFIX

    return _package_dir() / "data" / f"{VERSION_PREFIX}_{category}.json"


def ground_truth_path(category: str) -> Path:
    from bfcl_eval.constants.category_mapping import VERSION_PREFIX

    return _package_dir() / "data" / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"


def dataset_hashes(categories: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """sha256 of each category's prompts and ground truth (None where a category has none)."""
    hashes: dict[str, dict[str, str | None]] = {}
    for category in categories:
        answers = ground_truth_path(category)
        hashes[category] = {
            "dataset": sha256_file(dataset_path(category)) if dataset_path(category).exists() else None,
            "ground_truth": sha256_file(answers) if answers.exists() else None,
        }
    return hashes


def check_datasets(categories: Iterable[str]) -> None:
    """Every dataset file exists and each line is JSON with an id (a damaged install fails here)."""
    for category in categories:
        for path in (dataset_path(category), ground_truth_path(category)):
            if path == ground_truth_path(category) and not path.exists():
                continue  # irrelevance-type categories have no ground truth
            _check_json_lines(category, path)


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
    os.environ["BFCL_PROJECT_ROOT"] = str(root)
    # prompt-mode handlers load tokenizers with transformers: never wait on a hub we cannot reach
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


# ---------------------------------------------------------------- the registry


def registry_models() -> dict[str, dict[str, Any]]:
    """BFCL's own registry: name -> display name, mode, handler."""
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING

    return {
        name: {
            "display_name": config.display_name,
            "function_calling": bool(config.is_fc_model),
            "handler": config.model_handler.__name__,
        }
        for name, config in sorted(MODEL_CONFIG_MAPPING.items())
    }


def is_registry_model(name: str) -> bool:
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING

    return name in MODEL_CONFIG_MAPPING


def _register_served_model(registry_name: str, served_name: str) -> None:
    """Make a model BFCL has never heard of scoreable in function-calling mode (chat + tools)."""
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING, ModelConfig
    from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler

    config = ModelConfig(
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
    MODEL_CONFIG_MAPPING[registry_name] = config
    # The evaluator maps result folder names back with '_' -> '/'; make that name resolve too.
    MODEL_CONFIG_MAPPING.setdefault(registry_name.replace("/", "_").replace("_", "/"), config)


# ---------------------------------------------------------------- the client bfcl-eval's handlers use


@dataclass
class RequestStats:
    """What went over the wire (retries happen inside the OpenAI client; these count them)."""

    sent: int = 0
    ok: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_call(self) -> None:
        with self.lock:
            self.calls += 1

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
        }


class _GuardedCreate:
    """Wraps ``client.<x>.completions.create``: our timeout, no silent bad answers, no endless 429 loop."""

    def __init__(self, create: Callable[..., Any], stats: RequestStats) -> None:
        self._create = create
        self._stats = stats

    def create(self, **kwargs: Any) -> Any:
        import openai

        kwargs.pop("timeout", None)  # upstream passes 72000 s; the client's timeout applies instead
        self._stats.count_call()
        try:
            response = self._create(**kwargs)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
            raise TransportError(_describe(error)) from None
        except openai.APIStatusError as error:
            if error.status_code in (401, 403, 404, 408, 409) or error.status_code >= 500:
                raise TransportError(_describe(error)) from None
            raise  # 400 and friends: the request itself was refused; upstream scores it as wrong
        except openai.APIResponseValidationError as error:
            raise TransportError(f"malformed response: {error.message}") from None
        if not getattr(response, "choices", None):
            raise TransportError("the server answered without choices")
        return response


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    text = type(error).__name__ + (f" (HTTP {status})" if status else "")
    cause = error.__cause__ or error.__context__
    return f"{text}: {cause.__class__.__name__}" if cause and not status else text


class _GuardedClient:
    """Looks like ``openai.OpenAI`` to a handler; the two completion endpoints are guarded."""

    def __init__(self, client: Any, stats: RequestStats) -> None:
        from types import SimpleNamespace

        self._client = client
        self.chat = SimpleNamespace(completions=_GuardedCreate(client.chat.completions.create, stats))
        self.completions = _GuardedCreate(client.completions.create, stats)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def make_client(base_url: str, api_key: str | None, timeout: float, max_retries: int, stats: RequestStats) -> Any:
    import httpx
    import openai

    http_client = httpx.Client(
        event_hooks={
            "request": [lambda _request: stats.count_sent()],
            "response": [lambda response: stats.count_response(response.status_code)],
        },
        timeout=timeout,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
    )
    client = openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "EMPTY",  # vLLM without --api-key ignores it; the SDK insists on one
        timeout=timeout,
        max_retries=max_retries,
        http_client=http_client,
    )
    return _GuardedClient(client, stats)


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
    tokenizer: Path | None,
) -> Session:
    """A handler for ``model`` that talks to our client, and the folders it writes to."""
    handler, registered = _new_handler(model, served_name, temperature)
    handler.client = client
    if _is_prompt_handler(handler):
        _prepare_prompt_handler(handler, served_name, tokenizer)
        mode = f"prompt: /v1/completions, prompts formatted by BFCL's {type(handler).__name__}"
    else:
        origin = "registered by bfcl-ext" if registered else f"BFCL's {type(handler).__name__}"
        mode = f"function-calling: /v1/chat/completions with tools ({origin})"
    return Session(handler, model, mode, output_dir / "result", output_dir / "score", stats)


def _new_handler(model: str, served_name: str, temperature: float) -> tuple[Any, bool]:
    """BFCL's handler for ``model``, without a client (a name BFCL does not know is registered first)."""
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING

    registered = model not in MODEL_CONFIG_MAPPING
    if registered:
        _register_served_model(model, served_name)
    config = MODEL_CONFIG_MAPPING[model]
    handler = _openai_compatible(model, config.model_handler)(
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


def _prepare_prompt_handler(handler: Any, served_name: str, tokenizer: Path | None) -> None:
    """What upstream's spin_up_local_server does for a server it did not start, minus its unbounded,
    unauthenticated readiness loop and its hub downloads: tokenizer and context length, offline."""
    from transformers import AutoConfig, AutoTokenizer

    source = str(tokenizer) if tokenizer else handler.model_name_huggingface
    try:
        handler.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=True)
        model_config = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise ConfigError(
            "BFCL_EXT_TOKENIZER/--tokenizer",
            str(tokenizer) if tokenizer else None,
            f"{type(handler).__name__} formats prompts on the client and needs the tokenizer of "
            f"{handler.model_name_huggingface} on local disk (a folder, or the Hugging Face cache): "
            f"{str(error).splitlines()[0][:200]}",
        ) from None
    handler.max_context_length = getattr(model_config, "max_position_embeddings", None) or (
        handler.tokenizer.model_max_length
    )
    handler.model_path_or_id = served_name  # the `model` field of each request


# ---------------------------------------------------------------- entries and result files


def load_entries(categories: Sequence[str], limit: int | None) -> list[dict[str, Any]]:
    """The test entries to answer, in BFCL's order, with BFCL's own preprocessing."""
    from bfcl_eval.utils import load_dataset_entry

    entries: list[dict[str, Any]] = []
    for category in categories:
        category_entries = load_dataset_entry(category)
        entries.extend(category_entries[:limit] if limit else category_entries)
    return entries


def result_files(session: Session) -> list[Path]:
    base = session.result_dir / session.model_dir
    return sorted(base.rglob("*_result.json")) if base.exists() else []


def repair_result_files(session: Session) -> dict[str, int]:
    """Keep only complete, parseable result lines, each id once; rewrite a file atomically if needed.

    A run killed mid-write can leave a torn last line; an older tool may have written
    "Error during inference" answers for transport failures. Both are dropped (and asked again).
    """
    dropped = {"torn_lines": 0, "duplicates": 0, "transport_errors": 0}
    for path in result_files(session):
        kept, changed = _clean_lines(path, dropped)
        if changed:
            _atomic_write_lines(path, kept)
    return dropped


def _clean_lines(path: Path, dropped: dict[str, int]) -> tuple[list[str], bool]:
    seen: set[str] = set()
    kept: list[str] = []
    raw = path.read_bytes()
    changed = bool(raw) and not raw.endswith(b"\n")
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            entry_id = entry["id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped["torn_lines"] += 1
            changed = True
            continue
        if entry_id in seen:
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
    return isinstance(result, str) and result.startswith("Error during inference:") and any(
        marker in result for marker in ("Connection", "Timeout", "InternalServerError", "RateLimit", "HTTP 5")
    )


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def answered_ids(session: Session) -> set[str]:
    ids: set[str] = set()
    for path in result_files(session):
        with path.open(encoding="utf-8") as handle:
            ids.update(json.loads(line)["id"] for line in handle if line.strip())
    return ids


def pending_entries(session: Session, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries with no answer on disk yet, prepared the way upstream's generate prepares them."""
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
    the answer and scores them wrong, and so do we.
    """
    try:
        result, metadata = session.handler.inference(copy.deepcopy(entry), False, False)
    except TransportError:
        raise
    except Exception as error:  # noqa: BLE001 - upstream's own rule: the model's failure is its answer
        if isinstance(error.__cause__, TransportError) or isinstance(error.__context__, TransportError):
            raise TransportError(str(error)) from None
        result, metadata = f"Error during inference: {error}", {"error_type": type(error).__name__}
    return {"id": entry["id"], "result": result, **metadata}


def write_answer(session: Session, line: dict[str, Any]) -> None:
    """Append one answer; a single writer at a time, flushed before returning."""
    with session.write_lock:
        session.handler.write(line, result_dir=session.result_dir, update_mode=False)


def sort_result_files(session: Session) -> None:
    """Sort each result file by id, atomically (upstream's sort truncates and rewrites in place,
    so a kill or a signal in the middle would lose answers already on disk)."""
    for path in result_files(session):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        ordered = [line for _, line in sorted(((sort_key(json.loads(line)), line) for line in lines),
                                              key=lambda pair: pair[0])]
        if ordered != lines:
            _atomic_write_lines(path, ordered)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class CategoryScore:
    accuracy: float
    correct: int
    total: int


def evaluate(session: Session, categories: Sequence[str], partial: bool) -> dict[str, CategoryScore]:
    """Score each category with BFCL's checker; write BFCL's score files and leaderboard CSVs."""
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
        results = load_file(path, sort_by_id=True)
        eval_runner.evaluate_task(
            category, session.result_dir, session.score_dir, results, session.model_dir,
            session.handler, table, allow_missing=partial,
        )
        scores[category] = _read_score(session, category)
    update_leaderboard_table_with_local_score_file(table, session.score_dir)
    # an output folder reused for another model holds its scores too: the row is this model's
    table = {name: row for name, row in table.items() if name == session.model_dir}
    try:
        generate_leaderboard_csv(table, session.score_dir)
    except (ValueError, ZeroDivisionError, KeyError) as error:  # statistics.stdev needs two latencies
        print(f"bfcl-ext: leaderboard CSV not written ({type(error).__name__}: {error})")
    return scores


def rescore(
    model: str, served_name: str, result_dir: Path, score_dir: Path, categories: Sequence[str], partial: bool
) -> dict[str, CategoryScore]:
    """Score answers already on disk again, with no server: BFCL's checker writes into ``score_dir``.

    The handler is built as for a run (it decodes the answers) but gets no client and, for
    prompt-mode models, no tokenizer: decoding needs neither.
    """
    handler, _ = _new_handler(model, served_name, temperature=0.0)
    return evaluate(Session(handler, model, "re-score", result_dir, score_dir, RequestStats()), categories, partial)


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
