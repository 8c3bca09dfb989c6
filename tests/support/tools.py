"""The test tools of requirements/test.txt (shellcheck, hadolint, ruff, ...): on PATH, or in this venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def required_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test (it is a test requirement, never a skip)."""
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    assert Path(found).exists(), f"{name} is not installed: run scripts/install.sh --test (requirements/test.txt)"
    return found


def assert_tool_passes(name: str, *args: str | Path) -> None:
    """Run a checker (shellcheck, hadolint, ruff, ...) from the repository root; it must exit 0."""
    done = subprocess.run([required_tool(name), *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
