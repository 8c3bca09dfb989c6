"""BFCL registry names use BFCL's own handlers; prompt-mode ones need a local tokenizer, offline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import clean_environment, read_json, run_bfcl_ext
from tests.support.vllm_cpu import free_port, save_in_hub_cache

PROMPT_MODEL = "Qwen/Qwen3-0.6B"  # BFCL's QwenHandler: prompts formatted on the client, /v1/completions


def test_models_lists_the_registry_with_modes() -> None:
    done = run_bfcl_ext(["models"], timeout=120)
    assert done.returncode == 0, done.stderr
    rows = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    assert rows[PROMPT_MODEL].startswith("prompt\tQwenHandler")
    assert rows["Qwen/Qwen3-0.6B-FC"].startswith("FC\t")
    assert len(rows) > 100


def test_prompt_mode_registry_model_with_local_tokenizer(standin_factory, tiny_model_dir: Path, tmp_path: Path) -> None:
    standin = standin_factory("--served-model-name", "served-qwen")
    out = tmp_path / "out"
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", PROMPT_MODEL, "--served-model-name", "served-qwen",
         "--tokenizer", str(tiny_model_dir), "--test-category", "simple_python", "--limit", "15",
         "--output-dir", str(out)],
        env={"VLLM_BASE_URL": standin.base_url},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_json(out / "summary.json")
    assert summary["handler"].startswith("prompt: /v1/completions")
    assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 15, "total": 15}
    assert (out / "result" / "Qwen_Qwen3-0.6B" / "non_live" / "BFCL_v4_simple_python_result.json").exists()
    stats = standin.stats()
    assert stats["ok"] >= 15 and stats["unmatched"] == 0


def test_prompt_mode_without_a_local_tokenizer_fails_fast_and_plainly(standin_factory, tmp_path: Path) -> None:
    standin = standin_factory("--served-model-name", PROMPT_MODEL)
    started = time.monotonic()
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", PROMPT_MODEL, "--test-category", "simple_python",
         "--output-dir", str(tmp_path / "out")],
        env={"VLLM_BASE_URL": standin.base_url, "HF_HOME": str(tmp_path / "empty-hf-home")},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "BFCL_EXT_TOKENIZER/--tokenizer" in done.stderr and "QwenHandler" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60  # no 64 s hub retry


def test_vendor_api_registry_model_is_refused(tmp_path: Path) -> None:
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", "claude-opus-4-5-20251101-FC", "--test-category", "simple_python",
         "--output-dir", str(tmp_path / "out"), "--wait-timeout", "1"],
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "vendor API" in done.stderr


def test_format_sensitivity_runs_for_a_prompt_mode_registry_model(
    standin_factory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Where upstream runs it: prompt-mode models, each entry in one of BFCL's 26 prompt formats.
    The stand-in's oracle reads only BFCL's default prompt format, so only the score's existence is
    asserted here, not its value."""
    standin = standin_factory("--served-model-name", "served-qwen")
    out = tmp_path / "out"
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", PROMPT_MODEL, "--served-model-name", "served-qwen",
         "--tokenizer", str(tiny_model_dir), "--test-category", "format_sensitivity", "--limit", "26",
         "--output-dir", str(out)],
        env={"VLLM_BASE_URL": standin.base_url},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "format_sensitivity: not run" not in done.stderr
    summary = read_json(out / "summary.json")
    score = summary["categories"]["format_sensitivity"]
    assert score["total"] == 26 and 0 < score["correct"] <= 26
    assert summary["leaderboard"]["not_run"] == {}
    score_file = out / "score" / "Qwen_Qwen3-0.6B" / "format_sensitivity" / "BFCL_v4_format_sensitivity_score.json"
    assert json.loads(score_file.read_text().splitlines()[0])["total_count"] == 26


FC_REGISTRY_MODEL = "Qwen/Qwen3-0.6B-FC"  # BFCL's QwenFCHandler: its function-calling format, on the client
STANDIN_AS_VLLM = f"{sys.executable} -m bfcl_ext.standin"


def test_a_registry_fc_name_in_managed_mode_loads_its_hugging_face_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """As upstream: vLLM loads the registry entry's Hugging Face model, served under the name given
    so that requests match; the run says so, and which mode it scores in and why; the tokenizer is
    found in the Hugging Face cache once the server is ready."""
    hub = tmp_path / "hf" / "hub"
    save_in_hub_cache(tiny_model_dir, hub, "Qwen/Qwen3-0.6B")
    out = tmp_path / "out"
    done = run_bfcl_ext(
        ["run", "--model", FC_REGISTRY_MODEL, "--test-category", "simple_python", "--limit", "3",
         "--output-dir", str(out), "--vllm-port", str(free_port()), "--vllm-command", STANDIN_AS_VLLM,
         "--wait-timeout", "60"],
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert f"bfcl-ext: {FC_REGISTRY_MODEL} is BFCL's registry name for Qwen/Qwen3-0.6B: vLLM loads Qwen/Qwen3-0.6B, "\
           f"served as {FC_REGISTRY_MODEL}" in lines, lines[:10]
    started = next(line for line in lines if line.startswith("bfcl-ext: starting vLLM: "))
    assert " --model Qwen/Qwen3-0.6B --host " in started and f"--served-model-name {FC_REGISTRY_MODEL}" in started
    mode = next(line for line in lines if line.startswith("bfcl-ext: scoring in "))
    assert "QwenFCHandler" in mode and "function-calling format" in mode and "is a BFCL registry name" in mode
    snapshot = hub / "models--Qwen--Qwen3-0.6B" / "snapshots"
    assert any(line.startswith("bfcl-ext: the tokenizer comes from Qwen/Qwen3-0.6B") for line in lines), lines
    assert snapshot.is_dir()
    summary = read_json(out / "summary.json")
    assert summary["categories"]["simple_python"]["total"] == 3
    assert read_json(out / "manifest.json")["model"]["root"] == "Qwen/Qwen3-0.6B"  # --model, as vLLM reports


def test_the_tokenizer_is_found_in_the_folder_the_server_loaded(
    standin_factory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No --tokenizer and an empty Hugging Face cache: the folder /v1/models names as `root` (SLURM's
    --model-path, bound into the runner) has it."""
    standin = standin_factory("--model", str(tiny_model_dir), "--served-model-name", PROMPT_MODEL)
    out = tmp_path / "out"
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", PROMPT_MODEL, "--test-category", "simple_python", "--limit", "5",
         "--output-dir", str(out)],
        env={"VLLM_BASE_URL": standin.base_url, "HF_HOME": str(tmp_path / "empty-hf-home")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"bfcl-ext: the tokenizer comes from {tiny_model_dir}" in done.stderr.splitlines()
    assert read_json(out / "summary.json")["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 5,
                                                                             "total": 5}


def test_a_served_name_outside_the_registry_says_why_it_is_function_calling(standin_factory, tmp_path: Path) -> None:
    standin = standin_factory("--served-model-name", "my-served-model")
    done = run_bfcl_ext(
        ["run", "--skip-vllm", "--model", "my-served-model", "--test-category", "simple_python", "--limit", "2",
         "--output-dir", str(tmp_path / "out")],
        env={"VLLM_BASE_URL": standin.base_url},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("bfcl-ext: scoring in function-calling: /v1/chat/completions with tools, the calls parsed by the "
            "server's tool parser: 'my-served-model' is not a BFCL registry name") in done.stderr.splitlines()



# ---------------------------------------------------------------- start-up: the registry without every vendor SDK

VENDOR_SDKS = ("anthropic", "cohere", "qwen_agent", "google.genai", "mistralai", "boto3", "writerai")
# The CLI run in-process, then the vendor SDKs it imported on the way (generation and scoring).
IN_PROCESS_RUN = f"""
import json, sys
from bfcl_ext import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
print(json.dumps({{"code": code, "vendor_sdks": [m for m in {VENDOR_SDKS!r} if m in sys.modules]}}))
"""


def _run_in_process(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", IN_PROCESS_RUN, *args], capture_output=True, text=True,
                          env=clean_environment(env), timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_function_calling_run_imports_no_vendor_sdk(standin_factory, tmp_path: Path) -> None:
    """bfcl-eval's registry imports every handler, and every vendor SDK with it (5-9 s); bfcl-ext
    reads it with the handlers deferred, through generation and scoring, single- and multi-turn."""
    standin = standin_factory("--served-model-name", "my-served-model")
    out = tmp_path / "out"
    outcome = _run_in_process(
        ["run", "--skip-vllm", "--model", "my-served-model", "--test-category", "simple_python,multi_turn_base",
         "--limit", "2", "--output-dir", str(out)],
        env={"VLLM_BASE_URL": standin.base_url},
    )
    assert outcome == {"code": 0, "vendor_sdks": []}
    categories = read_json(out / "summary.json")["categories"]
    assert categories["simple_python"]["correct"] == 2 and categories["multi_turn_base"]["total"] == 2


def test_every_registry_row_names_a_handler_that_imports() -> None:
    """The deferred registry is bfcl-eval's own table: every row, each handler a class of its module."""
    code = (
        "from bfcl_ext import registry\n"
        "table = registry.registry_module().MODEL_CONFIG_MAPPING\n"
        "classes = {name: registry.handler_class(config) for name, config in table.items()}\n"
        "assert all(isinstance(cls, type) and cls.__name__ == registry.handler_name(table[name])\n"
        "           for name, cls in classes.items())\n"
        "print(len(classes))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) > 100
