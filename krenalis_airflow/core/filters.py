"""Compile a spec's ``filter`` into one parameterised SQL boolean expression.

Safety
    Every value is a bound parameter (``?`` for SQLite, ``%s`` for psycopg); none is ever pasted into
    the SQL text. Every property is checked against the source's real column names (from a probe
    query) and double-quoted, so the only text that reaches the SQL is a known column name.

NULL semantics (chosen, and the same on every database)
    * ``is``, ``is one of`` and the four comparisons never match NULL.
    * ``is not`` and ``is not one of`` KEEP rows whose column is NULL: a profile with no plan
      "is not free". (Plain SQL ``plan <> 'free'`` would silently drop it.)
    * ``is true`` / ``is false`` match only true / only false, never NULL (SQL ``IS TRUE``/``IS FALSE``).
    * ``is null`` / ``is not null`` are SQL's.
    A comparison with NULL is SQL's "unknown", which WHERE treats as false; groups only combine
    conditions with AND/OR (there is no NOT), so an unknown can never turn into a match.

Values and types
    Values arrive from YAML as strings and are bound as strings; the database coerces them to the
    column's type. This was checked on both target databases rather than assumed:

    * PostgreSQL (psycopg2 and psycopg 3, the driver ``PostgresHook`` uses when SQLAlchemy 2 is
      installed): psycopg2 sends ``'100'`` as a quoted literal and psycopg 3 sends a parameter of type
      ``unknown``; either way PostgreSQL resolves it to the other operand's type, so ``integer > '10'``,
      ``numeric >= '100.5'``, ``boolean = 'true'``, ``timestamp < '2024-03-01T00:00:00'``,
      ``uuid = '…'`` and ``IN ('5', '50')`` on an integer column all compare as the column's type.
      A value the type cannot parse (``'abc'`` or ``'10.5'`` for an integer column) makes the
      query fail with the database's "invalid input syntax" error: loud, never a silent mismatch.
    * SQLite: a column with INTEGER, REAL or NUMERIC affinity applies that affinity to a string it is
      compared with, so ``lifetime_value REAL > '100'`` and ``orders INTEGER IN ('5', '40')`` compare
      numbers. A string that is not a number stays text, and SQLite orders every number before
      every text, without error. SQLite has no date or boolean type: timestamps are text and compare
      as text, so write values in the column's own format; booleans are 0/1, use ``is true``.
      Caveat: a ``query:`` column computed by an expression (``count(*) AS orders``, ``a + b``) has
      *no* affinity, and SQLite then compares a number with a string as "number < any string"
      without error. Give such columns a type in the query: ``CAST(count(*) AS INTEGER) AS orders``.

    Converting values in Python instead (via ``cursor.description`` type codes) was rejected:
    sqlite3 reports no type codes at all, and on PostgreSQL it would only reimplement, less
    completely, the parsing the server already does for every type including ones we do not know.
    Binding numbers as numbers by their look would be wrong too: PostgreSQL rejects
    ``text_column = 100`` and a ZIP code "02134" is not the number 2134.

Booleans
    ``is true`` / ``is false`` compile to standard ``IS TRUE`` / ``IS FALSE``, which works for
    PostgreSQL booleans and SQLite 0/1 integers (SQLite ≥ 3.23). On PostgreSQL the column must be
    ``boolean`` (an integer 0/1 column is an error there: compare it with ``is`` "1" instead).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from krenalis_airflow.core.conditions import Condition, Group
from krenalis_airflow.exceptions import SpecError, SpecProblem

PLACEHOLDERS = ("?", "%s")

_COMPARISONS = {
    "is": "=",
    "is less than": "<",
    "is less than or equal to": "<=",
    "is greater than": ">",
    "is greater than or equal to": ">=",
}
_NO_VALUE = {
    "is null": "{col} IS NULL",
    "is not null": "{col} IS NOT NULL",
    "is true": "{col} IS TRUE",
    "is false": "{col} IS FALSE",
}


def compile_filter(
    group: Group | None,
    columns: Sequence[str],
    placeholder: str,
    *,
    source: str = "<spec>",
) -> tuple[str, list[Any]]:
    """Return ``(sql, params)`` for ``group``, or ``("", [])`` when there is no filter.

    ``columns`` are the source's actual column names; ``placeholder`` is the driver's (``?`` or
    ``%s``). Unknown properties raise one ``SpecError`` naming each, with ``source`` as its file.
    """
    if group is None:
        return "", []
    check_placeholder(placeholder)
    if problems := filter_problems(group, columns):
        raise SpecError(source, problems)
    params: list[Any] = []
    return _group_sql(group, placeholder, params), params


def filter_problems(group: Group | None, columns: Sequence[str], path: str = "filter") -> list[SpecProblem]:
    """Every condition whose property is not a column, with its key path in the spec."""
    if group is None:
        return []
    problems: list[SpecProblem] = []
    for index, item in enumerate(group.conditions):
        item_path = f"{path}.conditions[{index}]"
        if isinstance(item, Group):
            problems.extend(filter_problems(item, columns, item_path))
        elif item.property not in columns:
            problems.append(
                SpecProblem(f"{item_path}.property", unknown_column_message(item.property, columns))
            )
    return problems


def unknown_column_message(name: str, columns: Sequence[str]) -> str:
    """``no column 'x' in the source; did you mean 'y'? available: a, b`` (the hint when one is close)."""
    message = f"no column {name!r} in the source"
    if hint := _closest(name, columns):
        message += f"; did you mean {hint!r}?"
    return f"{message}; available columns: {', '.join(columns) or '(none)'}"


def quote_identifier(name: str) -> str:
    """Double-quote one identifier (standard SQL; doubles any embedded quote)."""
    return '"' + name.replace('"', '""') + '"'


def check_placeholder(placeholder: str) -> None:
    if placeholder not in PLACEHOLDERS:
        raise ValueError(f"unsupported placeholder {placeholder!r}; use one of {', '.join(PLACEHOLDERS)}")


def _closest(name: str, columns: Sequence[str]) -> str | None:
    same_case = [c for c in columns if c.lower() == name.lower()]
    if same_case:
        return same_case[0]
    close = difflib.get_close_matches(name, columns, n=1)
    return close[0] if close else None


def _group_sql(group: Group, placeholder: str, params: list[Any]) -> str:
    joiner = f" {group.logical.upper()} "
    parts = [
        _group_sql(item, placeholder, params)
        if isinstance(item, Group)
        else _condition_sql(item, placeholder, params)
        for item in group.conditions
    ]
    return "(" + joiner.join(parts) + ")"


def _condition_sql(condition: Condition, placeholder: str, params: list[Any]) -> str:
    col = quote_identifier(condition.property)
    operator = condition.operator
    if operator in _NO_VALUE:
        return _NO_VALUE[operator].format(col=col)
    params.extend(condition.values)
    if operator in _COMPARISONS:
        return f"{col} {_COMPARISONS[operator]} {placeholder}"
    if operator == "is not":
        return f"({col} <> {placeholder} OR {col} IS NULL)"
    marks = ", ".join([placeholder] * len(condition.values))
    if operator == "is one of":
        return f"{col} IN ({marks})"
    if operator == "is not one of":
        return f"({col} NOT IN ({marks}) OR {col} IS NULL)"
    raise AssertionError(
        f"operator {operator!r} has no SQL"
    )  # pragma: no cover - conditions.OPERATORS guards this
