"""``bfcl-ext compare A B [C ...]``: runs side by side, and the recorded settings that explain the gaps.

Each run is an output folder or a bundle. What is shown: per-category accuracy with the difference
from the first run (percentage points), the manifest fields that differ (model, server version
and launch flags such as the tool-call parser, sampling, categories, dataset hashes, bfcl-eval,
threads, limit), and each run's row of BFCL's ``score/data_overall.csv``. Output: a terminal
table, Markdown (``--markdown``), and a PNG of per-category accuracy (``--chart``, drawn with Pillow).
Reads JSON and CSV only: the evaluator is never imported.
"""

from __future__ import annotations

import contextlib
import json
import math
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bfcl_ext import bundle as bundles
from bfcl_ext import record
from bfcl_ext.errors import BfclExtError, ConfigError
from bfcl_ext.request_settings import IDENTITY_FIELDS

SETTING = "compare"
# vLLM flags that say where it listens or what it is called, not how it scores
UNINTERESTING_VLLM_FLAGS = {"--host", "--port", "--api-key", "--served-model-name"}
LEADERBOARD_SKIP = {"Rank", "Model Link", "Organization", "License"}


@dataclass
class Run:
    label: str
    source: str
    summary: record.Summary
    manifest: record.Manifest
    leaderboard: dict[str, str] | None
    leaderboard_at: str
    notes: list[str] = field(default_factory=list)

    @property
    def facts(self) -> dict[str, str | None]:
        return facts(self.manifest, self.summary)


@dataclass(frozen=True)
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]
    numeric: bool = False  # right-align the value columns


@dataclass(frozen=True)
class Comparison:
    runs: list[Run]
    categories: list[str]
    accuracy: dict[str, list[float | None]]  # category -> per run
    counts: dict[str, list[str]]  # category -> per run, "correct/total"
    differences: list[tuple[str, list[str | None]]]  # manifest field -> per run

    def delta(self, category: str) -> list[float | None]:
        """Per run, the difference from the first run in percentage points (None where either is missing)."""
        values = self.accuracy[category]
        base = values[0]
        return [None if base is None or v is None else round((v - base) * 100, 10) for v in values]


# ---------------------------------------------------------------- loading


@contextlib.contextmanager
def load_runs(paths: Sequence[Path]) -> Iterator[list[Run]]:
    """Each folder or bundle as a Run (bundles unpacked into temporary folders, removed on exit)."""
    if len(paths) < 2:
        raise ConfigError(SETTING, " ".join(map(str, paths)), "needs at least two runs (output folders or bundles)")
    if len(paths) > len(string.ascii_uppercase):
        raise ConfigError(SETTING, f"{len(paths)} runs", f"at most {len(string.ascii_uppercase)} at once")
    for path in paths:
        if not path.exists():
            raise ConfigError(SETTING, str(path), "no such output folder or bundle")
    with contextlib.ExitStack() as stack:
        runs = []
        for label, path in zip(string.ascii_uppercase, paths, strict=False):
            root = stack.enter_context(bundles.opened(path))
            runs.append(_read_run(label, path, root))
        yield runs


def _read_run(label: str, path: Path, root: Path) -> Run:
    notes: list[str] = []
    summary_path = root / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(SETTING, str(path), "no summary.json: not a bfcl-ext output folder or bundle")
    summary = record.Summary(_read_json(path, summary_path))
    manifest = record.Manifest(_read_json(path, root / "manifest.json") if (root / "manifest.json").is_file() else {})
    if not manifest:
        notes.append("no manifest.json: its settings are unknown")
    is_bundle = not path.is_dir()
    if is_bundle:
        try:
            bundles.check_checksums(path, root)
        except BfclExtError as error:
            notes.append(f"checksums do not match ({error}); compared anyway: run bfcl-ext verify")
    where = f"{path}: {bundles.PREFIX}/{bundles.LEADERBOARD_CSV}" if is_bundle else str(path / bundles.LEADERBOARD_CSV)
    leaderboard = bundles.read_leaderboard(root, summary)
    return Run(label, str(path), summary, manifest, leaderboard, where if leaderboard else f"{where} (none)", notes)


def _read_json(source: Path, path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(SETTING, str(source), f"{path.name} cannot be read as JSON ({error})") from None
    if not isinstance(payload, dict):
        raise ConfigError(SETTING, str(source), f"{path.name} is not a JSON object")
    return payload


# ---------------------------------------------------------------- what differs


def facts(manifest: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, str | None]:
    """The recorded facts that can change a score, flattened to strings (None: not recorded)."""
    manifest, summary = record.Manifest(manifest), record.Summary(summary)
    model, server, sampling = manifest.model, manifest.server, manifest.sampling
    served = model.get("served_as") or summary.served_model_name
    out: dict[str, str | None] = {
        "model": _text(model.get("name") or summary.model),
        "served_model_name": _text(served),
        "handler": _text(model.get("handler") or summary.get("handler")),
        "bfcl_eval": _text(manifest.bfcl_eval),
        "bfcl_ext": _text(manifest.get("bfcl_ext")),
        "bfcl_ext_commit": _text(manifest.get("bfcl_ext_commit")),
        "server.mode": _text(server.get("mode") or summary.get("mode")),
        "server.base_url": _text(server.get("base_url") or summary.get("endpoint")),
        "server.version": _text(server.get("version")),
    }
    served_entry = manifest.served_entry(served)
    out["server.model_root"] = _text(served_entry.get("root"))
    out["server.max_model_len"] = _text(served_entry.get("max_model_len"))
    flags = _launch_flags(server.get("launched_with"))
    # one row each, wherever the manifest has it: the parser also from a facts file, the GPUs the server's
    parser_flag = flags.pop("tool-call-parser", None)
    out["server.tool_call_parser"] = _text(server.get("tool_call_parser") or parser_flag)
    for flag, value in flags.items():
        out[f"vllm.{flag}"] = value
    out["server.gpus"] = _text(", ".join(manifest.server_gpus or []) or None)
    for role, image in manifest.images.items():
        image = image or {}
        out[f"image.{role}"] = _text(image.get("digest") or image.get("reference"))
    out["model.revision"] = _text(model.get("revision"))
    out["sampling.temperature_sent"] = _text(sampling.get("temperature_sent"))
    out["sampling.temperature_effective"] = _text(sampling.get("temperature_effective"))
    out["sampling.generation_config"] = _text(sampling.get("generation_config"))
    for name in IDENTITY_FIELDS:  # max_tokens, top_p, seed, extra_body (None: not sent)
        out[f"sampling.{name}"] = _text(sampling.get(name))
    categories = manifest.categories
    out["categories"] = ",".join(categories) if categories else _text(",".join(summary.categories) or None)
    for category, hashes in categories.items():
        hashes = hashes or {}
        out[f"dataset.{category}"] = _text(hashes.get("dataset"))
        out[f"ground_truth.{category}"] = _text(hashes.get("ground_truth"))
    out["threads"] = _text(manifest.get("threads"))
    out["limit"] = _text(manifest.get("limit", summary.get("limit")))
    out["status"] = status_text(summary)
    return out


def status_text(summary: Mapping[str, Any]) -> str:
    """A run's status as a reader takes it: a ``--limit`` run that answered its selection is partial, not complete."""
    return record.Summary(summary).status_text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _launch_flags(argv: Any) -> dict[str, str]:
    """A managed vLLM's command line as flag -> value: its model, parser, revision, dtype, ..."""
    if not isinstance(argv, list):
        return {}
    args = [str(a) for a in argv]
    flags: dict[str, str] = {}
    start = args.index("serve") + 1 if "serve" in args else 0
    index = start
    if index < len(args) and not args[index].startswith("-"):
        flags["model"] = args[index]
        index += 1
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("--"):
            continue
        name, sep, value = arg.partition("=")
        if not sep:
            if index < len(args) and not args[index].startswith("--"):
                value = args[index]
                index += 1
            else:
                value = "true"
        if name not in UNINTERESTING_VLLM_FLAGS:
            flags[name.lstrip("-")] = value
    return flags


def build(runs: list[Run]) -> Comparison:
    categories = _ordered([c for run in runs for c in run.summary.categories])
    accuracy: dict[str, list[float | None]] = {}
    counts: dict[str, list[str]] = {}
    for category in categories:
        values = [run.summary.categories.get(category) for run in runs]
        accuracy[category] = [_number(v.get("accuracy")) if isinstance(v, dict) else None for v in values]
        counts[category] = [_count(v) for v in values]
    overall = [run.summary.overall for run in runs]
    accuracy["overall"] = [_number(o.get("accuracy")) for o in overall]
    counts["overall"] = [_count(o) for o in overall]
    common = set.intersection(*[set(run.manifest.categories) for run in runs])
    all_facts = [  # a category only some runs have shows in "categories"; its hashes are not compared
        {k: v for k, v in run.facts.items()
         if not k.startswith(("dataset.", "ground_truth.")) or k.split(".", 1)[1] in common}
        for run in runs
    ]
    names: list[str] = []
    for run_facts in all_facts:
        names.extend(name for name in run_facts if name not in names)
    differences = [(name, [f.get(name) for f in all_facts]) for name in names
                   if len({f.get(name) for f in all_facts}) > 1]
    return Comparison(runs, categories, accuracy, counts, differences)


def _ordered(names: Sequence[str]) -> list[str]:
    """Unique, in BFCL's order when bfcl-eval is at hand (its category list is a light import)."""
    unique = list(dict.fromkeys(names))
    try:
        from bfcl_ext import bridge

        order = {c: i for i, c in enumerate(bridge.expand_categories(["all"]))}
    except (ImportError, BfclExtError):
        return unique
    return sorted(unique, key=lambda c: (order.get(c, len(order)), unique.index(c)))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> str:
    if not isinstance(value, dict):
        return "absent"
    if value.get("accuracy") is None:
        missing = value.get("missing")
        return f"not scored ({missing} missing)" if missing else "not scored"
    return f"{value.get('correct')}/{value.get('total')}"


# ---------------------------------------------------------------- tables


def tables(comparison: Comparison) -> list[Table]:
    runs = comparison.runs
    return [_runs_table(runs), _accuracy_table(comparison), _differences_table(comparison), _leaderboard_table(runs)]


def _runs_table(runs: list[Run]) -> Table:
    rows = []
    for run in runs:
        summary = run.summary
        scope = f"first {summary.get('limit')} entries per category" if summary.partial else "full categories"
        rows.append([run.label, run.source, str(summary.model), summary.status_text, scope])
    notes = [f"{run.label}: {note}" for run in runs for note in run.notes]
    return Table("runs", ["run", "source", "model", "status", "scope"], rows, notes)


def _run_columns(runs: Sequence[Any]) -> list[str]:
    """One column per run, each after the first followed by its difference from the first."""
    columns: list[str] = []
    for index, run in enumerate(runs):
        columns.append(run.label)
        if index:
            columns.append(f"{run.label}-{runs[0].label}")
    return columns


def _accuracy_table(comparison: Comparison) -> Table:
    runs = comparison.runs
    header = ["category", *_run_columns(runs)]
    rows = []
    for category in [*comparison.categories, "overall"]:
        row = [category]
        deltas = comparison.delta(category)
        pairs = zip(comparison.accuracy[category], comparison.counts[category], strict=True)
        for index, (value, count) in enumerate(pairs):
            row.append(f"{value:.2%} ({count})" if value is not None else count)
            if index:
                row.append(_signed(deltas[index]))
        rows.append(row)
    notes = [f"differences in percentage points, against {runs[0].label}",
             "overall: entry-weighted over the categories each run scored; BFCL's weighted overall is in the "
             "leaderboard rows below"]
    return Table("accuracy per category", header, rows, notes, numeric=True)


def _signed(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}{unit}" if value else f"{0:.2f}{unit}"


def _differences_table(comparison: Comparison) -> Table:
    runs = comparison.runs
    rows = [[name, *[_shorten(name, v) for v in values]] for name, values in comparison.differences]
    notes = [] if rows else ["none: model, server, launch flags, sampling, categories, datasets, bfcl-eval, "
                             "threads and limit are recorded the same; times and hosts are not compared"]
    return Table("manifest fields that differ", ["field", *[run.label for run in runs]], rows, notes)


def _shorten(name: str, value: str | None) -> str:
    if value is None:
        return "-"
    if name.startswith(("dataset.", "ground_truth.", "bfcl_ext_commit")) and len(value) > 16:
        return value[:12] + "..."
    return value


def _leaderboard_table(runs: list[Run]) -> Table:
    columns: list[str] = []
    for run in runs:
        for column in run.leaderboard or {}:
            if column not in LEADERBOARD_SKIP and column not in columns:
                columns.append(column)
    shown = [c for c in columns
             if any((run.leaderboard or {}).get(c) not in (None, "", "N/A") for run in runs)]
    header = ["column", *_run_columns(runs)]
    rows = []
    for column in shown:
        values = [(run.leaderboard or {}).get(column) for run in runs]
        row = [column]
        for index, value in enumerate(values):
            row.append(value if value not in (None, "") else "-")
            if index:
                row.append(_csv_delta(values[0], value))
        rows.append(row)
    notes = [f"{run.label}: {run.leaderboard_at}" for run in runs]
    notes.append("columns that are N/A for every run are left out")
    return Table("BFCL leaderboard rows (data_overall.csv)", header, rows, notes, numeric=True)


def _csv_delta(base: str | None, value: str | None) -> str:
    a, b = _csv_number(base), _csv_number(value)
    if a is None or b is None:
        return "-"
    return _signed(b - a)


def _csv_number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().rstrip("%"))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def render_text(comparison: Comparison) -> str:
    out: list[str] = []
    for table in tables(comparison):
        out.append(f"{table.title}:")
        if table.rows:
            widths = [max(len(r[i]) for r in [table.header, *table.rows]) for i in range(len(table.header))]
            for row in [table.header, *table.rows]:
                cells = [cell.rjust(w) if i and table.numeric and _numeric_cell(cell) else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
                out.append("  " + "  ".join(cells).rstrip())
        out.extend(f"  ({note})" for note in table.notes)
        out.append("")
    return "\n".join(out)


def _numeric_cell(cell: str) -> bool:
    return bool(cell) and cell[0] in "+-0123456789"


def render_markdown(comparison: Comparison) -> str:
    out = ["# bfcl-ext compare"]
    for table in tables(comparison):
        out.extend(["", f"## {table.title}", ""])
        if table.rows:
            align = ["---" if i == 0 or not table.numeric else "---:" for i in range(len(table.header))]
            out.append("| " + " | ".join(_md(c) for c in table.header) + " |")
            out.append("|" + "|".join(align) + "|")
            out.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in table.rows)
            if table.notes:
                out.append("")
        out.extend(f"- {_md(note)}" for note in table.notes)
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- the chart

BAR_WIDTH = 22
GROUP_GAP = 26
MARGIN_LEFT = 64
MARGIN_RIGHT = 24
MARGIN_TOP = 36
LEGEND_LINE = 18
VALUE_SPACE = 16  # room for the value printed above a full bar
MARGIN_BOTTOM = 150
PLOT_HEIGHT = 300
MIN_WIDTH = 480
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def chart_size(categories: int, runs: int) -> tuple[int, int]:
    """Pixels (width, height) of the chart for that many categories and runs (one legend line per run)."""
    width = max(MIN_WIDTH, MARGIN_LEFT + categories * (runs * BAR_WIDTH + GROUP_GAP) + MARGIN_RIGHT)
    return width, _plot_top(runs) + PLOT_HEIGHT + MARGIN_BOTTOM


def _plot_top(runs: int) -> int:
    return MARGIN_TOP + runs * LEGEND_LINE + VALUE_SPACE


def bar_box(category: int, run: int, value: float, categories: int, runs: int) -> tuple[int, int, int, int]:
    """The rectangle (left, top, right, bottom) of one bar; groups share the plot's width evenly."""
    width = chart_size(categories, runs)[0]
    group = (width - MARGIN_LEFT - MARGIN_RIGHT) / max(categories, 1)
    left = round(MARGIN_LEFT + category * group + (group - runs * BAR_WIDTH) / 2) + run * BAR_WIDTH
    bottom = _plot_top(runs) + PLOT_HEIGHT
    height = round(max(0.0, min(1.0, value)) * PLOT_HEIGHT)
    return left, bottom - height, left + BAR_WIDTH - 2, bottom


def color(run: int) -> str:
    return PALETTE[run % len(PALETTE)]


def draw_chart(comparison: Comparison, path: Path) -> None:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ConfigError("--chart", str(path), "needs Pillow (pip install pillow)") from None
    runs, categories = comparison.runs, comparison.categories
    width, height = chart_size(len(categories), len(runs))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((MARGIN_LEFT, 10), "accuracy per category (bfcl-ext compare)", fill="black", font=font)
    for index, run in enumerate(runs):  # legend: one line per run
        y = MARGIN_TOP + index * LEGEND_LINE
        draw.rectangle((MARGIN_LEFT, y + 2, MARGIN_LEFT + 12, y + 14), fill=color(index))
        draw.text((MARGIN_LEFT + 18, y + 2), f"{run.label}: {_clip(run.source, 90)}", fill="black", font=font)
    top = _plot_top(len(runs))
    bottom = top + PLOT_HEIGHT
    right = width - MARGIN_RIGHT
    for tick in range(0, 101, 25):
        y = bottom - round(tick / 100 * PLOT_HEIGHT)
        draw.line((MARGIN_LEFT, y, right, y), fill="#dddddd" if tick else "black")
        draw.text((8, y - 6), f"{tick}%", fill="black", font=font)
    draw.line((MARGIN_LEFT, top, MARGIN_LEFT, bottom), fill="black")
    shape = (len(categories), len(runs))
    for c_index, category in enumerate(categories):
        for r_index, value in enumerate(comparison.accuracy[category]):
            box = bar_box(c_index, r_index, value or 0.0, *shape)
            if value is not None and box[3] > box[1]:
                draw.rectangle(box, fill=color(r_index))
            text = "n/a" if value is None else f"{value * 100:.0f}"
            text_width = draw.textlength(text, font=font)
            draw.text((box[0] + (BAR_WIDTH - 2 - text_width) / 2, box[1] - 13), text, fill="#333333", font=font)
        label_left = bar_box(c_index, 0, 0.0, *shape)[0]
        _vertical_text(image, (label_left + (len(runs) * BAR_WIDTH) // 2 - 7, bottom + 6), _clip(category, 24), font)
    image.save(path, format="PNG")


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


def _vertical_text(image: Any, at: tuple[int, int], text: str, font: Any) -> None:
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(image)
    left, upper, right, lower = probe.textbbox((0, 0), text, font=font)
    label = Image.new("L", (right + 2, lower + 2), 0)
    ImageDraw.Draw(label).text((0, 0), text, fill=255, font=font)
    rotated = label.rotate(90, expand=True)  # reads bottom-up, under its bar group
    image.paste("black", (at[0], at[1], at[0] + rotated.width, at[1] + rotated.height), rotated)


# ---------------------------------------------------------------- the command


def compare_command(paths: Sequence[Path], markdown: Path | None, chart: Path | None) -> int:
    with load_runs(paths) as runs:
        comparison = build(runs)
        print(render_text(comparison), end="")
        if markdown is not None:
            _write(markdown, "--markdown", lambda p: p.write_text(render_markdown(comparison), encoding="utf-8"))
            print(f"Markdown: {markdown}")
        if chart is not None:
            _write(chart, "--chart", lambda p: draw_chart(comparison, p))
            print(f"chart: {chart}")
    return 0


def _write(path: Path, flag: str, writer: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
    except OSError as error:
        raise ConfigError(flag, str(path), f"cannot write ({error.strerror or error})") from None
