"""The fault table: every bad input, misbehaving server, kill and race a hostile user tried, one row
each (rows in tests/fault_cases/), all held to the same promise: a documented exit code, one plain
line when something is wrong, no traceback, and each entry on disk at most once (exactly once when
the run says it finished).

Every module of tests/fault_cases/ is a row module holding ``CASES: list[Case]``, except those
whose name starts with ``_`` (shared helper code, e.g. tests/fault_cases/_helpers.py): the table
skips them."""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tests.fault_cases as fault_cases
from tests.conftest import result_lines
from tests.fault_cases import Case, Outcome


def _all_cases() -> list[Case]:
    cases: list[Case] = []
    for module in pkgutil.iter_modules(fault_cases.__path__):
        if module.name.startswith("_"):  # helpers shared by rows, not rows
            continue
        cases.extend(importlib.import_module(f"{fault_cases.__name__}.{module.name}").CASES)
    return cases


CASES = _all_cases()


@dataclass
class Context:
    """What a scenario may use: a scratch folder and the stand-in factory (tests/conftest.py)."""

    tmp_path: Path
    standin_factory: Any


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fault_table(case: Case, tmp_path: Path, standin_factory: Any) -> None:
    outcome: Outcome = case.scenario(Context(tmp_path, standin_factory))
    done = outcome.done
    seen = f"exit {done.returncode}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == case.exit_code, seen
    assert "Traceback" not in done.stderr + done.stdout, seen
    if case.message is not None:
        errors = [line for line in done.stderr.splitlines() if line.startswith("bfcl-ext: error:")]
        assert len(errors) == 1 and case.message in errors[0], seen
    if outcome.output_dir is not None:
        on_disk = result_lines(outcome.output_dir) if (outcome.output_dir / "result").exists() else []
        counts = Counter(line["id"] for line in on_disk)
        duplicated = sorted(i for i, n in counts.items() if n > 1)
        assert not duplicated, f"entries on disk twice: {duplicated[:10]}\n{seen}"
        if done.returncode == 0 and outcome.expected_ids:
            lost = sorted(set(outcome.expected_ids) - set(counts))
            extra = sorted(set(counts) - set(outcome.expected_ids))
            assert not lost and not extra, f"entries lost: {lost[:10]}, not selected: {extra[:10]}\n{seen}"
    if case.check is not None:
        case.check(outcome)
