"""The pure part of the "Stripe pipelines" page (``krenalis_airflow/plugins/queries.py``): specs
as list rows, filters in words, and the runs and rejections tables read back from SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.history import History
from krenalis_airflow.core.records import Rejection
from krenalis_airflow.plugins import queries
from krenalis_airflow.plugins.queries import HistoryReader, like_escape
from tests.specs import spec_text

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
DISABLED = """\
description: Swiss customers
enabled: false
schedule: 15m
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
destination: {conn_id: stripe_eu}
export:
  matching: {property: profile_id, stripe: metadata.profile_id}
transformation:
  mapping:
    name: first_name
"""
SECRET = "sk_test_never_on_the_page"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "sample_customers.yaml").write_text(SAMPLE.read_text())
    (tmp_path / "ch_off.yaml").write_text(DISABLED)
    (tmp_path / "broken_pipeline.yaml").write_text(spec_text("invalid/broken_pipeline"))
    (tmp_path / "notes.txt").write_text("not a spec")
    return tmp_path


def test_one_row_per_spec_in_name_order_with_the_filter_in_words(folder: Path) -> None:
    rows = {row.dag_id: row for row in queries.pipelines(folder)}
    assert list(rows) == ["broken_pipeline", "ch_off", "sample_customers"]

    sample = rows["sample_customers"]
    assert sample.filters == (
        "country is one of 'IT', 'FR', 'DE', 'ES', 'NL' and plan is not 'free' and "
        "(lifetime_value is greater than or equal to '100' or vip is true)"
    )
    assert (sample.name, sample.enabled, sample.schedule, sample.destination) == (
        "sample_customers",
        True,
        "1h",
        "stripe_default",
    )
    assert sample.description.startswith("Paying customers in Italy")
    assert sample.source == "warehouse: customer_profiles" and not sample.broken

    off = rows["ch_off"]
    assert (off.enabled, off.schedule, off.filters, off.destination) == (
        False,
        "15m",
        queries.ALL_PROFILES,
        "stripe_eu",
    )


def test_a_broken_spec_is_listed_with_its_error_under_its_placeholder_dag_id(folder: Path) -> None:
    broken = {row.dag_id: row for row in queries.pipelines(folder)}["broken_pipeline"]
    assert broken.broken and broken.as_dict()["broken"] is True
    assert broken.error is not None
    assert (
        "broken_pipeline.yaml:8: transformation.mapping.adress.city: unknown Stripe customer field"
        in broken.error
    )
    assert str(folder) not in broken.error  # the server's folders are not the reader's business
    assert queries.find_pipeline(folder, "broken_pipeline") == (broken, folder / "broken_pipeline.yaml")
    assert queries.find_pipeline(folder, "nope") is None


def test_a_manual_pipeline_says_so(tmp_path: Path) -> None:
    (tmp_path / "manual.yaml").write_text(DISABLED.replace("schedule: 15m", "schedule: null"))
    [row] = queries.pipelines(tmp_path)
    assert row.schedule == queries.MANUAL_ONLY


# --------------------------------------------------------------------------------------------
# The history tables


def summary(**counts: Any) -> dict[str, Any]:
    """A run summary as ``core.run.run_summary`` writes it (samples and files included)."""
    base: dict[str, Any] = {
        "pipeline": "p",
        "sql": "SELECT * FROM \"customer_profiles\" AS src WHERE (src.country = ?)\n-- parameters: ['GB']",
        "dry_run": False,
        "full_resync": False,
        "extracted": 10,
        "filtered_out": 90,
        "transformed": 9,
        "rejected": {"empty matching value": 1},
        "rejected_total": 1,
        "duplicates": 0,
        "created": 9,
        "updated": 0,
        "unchanged": 0,
        "skipped": {},
        "skipped_total": 0,
        "failed": 0,
        "api_calls": {"customers.list": 1, "customers.create": 9},
        "retried": {"customers.create": 2},
        "samples": {"created": [{"email": "jane@example.com", "api_key": SECRET}]},
        "rejection_files": ["s3://bucket/secret-path/rejected-transform.jsonl"],
    }
    return {**base, **counts}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    history = History(conn, "?", "gb")
    history.ensure_tables()
    history.record_run("manual__1", "2026-01-01T10:00:00+00:00", summary(), "success")
    conn.execute(
        f"UPDATE {history.runs} SET ended_at = '2026-01-01T10:01:05+00:00' WHERE run_id = 'manual__1'"
    )
    history.record_run("manual__2", "2026-01-02T10:00:00+00:00", summary(created=0, unchanged=9), "success")
    conn.execute(
        f"UPDATE {history.runs} SET ended_at = '2026-01-02T10:00:07+00:00' WHERE run_id = 'manual__2'"
    )
    History(conn, "?", "other").record_run("manual__9", "", summary(), "success")
    rejections = [
        Rejection(f"p{i:03d}", "transform", "empty matching value", f"email is empty ({i})")
        for i in range(120)
    ]
    rejections += [
        Rejection("100%_sure", "dedupe", "duplicate", "shares jane@example.com"),
        Rejection("p_x", "upsert", "invalid", "Stripe said: Invalid EMAIL"),
    ]
    history.record_rejections("manual__1", rejections)
    conn.commit()
    yield conn
    conn.close()


def test_runs_latest_first_with_counts_duration_calls_and_retries(store: sqlite3.Connection) -> None:
    page = HistoryReader(store, "?").runs("gb")
    assert page.total == 2 and [r["run_id"] for r in page.rows] == ["manual__2", "manual__1"]
    latest, first = page.rows
    assert latest["counts"]["unchanged"] == 9 and latest["counts"]["created"] == 0
    assert first["counts"] == {
        "extracted": 10,
        "filtered_out": 90,
        "transformed": 9,
        "rejected_total": 1,
        "duplicates": 0,
        "created": 9,
        "updated": 0,
        "unchanged": 0,
        "skipped_total": 0,
        "failed": 0,
        "api_calls_total": 10,
    }
    assert first["duration_s"] == 65.0 and first["outcome"] == "success"
    assert first["details"]["api_calls"] == {"customers.list": 1, "customers.create": 9}
    assert first["details"]["retried"] == {"customers.create": 2} and first["details"]["retried_total"] == 2
    assert first["details"]["sql"].startswith('SELECT * FROM "customer_profiles"')
    last = HistoryReader(store, "?").last_run("gb")
    assert last is not None and last.run_id == "manual__2"
    assert HistoryReader(store, "?").last_run("nobody") is None


def test_no_sample_or_file_path_of_the_summary_reaches_the_page(store: sqlite3.Connection) -> None:
    text = json.dumps(HistoryReader(store, "?").runs("gb").as_dict())
    for leaked in (SECRET, "jane@example.com", "secret-path", "samples", "rejection_files"):
        assert leaked not in text


def test_rejections_of_one_run_paged_in_key_order(store: sqlite3.Connection) -> None:
    reader = HistoryReader(store, "?")
    first = reader.rejections("gb", "manual__1", limit=50)
    assert first.total == 122 and len(first.rows) == 50
    assert first.rows[0] == {
        "profile_key": "100%_sure",
        "step": "dedupe",
        "kind": "duplicate",
        "reason": "shares jane@example.com",
    }
    last = reader.rejections("gb", "manual__1", limit=50, offset=100)
    assert (last.total, len(last.rows), last.offset) == (122, 22, 100)
    assert last.rows[-1]["profile_key"] == "p_x"
    assert reader.rejections("gb", "manual__2").total == 0
    assert reader.rejections("other", "manual__1").total == 0  # another pipeline's run id


@pytest.mark.parametrize(
    ("search", "keys"),
    [
        ("P11", ["p110", "p111", "p112", "p113", "p114", "p115", "p116", "p117", "p118", "p119"]),
        ("invalid email", ["p_x"]),  # the reason, any case
        ("dedupe", ["100%_sure"]),  # the step
        ("%", ["100%_sure"]),  # literal, not "anything"
        ("p_", ["p_x"]),  # _ is literal too
        ("(42)", ["p042"]),
        ("'; DROP TABLE krenalis_runs; --", []),
        ("nothing like it", []),
    ],
)
def test_rejection_search_is_a_literal_case_insensitive_contains(
    store: sqlite3.Connection, search: str, keys: list[str]
) -> None:
    page = HistoryReader(store, "?").rejections("gb", "manual__1", search=search, limit=200)
    assert [row["profile_key"] for row in page.rows] == keys and page.total == len(keys)
    assert store.execute("SELECT COUNT(*) FROM krenalis_runs").fetchone()[0] == 3


def test_page_bounds_are_clamped(store: sqlite3.Connection) -> None:
    page = HistoryReader(store, "?").rejections("gb", "manual__1", limit=10_000, offset=-5)
    assert (page.limit, page.offset, len(page.rows)) == (queries.MAX_PAGE, 0, 122)


def test_a_store_without_tables_reads_as_empty(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "empty.sqlite")
    with HistoryReader(conn, "?", "other_prefix_") as reader:
        assert reader.runs("gb").as_dict() == {"rows": [], "total": 0, "offset": 0, "limit": 20}
        assert reader.rejections("gb", "r", search="x").total == 0
        assert reader.last_run("gb") is None


def test_like_escape() -> None:
    assert like_escape(r"50%_a\b") == r"50\%\_a\\b"


def test_queries_do_not_import_airflow() -> None:
    probe = (
        "import sys, krenalis_airflow.plugins.queries; "
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))[:5])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_a_plan_is_the_dry_run_summary_without_files() -> None:
    value = summary(dry_run=True, samples={"created": [f"p{i} → (new)" for i in range(9)]})
    plan = queries.plan_summary(value)
    assert plan is not None and plan["dry_run"] is True
    assert plan["counts"] == {
        "extracted": 10,
        "filtered_out": 90,
        "created": 9,
        "updated": 0,
        "unchanged": 0,
        "skipped_total": 0,
        "rejected_total": 1,
    }
    assert plan["samples"] == {"created": [f"p{i} → (new)" for i in range(5)]}
    assert plan["api_calls"] == {"customers.list": 1, "customers.create": 9}
    assert "rejection_files" not in plan and "sql" not in plan
    for other in (None, "text", [], {"no": "summary"}):
        assert queries.plan_summary(other) is None
