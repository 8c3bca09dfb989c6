"""Rows of the fault table (tests/test_fault_table.py), one module per topic.

Each module holds ``CASES: list[Case]``; a module whose name starts with ``_`` (``_helpers``)
holds code shared by rows and is skipped by the table. A case sets up a fault, runs the real
``bfcl-ext`` (against the stand-in, a real vLLM on the CPU where it fits) and returns what the user
saw; the table asserts the same things of every row: the exit code, the one-line message, no
traceback, and every entry on disk at most once (all of them when the run succeeded).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    """What a case's scenario produced: the last command's result and where it wrote."""

    done: subprocess.CompletedProcess[str]
    output_dir: Path | None = None
    expected_ids: Sequence[str] = ()  # every entry the run selected (checked exactly once when exit 0)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str  # a row of the table: what the hostile user did
    section: str  # where the case comes from (issue section, README row)
    scenario: Callable[[Any], Outcome]  # receives the table's context fixture
    exit_code: int
    message: str | None = None  # a fragment of the one-line error (None: no error line expected)
    check: Callable[[Outcome], None] | None = None  # anything more the row asserts
