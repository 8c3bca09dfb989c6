"""bfcl_ext.record: the tables that declare summary.json and manifest.json are the one source of schemas/."""

from __future__ import annotations

import pytest

from bfcl_ext import record
from tests.support.vllm_cpu import REPO_ROOT


@pytest.mark.parametrize("name", ["summary", "manifest"])
def test_the_committed_schema_is_the_one_the_table_generates(name: str) -> None:
    committed = (REPO_ROOT / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")
    assert committed == record.schema_text(name), "run: python -m bfcl_ext.record (it rewrites schemas/)"


def test_every_field_is_written_and_described_once() -> None:
    for document in record.DOCUMENTS.values():
        names = [field.name for field in document.fields]
        assert len(names) == len(set(names)), document.name
        assert set(document.schema()["required"]) <= set(names)


def test_validation_names_the_field_that_is_wrong() -> None:
    errors = record.validation_errors("summary", {"status": "done"})
    assert any(error.startswith("status: ") for error in errors)


def test_the_served_model_entry_is_found_by_its_id() -> None:
    payload = {"data": [{"id": "other", "root": "x"}, {"id": "served", "root": "/models/m", "max_model_len": 4096}]}
    assert record.served_model_entry(payload, "served")["root"] == "/models/m"
    assert record.served_model_entry(payload, "missing") == {}
    assert record.served_model_entry(None, "served") == {}


def test_a_summary_reads_its_limit_and_scored_categories() -> None:
    summary = record.Summary({"limit": 3, "partial": True, "status": "complete", "categories": {
        "simple_python": {"accuracy": 1.0, "correct": 3, "total": 3},
        "multiple": {"accuracy": None, "correct": None, "total": 3, "missing": 1}}})
    assert (summary.limit, summary.scored, summary.status_text) == (3, ["simple_python"], "partial (--limit 3)")
    with pytest.raises(ValueError, match="not a positive integer"):
        _ = record.Summary({"limit": 0}).limit
