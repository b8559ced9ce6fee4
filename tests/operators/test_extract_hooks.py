"""The extraction core through Airflow's own hooks, with connections from ``AIRFLOW_CONN_*``.

The operator passes ``hook.dialect_name`` and ``hook.placeholder`` to ``prepare_extraction``:
``sqlite`` / ``?`` for SqliteHook and ``postgresql`` / ``%s`` for PostgresHook, whose
``get_conn()`` returns a psycopg 3 connection when psycopg and SQLAlchemy 2 are installed (as
here), psycopg2 otherwise.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.sql.hooks.sql import DbApiHook

from krenalis_airflow.core.conditions import Group
from krenalis_airflow.core.extract import iter_rows, prepare_extraction
from krenalis_airflow.core.spec import Source
from krenalis_airflow.exceptions import SpecError
from tests.core.warehouses import PG_DSN

ROWS = [
    (1, "a@x.com", "free", 5, "100.50", 1),
    (2, "b@x.com", "pro", 12, "20", 0),
    (3, "c@x.com", None, 7, None, None),
]
VIP_OR_NO_PLAN = Group.model_validate(
    {
        "logical": "or",
        "conditions": [
            {"property": "vip", "operator": "is true"},
            {"property": "plan", "operator": "is not", "values": ["pro"]},
        ],
    }
)


def extract(hook: DbApiHook, table: str) -> tuple[list[dict[str, Any]], int]:
    """What the operator's extract step does: one prepare_extraction call, then count and stream."""
    source = Source(conn_id="warehouse", table=table, key="id")
    conn = hook.get_conn()
    try:
        cursor = conn.cursor()
        extraction = prepare_extraction(
            cursor,
            source,
            VIP_OR_NO_PLAN,
            dialect=hook.dialect_name,
            placeholder=hook.placeholder,
            order=("orders", True),
            source_name="pipelines/hooks.yaml",
        )
        cursor.execute(extraction.count_sql)
        total = cursor.fetchone()[0]
        return list(iter_rows(cursor, extraction.sql, extraction.params)), total
    finally:
        conn.close()


@pytest.fixture
def sqlite_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "warehouse.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE profiles (id INTEGER, email TEXT, plan TEXT, orders INTEGER, ltv REAL, vip INTEGER)"
    )
    conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?)", ROWS)
    conn.commit()
    conn.close()
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_LITE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return "warehouse_lite"


@pytest.fixture
def postgres_conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(PG_DSN)
    except psycopg2.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    admin.autocommit = True
    schema = f"krenalis_hooks_{uuid.uuid4().hex[:8]}"
    cursor = admin.cursor()
    cursor.execute(f"CREATE SCHEMA {schema}")
    cursor.execute(
        f"CREATE TABLE {schema}.profiles (id integer, email text, plan text, orders integer,"
        " ltv numeric(10, 2), vip boolean)"
    )
    rows = [(*row[:5], None if row[5] is None else bool(row[5])) for row in ROWS]
    cursor.executemany(f"INSERT INTO {schema}.profiles VALUES (%s, %s, %s, %s, %s, %s)", rows)
    conn = {"conn_type": "postgres", "host": "127.0.0.1", "schema": "test", "login": "postgres"}
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_PG", json.dumps(conn))
    yield "warehouse_pg", schema
    cursor.execute(f"DROP SCHEMA {schema} CASCADE")
    admin.close()


def test_sqlite_hook(sqlite_conn: str) -> None:
    from airflow.providers.sqlite.hooks.sqlite import SqliteHook

    hook = SqliteHook(sqlite_conn_id=sqlite_conn)
    assert (hook.dialect_name, hook.placeholder) == ("sqlite", "?")
    rows, total = extract(hook, "profiles")
    assert total == 3
    assert rows == [
        {"id": 3, "email": "c@x.com", "plan": None, "orders": 7, "ltv": None, "vip": None},
        {"id": 1, "email": "a@x.com", "plan": "free", "orders": 5, "ltv": 100.5, "vip": 1},
    ]


def test_postgres_hook(postgres_conn: tuple[str, str]) -> None:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn_id, schema = postgres_conn
    hook = PostgresHook(postgres_conn_id=conn_id)
    assert (hook.dialect_name, hook.placeholder) == ("postgresql", "%s")
    rows, total = extract(hook, f"{schema}.profiles")
    assert total == 3
    assert rows == [
        {"id": 3, "email": "c@x.com", "plan": None, "orders": 7, "ltv": None, "vip": None},
        {"id": 1, "email": "a@x.com", "plan": "free", "orders": 5, "ltv": 100.5, "vip": True},
    ]


# --------------------------------------------------------------------------------------------
# The extract step checks every column the spec names before it reads a row

BAD_SPEC = """\
source:
  conn_id: {conn_id}
  table: {table}
  key: id
filter:
  logical: and
  conditions:
    - {{property: ltv, operator: is greater than, values: ["lots"]}}
export:
  matching:
    property: vip
    stripe: email
transformation:
  mapping:
    name: emial
"""


def extract_step(tmp_path: Path, conn_id: str, table: str) -> tuple[SpecError, Path]:
    from airflow.sdk import ObjectStoragePath

    from krenalis_airflow.core.spec import load_spec
    from krenalis_airflow.operators import steps

    spec_file = tmp_path / "bad_columns.yaml"
    spec_file.write_text(BAD_SPEC.format(conn_id=conn_id, table=table), encoding="utf-8")
    folder = tmp_path / "run"
    folder.mkdir()
    run = steps.StepRun(
        spec=load_spec(spec_file),
        spec_file=str(spec_file),
        folder=ObjectStoragePath(f"file://{folder}"),
        upstream={},
        dry_run=False,
        full_resync=False,
        log=logging.getLogger("test_extract_hooks"),
    )
    with pytest.raises(SpecError) as raised:
        steps.extract(run)
    assert list(folder.iterdir()) == []  # not a row read, not a file written
    return raised.value, spec_file


def expected_problems(spec_file: Path, vip_kind: str) -> list[str]:
    return [
        f"{spec_file}:8: filter.conditions[0].values[0]: 'lots' is not a number (column ltv is numeric)",
        f"{spec_file}:11: export.matching.property: column vip is {vip_kind}; the matching property must "
        "be a text, integer or UUID column",
        f"{spec_file}:15: transformation.mapping.name: no column 'emial' in the source; did you mean 'email'?",
    ]


def check_problems(error: SpecError, expected: list[str]) -> None:
    rendered = [problem.render(error.source) for problem in error.problems]
    assert len(rendered) == len(expected)
    for line, start in zip(rendered, expected, strict=True):
        assert line.startswith(start), line


def test_sqlite_extract_step_fails_before_reading_a_row(sqlite_conn: str, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "warehouse.db") as conn:  # SQLite keeps declared types: vip BOOLEAN
        conn.execute("CREATE TABLE typed (id INTEGER, email TEXT, ltv REAL, vip BOOLEAN)")
    error, spec_file = extract_step(tmp_path, sqlite_conn, "typed")
    check_problems(error, expected_problems(spec_file, "boolean"))


def test_postgres_extract_step_fails_before_reading_a_row(
    postgres_conn: tuple[str, str], tmp_path: Path
) -> None:
    conn_id, schema = postgres_conn
    error, spec_file = extract_step(tmp_path, conn_id, f"{schema}.profiles")
    check_problems(error, expected_problems(spec_file, "boolean"))
