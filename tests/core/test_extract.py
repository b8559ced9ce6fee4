"""The extraction query (probe, select, count) and row streaming, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.conditions import Group, Kind
from krenalis_airflow.core.extract import (
    Extraction,
    SourceColumns,
    column_kinds,
    columns_of,
    count_sql,
    iter_rows,
    json_value,
    prepare_extraction,
    probe_source,
    probe_sql,
    sqlite_kind,
    statement,
)
from krenalis_airflow.core.spec import Source
from krenalis_airflow.exceptions import SpecError
from tests.core.warehouses import PG_DSN, pg_connect

COLUMNS = ["id", "email", "plan", "orders", "updated_at"]
ROWS: list[tuple[Any, ...]] = [
    (1, "a@x.com", "free", 3, "2024-03-01 00:00:00"),
    (2, "b@example.com", "pro", 12, None),
    (3, "c@x.com", "pro", 7, "2024-01-01 00:00:00"),
    (4, "d@example.com", "free", 0, "2024-06-01 00:00:00"),
    (5, "e@x.com", None, 40, "2024-03-01 00:00:00"),
]
DDL = "CREATE TABLE {table} (id integer PRIMARY KEY, email text, plan text, orders integer, updated_at {ts})"


@dataclass
class Backend:
    name: str
    conn: Any
    placeholder: str
    schema: str | None  # PostgreSQL schema holding the tables

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    @property
    def dialect(self) -> str:
        return "sqlite" if self.name == "sqlite" else "postgresql"

    def extraction(
        self, source: Source, group: Group | None = None, order: tuple[str, bool] | None = None
    ) -> Extraction:
        return prepare_extraction(
            self.conn.cursor(), source, group, dialect=self.dialect, placeholder=self.placeholder, order=order
        )

    def ids(
        self, source: Source, group: Group | None = None, order: tuple[str, bool] | None = None
    ) -> list[Any]:
        """Probe the source, then extract it, the way the operator does."""
        extraction = self.extraction(source, group, order)
        return [row["id"] for row in iter_rows(self.conn.cursor(), extraction.sql, extraction.params)]


def _fill(conn: Any, placeholder: str, table: str, ts_type: str) -> None:
    cursor = conn.cursor()
    cursor.execute(DDL.format(table=table, ts=ts_type))
    # A table named with a reserved word: it only works if the name is quoted.
    quoted = ".".join(f'"{part}"' for part in table.replace("profiles", "order").split("."))
    cursor.execute(f"CREATE TABLE {quoted} (id integer, total integer)")
    cursor.execute(f"INSERT INTO {quoted} VALUES (1, 10)")
    marks = ", ".join([placeholder] * len(COLUMNS))
    cursor.executemany(f"INSERT INTO {table} VALUES ({marks})", ROWS)


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A uniquely named schema with ``profiles`` and ``"order"``; dropped at the end of the module."""
    try:
        conn = pg_connect("psycopg2")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    schema = f"krenalis_extract_{uuid.uuid4().hex[:8]}"
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    _fill(conn, "%s", f"{schema}.profiles", "timestamp")
    yield schema
    conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("extract") / "warehouse.db"
    conn = sqlite3.connect(path)
    _fill(conn, "?", "profiles", "TIMESTAMP")
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module", params=["sqlite", "psycopg2", "psycopg3"])
def db(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        conn = sqlite3.connect(sqlite_path)
        yield Backend("sqlite", conn, "?", None)
    else:
        schema = request.getfixturevalue("pg_schema")
        conn = pg_connect(request.param)
        yield Backend(request.param, conn, "%s", schema)
    conn.close()


def table_source(db: Backend, name: str = "profiles", key: str = "id") -> Source:
    return Source(conn_id="warehouse", table=db.table(name), key=key)


def query_source(query: str, key: str = "id") -> Source:
    return Source(conn_id="warehouse", query=query, key=key)


def group(*conditions: dict[str, Any], logical: str = "and") -> Group:
    return Group.model_validate({"logical": logical, "conditions": list(conditions)})


def cond(prop: str, operator: str, *values: str) -> dict[str, Any]:
    return {"property": prop, "operator": operator, "values": list(values)}


# --------------------------------------------------------------------------------------------
# Probe and count


def test_probe_returns_the_columns_and_no_rows(db: Backend) -> None:
    cursor = db.conn.cursor()
    cursor.execute(probe_sql(table_source(db)))
    assert columns_of(cursor) == COLUMNS
    assert cursor.fetchall() == []


def test_table_names_are_quoted_part_by_part(db: Backend) -> None:
    source = table_source(db, "order")
    sql = probe_sql(source)
    assert ('"order" AS src' in sql) and (db.schema is None or f'"{db.schema}"."order"' in sql)
    assert db.ids(source) == [1]


def test_count_is_the_total_before_filtering(db: Backend) -> None:
    cursor = db.conn.cursor()
    cursor.execute(count_sql(table_source(db)))
    assert cursor.fetchone()[0] == len(ROWS)


# --------------------------------------------------------------------------------------------
# Query sources


def test_query_source_works_like_a_table(db: Backend) -> None:
    source = query_source(f"SELECT id, email, orders FROM {db.table('profiles')} WHERE orders > 1")
    cursor = db.conn.cursor()
    cursor.execute(probe_sql(source))
    assert columns_of(cursor) == ["id", "email", "orders"]
    assert db.ids(source) == [1, 2, 3, 5]
    assert db.ids(source, group(cond("orders", "is less than", "10"))) == [1, 3]
    cursor.execute(count_sql(source))
    assert cursor.fetchone()[0] == 4


def test_query_with_percent_semicolon_and_trailing_comment(db: Backend) -> None:
    """psycopg reads % as a placeholder when parameters are passed: the extraction escapes it."""
    query = f"""
        WITH p AS (SELECT * FROM {db.table("profiles")})
        SELECT id, email, plan, '100%' AS label FROM p WHERE email LIKE '%@example.com';  -- example users
    """
    source = query_source(query)
    cursor = db.conn.cursor()
    cursor.execute(probe_sql(source))  # no parameters: % stays single
    assert columns_of(cursor) == ["id", "email", "plan", "label"]
    cursor.execute(count_sql(source))
    assert cursor.fetchone()[0] == 2
    assert db.ids(source) == [2, 4]  # empty parameter list
    assert db.ids(source, group(cond("plan", "is", "pro"))) == [2]
    extraction = db.extraction(source)
    rows = list(iter_rows(db.conn.cursor(), extraction.sql, extraction.params))
    assert [row["label"] for row in rows] == ["100%", "100%"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT 1;", "SELECT 1"),
        ("  SELECT 1 ;; \n", "SELECT 1"),
        ("SELECT 1; -- everyone\n\n", "SELECT 1"),
        ("SELECT 1 /* all */ ;", "SELECT 1"),
        ("SELECT 1 -- first\nFROM t -- second", "SELECT 1 -- first\nFROM t"),
        ("SELECT ';--' AS a", "SELECT ';--' AS a"),
        ("SELECT 'it''s;' AS \"a;--\"", "SELECT 'it''s;' AS \"a;--\""),
    ],
)
def test_statement_drops_what_ends_the_query(query: str, expected: str) -> None:
    assert statement(query) == expected


@pytest.mark.parametrize("expression", ["orders * 2", "CAST(orders * 2 AS INTEGER)"])
def test_query_expression_columns_filter_by_type(db: Backend, expression: str) -> None:
    """SQLite declares no type for an expression column: the type of its values is used."""
    source = query_source(f"SELECT id, {expression} AS double_orders FROM {db.table('profiles')}")
    assert db.ids(source, group(cond("double_orders", "is greater than", "20"))) == [2, 5]
    assert db.ids(source, group(cond("double_orders", "is one of", "6", "14"))) == [1, 3]
    kinds = db.extraction(source, group(cond("double_orders", "is null"))).kinds
    assert kinds == {"double_orders": Kind.INTEGER}


def test_query_columns_keep_their_declared_types(db: Backend) -> None:
    """On SQLite through a temporary view of the query, dropped at once."""
    source = query_source(f"SELECT id AS key, updated_at AS seen, email FROM {db.table('profiles')}")
    filter_group = group(cond("seen", "is", "2024-03-01T00:00:00Z"), cond("email", "is not null"))
    extraction = prepare_extraction(
        db.conn.cursor(),
        Source(conn_id="w", query=source.query, key="key"),
        filter_group,
        dialect=db.dialect,
        placeholder=db.placeholder,
        order=None,
    )
    assert extraction.kinds == {"seen": Kind.TIMESTAMP, "email": Kind.TEXT}
    rows = list(iter_rows(db.conn.cursor(), extraction.sql, extraction.params))
    assert [row["key"] for row in rows] == [1, 5]
    if db.name == "sqlite":
        views = db.conn.execute("SELECT name FROM sqlite_temp_master WHERE type = 'view'").fetchall()
        assert views == []


def test_sqlite_without_writes_falls_back_to_the_values_types(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute("CREATE TABLE t (id INTEGER, at TIMESTAMP, n)")
    conn.execute("INSERT INTO t VALUES (1, '2024-01-01', 5)")
    conn.execute("PRAGMA query_only = 1")  # no temporary view either
    source = query_source("SELECT * FROM t")
    kinds = column_kinds(conn.cursor(), source, "sqlite", ["at", "n"])
    assert kinds == {"at": Kind.TEXT, "n": Kind.INTEGER}
    table = Source(conn_id="w", table="t", key="id")
    assert column_kinds(conn.cursor(), table, "sqlite", ["at", "n"]) == {
        "at": Kind.TIMESTAMP,
        "n": Kind.INTEGER,
    }


@pytest.mark.parametrize(
    ("declared", "kind"),
    [
        ("INTEGER", Kind.INTEGER),
        ("BIGINT", Kind.INTEGER),
        ("BOOLEAN", Kind.BOOLEAN),
        ("JSON", Kind.JSON),
        ("DATETIME", Kind.TIMESTAMP),
        ("timestamp", Kind.TIMESTAMP),
        ("DATE", Kind.DATE),
        ("VARCHAR(40)", Kind.TEXT),
        ("TEXT", Kind.TEXT),
        ("BLOB", Kind.OTHER),
        ("REAL", Kind.NUMBER),
        ("DOUBLE PRECISION", Kind.NUMBER),
        ("NUMERIC(10, 2)", Kind.NUMBER),
        ("TIME", Kind.OTHER),
        ("", None),
    ],
)
def test_sqlite_declared_types(declared: str, kind: Kind | None) -> None:
    assert sqlite_kind(declared) is kind


def test_other_dialects_quote_their_way() -> None:
    source = Source(conn_id="w", table="analytics.order", key="id")
    probed = SourceColumns(("id",), {}, "mysql")  # no MySQL here: the probe's result, given
    extraction = prepare_extraction(
        None, source, None, dialect="mysql", placeholder="%s", order=("id", True), probed=probed
    )
    assert extraction.sql == "SELECT * FROM `analytics`.`order` AS src ORDER BY (`id` IS NULL), `id` DESC"
    assert extraction.params == []
    assert extraction.count_sql == "SELECT COUNT(*) FROM `analytics`.`order` AS src"


# --------------------------------------------------------------------------------------------
# Order


def test_default_order_is_the_key_ascending(db: Backend) -> None:
    source = table_source(db)
    assert db.ids(source) == [1, 2, 3, 4, 5]
    assert db.ids(query_source(f"SELECT * FROM {db.table('profiles')} ORDER BY id DESC")) == [1, 2, 3, 4, 5]


def test_order_by_column_then_key_with_nulls_last(db: Backend) -> None:
    source = table_source(db)
    # updated_at: 1 → 03-01, 2 → NULL, 3 → 01-01, 4 → 06-01, 5 → 03-01 (tie broken by id)
    assert db.ids(source, order=("updated_at", True)) == [4, 1, 5, 3, 2]
    assert db.ids(source, order=("updated_at", False)) == [3, 1, 5, 4, 2]
    assert db.ids(source, order=("plan", False)) == [1, 4, 2, 3, 5]
    assert db.ids(source, order=("id", True)) == [5, 4, 3, 2, 1]


def test_filter_and_order_together(db: Backend) -> None:
    extraction = db.extraction(table_source(db), group(cond("plan", "is not", "pro")), ("orders", True))
    assert extraction.sql.endswith('ORDER BY ("orders" IS NULL), "orders" DESC, "id"')
    assert extraction.params == ["pro"]
    assert [row["id"] for row in iter_rows(db.conn.cursor(), extraction.sql, extraction.params)] == [5, 1, 4]


# --------------------------------------------------------------------------------------------
# Errors


def test_every_unknown_column_in_one_spec_error(db: Backend) -> None:
    source = table_source(db, key="customer_id")
    with pytest.raises(SpecError) as caught:
        prepare_extraction(
            db.conn.cursor(),
            source,
            group(cond("plan", "is", "pro"), cond("plna", "is null")),
            dialect=db.dialect,
            placeholder=db.placeholder,
            order=("updated", True),
            source_name="pipelines/vip.yaml",
        )
    problems = {p.path: p.message for p in caught.value.problems}
    assert list(problems) == ["source.key", "export.order_by", "filter.conditions[1].property"]
    assert problems["source.key"].startswith(
        "no column 'customer_id' in the source; available columns: id, email"
    )
    assert "did you mean 'updated_at'?" in problems["export.order_by"]
    assert "did you mean 'plan'?" in problems["filter.conditions[1].property"]
    assert caught.value.source == "pipelines/vip.yaml"


def test_duplicate_column_names_are_a_spec_error(db: Backend) -> None:
    """SQLite renames a repeated column of a subquery (``id:1``); PostgreSQL keeps both names."""
    source = query_source(
        f"SELECT p.id, q.id, p.email FROM {db.table('profiles')} p JOIN {db.table('profiles')} q ON true"
    )
    if db.name == "sqlite":
        assert db.extraction(source).columns == ["id", "id:1", "email"]
        return
    with pytest.raises(SpecError) as caught:
        db.extraction(source)
    assert [(p.path, p.message) for p in caught.value.problems] == [
        ("source.query", "the source has more than one column named 'id'; alias them apart")
    ]


def test_columns_of_needs_a_result() -> None:
    cursor = sqlite3.connect(":memory:").cursor()
    cursor.execute("CREATE TABLE t (a)")
    with pytest.raises(ValueError, match="no result columns"):
        columns_of(cursor)


# --------------------------------------------------------------------------------------------
# Streaming


class FetchmanyOnly:
    """A cursor that only allows fetchmany, and counts the calls."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.batches: list[int] = []

    def execute(self, sql: str, params: Any) -> None:
        self._cursor.execute(sql, params)

    @property
    def description(self) -> Any:
        return self._cursor.description

    def fetchmany(self, size: int) -> list[Any]:
        rows = self._cursor.fetchmany(size)
        self.batches.append(len(rows))
        return rows

    def fetchall(self) -> list[Any]:
        raise AssertionError("iter_rows must not fetch everything at once")

    def fetchone(self) -> Any:
        raise AssertionError("iter_rows must fetch in batches")

    def __iter__(self) -> Any:
        raise AssertionError("iter_rows must fetch in batches")


def test_iter_rows_streams_with_fetchmany(db: Backend) -> None:
    cursor = FetchmanyOnly(db.conn.cursor())
    extraction = db.extraction(table_source(db))
    rows = iter_rows(cursor, extraction.sql, extraction.params, batch_size=2)
    stamp = "2024-03-01 00:00:00" if db.name == "sqlite" else "2024-03-01T00:00:00"
    assert next(rows) == {"id": 1, "email": "a@x.com", "plan": "free", "orders": 3, "updated_at": stamp}
    assert cursor.batches == [2]  # lazily: one batch read for the first row
    assert [row["id"] for row in rows] == [2, 3, 4, 5]
    assert cursor.batches == [2, 2, 1, 0]


def test_iter_rows_of_an_empty_result(db: Backend) -> None:
    nothing = group(cond("orders", "is greater than", "1000"))
    extraction = db.extraction(table_source(db), nothing)
    assert list(iter_rows(db.conn.cursor(), extraction.sql, extraction.params)) == []


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg3"])
def test_iter_rows_with_a_server_side_cursor(pg_schema: str, driver: str) -> None:
    """A named cursor streams from the server; psycopg2 gives it no description before the first fetch."""
    conn = pg_connect(driver)
    conn.autocommit = False  # named cursors live in a transaction
    try:
        source = Source(conn_id="warehouse", table=f"{pg_schema}.profiles", key="id")
        extraction = prepare_extraction(
            conn.cursor(),
            source,
            group(cond("plan", "is not", "free")),
            dialect="postgresql",
            placeholder="%s",
            order=None,
        )
        cursor = conn.cursor(name="krenalis_stream")
        rows = iter_rows(cursor, extraction.sql, extraction.params, batch_size=2)
        assert [row["id"] for row in rows] == [2, 3, 5]
        cursor.close()
    finally:
        conn.rollback()
        conn.close()


# --------------------------------------------------------------------------------------------
# JSON-serialisable values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("100.00"), 100),
        (Decimal("1E+3"), 1000),
        (Decimal("123456789012345678901234567890"), 123456789012345678901234567890),
        (Decimal("250.50"), 250.5),
        (Decimal("-0.1"), -0.1),
        (dt.datetime(2024, 3, 1, 12, 30, 5, 120000), "2024-03-01T12:30:05.120000"),
        (dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.UTC), "2024-03-01T12:30:00+00:00"),
        (dt.date(2024, 2, 29), "2024-02-29"),
        (dt.time(8, 15), "08:15:00"),
        (b"\x00\xffA", "00ff41"),
        (memoryview(b"\x01\x02"), "0102"),
        (bytearray(b"\x10"), "10"),
        (uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (True, True),
        (False, False),
        (0, 0),
        (1.5, 1.5),
        ("text", "text"),
        (None, None),
        ([Decimal("1"), dt.date(2024, 1, 1)], [1, "2024-01-01"]),
        ({"a": Decimal("2.5"), "b": [b"\x01"]}, {"a": 2.5, "b": ["01"]}),
        (dt.timedelta(days=1, hours=2), "1 day, 2:00:00"),
    ],
    ids=repr,
)
def test_json_value(value: Any, expected: Any) -> None:
    converted = json_value(value)
    assert converted == expected and type(converted) is type(expected)


def test_sqlite_values_are_json_ready(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "types.db")
    conn.execute("CREATE TABLE t (id INTEGER, r REAL, b BLOB, s TEXT, n INTEGER)")
    conn.execute("INSERT INTO t VALUES (1, 2.5, x'00ff', 'é', NULL)")
    rows = list(iter_rows(conn.cursor(), "SELECT * FROM t", []))
    assert rows == [{"id": 1, "r": 2.5, "b": "00ff", "s": "é", "n": None}]


def test_rows_that_need_converting_and_rows_that_do_not_share_a_batch(tmp_path: Path) -> None:
    """SQLite types values per row: a column can hold text in one row and a blob in the next."""
    conn = sqlite3.connect(tmp_path / "mixed.db")
    conn.execute("CREATE TABLE t (id INTEGER, v)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "plain"), (2, b"\x01"), (3, 4.5), (4, None)])
    rows = list(iter_rows(conn.cursor(), "SELECT id, v FROM t ORDER BY id", [], batch_size=10))
    assert rows == [{"id": 1, "v": "plain"}, {"id": 2, "v": "01"}, {"id": 3, "v": 4.5}, {"id": 4, "v": None}]
    assert [list(row) for row in rows] == [["id", "v"]] * 4


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg3"])
def test_postgres_values_are_json_ready(pg_schema: str, driver: str) -> None:
    conn = pg_connect(driver)
    query = """SELECT 100.00::numeric AS whole, 250.50::numeric(10, 2) AS part, true AS flag,
        timestamp '2024-03-01 12:30:00' AS ts, timestamptz '2024-03-01 12:30:00+00' AS tstz,
        date '2024-02-29' AS d, time '08:15:00' AS t, '\\x00ff'::bytea AS raw,
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '{"a": [1, 2.5]}'::jsonb AS doc,
        ARRAY[1, 2] AS arr, 9000000000::bigint AS big, 1.5::real AS r, NULL::text AS nothing"""
    conn.cursor().execute("SET TIME ZONE 'UTC'")
    (row,) = iter_rows(conn.cursor(), query, [])
    conn.close()
    assert row == {
        "whole": 100,
        "part": 250.5,
        "flag": True,
        "ts": "2024-03-01T12:30:00",
        "tstz": "2024-03-01T12:30:00+00:00",
        "d": "2024-02-29",
        "t": "08:15:00",
        "raw": "00ff",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "doc": {"a": [1, 2.5]},
        "arr": [1, 2],
        "big": 9000000000,
        "r": 1.5,
        "nothing": None,
    }
    assert type(row["whole"]) is int and type(row["flag"]) is bool
    json.dumps(row, allow_nan=False)


def test_a_probe_checked_first_is_reused(db: Backend) -> None:
    """The extract step probes once (``columns.check_source``) and hands the probe on."""
    source = table_source(db)
    filter_group = group(cond("updated_at", "is after", "2024-02-01"), cond("plan", "is not", "free"))
    probed = probe_source(
        db.conn.cursor(),
        source,
        dialect=db.dialect,
        placeholder=db.placeholder,
        typed=["plan", "email", "nope"],
    )
    assert probed.names == tuple(COLUMNS)
    assert probed.kinds == {"email": Kind.TEXT, "plan": Kind.TEXT}  # those asked for that exist
    assert probed.dialect == db.dialect
    again = prepare_extraction(
        db.conn.cursor(),
        source,
        filter_group,
        dialect=db.dialect,
        placeholder=db.placeholder,
        order=("orders", True),
        probed=probe_source(
            db.conn.cursor(),
            source,
            dialect=db.dialect,
            placeholder=db.placeholder,
            typed=["updated_at", "plan", "email"],
        ),
    )
    fresh = prepare_extraction(
        db.conn.cursor(),
        source,
        filter_group,
        dialect=db.dialect,
        placeholder=db.placeholder,
        order=("orders", True),
    )
    assert again == fresh  # the filter's kinds only, whatever else the probe typed
    assert fresh.kinds == {"updated_at": Kind.TIMESTAMP, "plan": Kind.TEXT}
