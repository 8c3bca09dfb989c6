"""The fault table: every bad input, misbehaving server, kill and race a hostile user tried, one row
each (rows in tests/fault_cases/), all held to the same promise: a documented exit code, one plain
line when something is wrong, no traceback, and each entry on disk at most once (exactly once when
the run says it finished)."""

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
    if outcome.output_dir is not None and (outcome.output_dir / "result").exists():
        counts = Counter(line["id"] for line in result_lines(outcome.output_dir))
        assert not [i for i, n in counts.items() if n > 1], f"entries on disk twice: {seen}"
        if done.returncode == 0 and outcome.expected_ids:
            assert set(counts) == set(outcome.expected_ids), seen
    if case.check is not None:
        case.check(outcome)
