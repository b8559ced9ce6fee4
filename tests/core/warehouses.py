"""Test warehouses for the filter tests: one SQLite file and one PostgreSQL schema per test module,
reached through sqlite3, psycopg2 and psycopg 3, and queried the way the operator queries them
(``prepare_extraction``)."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.conditions import Group
from krenalis_airflow.core.extract import Extraction, prepare_extraction
from krenalis_airflow.core.spec import Source
from support.postgres import PG_DSN

BACKENDS = ["sqlite", "psycopg2", "psycopg3"]


@dataclass
class Warehouse:
    name: str  # sqlite, psycopg2 or psycopg3
    conn: Any
    schema: str | None  # the PostgreSQL schema holding the tables

    @property
    def dialect(self) -> str:
        return "sqlite" if self.name == "sqlite" else "postgresql"

    @property
    def placeholder(self) -> str:
        return "?" if self.name == "sqlite" else "%s"

    @property
    def postgres(self) -> bool:
        return self.name != "sqlite"

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def extraction(self, filter_data: dict[str, Any] | None, table: str = "profiles") -> Extraction:
        group = Group.model_validate(filter_data) if filter_data is not None else None
        source = Source(conn_id="warehouse", table=self.table(table), key="id")
        return prepare_extraction(
            self.conn.cursor(),
            source,
            group,
            dialect=self.dialect,
            placeholder=self.placeholder,
            order=None,
            source_name="pipes/test.yaml",
        )

    def ids(self, filter_data: dict[str, Any] | None, table: str = "profiles") -> list[Any]:
        """The keys of the rows the filter keeps, in key order."""
        extraction = self.extraction(filter_data, table)
        cursor = self.conn.cursor()
        cursor.execute(extraction.sql, extraction.params)
        return [row[0] for row in cursor.fetchall()]


def cond(prop: str, operator: str, *values: str) -> dict[str, Any]:
    return {"property": prop, "operator": operator, "values": list(values)}


def where(*conditions: dict[str, Any], logical: str = "and") -> dict[str, Any]:
    return {"logical": logical, "conditions": list(conditions)}


def pg_connect(driver: str) -> Any:
    if driver == "psycopg2":
        import psycopg2

        conn = psycopg2.connect(PG_DSN)
    else:
        import psycopg

        conn = psycopg.connect(PG_DSN)
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def pg_schema(
    prefix: str, statements: Sequence[str], rows: dict[str, Sequence[Sequence[Any]]]
) -> Iterator[str]:
    """A uniquely named schema: ``statements`` run with ``{schema}`` filled in, ``rows`` inserted
    per table; dropped at the end."""
    try:
        conn = pg_connect("psycopg2")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    cursor = conn.cursor()
    cursor.execute(f"CREATE SCHEMA {schema}")
    try:
        for statement in statements:
            cursor.execute(statement.format(schema=schema))
        for table, values in rows.items():
            if values:
                marks = ", ".join(["%s"] * len(values[0]))
                cursor.executemany(f"INSERT INTO {schema}.{table} VALUES ({marks})", values)
        yield schema
    finally:
        cursor.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def sqlite_file(path: Path, statements: Sequence[str], rows: dict[str, Sequence[Sequence[Any]]]) -> Path:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    for table, values in rows.items():
        if values:
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join(['?'] * len(values[0]))})", values)
    conn.commit()
    conn.close()
    return path


def connect(name: str, sqlite_path: Path, schema: str | None) -> Warehouse:
    if name == "sqlite":
        return Warehouse(name, sqlite3.connect(sqlite_path), None)
    return Warehouse(name, pg_connect(name), schema)


@contextlib.contextmanager
def state_store(kind: str, folder: Path, tables: Sequence[str]) -> Iterator[tuple[Any, str, str]]:
    """A state store to test against: ``(DB-API connection, placeholder, table prefix)``.

    ``kind`` ``sqlite``: a file in ``folder``, prefix ``krenalis_``. ``postgres``: the ``test``
    database through psycopg2, a prefix of its own, and ``tables`` (names after the prefix)
    dropped at the end; skipped when PostgreSQL is not reachable."""
    if kind == "sqlite":
        conn = sqlite3.connect(folder / "state.db", check_same_thread=False)
        try:
            yield conn, "?", "krenalis_"
        finally:
            conn.close()
        return
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(PG_DSN)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    prefix = f"t_{uuid.uuid4().hex}_"
    try:
        yield conn, "%s", prefix
    finally:
        conn.rollback()
        cursor = conn.cursor()
        for table in tables:
            cursor.execute(f"DROP TABLE IF EXISTS {prefix}{table}")
        conn.commit()
        conn.close()
