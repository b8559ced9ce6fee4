"""The core's whole steps (``core/run.py``) without Airflow: the pure summary, outcome and report
of a run, and the steps chained over plain files on an SQLite warehouse with a stub customer API."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.records import LeftOut, Rejection
from krenalis_airflow.core.run import (
    UpsertFiles,
    UpsertRun,
    UpsertSummary,
    carried,
    outcome,
    report,
    run_dedupe,
    run_extract,
    run_summary,
    run_transform,
    run_upsert,
    selected_columns,
    sync_options,
)
from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from krenalis_airflow.core.spec import Transformation, load_spec
from krenalis_airflow.core.sync import SyncResult
from krenalis_airflow.exceptions import RetryableSyncError, RunFailed, SpecError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
log = logging.getLogger("tests.core.test_run")
PYTHON = "def transform(profile: dict) -> dict:\n    return {}\n"

UPSTREAM: dict[str, Any] = {
    "sql": "SELECT …",
    "total": 10,
    "extracted": 8,
    "transformed": 7,
    "duplicates": 1,
    "rejected": {"invalid output": 1},
    "skipped": {"kept first": 1},
    "skipped_samples": ["p1: kept first"],
    "rejection_files": ["a.jsonl", "b.jsonl"],
}


def test_the_outcome_counts_rejected_and_failed_never_skipped() -> None:
    summary = {"rejected_total": 2, "failed": 1, "skipped_total": 40, "extracted": 50}
    assert outcome(3, summary) == "success"
    assert outcome(2, summary) == (
        "failed: 2 rejected + 1 failed profiles exceed export.max_rejected (2 for 50 extracted); "
        "skipped profiles (40) do not count"
    )
    assert outcome(0, {**summary, "rejected_total": 0, "failed": 0}) == "success"
    assert outcome(0, {**summary, "skipped_total": 0}).endswith("(0 for 50 extracted)")


def test_the_summary_merges_every_steps_rejections_and_skips() -> None:
    result = SyncResult(created=3, updated=2, unchanged=1, failed=1)
    result.rejections.append(Rejection("p9", "upsert", "not sendable", "why"))
    result.skipped["update_only"] += 2
    result.sample("skipped", "p7: no customer")
    result.api_calls["customers.create"] += 3

    summary = run_summary(
        UPSTREAM, result, Counter({"customers.create": 1}), pipeline="x", dry_run=True, full_resync=False
    )

    assert summary["filtered_out"] == 2
    assert summary["rejected"] == {"invalid output": 1, "not sendable": 1}
    assert summary["rejected_total"] == 2
    assert summary["skipped"] == {"kept first": 1, "update_only": 2}
    assert summary["skipped_total"] == 3
    assert summary["samples"]["skipped"] == ["p1: kept first", "p7: no customer"]
    assert summary["retried"] == {"customers.create": 1}
    assert summary["rejection_files"] == ["a.jsonl", "b.jsonl"]
    assert list(summary)[:4] == ["pipeline", "sql", "dry_run", "full_resync"]


def test_the_report_is_one_table_and_says_a_dry_run_writes_nothing() -> None:
    summary = run_summary(UPSTREAM, SyncResult(created=3), {}, pipeline="x", dry_run=True, full_resync=False)
    text = report(summary, dry_run=True)
    assert text.startswith("Sync summary — Pipeline x (DRY RUN: nothing written)\n")
    rows = [line.split() for line in text.splitlines()[1:]]
    assert ["would", "be", "created", "3"] in rows
    assert ["extracted", "8", "filtered", "out", "2"] in rows
    real = report(summary, dry_run=False)
    assert ["created", "3"] in [line.split() for line in real.splitlines()]
    assert "DRY RUN" not in real


def test_carried_adds_this_steps_left_out_to_the_upstreams() -> None:
    left = LeftOut(Counter({"invalid output": 2}), Counter({"kept first": 1}), ["p3: kept first"])
    assert carried(UPSTREAM, left, "c.jsonl") == {
        "rejected": {"invalid output": 3},
        "skipped": {"kept first": 2},
        "skipped_samples": ["p1: kept first", "p3: kept first"],
        "rejection_files": ["a.jsonl", "b.jsonl", "c.jsonl"],
    }
    assert carried({}, LeftOut(), "r.jsonl") == {
        "rejected": {},
        "skipped": {},
        "skipped_samples": [],
        "rejection_files": ["r.jsonl"],
    }


def test_selected_columns_only_with_transformation_inputs() -> None:
    spec = load_spec(SAMPLE)
    assert selected_columns(spec) == []
    with_inputs = spec.model_copy(update={"transformation": Transformation(python=PYTHON, inputs=["plan"])})
    selected = selected_columns(with_inputs)
    assert selected[0] == ("source.key", spec.source.key)
    assert selected[-1] == ("transformation.inputs[0]", "plan")


def test_the_error_of_an_upsert_is_retryable_only_for_transient_failures() -> None:
    ok = UpsertSummary({"outcome": "success", "rejection_files": ["r"]}, failed=0)
    assert ok.error() is None
    bad = {"outcome": "failed: too many", "rejection_files": ["a", "r.jsonl"]}
    assert isinstance(UpsertSummary(bad, failed=0).error(), RunFailed)
    error = UpsertSummary(bad, failed=2).error()
    assert isinstance(error, RetryableSyncError)
    assert str(error) == "failed: too many; see the summary above and r.jsonl"


class StubApi:
    """A ``CustomerApi`` with no customers that creates whatever it is asked to."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def list_all(self) -> Iterator[dict[str, Any]]:
        self.calls["customers.list"] += 1
        return iter(())

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        self.calls["customers.retrieve"] += 1
        return {"id": customer_id}

    def find(self, customer_id: str) -> dict[str, Any] | None:
        return None

    def account_id(self) -> str | None:
        return None

    def delete(self, customer_id: str) -> None:
        self.calls["customers.delete"] += 1

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        self.calls["customers.create"] += 1
        return f"cus_{self.calls['customers.create']}"

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        self.calls["customers.update"] += 1
        return customer_id


def test_the_steps_chain_over_plain_files(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.sqlite"
    write_sqlite_warehouse(warehouse, 30)
    spec = load_spec(SAMPLE)
    spec_file = str(SAMPLE)
    name = {f: str(tmp_path / f) for f in ("profiles", "records", "r1", "deduped", "r2", "r3", "summary")}

    conn = sqlite3.connect(warehouse)
    try:
        extracted = run_extract(
            conn, spec, spec_file, name["profiles"], open, dialect="sqlite", placeholder="?", log=log
        )
    finally:
        conn.close()
    assert 0 < extracted.extracted <= extracted.total == 30
    xcom = extracted.xcom(name["profiles"], "2026-01-01T00:00:00+00:00")
    assert set(xcom) == {
        *("profiles", "columns", "total", "extracted", "sql", "started_at"),
        *("unchanged_inputs", "leavers", "destination"),  # core/inputs.py: none here (no digests)
    }
    assert (xcom["unchanged_inputs"], xcom["leavers"], xcom["destination"]) == (0, None, "")

    transformed = run_transform(
        spec, spec_file, extracted.columns, (name["profiles"], name["records"], name["r1"]), open, log=log
    )
    upstream = {**xcom, "transformed": transformed.kept, **carried(xcom, transformed.left, name["r1"])}
    deduped = run_dedupe(spec, (name["records"], name["deduped"], name["r2"]), open, log=log)
    upstream = {**upstream, "duplicates": deduped.left_out, **carried(upstream, deduped.left, name["r2"])}

    options = sync_options(spec, dry_run=True, full_resync=False, concurrency=2)
    state = sqlite3.connect(tmp_path / "state.sqlite")
    files = UpsertFiles(name["deduped"], name["r3"], name["summary"])
    done = run_upsert(StubApi(), spec, UpsertRun(state, "?", options), upstream, files, open, log=log)
    state.close()

    summary = done.summary
    assert summary["extracted"] == extracted.extracted
    assert summary["created"] + summary["failed"] + summary["rejected_total"] >= deduped.kept > 0
    assert summary["rejection_files"] == [name["r1"], name["r2"], name["r3"]]
    written = json.loads(Path(name["summary"]).read_text())
    assert "outcome" not in written and written["created"] == summary["created"]
    assert summary["outcome"] == done.outcome
    tables = sqlite3.connect(tmp_path / "state.sqlite").execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []  # a dry run creates nothing


def test_the_transform_checks_the_mapping_against_the_extracted_columns(tmp_path: Path) -> None:
    spec = load_spec(SAMPLE)
    files = (str(tmp_path / "p"), str(tmp_path / "r"), str(tmp_path / "x"))
    with pytest.raises(SpecError):
        run_transform(spec, str(SAMPLE), ["profile_id"], files, open, log=log)
    assert not (tmp_path / "r").exists()  # nothing written
