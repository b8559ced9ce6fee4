"""The runs and rejections tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from krenalis_airflow.core.history import History
from krenalis_airflow.core.records import Rejection

SUMMARY = {
    "full_resync": False,
    "extracted": 10,
    "filtered_out": 5,
    "transformed": 9,
    "rejected": {"empty matching value": 1, "rejected by Stripe": 1},
    "duplicates": 0,
    "created": 6,
    "updated": 1,
    "unchanged": 1,
    "skipped": {"exists; create_only never updates": 0},
    "failed": 0,
    "api_calls": {"customers.list": 1, "customers.create": 6, "customers.update": 1},
}


@pytest.fixture(params=["sqlite", "postgres"])
def connection(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str, str]]:
    prefix = f"h_{uuid.uuid4().hex[:8]}_"
    if request.param == "sqlite":
        conn = sqlite3.connect(tmp_path / "state.sqlite")
        yield conn, "?", prefix
        conn.close()
        return
    conn = psycopg2.connect(host="127.0.0.1", dbname="test", user="postgres")
    yield conn, "%s", prefix
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {prefix}runs")
        cur.execute(f"DROP TABLE IF EXISTS {prefix}rejections")
    conn.commit()
    conn.close()


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    cur.execute(sql)
    found = cur.fetchall()
    cur.close()
    return list(found)


def test_a_run_and_its_rejections_are_recorded_and_a_retry_replaces_them(connection) -> None:
    conn, ph, prefix = connection
    history = History(conn, ph, "pipe", prefix)
    history.ensure_tables()
    history.ensure_tables()  # idempotent
    rejected = [
        Rejection("p1", "transform", "empty matching value", "'email' is empty"),
        Rejection("p2", "upsert", "rejected by Stripe", "Invalid email"),
    ]
    assert history.record_rejections("run-1", iter(rejected)) == 2
    history.record_run("run-1", "2026-01-01T00:00:00+00:00", SUMMARY, "success")
    # An Airflow retry of the same run replaces its rows.
    history.record_rejections("run-1", iter(rejected[:1]))
    history.record_run("run-1", "2026-01-01T00:00:00+00:00", {**SUMMARY, "created": 7}, "success")
    history.record_run("run-2", "2026-01-01T01:00:00+00:00", SUMMARY, "failed: too many")
    runs = rows(
        conn,
        f"SELECT run_id, extracted, created, rejected_total, skipped_total, api_calls_total, outcome FROM {prefix}runs ORDER BY run_id",
    )
    assert runs == [("run-1", 10, 7, 2, 0, 8, "success"), ("run-2", 10, 6, 2, 0, 8, "failed: too many")]
    assert rows(conn, f"SELECT profile_key, step, kind FROM {prefix}rejections") == [
        ("p1", "transform", "empty matching value")
    ]


def test_skipped_profiles_are_counted_in_the_run_row_not_recorded_as_rejections(connection) -> None:
    conn, ph, prefix = connection
    history = History(conn, ph, "pipe", prefix)
    history.ensure_tables()
    skipped = {"duplicate profile; keep_first kept another": 2, "no Stripe customer has this id": 1}
    summary = {**SUMMARY, "rejected": {}, "skipped": skipped, "skipped_total": 3}
    assert history.record_rejections("run-1", iter([])) == 0
    history.record_run("run-1", "2026-01-01T00:00:00+00:00", summary, "success")
    [(rejected_total, skipped_total, recorded)] = rows(
        conn, f"SELECT rejected_total, skipped_total, summary FROM {prefix}runs"
    )
    assert (rejected_total, skipped_total) == (0, 3)
    assert json.loads(recorded)["skipped"] == skipped
    assert rows(conn, f"SELECT count(*) FROM {prefix}rejections") == [(0,)]
