"""Static checks that fail loudly when their tool is missing (it is a test requirement).

Each linter runs once, over every file it is for: shellcheck, ruff, hadolint, the Compose spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.support.tools import assert_tool_passes
from tests.support.vllm_cpu import REPO_ROOT

SOURCED = {"lib.sh", "site.env", "docker-client.sh"}  # the sourcing script sets the shell's options
SHELL_SCRIPTS = sorted({
    *REPO_ROOT.glob("scripts/**/*.sh"), REPO_ROOT / ".ci" / "run",
    *REPO_ROOT.glob("slurm/*.sbatch"), *REPO_ROOT.glob("slurm/*.sh"), REPO_ROOT / "slurm" / "site.env",
    *REPO_ROOT.glob("docker/**/*.sh"),
})
DOCKERFILES = sorted(REPO_ROOT.glob("docker/**/Dockerfile"))


def test_shell_scripts_are_shellcheck_clean() -> None:
    names = {str(path.relative_to(REPO_ROOT)) for path in SHELL_SCRIPTS}
    assert {"slurm/submit.sh", "slurm/lib.sh", "docker/vllm/entrypoint.sh", "scripts/apptainer-build.sh"} <= names
    assert_tool_passes("shellcheck", *SHELL_SCRIPTS)


def test_shell_scripts_use_strict_mode_and_the_run_ones_are_executable() -> None:
    for script in SHELL_SCRIPTS:
        if script.name in ("lib.sh", "site.env"):
            continue
        assert "set -euo pipefail" in script.read_text(), script
        if script.name not in SOURCED:
            assert os.access(script, os.X_OK), f"{script} is not executable"


def test_dockerfiles_are_hadolint_clean() -> None:
    names = {path.parent.name for path in DOCKERFILES}
    assert {"vllm", "vllm-cpu-base", "runner", "apptainer"} <= names, names
    assert_tool_passes("hadolint", *DOCKERFILES)


def test_base_compose_file_matches_the_compose_spec_schema() -> None:
    assert_tool_passes("check-jsonschema", "--builtin-schema", "vendor.compose-spec", REPO_ROOT / "compose.yaml")


def test_python_sources_are_ruff_clean() -> None:
    assert_tool_passes("ruff", "check", "bfcl_ext", "tests", "benchmarks")


def test_help_does_not_import_bfcl_eval_or_openai() -> None:
    code = (
        "import sys\n"
        "from bfcl_ext import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'bfcl_eval.constants.model_config' not in sys.modules\n"
        "assert 'openai' not in sys.modules\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "check" in done.stdout
    assert time.monotonic() - started < 5  # generous: the benchmark reports the real figure


def test_output_schemas_are_json_schemas_that_catch_bad_values() -> None:
    """schemas/ documents summary.json and manifest.json (real runs are checked against them in the
    run tests); here: they are valid schemas, and they reject what they should."""
    from jsonschema import Draft202012Validator

    validators = {}
    for name in ("summary", "manifest"):
        schema = json.loads((REPO_ROOT / "schemas" / f"{name}.schema.json").read_text())
        Draft202012Validator.check_schema(schema)
        validators[name] = Draft202012Validator(schema)

    def paths(name: str, document: dict) -> set[tuple]:
        return {tuple(error.absolute_path) for error in validators[name].iter_errors(document)}

    assert ("status",) in paths("summary", {"status": "done"})
    assert ("categories", "simple_python") in paths(
        "summary", {"categories": {"simple_python": {"accuracy": 1.5, "correct": 1, "total": 1}}})
    assert ("images", "runner") in paths("manifest", {"images": {"runner": {"reference": "r", "digest": "abc"}}})
    assert ("categories", "multiple", "dataset") in paths(
        "manifest", {"categories": {"multiple": {"dataset": "not-a-hash", "ground_truth": None}}})
