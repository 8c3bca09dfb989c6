"""One run: server ready -> generation -> retries -> evaluation -> summary, manifest, table."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bfcl_ext import bridge, concurrency, folder_lock, generation, manifest, provenance, readiness, run_identity
from bfcl_ext.bundle import leaderboard_claim, read_leaderboard
from bfcl_ext.config import AUTO_THREADS, DEFAULT_NUM_THREADS, SEARCH_KEY_VARIABLE, Settings, require_run_settings
from bfcl_ext.endpoint import Endpoint
from bfcl_ext.errors import ConfigError, EntriesFailedError, NotReadyError
from bfcl_ext.server import ManagedServer, choose_port, server_command
from bfcl_ext.signals import Interruptions

MIN_FREE_BYTES = 200 * 1024 * 1024
VLLM_MIN_TEMPERATURE = 0.01  # vLLM raises any lower temperature to this
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
            "model_root": _served_root(info.models_payload, settings.model_name_served)}


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
                                           _served_root(info.models_payload, settings.model_name_served))
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
        summary = write_outputs(context, scores)
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


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def write_outputs(context: RunContext, scores: Mapping[str, bridge.CategoryScore]) -> dict[str, Any]:
    settings = context.settings
    summary = _summary(context, scores)
    secrets = manifest.secrets_of(settings)
    manifest.write_json(settings.output_dir / "summary.json", summary, secrets)
    manifest.write_json(settings.output_dir / "manifest.json", _manifest(context), secrets)
    manifest.scrub_files(settings.output_dir, secrets)  # a key the server echoed into answers or scores
    return summary


def _write_outputs_if_possible(context: RunContext) -> None:
    """After a fatal error: summary.json and manifest.json if the disk still takes them; else the
    ones from before stay as they were and no half-written temporary is left behind."""
    try:
        write_outputs(context, {})
    except OSError as error:
        print(f"bfcl-ext: summary.json not updated ({error.strerror or error})", file=sys.stderr)
        for name in ("summary.json", "manifest.json"):  # manifest.write_json's temporaries
            with contextlib.suppress(OSError):
                (context.settings.output_dir / f".{name}.tmp").unlink(missing_ok=True)


def _summary(context: RunContext, scores: Mapping[str, bridge.CategoryScore]) -> dict[str, Any]:
    settings, report = context.settings, context.report
    per_category: dict[str, Any] = {}
    for category in context.categories:
        ids = [e["id"] for e in context.entries if bridge.category_of(e["id"]) == category]
        missing = [i for i in ids if i not in context.answered]
        score = scores.get(category)
        per_category[category] = (
            {"accuracy": score.accuracy, "correct": score.correct, "total": score.total}
            if score else {"accuracy": None, "correct": None, "total": len(ids), "missing": len(missing)}
        )
    scored = [s for s in scores.values()]
    correct = sum(s.correct for s in scored)
    total = sum(s.total for s in scored)
    return {
        "model": settings.model,
        "served_model_name": settings.model_name_served,
        "endpoint": context.server.endpoint.base_url,
        "status": _status(context),
        "mode": "skip" if settings.skip_vllm else "managed",
        "handler": context.session.mode,
        "partial": settings.limit is not None,
        "limit": settings.limit,
        "categories": per_category,
        "overall": {
            "accuracy": (correct / total) if total else None, "correct": correct, "total": total,
            "note": "entry-weighted over the categories scored; BFCL's weighted overall is in score/data_overall.csv",
        },
        "leaderboard": _leaderboard(context, scores),
        "entries": {
            "selected": len(context.entries),
            "answered": len(context.answered & {e["id"] for e in context.entries}),
            "answered_this_run": report.answered,
            "retried": report.entries_retried,
            "failed": len(report.failed_ids),
            "failed_ids": report.failed_ids,
            "repaired_on_resume": context.repaired,
        },
        "requests": context.session.stats.as_dict(),
        "web_search": (
            {"calls": context.tools.search.calls, "failed": context.tools.search.failed,
             "retried": context.tools.search.retried}
            if context.tools.search else None
        ),
        "server_recoveries": report.recoveries,
        "durations_s": {
            "wait_for_server": round(context.ready_at - context.started, 3),
            "generation_and_evaluation": round(context.finished - context.ready_at, 3),
            "total": round(context.finished - context.started, 3),
            "first_request_after_ready": (
                round(report.first_request_at - context.ready_at, 3) if report.first_request_at else None
            ),
        },
        "started_at": _iso(context.started),
        "finished_at": _iso(context.finished),
    }


def _leaderboard(context: RunContext, scores: Mapping[str, bridge.CategoryScore]) -> dict[str, Any]:
    """BFCL's own weighted overall (score/data_overall.csv), and whether it covers the whole leaderboard.

    BFCL counts a category it has no score for as 0, so an overall over fewer categories, or
    over the first N entries of each, is not a leaderboard number: it is marked partial.
    """
    settings = context.settings
    row = read_leaderboard(settings.output_dir, {"model": settings.model,
                                                 "served_model_name": settings.model_name_served})
    unscored = [category for category in bridge.scoring_categories() if category not in scores]
    return {
        **leaderboard_claim(row, unscored, settings.limit),
        "not_run": dict(context.plan.not_run) if context.plan else {},
        "note": "BFCL's weighted overall (non-live 10%, live 10%, irrelevance 10%, multi-turn 30%, agentic 40%), "
                "as in score/data_overall.csv; a category not scored counts as 0 there",
    }


def _status(context: RunContext) -> str:
    if context.report.stopped:
        return "interrupted"
    wanted = {e["id"] for e in context.entries}
    return "complete" if wanted <= context.answered else "incomplete"


def _manifest(context: RunContext) -> dict[str, Any]:
    settings = context.settings
    launched_with = _launched_with(context.server.managed, context.server_facts)
    host = manifest.host_facts()
    return {
        "bfcl_eval": bridge.installed_version(),
        **host,
        "command": manifest.redact_argv(context.argv),
        "settings": settings.redacted(),
        "environment": manifest.redact_environment(context.settings.environment),
        "server": _server_record(context, launched_with, host["gpus"]),
        "images": _images_record(settings, context.server_facts),
        "sampling": {
            "temperature_sent": settings.temperature,
            # a server that answers /version is vLLM here; others' clamping is unknown
            "temperature_effective": (
                max(settings.temperature, VLLM_MIN_TEMPERATURE) if context.info.version else None
            ),
            "note": "vLLM raises temperatures below 0.01 to 0.01; without --generation-config vllm it also "
                    "applies the model's generation_config.json defaults (top_k, top_p, repetition_penalty)",
            "generation_config": _generation_config(launched_with),
            **settings.request.record(),  # None: not sent, the server's default (prompt mode: BFCL's max_tokens)
        },
        "model": {
            "name": settings.model, "served_as": settings.model_name_served, "handler": context.session.mode,
            "revision": settings.model_revision,
            "root": _served_root(context.info.models_payload, settings.model_name_served),
        },
        "categories": bridge.dataset_hashes(context.categories),
        "tools": {
            "web_search": {"base_url": context.tools.search_base_url} if context.tools.search else None,
            "embedding_model": context.tools.embedding,
        },
        "threads": settings.num_threads,
        "concurrency": context.report.concurrency or None,
        "limit": settings.limit,
        "started_at": _iso(context.started),
        "finished_at": _iso(context.finished),
    }


def _launched_with(managed: ManagedServer | None, facts: provenance.ServerFacts | None) -> list[str] | None:
    """Managed: the command bfcl-ext ran; skip: the one the server facts declare; None: not known."""
    argv = managed.argv if managed else (facts.command if facts else None)
    return manifest.redact_argv(argv) if argv else None


def _server_record(context: RunContext, launched_with: list[str] | None, host_gpus: list[str]) -> dict[str, Any]:
    """``host_gpus``: this host's, which a managed server runs on."""
    managed, facts = context.server.managed, context.server_facts
    return {
        "mode": "managed" if managed else "skip",
        "base_url": context.server.endpoint.base_url,
        "version": context.info.version,
        "models": context.info.models_payload,
        "launched_with": launched_with,
        "tool_call_parser": _tool_call_parser(launched_with, facts),
        "gpus": host_gpus if managed else (facts.gpus if facts else None),
        "facts": _facts_record(facts),
    }


def _images_record(settings: Settings, facts: provenance.ServerFacts | None) -> dict[str, Any]:
    labels = provenance.runner_labels_file(settings.runner_image, settings.apptainer_image)
    return {
        "runner": provenance.image_identity(settings.runner_image, labels),
        "server": provenance.image_identity(settings.server_image or (facts.image if facts else None)),
    }


def _generation_config(launched_with: list[str] | None) -> str | None:
    if not launched_with:
        return None  # not knowable from outside the server
    return manifest.flag_value(launched_with, "--generation-config") or "auto"  # vLLM's default


def _tool_call_parser(launched_with: list[str] | None, facts: provenance.ServerFacts | None) -> str | None:
    """From the server's command line, else as the facts file declares it; None: not known (or none)."""
    if launched_with:
        return manifest.flag_value(launched_with, "--tool-call-parser")
    return facts.tool_call_parser if facts else None


def _facts_record(facts: provenance.ServerFacts | None) -> dict[str, Any] | None:
    if facts is None:
        return None
    record = dict(facts.values, path=str(facts.path))
    if facts.command is not None:
        record["command"] = manifest.redact_argv(facts.command)
    return record


def _served_root(models_payload: Mapping[str, Any], served_name: str) -> str | None:
    """vLLM's /v1/models names what it loaded (`root`: a hub id or a local path)."""
    for model in models_payload.get("data", []):
        if isinstance(model, dict) and model.get("id") == served_name:
            return model.get("root")
    return None


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
