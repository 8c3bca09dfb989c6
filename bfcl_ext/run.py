"""One run: server ready -> generation -> retries -> evaluation -> summary, manifest, table."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bfcl_ext import bridge, concurrency, folder_lock, generation, provenance, readiness, record, run_identity
from bfcl_ext.config import AUTO_THREADS, DEFAULT_NUM_THREADS, SEARCH_KEY_VARIABLE, Settings, require_run_settings
from bfcl_ext.endpoint import Endpoint
from bfcl_ext.errors import ConfigError, EntriesFailedError, NotReadyError
from bfcl_ext.server import ManagedServer, choose_port, server_command
from bfcl_ext.signals import Interruptions

MIN_FREE_BYTES = 200 * 1024 * 1024
OUTPUT_SETTING = "BFCL_EXT_OUTPUT_DIR/--output-dir"


@dataclass(frozen=True)
class Server:
    """Where the run talks to, and the managed process when we started one."""

    endpoint: Endpoint
    managed: ManagedServer | None


@dataclass(frozen=True)
class CategoryPlan:
    """The categories this run asks, and those it was asked for but cannot run here, with why."""

    run: list[str]
    not_run: dict[str, str]
    embedding_model: Path | None = None  # memory_vector's, when it runs


def validate(settings: Settings) -> CategoryPlan:
    """Everything checkable before any network call; returns the categories to run."""
    require_run_settings(settings)
    plan = plan_categories(settings)
    bridge.check_datasets(plan.run)
    if settings.tokenizer is not None and not settings.tokenizer.is_dir():
        raise ConfigError("BFCL_EXT_TOKENIZER/--tokenizer", str(settings.tokenizer), "not a folder")
    return plan


def plan_categories(settings: Settings) -> CategoryPlan:
    """A category this install or these settings cannot run is an error when named on its own, and
    left out with its reason when it came with a collection (``all``, ``agentic``, ``memory``)."""
    names = settings.test_categories or ()
    categories = bridge.expand_categories(names)
    run: list[str] = []
    not_run: dict[str, str] = {}
    embedding_model: Path | None = None
    for category in categories:
        try:
            if category == "memory_vector":
                embedding_model = _embedding_model(settings)
            elif category in bridge.NEEDS_INTERNET and not settings.search_api_key:
                raise ConfigError(SEARCH_KEY_VARIABLE, "", f"not set: {category} asks SerpAPI (or "
                                  "BFCL_EXT_SEARCH_BASE_URL); set the key in the environment or .env")
        except ConfigError as error:
            if category in names or (category == "memory_vector" and settings.embedding_model is not None):
                raise  # named on its own, or a model folder the user gave that is wrong: a typo, not a choice
            not_run[category] = str(error)
            continue
        run.append(category)
    if not run:
        raise ConfigError("BFCL_EXT_TEST_CATEGORY/--test-category", ",".join(names),
                          "nothing this install can run: " + "; ".join(not_run.values()))
    return CategoryPlan(run, not_run, embedding_model if "memory_vector" in run else None)


def _embedding_model(settings: Settings) -> Path:
    from bfcl_ext import embeddings

    embeddings.require_embedding_packages()
    return embeddings.resolve_embedding_model(settings.embedding_model, settings.environment)


def load_server_facts(settings: Settings) -> provenance.ServerFacts | None:
    """The server facts file of a skip-mode run (a managed server's facts are bfcl-ext's own)."""
    if settings.server_facts is not None and not settings.skip_vllm:
        raise ConfigError(provenance.FACTS_SETTING, str(settings.server_facts),
                          "describes a server bfcl-ext did not start: use it with --skip-vllm")
    return provenance.load_server_facts(settings.server_facts, settings.model_name_served)


@contextlib.contextmanager
def output_folder(settings: Settings) -> Iterator[None]:
    """The output folder, created, locked for this run alone, checked, and (``--fresh``) emptied of older
    answers, which are moved aside, never deleted."""
    try:
        settings.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(OUTPUT_SETTING, str(settings.output_dir),
                          f"not writable ({error.strerror or error})") from None
    lock = folder_lock.acquire(settings.output_dir, OUTPUT_SETTING)
    try:
        _check_output_dir(settings.output_dir)
        if settings.fresh:
            moved = run_identity.move_aside(settings.output_dir)
            if moved:
                print(f"bfcl-ext: --fresh: the earlier answers were moved to {moved}", file=sys.stderr)
        yield
    finally:
        lock.release()


def _settings_identity(settings: Settings) -> dict[str, Any]:
    """What a run's answers depend on that is known before the server is asked."""
    return {"model": settings.model, "served_model_name": settings.model_name_served,
            "model_revision": settings.model_revision, "temperature": settings.temperature,
            **settings.request.identity()}


def _server_identity(settings: Settings, info: readiness.ServerInfo) -> dict[str, Any]:
    return {**_settings_identity(settings), "server_version": info.version,
            "model_root": record.served_model_entry(info.models_payload, settings.model_name_served).get("root")}


def _check_output_dir(path: Path) -> None:
    try:
        probe = path / ".bfcl-ext-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(OUTPUT_SETTING, str(path), f"not writable ({error.strerror or error})") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        need = MIN_FREE_BYTES // 2**20
        raise ConfigError(OUTPUT_SETTING, str(path), f"only {free // 2**20} MiB free; need {need} MiB")


def _managed_port(settings: Settings) -> int:
    """The port the managed vLLM gets; a bind address that is not this machine's is a setting error."""
    try:
        return choose_port(settings.vllm_bind, settings.endpoint.port, settings.slurm_job_id)
    except OSError as error:  # socket.gaierror (no such host), EADDRNOTAVAIL (another machine's address)
        reason = error.strerror or error.__class__.__name__
        raise ConfigError(
            "BFCL_EXT_VLLM_BIND/--vllm-bind", settings.vllm_bind,
            f"the managed vLLM cannot listen there ({reason}); it defaults to the VLLM_ENDPOINT host: "
            "point VLLM_ENDPOINT at this machine (localhost), set --vllm-bind, or use --skip-vllm",
        ) from None


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[Server]:
    """Skip mode: the configured server, untouched. Managed: a vLLM we start now and stop on the way out."""
    if settings.skip_vllm:
        yield Server(settings.endpoint, None)
        return
    port = _managed_port(settings)
    if port != settings.endpoint.port:
        print(f"bfcl-ext: port {settings.endpoint.port} is taken; vLLM will listen on {port}", file=sys.stderr)
    model = settings.model or ""
    loaded = bridge.model_to_load(model)
    if loaded != model:
        print(f"bfcl-ext: {model} is BFCL's registry name for {loaded}: vLLM loads {loaded}, served as "
              f"{settings.model_name_served}", file=sys.stderr)
    argv = server_command(
        settings.vllm_command, loaded, settings.model_name_served, settings.vllm_bind, port,
        settings.vllm_args, settings.model_revision,
    )
    log_path = settings.output_dir / "logs" / "vllm-server.log"
    print(f"bfcl-ext: starting vLLM: {' '.join(argv)} (log: {log_path})", file=sys.stderr)
    server = ManagedServer(argv, settings.server_environment, settings.endpoint.api_key, log_path, settings.stop_grace)
    try:
        server.start()
    except FileNotFoundError as error:
        raise ConfigError("BFCL_EXT_VLLM_COMMAND/--vllm-command", " ".join(settings.vllm_command), str(error)) from None
    try:
        yield Server(settings.endpoint.with_port(port), server)
    finally:
        print("bfcl-ext: stopping the vLLM server it started", file=sys.stderr)
        server.stop()


def wait_ready(settings: Settings, server: Server, timeout: float, recovering: bool = False) -> readiness.ServerInfo:
    managed = server.managed
    return readiness.wait_until_ready(
        server.endpoint,
        settings.model_name_served,
        timeout,
        process_alive=managed.alive if managed else None,
        process_log_tail=managed.log_tail if managed else None,
        name_may_vanish=recovering,
    )


def _gate(settings: Settings, server: Server) -> generation.ServerGate:
    def ready_now() -> bool:
        try:
            readiness.probe(server.endpoint, settings.model_name_served, request_timeout=settings.retry.probe_timeout)
        except NotReadyError:
            return False
        return True

    def wait_again() -> str | None:
        try:
            wait_ready(settings, server, settings.retry.recovery_timeout, recovering=True)
        except NotReadyError as error:
            return str(error)
        return None

    return generation.ServerGate(ready_now, wait_again)


def run(settings: Settings, argv: Sequence[str], interruptions: Interruptions) -> int:
    plan = validate(settings)
    server_facts = load_server_facts(settings)
    with output_folder(settings):
        run_identity.check(settings.output_dir, _settings_identity(settings))
        return _run_locked(settings, argv, interruptions, plan, server_facts)


def _run_locked(
    settings: Settings, argv: Sequence[str], interruptions: Interruptions,
    plan: CategoryPlan, server_facts: provenance.ServerFacts | None,
) -> int:
    started = time.time()
    bridge.use_project_root(settings.output_dir / ".bfcl-eval")  # its lock files and empty default folders
    with serving(settings) as server:
        # Everything that needs no server first: in managed mode it overlaps vLLM loading, and
        # the first request leaves as soon as the server is ready.
        stats = bridge.RequestStats()
        client = bridge.make_client(
            server.endpoint.base_url, server.endpoint.api_key, settings.retry, stats,
            settings.request,
        )
        session = bridge.open_session(
            settings.model or "", settings.model_name_served, client, stats, settings.temperature, settings.output_dir,
        )
        plan = _for_handler(plan, session, settings)
        _announce(plan, session)
        tools = _prepare_tools(plan, settings)
        every_entry = bridge.load_entries(plan.run)  # what the run's result files may hold
        repaired = bridge.repair_result_files(session, every_entry)
        entries = bridge.select_entries(every_entry, settings.limit)
        if settings.limit is not None and len(entries) == len(every_entry):
            # a limit at least every category's size selects the whole dataset: a complete run, not a partial one
            settings = replace(settings, limit=None)
        for change in bridge.restore_memory_snapshots(session, entries):
            print(f"bfcl-ext: memory state: {change}", file=sys.stderr)
        pending = bridge.pending_entries(session, entries)
        info = wait_ready(settings, server, settings.wait_timeout)
        run_identity.check(settings.output_dir, _server_identity(settings, info))
        ready_at = time.time()
        print(f"bfcl-ext: server ready at {server.endpoint.base_url} (version {info.version or 'unknown'}); "
              f"{len(entries)} entries, {len(entries) - len(pending)} already answered, {len(pending)} to ask",
              file=sys.stderr)
        if pending and bridge.needs_tokenizer(session):
            source = bridge.load_tokenizer(session, settings.model_name_served, settings.tokenizer,
                                           record.served_model_entry(info.models_payload,
                                                                     settings.model_name_served).get("root"))
            print(f"bfcl-ext: the tokenizer comes from {source}", file=sys.stderr)
        report = _generate(settings, server, session, pending, interruptions)
        if report.fatal is None:  # after an output error the disk may take nothing more: the rerun sorts
            bridge.sort_result_files(session, every_entry)
        answered = bridge.answered_ids(session)
        scores = {} if report.stopped or report.fatal else _score_complete_categories(
            session, plan.run, entries, answered, settings)
        context = RunContext(settings, plan.run, entries, answered, info, server, session, report, repaired,
                             started, ready_at, time.time(), argv, server_facts, plan, tools)
        if report.fatal is not None:  # an answer could not be written, or a worker failed: stop here
            _write_outputs_if_possible(context)
            raise report.fatal
        summary = record.write(context, scores)
    interruptions.raise_if_stopped()
    print_table(summary)
    missing = sorted({e["id"] for e in entries} - answered)
    if missing:
        reason = f" ({report.abandoned_reason})" if report.abandoned_reason else ""
        raise EntriesFailedError(
            f"{len(missing)} entries have no answer after retries{reason}; results so far are kept in "
            f"{settings.output_dir}; run the same command again to finish: {', '.join(missing[:10])}"
            + (" ..." if len(missing) > 10 else ""),
            missing,
        )
    return 0


FORMAT_SENSITIVITY = "format_sensitivity"


def _for_handler(plan: CategoryPlan, session: bridge.Session, settings: Settings) -> CategoryPlan:
    """format_sensitivity varies the prompt format: BFCL runs it for prompt-mode models only."""
    if FORMAT_SENSITIVITY not in plan.run or not session.handler.is_fc_model:
        return plan
    why = (f"BFCL runs it only for prompt-mode registry models; {settings.model} is scored in "
           "function-calling mode")
    run = [category for category in plan.run if category != FORMAT_SENSITIVITY]
    if not run:
        raise ConfigError("BFCL_EXT_TEST_CATEGORY/--test-category", FORMAT_SENSITIVITY, why)
    return CategoryPlan(run, {**plan.not_run, FORMAT_SENSITIVITY: why}, plan.embedding_model)


def _announce(plan: CategoryPlan, session: bridge.Session) -> None:
    print(f"bfcl-ext: scoring in {session.mode}", file=sys.stderr)
    for category, why in plan.not_run.items():
        print(f"bfcl-ext: {category}: not run: {why}", file=sys.stderr)


@dataclass(frozen=True)
class Tools:
    """The tools some categories call besides the model: what was used, for the record."""

    search: bridge.SearchStats | None = None
    search_base_url: str | None = None
    embedding: dict[str, Any] | None = None


def _prepare_tools(plan: CategoryPlan, settings: Settings) -> Tools:
    search = None
    if any(category in bridge.NEEDS_INTERNET for category in plan.run):
        search = bridge.install_web_search(settings.search_base_url, settings.search_api_key or "", settings.retry)
    embedding = None
    if plan.embedding_model is not None:
        from bfcl_ext import embeddings

        embeddings.use_embedding_model(plan.embedding_model)
        embedding = embeddings.embedding_identity(plan.embedding_model)
        try:
            bridge.load_memory_vector()  # the encoder loads now, while the server may still be loading
        except Exception as error:  # noqa: BLE001 - torch and sentence-transformers raise many kinds
            raise ConfigError(embeddings.EMBEDDING_SETTING, str(plan.embedding_model),
                              f"the embedding model cannot be loaded ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:160] if str(error) else ''})") from None
    return Tools(search, settings.search_base_url if search else None, embedding)


def _score_complete_categories(
    session: bridge.Session, categories: list[str], entries: list[dict[str, Any]], answered: set[str],
    settings: Settings,
) -> dict[str, bridge.CategoryScore]:
    """Only a category whose every entry has a model answer is scored: never a partial one unnoticed."""
    complete = [
        category for category in categories
        if all(e["id"] in answered for e in entries if bridge.category_of(e["id"]) == category)
    ]
    if not complete:
        return {}
    return bridge.evaluate(session, complete, partial=settings.limit is not None, selected={e["id"] for e in entries})


def _generate(
    settings: Settings, server: Server, session: bridge.Session, pending: list[dict[str, Any]],
    interruptions: Interruptions,
) -> generation.GenerationReport:
    from tqdm import tqdm

    threads = _concurrency(settings, server)  # before the progress bar: its line is its own
    with tqdm(total=len(pending), desc="bfcl-ext", unit="entry", file=sys.stderr, dynamic_ncols=True) as progress:
        with interruptions.deferred():
            return generation.generate(
                session, pending, threads=threads, policy=settings.retry,
                gate=_gate(settings, server), stop=interruptions.stop, progress=progress, debug=settings.debug,
            )


def _concurrency(settings: Settings, server: Server) -> int | concurrency.Concurrency:
    """A fixed number as given; ``auto``: the server's /metrics, read once now, or the fixed default without."""
    if settings.num_threads != AUTO_THREADS:
        return int(settings.num_threads)
    reader = concurrency.MetricsReader(server.endpoint.root_url("/metrics"), server.endpoint.auth_headers())
    try:
        reader.read()
    except concurrency.MetricsUnavailable as why:
        reader.close()
        print(f"bfcl-ext: --num-threads auto: no usable vLLM metrics ({why}); {DEFAULT_NUM_THREADS} concurrent "
              "requests instead", file=sys.stderr)
        return concurrency.Concurrency(DEFAULT_NUM_THREADS, fallback_reason=str(why))
    print(f"bfcl-ext: --num-threads auto: following {reader.url} ({concurrency.AUTO_START} concurrent requests "
          f"to start with, at most {concurrency.AUTO_MAX})", file=sys.stderr)
    return concurrency.AutoConcurrency(reader.read)


@dataclass(frozen=True)
class RunContext:
    settings: Settings
    categories: list[str]
    entries: list[dict[str, Any]]
    answered: set[str]
    info: readiness.ServerInfo
    server: Server
    session: bridge.Session
    report: generation.GenerationReport
    repaired: dict[str, int]
    started: float
    ready_at: float
    finished: float
    argv: Sequence[str]
    server_facts: provenance.ServerFacts | None = None
    plan: CategoryPlan | None = None
    tools: Tools = Tools()


def _write_outputs_if_possible(context: RunContext) -> None:
    """After a fatal error: summary.json and manifest.json if the disk still takes them; else the
    ones from before stay as they were and no half-written temporary is left behind."""
    try:
        record.write(context, {})
    except OSError as error:
        print(f"bfcl-ext: summary.json not updated ({error.strerror or error})", file=sys.stderr)
        for name in ("summary.json", "manifest.json"):  # manifest.write_json's temporaries
            with contextlib.suppress(OSError):
                (context.settings.output_dir / f".{name}.tmp").unlink(missing_ok=True)


def print_table(summary: Mapping[str, Any]) -> None:
    rows = [(name, value) for name, value in summary["categories"].items()]
    width = max([len(name) for name, _ in rows] + [8])
    print(f"{'category':<{width}}  accuracy  correct/total")
    for name, value in rows:
        if value.get("accuracy") is None:
            print(f"{name:<{width}}  {'-':>8}  missing {value.get('missing')}/{value['total']}")
        else:
            print(f"{name:<{width}}  {value['accuracy']:>8.2%}  {value['correct']}/{value['total']}")
    overall = summary["overall"]
    if overall["accuracy"] is not None:
        print(f"{'overall':<{width}}  {overall['accuracy']:>8.2%}  {overall['correct']}/{overall['total']}")
    board = summary.get("leaderboard") or {}
    if board.get("overall_accuracy") is not None:
        marker = "" if board.get("complete") else "  (partial: categories not scored count as 0)"
        print(f"{'BFCL overall':<{width}}  {board['overall_accuracy']:>8.2%}  weighted, as BFCL{marker}")
    for category, why in (board.get("not_run") or {}).items():
        print(f"not run: {category}: {why}")
    if summary.get("partial"):
        print(f"(partial run: first {summary['limit']} entries of each category)")
