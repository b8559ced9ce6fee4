"""Build and run the extraction query over any DB-API connection.

The operator's extract step makes one call, then runs what it returns::

    extraction = prepare_extraction(
        cursor, spec.source, spec.filter,
        dialect=hook.dialect_name, placeholder=hook.placeholder,
        order=spec.export.order, source_name=spec_file,
    )
    cursor.execute(extraction.count_sql)         # total, to report how many the filter left out
    for row in iter_rows(cursor, extraction.sql, extraction.params): ...

``prepare_extraction`` probes the source (its columns, and the types of the columns the filter
reads), checks every column the spec names, and compiles the filter for the source's dialect
(``filters.py``). The extract step and ``validate --connect`` first check the whole spec against
the probe (``columns.check_source``, with file:line errors) and pass the probe on (``probed=``).
The building blocks (``probe_source``, ``probe_sql``, ``columns_of``, ``column_kinds``,
``count_sql``) stay public for callers that need them one by one.

A source is wrapped as ``SELECT * FROM <table or (query)> AS src`` so tables and queries behave the
same. ``probe_sql`` and ``count_sql`` take no parameters: execute them without any. The select
returns parameters: always execute it *with* them, even when the list is empty, because with the
``%s`` style it doubles every ``%`` of a ``query:`` (psycopg reads ``%`` as a placeholder whenever
parameters are passed, even inside a string literal such as ``LIKE '%@example.com'``).

Column types
    PostgreSQL: ``cursor.description`` type codes (OIDs) of the probe, for free. SQLite reports
    none: declared types come from ``PRAGMA table_info`` (a table or view) or a temporary view of
    the query (dropped at once); a column without a declared type (``count(*) AS orders``) takes
    the type of its first non-NULL value (``typeof``). Other dialects: every column is
    ``Kind.OTHER`` and the database converts the text values itself.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.engine.interfaces import Dialect

from krenalis_airflow.core.conditions import Group, Kind
from krenalis_airflow.core.filters import (
    POSTGRESQL,
    SQLITE,
    compile_filter,
    dialect_name,
    filter_problems,
    quote_identifier,
    sql_dialect,
    unknown_column_message,
)
from krenalis_airflow.core.inputs import Incremental, changed_sql, digests_sql, leavers_sql
from krenalis_airflow.core.spec import Source
from krenalis_airflow.exceptions import SpecError, SpecProblem

# Quoted string, quoted identifier, line comment, block comment, blank space, or any other character.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\s+|.", re.DOTALL)

# PostgreSQL type OIDs (cursor.description type codes of psycopg2 and psycopg 3) → kinds.
_POSTGRES_KINDS = {
    16: Kind.BOOLEAN,
    20: Kind.INTEGER,
    21: Kind.INTEGER,
    23: Kind.INTEGER,
    700: Kind.NUMBER,
    701: Kind.NUMBER,
    1700: Kind.NUMBER,
    18: Kind.TEXT,
    19: Kind.TEXT,
    25: Kind.TEXT,
    1042: Kind.TEXT,
    1043: Kind.TEXT,
    1082: Kind.DATE,
    1114: Kind.TIMESTAMP,
    1184: Kind.TIMESTAMP_TZ,
    114: Kind.JSON,
    3802: Kind.JSON,
    2950: Kind.UUID,
}
# SQLite typeof() of a value → the kind of a column declared without a type.
_SQLITE_VALUE_KINDS = {"integer": Kind.INTEGER, "real": Kind.NUMBER, "text": Kind.TEXT}


@dataclass(frozen=True)
class Extraction:
    """What the extract step runs, compiled for the source's dialect."""

    sql: str  # SELECT … WHERE <filter> ORDER BY …; execute it with ``params``
    params: list[Any]
    count_sql: str  # rows before filtering; no parameters
    columns: list[str]  # the source's columns, in order
    kinds: dict[str, Kind]  # what the filter knows of the types of the columns it reads
    where: str  # the filter alone ("" without one), e.g. for a preview
    body: str = ""  # ``sql`` without its ORDER BY, to wrap (``core/inputs.py``)
    dialect: str = ""  # the SQLAlchemy dialect name it was compiled for

    def display(self) -> str:
        """The query and its parameters as a person reads them (never executed like this)."""
        return f"{self.sql}\n-- parameters: {self.params!r}"


@dataclass(frozen=True)
class SourceColumns:
    """What a probe of the source found: its columns in order, and the kinds of those asked for."""

    names: tuple[str, ...]
    kinds: dict[str, Kind]
    dialect: str  # the SQLAlchemy dialect name (``dialect_name``)


def probe_source(
    cursor: Any, source: Source, *, dialect: str | None, placeholder: str, typed: Sequence[str] = ()
) -> SourceColumns:
    """The source's columns (one query that returns no rows), and the kinds of those of ``typed``
    that exist (free on PostgreSQL; SQLite reads declared types, see the module's docstring)."""
    name = dialect_name(dialect, placeholder)
    cursor.execute(probe_sql(source, sql_dialect(name, placeholder)))
    names = columns_of(cursor)
    description = list(cursor.description)
    wanted = sorted({column for column in typed if column in names})
    return SourceColumns(tuple(names), column_kinds(cursor, source, name, wanted, description), name)


def prepare_extraction(
    cursor: Any,
    source: Source,
    group: Group | None,
    *,
    dialect: str | None,
    placeholder: str,
    order: tuple[str, bool] | None,
    source_name: str = "<spec>",
    select: Sequence[tuple[str, str]] = (),
    probed: SourceColumns | None = None,
) -> Extraction:
    """Probe the source through ``cursor`` and compile the extraction for it.

    ``dialect`` and ``placeholder`` are the hook's ``dialect_name`` and ``placeholder``; ``order``
    is ``Export.order``. ``select`` — ``(key path, column)`` pairs, e.g. from
    ``transformation.inputs`` — limits the columns read; empty reads them all. Raises one
    ``SpecError`` (file ``source_name``) listing every unknown column, every operator that does
    not apply to its column and every value that does not convert to its column's type.
    ``probed``: a probe already checked (``columns.check_source``), reused instead of probing again.
    """
    name = dialect_name(dialect, placeholder)
    quoting = sql_dialect(name, placeholder)
    read = set(filter_columns(group))
    if probed is None:
        probed = _probe_checked(cursor, source, group, name, placeholder, order, source_name, select)
    columns = list(probed.names)
    kinds = {column: kind for column, kind in probed.kinds.items() if column in read}
    where, params = compile_filter(group, columns, placeholder, source=source_name, dialect=name, kinds=kinds)
    projection = list(dict.fromkeys(column for _, column in select))
    body = _select(source, where, placeholder, name, projection)
    sql = f"{body} ORDER BY {_order_by(source.key, order, quoting)}"
    return Extraction(
        sql, params, count_sql(source, quoting), projection or columns, kinds, where, body, name
    )


def _probe_checked(
    cursor: Any,
    source: Source,
    group: Group | None,
    dialect: str,
    placeholder: str,
    order: tuple[str, bool] | None,
    source_name: str,
    select: Sequence[tuple[str, str]],
) -> SourceColumns:
    probed = probe_source(
        cursor, source, dialect=dialect, placeholder=placeholder, typed=filter_columns(group)
    )
    columns = probed.names
    problems = source_problems(source, columns, order) + filter_problems(group, columns)
    problems += [
        SpecProblem(path, unknown_column_message(name, columns))
        for path, name in select
        if name not in columns
    ]
    if problems:
        raise SpecError(source_name, problems)
    return probed


def column_kinds(
    cursor: Any, source: Source, dialect: str, names: Sequence[str], description: Sequence[Any] = ()
) -> dict[str, Kind]:
    """The kinds of the columns ``names``; ``description`` is the probe's ``cursor.description``."""
    if dialect == POSTGRESQL:
        codes = {str(column[0]): column[1] for column in description}
        return {name: _POSTGRES_KINDS.get(codes.get(name, 0), Kind.OTHER) for name in names}
    if dialect == SQLITE and names:
        return _sqlite_kinds(cursor, source, names)
    return {name: Kind.OTHER for name in names}


def sqlite_kind(declared: str) -> Kind | None:
    """The kind of a column declared ``declared`` (SQLite's own affinity rules, plus dates,
    booleans and JSON); None when it has no declared type."""
    name = declared.upper()
    rules = [
        (("INT",), Kind.INTEGER),
        (("BOOL",), Kind.BOOLEAN),
        (("JSON",), Kind.JSON),
        (("DATETIME", "TIMESTAMP"), Kind.TIMESTAMP),
        (("DATE",), Kind.DATE),
        (("CHAR", "CLOB", "TEXT"), Kind.TEXT),
        (("BLOB",), Kind.OTHER),
        (("REAL", "FLOA", "DOUB", "NUM", "DEC"), Kind.NUMBER),
    ]
    if not name:
        return None
    return next((kind for words, kind in rules if any(word in name for word in words)), Kind.OTHER)


def _sqlite_kinds(cursor: Any, source: Source, names: Sequence[str]) -> dict[str, Kind]:
    declared = _sqlite_declared(cursor, source)
    kinds: dict[str, Kind] = {}
    for name in names:
        kind = sqlite_kind(declared.get(name, ""))
        kinds[name] = kind if kind is not None else _sqlite_value_kind(cursor, source, name)
    return kinds


def _sqlite_declared(cursor: Any, source: Source) -> dict[str, str]:
    """Declared column types: PRAGMA table_info of the table, or of a temporary view of the query."""
    if source.table is not None:
        schema, _, table = source.table.rpartition(".")
        prefix = f"{quote_identifier(schema)}." if schema else ""
        cursor.execute(f"PRAGMA {prefix}table_info({quote_identifier(table)})")
        return {str(row[1]): str(row[2] or "") for row in cursor.fetchall()}
    view = quote_identifier(f"krenalis_probe_{uuid.uuid4().hex}")
    try:
        cursor.execute(f"CREATE TEMP VIEW {view} AS SELECT * FROM {from_clause(source)}")
    except Exception:  # e.g. PRAGMA query_only: fall back to the values' types
        return {}
    try:
        cursor.execute(f"PRAGMA temp.table_info({view})")
        return {str(row[1]): str(row[2] or "") for row in cursor.fetchall()}
    finally:
        cursor.execute(f"DROP VIEW temp.{view}")


def _sqlite_value_kind(cursor: Any, source: Source, name: str) -> Kind:
    column = quote_identifier(name)
    cursor.execute(f"SELECT typeof({column}) FROM {from_clause(source)} WHERE {column} IS NOT NULL LIMIT 1")
    row = cursor.fetchone()
    return _SQLITE_VALUE_KINDS.get(row[0], Kind.OTHER) if row else Kind.OTHER


def filter_columns(group: Group | None) -> list[str]:
    """The columns a filter reads (a JSON path reads its first segment)."""
    return [] if group is None else [prop.split(".")[0] for prop in group.properties()]


def from_clause(source: Source, dialect: Dialect | None = None) -> str:
    """``"schema"."table" AS src`` or ``(<query>) AS src``.

    Table names are quoted part by part (the dialect's way; standard double quotes without one),
    so they must be spelled as stored (PostgreSQL stores unquoted names in lower case). A query
    loses its trailing semicolons and comments (see ``statement``) and is closed on a new line.
    """
    if source.table is not None:
        return ".".join(quote_identifier(part, dialect) for part in source.table.split(".")) + " AS src"
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


def probe_sql(source: Source, dialect: Dialect | None = None) -> str:
    """A query returning no rows but the source's columns (read them with ``columns_of``)."""
    return f"SELECT * FROM {from_clause(source, dialect)} WHERE 1=0"


def count_sql(source: Source, dialect: Dialect | None = None) -> str:
    """The number of rows in the source before filtering."""
    return f"SELECT COUNT(*) FROM {from_clause(source, dialect)}"


def columns_of(cursor: Any) -> list[str]:
    """The column names of the cursor's last result, from ``cursor.description``."""
    if cursor.description is None:
        raise ValueError("the statement returned no result columns; a source must be a SELECT")
    return [str(column[0]) for column in cursor.description]


def _select(
    source: Source,
    where: str,
    placeholder: str,
    dialect: str,
    projection: Sequence[str] = (),
) -> str:
    quoting = sql_dialect(dialect, placeholder)
    origin = from_clause(source, quoting)
    if placeholder == "%s":
        origin = origin.replace("%", "%%")
    selected = ", ".join(quote_identifier(column, quoting) for column in projection) or "*"
    sql = f"SELECT {selected} FROM {origin}"
    if where:
        sql += f" WHERE {where}"
    return sql


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
            if PLAIN.issuperset(map(type, row)):  # the common row: nothing to convert, no call per value
                yield dict(zip(names, row, strict=True))
            else:
                yield {
                    name: value if type(value) in PLAIN else json_value(value)
                    for name, value in zip(names, row, strict=True)
                }


PLAIN = frozenset({str, int, float, type(None)})  # most values: no conversion, no call


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


def source_problems(
    source: Source, columns: Sequence[str], order: tuple[str, bool] | None
) -> list[SpecProblem]:
    """Columns repeated in the source, and a key or order column that is not one of ``columns``."""
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


def _order_by(key: str, order: tuple[str, bool] | None, dialect: Dialect, qualifier: str = "") -> str:
    quoted_key = qualifier + quote_identifier(key, dialect)
    if order is None:
        return quoted_key
    column, descending = order
    quoted = qualifier + quote_identifier(column, dialect)
    terms = [f"({quoted} IS NULL)", quoted + (" DESC" if descending else "")]
    if column != key:
        terms.append(quoted_key)
    return ", ".join(terms)


def _qualified(extraction: Extraction, names: Sequence[str], placeholder: str) -> list[str]:
    """``names`` quoted for the extraction's dialect and qualified with ``f.``, the alias the
    digest queries (``core/inputs.py``) give the filtered source."""
    quoting = sql_dialect(extraction.dialect, placeholder)
    return [f"f.{quote_identifier(name, quoting)}" for name in names]


def with_digests(
    extraction: Extraction,
    source: Source,
    order: tuple[str, bool] | None,
    inputs: Incremental,
    placeholder: str,
) -> tuple[str, list[Any]]:
    """The extraction joined with the ledger (``inputs.digests_sql``) and its parameters."""
    [key] = _qualified(extraction, [source.key], placeholder)
    order_sql = _order_by(source.key, order, sql_dialect(extraction.dialect, placeholder), qualifier="f.")
    columns = _qualified(extraction, extraction.columns, placeholder)
    sql = digests_sql(extraction.body, columns, key, order_sql, extraction.dialect, inputs, placeholder)
    return sql, [*extraction.params, inputs.pipeline_id]


def changed_keys_sql(
    extraction: Extraction, source: Source, inputs: Incremental, placeholder: str, limit: int
) -> tuple[str, list[Any]]:
    """The query of the keys that may have changed (``inputs.changed_sql``) and its parameters."""
    [key] = _qualified(extraction, [source.key], placeholder)
    columns = _qualified(extraction, extraction.columns, placeholder)
    sql = changed_sql(extraction.body, columns, key, extraction.dialect, inputs, placeholder, limit)
    return sql, [*extraction.params, inputs.pipeline_id, inputs.destination]


def leaving_sql(
    extraction: Extraction, source: Source, inputs: Incremental, placeholder: str
) -> tuple[str, list[Any]]:
    """The query of the keys that left the audience (``inputs.leavers_sql``) and its parameters."""
    [key] = _qualified(extraction, [source.key], placeholder)
    sql = leavers_sql(extraction.body, key, extraction.dialect, inputs, placeholder)
    return sql, [inputs.pipeline_id, inputs.destination, *extraction.params]
