"""Build and run the extraction query over any DB-API connection.

The flow an operator follows::

    cursor.execute(probe_sql(source))            # zero rows, but the source's columns
    columns = columns_of(cursor)
    sql, params = select_sql(source, spec.filter, columns, hook.placeholder, spec.export.order)
    for row in iter_rows(cursor, sql, params): ...
    cursor.execute(count_sql(source))            # total, to report how many the filter left out

A source is wrapped as ``SELECT * FROM <table or (query)> AS src`` so tables and queries behave the
same. ``probe_sql`` and ``count_sql`` take no parameters: execute them without any. ``select_sql``
returns parameters: always execute it *with* them, even when the list is empty, because with the
``%s`` style it doubles every ``%`` of a ``query:`` (psycopg reads ``%`` as a placeholder whenever
parameters are passed, even inside a string literal such as ``LIKE '%@example.com'``).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from krenalis_airflow.core.conditions import Group
from krenalis_airflow.core.filters import (
    check_placeholder,
    compile_filter,
    filter_problems,
    quote_identifier,
    unknown_column_message,
)
from krenalis_airflow.core.spec import Source
from krenalis_airflow.exceptions import SpecError, SpecProblem

# Quoted string, quoted identifier, line comment, block comment, blank space, or any other character.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\s+|.", re.DOTALL)


def from_clause(source: Source) -> str:
    """``"schema"."table" AS src`` or ``(<query>) AS src``.

    Table names are quoted part by part, so they must be spelled as stored (PostgreSQL stores
    unquoted names in lower case). A query loses its trailing semicolons and comments (see
    ``statement``) and is closed on a new line.
    """
    if source.table is not None:
        return ".".join(quote_identifier(part) for part in source.table.split(".")) + " AS src"
    return f"(\n{statement(source.query or '')}\n) AS src"


def statement(query: str) -> str:
    """``query`` without the semicolons, comments and blank space that end it.

    ``SELECT … ; -- all users`` cannot be wrapped in parentheses as written. The scan knows
    quoted strings and identifiers, so a ``;`` or ``--`` inside them is kept.
    """
    end = 0
    for token in _TOKENS.finditer(query):
        if not (token.group().isspace() or token.group() == ";" or token.group().startswith(("--", "/*"))):
            end = token.end()
    return query[:end].strip()


def probe_sql(source: Source) -> str:
    """A query returning no rows but the source's columns (read them with ``columns_of``)."""
    return f"SELECT * FROM {from_clause(source)} WHERE 1=0"


def count_sql(source: Source) -> str:
    """The number of rows in the source before filtering."""
    return f"SELECT COUNT(*) FROM {from_clause(source)}"


def columns_of(cursor: Any) -> list[str]:
    """The column names of the cursor's last result, from ``cursor.description``."""
    if cursor.description is None:
        raise ValueError("the statement returned no result columns; a source must be a SELECT")
    return [str(column[0]) for column in cursor.description]


def select_sql(
    source: Source,
    group: Group | None,
    columns: Sequence[str],
    placeholder: str,
    order: tuple[str, bool] | None,
    *,
    source_name: str = "<spec>",
) -> tuple[str, list[Any]]:
    """The extraction query and its parameters.

    Rows come ordered by ``order`` (``Export.order``: column and descending), then by the key, so
    the order is total and the same on every run. Rows whose order column is NULL come last in
    either direction, on every database (PostgreSQL and SQLite disagree on where NULLs sort, and
    ``NULLS LAST`` is not portable). Every unknown column (key, order, filter) is reported in one
    ``SpecError``.
    """
    check_placeholder(placeholder)
    problems = _column_problems(source, columns, order) + filter_problems(group, columns)
    if problems:
        raise SpecError(source_name, problems)
    where, params = compile_filter(group, columns, placeholder, source=source_name)
    origin = from_clause(source)
    if placeholder == "%s":
        origin = origin.replace("%", "%%")
    sql = f"SELECT * FROM {origin}"
    if where:
        sql += f" WHERE {where}"
    return f"{sql} ORDER BY {_order_by(source.key, order)}", params


def iter_rows(
    cursor: Any, sql: str, params: Sequence[Any], batch_size: int = 1000
) -> Iterator[dict[str, Any]]:
    """Run ``sql`` and yield each row as a dict of JSON-serialisable values, ``batch_size`` at a time.

    Uses ``fetchmany`` only. With psycopg a plain cursor still receives the whole result at
    ``execute``; pass a named (server-side) cursor to stream from the server. Column names are read
    after the first fetch because a psycopg2 named cursor has no description before it.
    """
    cursor.execute(sql, params)
    names: list[str] | None = None
    while batch := cursor.fetchmany(batch_size):
        if names is None:
            names = columns_of(cursor)
        for row in batch:
            yield {name: json_value(value) for name, value in zip(names, row, strict=True)}


def json_value(value: Any) -> Any:
    """A JSON-serialisable value with the same meaning.

    Decimal → int when integral, else float; dates and times → ISO 8601; bytes → hex; UUID → str;
    lists and dicts (PostgreSQL arrays, json/jsonb) are converted item by item; None, bool, int,
    float and str stay; anything else (e.g. an interval) becomes ``str(value)``.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return str(value)


def _decimal(value: Decimal) -> int | float:
    if value.is_finite() and value == value.to_integral_value():
        return int(value)
    return float(value)


def _column_problems(
    source: Source, columns: Sequence[str], order: tuple[str, bool] | None
) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    origin = "source.table" if source.table is not None else "source.query"
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if repeated:
        message = (
            f"the source has more than one column named {', '.join(map(repr, repeated))}; alias them apart"
        )
        problems.append(SpecProblem(origin, message))
    if source.key not in columns:
        problems.append(SpecProblem("source.key", unknown_column_message(source.key, columns)))
    if order is not None and order[0] not in columns:
        problems.append(SpecProblem("export.order_by", unknown_column_message(order[0], columns)))
    return problems


def _order_by(key: str, order: tuple[str, bool] | None) -> str:
    quoted_key = quote_identifier(key)
    if order is None:
        return quoted_key
    column, descending = order
    quoted = quote_identifier(column)
    terms = [f"({quoted} IS NULL)", quoted + (" DESC" if descending else "")]
    if column != key:
        terms.append(quoted_key)
    return ", ".join(terms)
