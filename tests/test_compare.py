"""``bfcl-ext compare``: a run on the oracle stand-in against one on a stand-in that answers one category
wrongly shows that category's difference and nothing else, and exactly the settings that differ;
Markdown and a PNG chart are written. Then the manifest facts on hand-made runs (no server)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bfcl_ext import compare
from bfcl_ext.errors import EXIT_CONFIG
from tests.conftest import run_bfcl_ext, start_standin

MODEL = "M"


@dataclass(frozen=True)
class Pair:
    oracle: Path  # output folder of the run on the oracle
    wrong: Path  # bundle of the run on a stand-in answering `multiple` wrongly, with --num-threads 4
    wrong_dir: Path


def _run(base_url: str, output_dir: Path, *extra: str) -> None:
    done = run_bfcl_ext(["run", "--skip-vllm", "--base-url", base_url, "--model", MODEL, "--test-category",
                         "simple_python,multiple", "--limit", "3", "--output-dir", str(output_dir), *extra],
                        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("compare-runs")
    oracle = start_standin(base / "standin-oracle", "--served-model-name", MODEL)
    wrong = start_standin(base / "standin-wrong", "--served-model-name", MODEL, "--mode", "wrong-category:multiple")
    try:
        _run(oracle.base_url, base / "oracle")
        _run(wrong.base_url, base / "wrong", "--num-threads", "4")
        done = run_bfcl_ext(["bundle", str(base / "wrong"), "-o", str(base / "wrong.tar.gz")])
        assert done.returncode == 0, done.stderr
        yield Pair(base / "oracle", base / "wrong.tar.gz", base / "wrong")
    finally:
        oracle.stop()
        wrong.stop()


def test_only_the_wrong_category_differs_and_only_the_expected_settings(pair: Pair) -> None:
    with compare.load_runs([pair.oracle, pair.wrong]) as runs:
        result = compare.build(runs)
    assert result.categories == ["simple_python", "multiple"]  # BFCL's order
    assert result.delta("simple_python") == [0.0, 0.0]
    assert result.delta("multiple") == [0.0, -100.0]
    assert result.accuracy["overall"] == [1.0, 0.5]
    # the stand-ins listen on two ports; the second run used 4 threads; nothing else was set differently
    assert [name for name, _ in result.differences] == ["server.base_url", "threads"]
    assert dict(result.differences)["threads"] == ["auto", "4"]
    assert runs[0].leaderboard["Non-Live Multiple AST"] == "100.00%"
    assert runs[1].leaderboard["Non-Live Multiple AST"] == "0.00%"


def test_the_command_prints_writes_markdown_and_draws_the_chart(pair: Pair, tmp_path: Path) -> None:
    markdown, chart = tmp_path / "out" / "compare.md", tmp_path / "out" / "compare.png"
    done = run_bfcl_ext(["compare", str(pair.oracle), str(pair.wrong), "--markdown", str(markdown),
                         "--chart", str(chart)])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.startswith("  ") and line.split()}
    assert row["simple_python"][-1] == "0.00" and row["multiple"][-1] == "-100.00", done.stdout
    assert "server.base_url" in done.stdout and "threads" in done.stdout
    assert f"{pair.oracle}/score/data_overall.csv" in done.stdout
    assert f"{pair.wrong}: bfcl-run/score/data_overall.csv" in done.stdout

    text = markdown.read_text()
    assert "| simple_python | 100.00% (3/3) | 100.00% (3/3) | 0.00 |" in text
    assert "| multiple | 100.00% (3/3) | 0.00% (0/3) | -100.00 |" in text
    assert "| threads | auto | 4 |" in text
    assert "| Non-Live Multiple AST | 100.00% | 0.00% | -100.00 |" in text

    with Image.open(chart) as image:
        assert image.format == "PNG"
        assert image.size == compare.chart_size(2, 2)
        pixels = image.convert("RGB")

        def middle(category: int, run: int) -> tuple[int, int, int]:  # where a full bar is, off the grid lines
            left, top, right, bottom = compare.bar_box(category, run, 1.0, 2, 2)
            return pixels.getpixel(((left + right) // 2, top + (bottom - top) * 4 // 10))

        blue, orange = (_rgb(compare.color(0)), _rgb(compare.color(1)))
        assert middle(0, 0) == blue and middle(0, 1) == orange  # simple_python: both full
        assert middle(1, 0) == blue and middle(1, 1) == (255, 255, 255)  # multiple: B has no bar


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_a_run_compared_with_itself_shows_no_difference(pair: Pair) -> None:
    done = run_bfcl_ext(["compare", str(pair.wrong_dir), str(pair.wrong)])
    assert done.returncode == 0, done.stderr
    assert "none: model, server, launch flags" in done.stdout
    with compare.load_runs([pair.wrong_dir, pair.wrong]) as runs:
        result = compare.build(runs)
    assert result.differences == []
    assert all(result.delta(c) == [0.0, 0.0] for c in [*result.categories, "overall"])


def test_bad_arguments_are_configuration_errors(tmp_path: Path) -> None:
    done = run_bfcl_ext(["compare", str(tmp_path)])
    assert done.returncode == EXIT_CONFIG and "needs at least two runs" in done.stderr
    done = run_bfcl_ext(["compare", str(tmp_path), str(tmp_path / "nope")])
    assert done.returncode == EXIT_CONFIG and "no such output folder or bundle" in done.stderr
    done = run_bfcl_ext(["compare", str(tmp_path), str(tmp_path)])
    assert done.returncode == EXIT_CONFIG and "no summary.json" in done.stderr


# ---------------------------------------------------------------- hand-made runs: what counts as a difference

SUMMARY: dict[str, Any] = {
    "model": "Qwen/Qwen3-8B", "served_model_name": "Qwen/Qwen3-8B", "status": "complete", "partial": False,
    "limit": None, "mode": "managed",
    "categories": {"simple_python": {"accuracy": 0.9, "correct": 360, "total": 400},
                   "multiple": {"accuracy": 0.8, "correct": 160, "total": 200}},
    "overall": {"accuracy": 520 / 600, "correct": 520, "total": 600},
}
MANIFEST: dict[str, Any] = {
    "bfcl_eval": "2026.3.23", "bfcl_ext": "0.1.0", "bfcl_ext_commit": "a" * 40, "hostname": "node-1",
    "started_at": "2026-01-01T00:00:00+00:00", "gpus": ["NVIDIA H100 80GB HBM3"],
    "model": {"name": "Qwen/Qwen3-8B", "served_as": "Qwen/Qwen3-8B", "handler": "function-calling"},
    "server": {
        "mode": "managed", "base_url": "http://127.0.0.1:8000/v1", "version": "0.32.0",
        "models": {"data": [{"id": "Qwen/Qwen3-8B", "root": "/models/qwen3-8b", "max_model_len": 40960,
                             "created": 1}]},
        "launched_with": ["vllm", "serve", "/models/qwen3-8b", "--served-model-name", "Qwen/Qwen3-8B", "--host",
                          "127.0.0.1", "--port", "8000", "--enable-auto-tool-choice", "--tool-call-parser",
                          "hermes", "--generation-config", "vllm"],
    },
    "sampling": {"temperature_sent": 0.001, "generation_config": "vllm"},
    "categories": {"simple_python": {"dataset": "1" * 64, "ground_truth": "2" * 64},
                   "multiple": {"dataset": "3" * 64, "ground_truth": "4" * 64}},
    "threads": 64, "limit": None,
}


def _folder(path: Path, summary: dict[str, Any], manifest: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_settings_that_change_scores_are_named_and_times_and_hosts_are_not(tmp_path: Path) -> None:
    other = copy.deepcopy(MANIFEST)
    other.update(hostname="node-2", started_at="2026-02-02T00:00:00+00:00", bfcl_eval="2026.1.1")
    other["server"]["version"] = "0.33.0"
    other["server"]["port"] = 8123
    other["server"]["launched_with"] = [
        "vllm", "serve", "/models/qwen3-8b-rev2", "--port=8123", "--enable-auto-tool-choice",
        "--tool-call-parser=qwen3_xml", "--generation-config", "auto", "--max-model-len", "8192"]
    other["server"]["models"]["data"][0].update(root="/models/qwen3-8b-rev2", created=2)
    other["sampling"]["generation_config"] = "auto"
    other["categories"]["multiple"]["ground_truth"] = "5" * 64
    other["limit"] = 50
    a = _folder(tmp_path / "a", SUMMARY, MANIFEST)
    b = _folder(tmp_path / "b", SUMMARY, other)
    with compare.load_runs([a, b]) as runs:
        differences = dict(compare.build(runs).differences)
    assert set(differences) == {
        "bfcl_eval", "server.version", "server.model_root", "vllm.model", "server.tool_call_parser",
        "vllm.generation-config", "vllm.max-model-len", "sampling.generation_config", "ground_truth.multiple",
        "limit"}
    assert differences["server.tool_call_parser"] == ["hermes", "qwen3_xml"]
    assert differences["vllm.max-model-len"] == [None, "8192"]


def test_skip_mode_facts_revision_gpus_and_images_are_compared(tmp_path: Path) -> None:
    """What a skip-mode run knows from its server facts file differs like a managed run's flags."""
    base = copy.deepcopy(MANIFEST)
    base["server"].update(mode="skip", launched_with=None, tool_call_parser="hermes", gpus=["NVIDIA H100 80GB HBM3"])
    base["model"]["revision"] = "a1b2c3d"
    base["images"] = {"runner": None, "server": {"reference": "vllm:local", "digest": "sha256:" + "1" * 64}}
    other = copy.deepcopy(base)
    other["server"].update(tool_call_parser="qwen3_xml", gpus=["NVIDIA H200", "NVIDIA H200"])
    other["model"]["revision"] = "e5f6a7b"
    other["images"]["server"]["digest"] = "sha256:" + "2" * 64
    other["gpus"] = []  # the runner's host: not what scores depend on
    a = _folder(tmp_path / "a", SUMMARY, base)
    b = _folder(tmp_path / "b", SUMMARY, other)
    with compare.load_runs([a, b]) as runs:
        differences = dict(compare.build(runs).differences)
    assert differences == {
        "server.tool_call_parser": ["hermes", "qwen3_xml"],
        "server.gpus": ["NVIDIA H100 80GB HBM3", "NVIDIA H200, NVIDIA H200"],
        "model.revision": ["a1b2c3d", "e5f6a7b"],
        "image.server": ["sha256:" + "1" * 64, "sha256:" + "2" * 64],
    }


def test_categories_only_one_run_has_show_once(tmp_path: Path) -> None:
    summary = copy.deepcopy(SUMMARY)
    del summary["categories"]["multiple"]
    manifest = copy.deepcopy(MANIFEST)
    del manifest["categories"]["multiple"]
    a = _folder(tmp_path / "a", SUMMARY, MANIFEST)
    b = _folder(tmp_path / "b", summary, manifest)
    with compare.load_runs([a, b]) as runs:
        result = compare.build(runs)
    assert [name for name, _ in result.differences] == ["categories"]
    assert result.delta("multiple") == [0.0, None]
    assert "absent" in compare.render_text(result)


def test_the_chart_grows_with_categories_and_runs(tmp_path: Path) -> None:
    names = ["simple_python", "simple_java", "live_parallel_multiple", "multi_turn_long_context", "irrelevance"]
    summaries = []
    for index in range(3):
        summary = copy.deepcopy(SUMMARY)
        summary["categories"] = {name: {"accuracy": (i + index) / 10, "correct": i + index, "total": 10}
                                 for i, name in enumerate(names) if not (index == 2 and name == "irrelevance")}
        summaries.append(summary)
    folders = [_folder(tmp_path / str(i), s, MANIFEST) for i, s in enumerate(summaries)]
    with compare.load_runs(folders) as runs:
        result = compare.build(runs)
    chart = tmp_path / "chart.png"
    compare.draw_chart(result, chart)
    with Image.open(chart) as image:
        assert image.size == compare.chart_size(5, 3)
    assert compare.chart_size(5, 3)[1] > compare.chart_size(5, 2)[1]  # one legend line per run
    assert compare.chart_size(40, 3)[0] > compare.chart_size(5, 3)[0]
