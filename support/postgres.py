"""The local PostgreSQL that tests and benchmarks use (127.0.0.1, trust auth, database ``test``),
and removing what one of them left there: the state tables a pipeline creates sit beside the
warehouse's schema, named by their prefix, and a new kind of state table must not be forgotten."""

from __future__ import annotations

from typing import Any

PG_DSN = "host=127.0.0.1 dbname=test user=postgres"


def drop_prefixed_tables(cursor: Any, prefix: str) -> list[str]:
    """Drop every table of the current schema whose name starts with ``prefix``; their names."""
    cursor.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND starts_with(tablename, %s)",
        (prefix,),
    )
    tables = sorted(row[0] for row in cursor.fetchall())
    for table in tables:
        cursor.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    return tables
