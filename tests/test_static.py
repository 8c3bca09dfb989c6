"""Static checks that fail loudly when their tool is missing (it is a test requirement)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.vllm_cpu import REPO_ROOT

SHELL_SCRIPTS = sorted(
    [*REPO_ROOT.glob("scripts/**/*.sh"), REPO_ROOT / ".ci" / "run"],
)


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    assert Path(found).exists(), f"{name} is not installed: run scripts/install.sh --test"
    return found


def test_shell_scripts_are_shellcheck_clean() -> None:
    assert SHELL_SCRIPTS, "no shell scripts found"
    done = subprocess.run([_tool("shellcheck"), *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shell_scripts_use_strict_mode() -> None:
    for script in SHELL_SCRIPTS:
        assert "set -euo pipefail" in script.read_text(), script


def test_python_sources_are_ruff_clean() -> None:
    done = subprocess.run([_tool("ruff"), "check", "bfcl_ext", "tests", "benchmarks"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


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
