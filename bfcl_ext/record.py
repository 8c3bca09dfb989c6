"""summary.json and manifest.json: each top-level field declared once, with its schema and its value.

``SUMMARY`` and ``MANIFEST`` are the two tables. A run writes its files from them (``write``);
``schemas/*.json`` are generated from them (``python -m bfcl_ext.record``; a test keeps the
committed copies equal); ``validation_errors`` checks a file against them; ``Summary`` and
``Manifest`` are the typed views ``compare`` and ``bundle`` read a run's files through.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bfcl_ext import bridge, provenance
from bfcl_ext.manifest import (
    flag_value, host_facts, redact_argv, redact_environment, scrub_files, secrets_of, write_json,
)

if TYPE_CHECKING:
    from bfcl_ext.run import RunContext

SCHEMA_FOLDER = Path(__file__).resolve().parent.parent / "schemas"  # committed copies, for readers and check-jsonschema
VLLM_MIN_TEMPERATURE = 0.01  # vLLM raises any lower temperature to this
LEADERBOARD_NOTE = ("BFCL's weighted overall (non-live 10%, live 10%, irrelevance 10%, multi-turn 30%, agentic 40%), "
                    "as in score/data_overall.csv; a category not scored counts as 0 there")


# ---------------------------------------------------------------- what a run's files are made from


@dataclass
class Sources:
    """One run's facts, and what several fields share, worked out once."""

    context: RunContext
    scores: Mapping[str, bridge.CategoryScore]

    @property
    def settings(self) -> Any:
        return self.context.settings

    @cached_property
    def host(self) -> dict[str, Any]:
        return host_facts()

    @cached_property
    def launched_with(self) -> list[str] | None:
        """Managed: the command bfcl-ext ran; skip: the one the server facts declare; None: not known."""
        managed, facts = self.context.server.managed, self.context.server_facts
        argv = managed.argv if managed else (facts.command if facts else None)
        return redact_argv(argv) if argv else None

    @cached_property
    def answered(self) -> set[str]:
        """The selected entries that have an answer."""
        return self.context.answered & {e["id"] for e in self.context.entries}


@dataclass(frozen=True)
class Field:
    """One top-level field: its JSON Schema, and how a run fills it."""

    name: str
    schema: dict[str, Any]
    value: Callable[[Sources], Any]
    required: bool = True


@dataclass(frozen=True)
class Document:
    name: str
    description: str
    fields: tuple[Field, ...]
    defs: dict[str, Any]

    def build(self, sources: Sources) -> dict[str, Any]:
        return {field.name: field.value(sources) for field in self.fields}

    def schema(self) -> dict[str, Any]:
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://bfcl-ext.invalid/schemas/{self.name}.schema.json",
            "title": f"bfcl-ext {self.name}.json",
            "description": self.description,
            "type": "object",
            "required": [field.name for field in self.fields if field.required],
            "properties": {field.name: field.schema for field in self.fields},
            "$defs": self.defs,
        }


# ---------------------------------------------------------------- schema pieces

COUNT = {"type": "integer", "minimum": 0}
POSITIVE = {"type": "integer", "minimum": 1}
TEXT = {"type": "string"}
URL = {"type": "string", "pattern": "^https?://"}
MODE = {"enum": ["skip", "managed"]}
LIMIT = {"type": ["integer", "null"], "minimum": 1}
FRACTION = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
STRINGS = {"$ref": "#/$defs/strings"}
SHA256 = {"$ref": "#/$defs/sha256"}
TEXTS = {"type": "array", "items": {"type": "string"}}
SENT = "sent with every request; null: not sent"


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def _object(required: Sequence[str], properties: Mapping[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), **({"properties": dict(properties)} if properties else {}),
            **more}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- summary.json


def _categories(s: Sources) -> dict[str, Any]:
    per_category: dict[str, Any] = {}
    for category in s.context.categories:
        ids = [e["id"] for e in s.context.entries if bridge.category_of(e["id"]) == category]
        score = s.scores.get(category)
        per_category[category] = (
            {"accuracy": score.accuracy, "correct": score.correct, "total": score.total} if score else
            {"accuracy": None, "correct": None, "total": len(ids),
             "missing": len([i for i in ids if i not in s.context.answered])}
        )
    return per_category


def _overall(s: Sources) -> dict[str, Any]:
    correct = sum(score.correct for score in s.scores.values())
    total = sum(score.total for score in s.scores.values())
    return {"accuracy": (correct / total) if total else None, "correct": correct, "total": total,
            "note": "entry-weighted over the categories scored; BFCL's weighted overall is in score/data_overall.csv"}


def _leaderboard(s: Sources) -> dict[str, Any]:
    """BFCL counts a category it has no score for as 0, so an overall over fewer categories, or over
    the first N entries of each, is not a leaderboard number: it is marked partial."""
    from bfcl_ext.bundle import read_leaderboard

    settings = s.settings
    row = read_leaderboard(settings.output_dir, {"model": settings.model,
                                                 "served_model_name": settings.model_name_served})
    unscored = [category for category in bridge.scoring_categories() if category not in s.scores]
    plan = s.context.plan
    return {**leaderboard_claim(row, unscored, settings.limit),
            "not_run": dict(plan.not_run) if plan else {}, "note": LEADERBOARD_NOTE}


def leaderboard_claim(row: Mapping[str, str] | None, unscored: Sequence[str], limit: int | None) -> dict[str, Any]:
    """What a run may claim of BFCL's overall: its "Overall Acc", and that it is the whole leaderboard only
    when every scoring category was scored in full (BFCL counts a missing one as 0)."""
    overall = percent_of(row.get("Overall Acc")) if row else None
    return {"overall_accuracy": overall, "complete": overall is not None and not unscored and limit is None,
            "categories_not_scored": list(unscored)}


def percent_of(text: str | None) -> float | None:
    """BFCL's "99.89%" as 0.9989 (None for "N/A" or nothing)."""
    try:
        return round(float(str(text).rstrip("%")) / 100, 6)
    except ValueError:
        return None


def _status(s: Sources) -> str:
    if s.context.report.stopped:
        return "interrupted"
    return "complete" if {e["id"] for e in s.context.entries} <= s.context.answered else "incomplete"


def _entries(s: Sources) -> dict[str, Any]:
    report = s.context.report
    return {"selected": len(s.context.entries), "answered": len(s.answered), "answered_this_run": report.answered,
            "retried": report.entries_retried, "failed": len(report.failed_ids), "failed_ids": report.failed_ids,
            "repaired_on_resume": s.context.repaired}


def _web_search(s: Sources) -> dict[str, int] | None:
    search = s.context.tools.search
    return {"calls": search.calls, "failed": search.failed, "retried": search.retried} if search else None


def _durations(s: Sources) -> dict[str, float | None]:
    c, first = s.context, s.context.report.first_request_at
    return {"wait_for_server": round(c.ready_at - c.started, 3),
            "generation_and_evaluation": round(c.finished - c.ready_at, 3),
            "total": round(c.finished - c.started, 3),
            "first_request_after_ready": round(first - c.ready_at, 3) if first else None}


UNSCORED = {
    "description": "a category with entries still unanswered: not scored",
    **_object(["accuracy", "correct", "total", "missing"], {
        "accuracy": {"type": "null"}, "correct": {"type": "null"}, "total": COUNT, "missing": POSITIVE}),
}

SUMMARY = Document("summary", "What one bfcl-ext run scored (README 'Reproducible submissions'). New fields may be "
                   "added; the ones below keep their names and meaning.", (
    Field("model", {"type": "string", "minLength": 1}, lambda s: s.settings.model),
    Field("served_model_name", {"type": "string", "minLength": 1}, lambda s: s.settings.model_name_served),
    Field("endpoint", URL, lambda s: s.context.server.endpoint.base_url),
    Field("status", {"enum": ["complete", "incomplete", "interrupted"]}, _status),
    Field("mode", MODE, lambda s: "skip" if s.settings.skip_vllm else "managed"),
    Field("handler", TEXT, lambda s: s.context.session.mode),
    Field("partial", {"type": "boolean"}, lambda s: s.settings.limit is not None),
    Field("limit", LIMIT, lambda s: s.settings.limit),
    Field("categories", {"type": "object", "minProperties": 1,
                         "additionalProperties": {"oneOf": [{"$ref": "#/$defs/score"}, UNSCORED]}}, _categories),
    Field("overall", _object(["accuracy", "correct", "total"], {
        "accuracy": FRACTION, "correct": COUNT, "total": COUNT, "note": TEXT}), _overall),
    Field("entries", _object(
        ["selected", "answered", "answered_this_run", "retried", "failed", "failed_ids", "repaired_on_resume"], {
            "selected": COUNT, "answered": COUNT, "answered_this_run": COUNT, "retried": COUNT, "failed": COUNT,
            "failed_ids": TEXTS, "repaired_on_resume": {"type": "object", "additionalProperties": COUNT}}), _entries),
    Field("requests", _object(
        ["calls", "http_requests_sent", "http_ok", "retried_requests", "connection_errors", "http_errors_by_status"],
        {"http_errors_by_status": {"type": "object", "additionalProperties": POSITIVE}},
        additionalProperties=COUNT), lambda s: s.context.session.stats.as_dict()),
    Field("leaderboard", {
        "description": "BFCL's own weighted overall (score/data_overall.csv 'Overall Acc') and whether it covers "
                       "every scoring category",
        **_object(["overall_accuracy", "complete", "categories_not_scored", "not_run"], {
            "overall_accuracy": FRACTION, "complete": {"type": "boolean"}, "categories_not_scored": TEXTS,
            "not_run": {"type": "object", "additionalProperties": TEXT}}),
    }, _leaderboard, required=False),
    Field("web_search", {
        "description": "searches the web_search categories made (null: none ran); a failed search sends its entry "
                       "back",
        **_object(["calls", "failed"], additionalProperties=COUNT), "type": ["object", "null"],
    }, _web_search, required=False),
    Field("server_recoveries", COUNT, lambda s: s.context.report.recoveries),
    Field("durations_s", _object(
        ["wait_for_server", "generation_and_evaluation", "total", "first_request_after_ready"],
        additionalProperties={"type": ["number", "null"]}), _durations),
    Field("started_at", {"$ref": "#/$defs/time"}, lambda s: _iso(s.context.started)),
    Field("finished_at", {"$ref": "#/$defs/time"}, lambda s: _iso(s.context.finished)),
), {
    "score": _object(["accuracy", "correct", "total"], {
        "accuracy": {"type": "number", "minimum": 0, "maximum": 1}, "correct": COUNT, "total": COUNT}),
    "time": {"type": "string", "pattern": "^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d[+-]\\d\\d:\\d\\d$"},
})


# ---------------------------------------------------------------- manifest.json


def _server(s: Sources) -> dict[str, Any]:
    managed, facts, info = s.context.server.managed, s.context.server_facts, s.context.info
    return {
        "mode": "managed" if managed else "skip",
        "base_url": s.context.server.endpoint.base_url,
        "version": info.version,
        "models": info.models_payload,
        "launched_with": s.launched_with,
        "tool_call_parser": _tool_call_parser(s.launched_with, facts),
        "gpus": s.host["gpus"] if managed else (facts.gpus if facts else None),  # a managed server runs here
        "facts": _facts(facts),
    }


def _tool_call_parser(launched_with: list[str] | None, facts: provenance.ServerFacts | None) -> str | None:
    """From the server's command line, else as the facts file declares it; None: not known (or none)."""
    if launched_with:
        return flag_value(launched_with, "--tool-call-parser")
    return facts.tool_call_parser if facts else None


def _facts(facts: provenance.ServerFacts | None) -> dict[str, Any] | None:
    if facts is None:
        return None
    record = dict(facts.values, path=str(facts.path))
    if facts.command is not None:
        record["command"] = redact_argv(facts.command)
    return record


def _images(s: Sources) -> dict[str, Any]:
    settings, facts = s.settings, s.context.server_facts
    labels = provenance.runner_labels_file(settings.runner_image, settings.apptainer_image)
    return {"runner": provenance.image_identity(settings.runner_image, labels),
            "server": provenance.image_identity(settings.server_image or (facts.image if facts else None))}


def _sampling(s: Sources) -> dict[str, Any]:
    settings = s.settings
    return {
        "temperature_sent": settings.temperature,
        # a server that answers /version is vLLM here; others' clamping is unknown
        "temperature_effective": max(settings.temperature, VLLM_MIN_TEMPERATURE) if s.context.info.version else None,
        "note": "vLLM raises temperatures below 0.01 to 0.01; without --generation-config vllm it also "
                "applies the model's generation_config.json defaults (top_k, top_p, repetition_penalty)",
        "generation_config": _generation_config(s.launched_with),
        **settings.request.record(),  # None: not sent, the server's default (prompt mode: BFCL's max_tokens)
    }


def _generation_config(launched_with: list[str] | None) -> str | None:
    if not launched_with:
        return None  # not knowable from outside the server
    return flag_value(launched_with, "--generation-config") or "auto"  # vLLM's default


def _model(s: Sources) -> dict[str, Any]:
    settings = s.settings
    return {"name": settings.model, "served_as": settings.model_name_served, "handler": s.context.session.mode,
            "revision": settings.model_revision,
            "root": served_model_entry(s.context.info.models_payload, settings.model_name_served).get("root")}


def _tools(s: Sources) -> dict[str, Any]:
    tools = s.context.tools
    return {"web_search": {"base_url": tools.search_base_url} if tools.search else None,
            "embedding_model": tools.embedding}


def _host(name: str) -> Callable[[Sources], Any]:
    return lambda s: s.host[name]


STRINGS_OR_NULL = {"oneOf": [STRINGS, {"type": "null"}]}

MANIFEST = Document("manifest", "How one bfcl-ext run was made: enough to repeat it (README 'Reproducible "
                    "submissions'). Secrets are redacted. null means not known, never a guess. New fields may be "
                    "added; the ones below keep their names and meaning.", (
    Field("bfcl_eval", {"type": "string", "minLength": 1}, lambda s: bridge.installed_version()),
    Field("bfcl_ext", {"type": "string", "minLength": 1}, _host("bfcl_ext")),
    Field("bfcl_ext_commit", _nullable("string", pattern="^[0-9a-f]{40}$"), _host("bfcl_ext_commit")),
    Field("hostname", TEXT, _host("hostname")),
    Field("platform", TEXT, _host("platform")),
    Field("python", TEXT, _host("python")),
    Field("gpus", {"description": "this host's GPUs (nvidia-smi)", **STRINGS}, _host("gpus")),
    Field("command", STRINGS, lambda s: redact_argv(s.context.argv)),
    Field("settings", _object(["sources"]), lambda s: s.settings.redacted()),
    Field("environment", {"type": "object", "additionalProperties": TEXT},
          lambda s: redact_environment(s.settings.environment)),
    Field("server", _object(["mode", "base_url", "version", "models", "launched_with", "tool_call_parser", "gpus",
                             "facts"], {
        "mode": MODE, "base_url": URL,
        "version": {**_nullable("string"), "description": "GET /version (vLLM)"},
        "models": {"type": "object", "description": "GET /v1/models as the server answered"},
        "launched_with": {"description": "managed: the command bfcl-ext ran; skip: the one the server facts declare",
                          **STRINGS_OR_NULL},
        "tool_call_parser": _nullable("string"),
        "gpus": {"description": "the server's GPUs", **STRINGS_OR_NULL},
        "facts": {"description": "the server facts file (BFCL_EXT_SERVER_FACTS) as read, redacted",
                  "oneOf": [_object(["path"], {"path": TEXT}), {"type": "null"}]},
    }), _server),
    Field("images", _object(["runner", "server"], {"runner": {"$ref": "#/$defs/image"},
                                                   "server": {"$ref": "#/$defs/image"}}), _images),
    Field("sampling", _object(["temperature_sent", "temperature_effective", "generation_config"], {
        "temperature_sent": {"type": "number", "minimum": 0},
        "temperature_effective": _nullable("number", minimum=0),
        "generation_config": _nullable("string"),
        "max_tokens": {"description": SENT, **_nullable("integer", minimum=1)},
        "top_p": {"description": SENT, **_nullable("number", exclusiveMinimum=0, maximum=1)},
        "seed": {"description": SENT, **_nullable("integer")},
        "extra_body": {"description": "merged into every request body; null: none", **_nullable("object")},
    }), _sampling),
    Field("model", _object(["name", "served_as", "handler", "revision", "root"], {
        "name": TEXT, "served_as": TEXT, "handler": TEXT, "revision": _nullable("string"),
        "root": _nullable("string")}), _model),
    Field("categories", {"type": "object", "minProperties": 1, "additionalProperties": _object(
        ["dataset", "ground_truth"], {"dataset": SHA256, "ground_truth": SHA256},
    )}, lambda s: bridge.dataset_hashes(s.context.categories)),
    Field("tools", {
        "description": "what the agentic categories called besides the model (null: not used); no key is ever "
                       "recorded",
        "type": "object", "properties": {
            "web_search": {**_object(["base_url"], {"base_url": URL}), "type": ["object", "null"]},
            "embedding_model": _nullable("object")},
    }, _tools, required=False),
    Field("threads", {"description": "--num-threads: a fixed number, or auto",
                      "oneOf": [POSITIVE, {"const": "auto"}]}, lambda s: s.settings.num_threads),
    Field("concurrency", {
        "description": "requests in flight at once: the cap sampled every 0.5 s (auto) or fixed; null: nothing "
                       "was asked",
        **_object(["mode", "min", "median", "max", "samples", "start", "maximum", "fallback_reason"], {
            "mode": {"enum": ["auto", "fixed"]}, "min": POSITIVE, "median": {"type": "number", "minimum": 1},
            "max": POSITIVE, "samples": POSITIVE, "start": POSITIVE, "maximum": POSITIVE,
            "fallback_reason": {"description": "auto without usable vLLM /metrics: why (the fixed default was used)",
                                **_nullable("string")},
        }, additionalProperties=False), "type": ["object", "null"],
    }, lambda s: s.context.report.concurrency or None),
    Field("limit", LIMIT, lambda s: s.settings.limit),
    Field("started_at", TEXT, lambda s: _iso(s.context.started)),
    Field("finished_at", TEXT, lambda s: _iso(s.context.finished)),
), {
    "strings": TEXTS,
    "sha256": _nullable("string", pattern="^[0-9a-f]{64}$"),
    "image": {"oneOf": [_object(["reference", "digest"], {
        "reference": {"type": "string", "minLength": 1},
        "digest": _nullable("string", pattern="^sha256:[0-9a-f]{64}$"),
        "labels": {"type": "object", "additionalProperties": TEXT}}), {"type": "null"}]},
})

DOCUMENTS = {document.name: document for document in (SUMMARY, MANIFEST)}


# ---------------------------------------------------------------- writing and checking


def write(context: RunContext, scores: Mapping[str, bridge.CategoryScore]) -> dict[str, Any]:
    """summary.json and manifest.json of one run, secrets redacted; returns the summary."""
    sources = Sources(context, scores)
    output_dir = context.settings.output_dir
    secrets = secrets_of(context.settings)
    summary = SUMMARY.build(sources)
    write_json(output_dir / "summary.json", summary, secrets)
    write_json(output_dir / "manifest.json", MANIFEST.build(sources), secrets)
    scrub_files(output_dir, secrets)  # a key the server echoed into answers or scores
    return summary


def schema_text(name: str) -> str:
    """``schemas/<name>.schema.json`` as generated from its table."""
    return json.dumps(DOCUMENTS[name].schema(), indent=2) + "\n"


def validation_errors(name: str, document: Any) -> list[str]:
    """Where ``document`` breaks the schema of ``name`` (``summary`` or ``manifest``); needs jsonschema."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(DOCUMENTS[name].schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# ---------------------------------------------------------------- reading back


def served_model_entry(models: Any, served: Any) -> dict[str, Any]:
    """The served model's entry of vLLM's /v1/models (``root``: what it loaded, a hub id or a local
    path; ``max_model_len``); empty when the answer does not list it."""
    data = models.get("data") if isinstance(models, Mapping) else None
    for entry in data or []:
        if isinstance(entry, dict) and entry.get("id") == served:
            return entry
    return {}


class _Record(Mapping[str, Any]):
    """A file as read back: the plain mapping, plus typed views of what readers use. Tolerant: a
    bundle's file may have been edited, and its checks name what is wrong."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def _object(self, key: str) -> Any:
        """The field, or {} when absent or null (not checked: the caller's checks name a wrong type)."""
        return self.data.get(key) or {}


class Summary(_Record):
    @property
    def model(self) -> Any:
        return self.data.get("model")

    @property
    def served_model_name(self) -> Any:
        return self.data.get("served_model_name")

    @property
    def status(self) -> Any:
        return self.data.get("status")

    @property
    def partial(self) -> bool:
        return bool(self.data.get("partial"))

    @property
    def categories(self) -> Any:
        return self._object("categories")

    @property
    def scored(self) -> list[str]:
        """The categories recorded with a score, in the file's order."""
        return [c for c, v in self.categories.items() if isinstance(v, dict) and v.get("accuracy") is not None]

    @property
    def overall(self) -> Any:
        return self._object("overall")

    @property
    def limit(self) -> int | None:
        """``limit`` (None: every entry); anything else is no limit a run could have had (ValueError)."""
        limit = self.data.get("limit")
        if limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
            return limit
        raise ValueError(f"summary.json records limit {limit!r}, not a positive integer")

    @property
    def status_text(self) -> str:
        """The status as a reader takes it: a ``--limit`` run that answered its selection is partial, not complete."""
        if self.status == "complete" and self.partial:
            return f"partial (--limit {self.data.get('limit')})"
        return str(self.status)


class Manifest(_Record):
    @property
    def model(self) -> Any:
        return self._object("model")

    @property
    def server(self) -> Any:
        return self._object("server")

    @property
    def sampling(self) -> Any:
        return self._object("sampling")

    @property
    def images(self) -> Any:
        return self._object("images")

    @property
    def categories(self) -> Any:
        """category -> its dataset and ground-truth hashes."""
        return self._object("categories")

    @property
    def bfcl_eval(self) -> Any:
        return self.data.get("bfcl_eval")

    @property
    def server_gpus(self) -> Any:
        """The server's GPUs; an older manifest records only the host's."""
        server = self.server
        return server["gpus"] if "gpus" in server else self.data.get("gpus")

    def served_entry(self, served: Any) -> dict[str, Any]:
        return served_model_entry(self.server.get("models"), served)


def main(argv: Sequence[str] = ()) -> int:
    """Write schemas/*.json from the tables (``--check``: only say whether they are current)."""
    stale = [name for name in DOCUMENTS if _schema_path(name).read_text(encoding="utf-8") != schema_text(name)]
    if "--check" not in argv:
        for name in stale:
            _schema_path(name).write_text(schema_text(name), encoding="utf-8")
    for name in stale:
        print(f"{_schema_path(name)}: {'stale' if '--check' in argv else 'written'}")
    return 1 if stale and "--check" in argv else 0


def _schema_path(name: str) -> Path:
    return SCHEMA_FOLDER / f"{name}.schema.json"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
