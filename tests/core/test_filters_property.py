"""Random filters over random rows select the same keys on SQLite, on PostgreSQL and in a small
pure-Python evaluator of the documented semantics (``filters.py``).

The rows hold NULLs, empty strings, mixed case, wildcards, numbers, timestamps (stored in SQLite in
varied ISO spellings) and JSON values of every type; the filters nest and/or groups of every
operator that applies to each column. Bounded to 100 examples.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krenalis_airflow.core.conditions import NEGATIONS, Condition, Group, parse_timestamp
from krenalis_airflow.core.extract import prepare_extraction
from krenalis_airflow.core.spec import Source
from tests.core.warehouses import pg_connect, pg_schema

MISSING = object()  # a JSON key that is not there
COLUMNS = ("id", "name", "n", "x", "at", "flag", "traits")
SQLITE_DDL = """CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER, x REAL, at TIMESTAMP,
    flag BOOLEAN, traits JSON)"""
PG_DDL = """CREATE TABLE {schema}.t (id integer PRIMARY KEY, name text, n integer, x numeric, at timestamp,
    flag boolean, traits jsonb)"""

# --------------------------------------------------------------------------------------------
# Rows

BASE_TIME = dt.datetime(2024, 1, 1)
texts = st.text(alphabet="aAbB%_\\' é", max_size=4)
numbers = st.integers(-4, 4).map(lambda i: Decimal(i) / 2)  # halves: exact as floats too
instants = st.integers(0, 5).map(lambda h: BASE_TIME + dt.timedelta(hours=h, minutes=30 * (h % 2)))
json_values = st.one_of(st.just(MISSING), st.none(), st.booleans(), st.integers(-3, 3), texts)
row_values = st.fixed_dictionaries(
    {
        "name": st.none() | texts,
        "n": st.none() | st.integers(-3, 3),
        "x": st.none() | numbers,
        "at": st.none() | instants,
        "flag": st.none() | st.booleans(),
        "traits": st.none() | json_values,
        "spelling": st.sampled_from(
            ["{:%Y-%m-%d %H:%M:%S}", "{:%Y-%m-%dT%H:%M:%S}", "{:%Y-%m-%dT%H:%M:%SZ}", "tz"]
        ),
    }
)
tables = st.lists(row_values, max_size=8)


def sqlite_time(value: dt.datetime, spelling: str) -> str:
    """One instant, in one of the ISO spellings SQLite text may hold."""
    if spelling == "tz":
        return (value + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+01:00")
    return spelling.format(value)


def json_text(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps({} if value is MISSING else {"k": value})


# --------------------------------------------------------------------------------------------
# Filters

ISO_FORMS = ["{:%Y-%m-%d}", "{:%Y-%m-%dT%H:%M:%S}", "{:%Y-%m-%d %H:%M}", "{:%Y-%m-%dT%H:%M:%SZ}"]
time_values = st.builds(lambda t, form: form.format(t), instants, st.sampled_from(ISO_FORMS))
integer_values = st.integers(-4, 4).map(str)
number_values = numbers.map(str)
json_condition_values = texts | integer_values
ORDERED = ["is less than", "is less than or equal to", "is greater than", "is greater than or equal to"]
DATES = ["is before", "is on or before", "is after", "is on or after"]
PRESENCE = ["is null", "is not null", "is empty", "is not empty"]
STRINGS = ["contains", "does not contain", "starts with", "ends with"]
EQUALITY = ["is", "is not"]
LISTS = ["is one of", "is not one of"]
BETWEEN = ["is between", "is not between"]


def conditions_on(
    prop: str, values: st.SearchStrategy[str], operators: list[str]
) -> st.SearchStrategy[dict[str, Any]]:
    def values_for(operator: str) -> st.SearchStrategy[list[str]]:
        if operator in LISTS:
            return st.lists(values, min_size=1, max_size=3)
        if operator in BETWEEN:
            return st.lists(values, min_size=2, max_size=2)
        if operator in PRESENCE or operator in ("is true", "is false", "exists", "does not exist"):
            return st.just([])
        return values.map(lambda value: [value])

    return st.sampled_from(operators).flatmap(
        lambda op: values_for(op).map(lambda vs: {"property": prop, "operator": op, "values": vs})
    )


conditions = st.one_of(
    conditions_on("name", texts, EQUALITY + LISTS + ORDERED + BETWEEN + STRINGS + PRESENCE),
    conditions_on("n", integer_values, EQUALITY + LISTS + ORDERED + BETWEEN + PRESENCE),
    conditions_on("x", number_values, EQUALITY + LISTS + ORDERED + BETWEEN + PRESENCE),
    conditions_on("at", time_values, EQUALITY + LISTS + ORDERED + BETWEEN + DATES + PRESENCE),
    conditions_on(
        "flag", st.sampled_from(["true", "false", "1", "0"]), ["is true", "is false", *EQUALITY, "is null"]
    ),
    conditions_on(
        "traits.k",
        json_condition_values,
        EQUALITY
        + LISTS
        + ORDERED
        + BETWEEN
        + STRINGS
        + PRESENCE
        + ["is true", "is false", "exists", "does not exist"],
    ),
)
filters = st.recursive(
    conditions,
    lambda children: st.fixed_dictionaries(
        {"logical": st.sampled_from(["and", "or"]), "conditions": st.lists(children, min_size=1, max_size=3)}
    ),
    max_leaves=6,
).map(lambda tree: tree if "conditions" in tree else {"logical": "and", "conditions": [tree]})


# --------------------------------------------------------------------------------------------
# The reference evaluator: the semantics documented in filters.py, in plain Python


def selects(group: Group, row: dict[str, Any]) -> bool:
    results = (
        selects(item, row) if isinstance(item, Group) else holds(item, row) for item in group.conditions
    )
    return all(results) if group.logical == "and" else any(results)


def holds(condition: Condition, row: dict[str, Any]) -> bool:
    positive = NEGATIONS.get(condition.operator, condition.operator)
    if condition.keys:
        result = json_test(positive, condition.values, json_at(row[condition.column], condition.keys))
    else:
        result = column_test(condition.column, positive, condition.values, row[condition.column])
    return not result if condition.operator in NEGATIONS else result


def json_at(document: Any, keys: tuple[str, ...]) -> Any:
    value = MISSING if document is None else document
    for key in keys:
        value = value.get(key, MISSING) if isinstance(value, dict) else MISSING
    return value


def as_number(text: str) -> Decimal | None:
    try:
        return Decimal(text) if text.strip() == text and text not in ("", "+", "-") else None
    except ArithmeticError:
        return None


def json_test(operator: str, values: tuple[str, ...], value: Any) -> bool:
    is_string = isinstance(value, str)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if operator == "exists":
        return value is not MISSING
    if operator == "is null":
        return value is MISSING or value is None
    if operator == "is empty":
        return value is MISSING or value is None or value == ""
    if operator in ("is true", "is false"):
        return value is (operator == "is true")
    if operator in ("is", "is one of"):
        wanted_numbers = [n for v in values if (n := as_number(v)) is not None]
        return (is_string and value in values) or (is_number and Decimal(value) in wanted_numbers)
    if operator in STRINGS:
        return is_string and string_test(operator, value, values[0])
    numbers = [as_number(v) for v in values]
    if all(n is not None for n in numbers):
        return is_number and ordered_test(operator, Decimal(value), numbers)
    return is_string and ordered_test(operator, value, list(values))


def column_test(column: str, operator: str, values: tuple[str, ...], value: Any) -> bool:
    if operator == "is null":
        return value is None
    if operator == "is empty":
        return value is None or value == ""
    if value is None:
        return False
    if operator in ("is true", "is false"):
        return value is (operator == "is true")
    parsed = [PARSERS[column](v) for v in values]
    if operator in ("is", "is one of"):
        return value in parsed
    if operator in STRINGS:
        return string_test(operator, value, values[0])
    return ordered_test(operator, value, parsed)


def string_test(operator: str, value: str, wanted: str) -> bool:
    if operator == "contains":
        return wanted in value
    if operator == "starts with":
        return value.startswith(wanted)
    return value.endswith(wanted)


def ordered_test(operator: str, value: Any, bounds: list[Any]) -> bool:
    if operator == "is between":
        return bool(bounds[0] <= value <= bounds[1])
    sign = {"less than": "<", "before": "<", "greater than": ">", "after": ">"}
    name = operator.removeprefix("is ").removeprefix("on or ").removesuffix(" or equal to")
    strict = "or equal" not in operator and "on or" not in operator
    if sign[name] == "<":
        return bool(value < bounds[0] if strict else value <= bounds[0])
    return bool(value > bounds[0] if strict else value >= bounds[0])


PARSERS: dict[str, Any] = {
    "name": str,
    "n": int,
    "x": Decimal,
    "at": parse_timestamp,
    "flag": lambda text: text.lower() in ("true", "1"),
}


# --------------------------------------------------------------------------------------------
# The databases


@pytest.fixture(scope="module")
def postgres() -> Iterator[tuple[Any, str]]:
    with pg_schema("krenalis_property", [PG_DDL], {}) as schema:
        conn = pg_connect("psycopg3")
        yield conn, schema
        conn.close()


@pytest.fixture(scope="module")
def sqlite() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute(SQLITE_DDL)
    yield conn
    conn.close()


def load(sqlite_conn: sqlite3.Connection, pg_conn: Any, schema: str, rows: list[dict[str, Any]]) -> None:
    sqlite_conn.execute("DELETE FROM t")
    pg_conn.execute(f"DELETE FROM {schema}.t")
    for key, row in enumerate(rows, start=1):
        at = None if row["at"] is None else sqlite_time(row["at"], row["spelling"])
        x = None if row["x"] is None else float(row["x"])
        traits = json_text(row["traits"])
        sqlite_conn.execute(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, row["name"], row["n"], x, at, row["flag"], traits),
        )
        pg_conn.execute(
            f"INSERT INTO {schema}.t VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (key, row["name"], row["n"], row["x"], row["at"], row["flag"], traits),
        )


def keys(cursor: Any, table: str, group: Group, dialect: str, placeholder: str) -> list[int]:
    source = Source(conn_id="w", table=table, key="id")
    extraction = prepare_extraction(
        cursor, source, group, dialect=dialect, placeholder=placeholder, order=None
    )
    cursor.execute(extraction.sql, extraction.params)
    return [row[0] for row in cursor.fetchall()]


def python_row(row: dict[str, Any]) -> dict[str, Any]:
    traits = None if row["traits"] is None else json.loads(json_text(row["traits"]) or "null")
    return {**row, "traits": traits}


@settings(
    max_examples=int(os.environ.get("KRENALIS_FILTER_EXAMPLES", "100")),
    deadline=None,
    database=None,  # no .hypothesis folder in the work tree
    derandomize=os.environ.get("CI") == "true",  # CI runs the same examples every time
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=tables, filter_data=filters)
def test_sqlite_postgres_and_python_agree(
    sqlite: sqlite3.Connection,
    postgres: tuple[Any, str],
    rows: list[dict[str, Any]],
    filter_data: dict[str, Any],
) -> None:
    pg_conn, schema = postgres
    group = Group.model_validate(filter_data)
    load(sqlite, pg_conn, schema, rows)
    expected = [key for key, row in enumerate(rows, start=1) if selects(group, python_row(row))]
    assert keys(sqlite.cursor(), "t", group, "sqlite", "?") == expected
    assert keys(pg_conn.cursor(), f"{schema}.t", group, "postgresql", "%s") == expected


def test_the_evaluator_knows_the_documented_corners() -> None:
    """A few hand-checked answers, so a bug shared by the evaluator and the SQL cannot hide."""
    row = {"name": None, "n": 2, "x": Decimal("0.5"), "at": BASE_TIME, "flag": None, "traits": {"k": "10"}}

    def check(prop: str, operator: str, *values: str) -> bool:
        condition = Condition(property=prop, operator=operator, values=values)
        return holds(condition, row)

    assert (
        check("name", "is not", "a") and check("name", "does not contain", "a") and check("name", "is empty")
    )
    assert not check("name", "is", "a") and not check("flag", "is false") and not check("flag", "is true")
    assert check("traits.k", "is", "10") and not check("traits.k", "is greater than", "5")
    assert not check("traits.k", "is less than", "2")  # a number compares JSON numbers only
    assert check("traits.k", "is less than", "a") and check("traits.j", "does not exist")
    assert check("at", "is", "2024-01-01") and check("at", "is on or before", "2024-01-01T01:00:00+01:00")
    assert check("n", "is between", "2", "2") and not check("n", "is between", "3", "1")
