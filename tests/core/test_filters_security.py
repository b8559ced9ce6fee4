"""Hostile values select exactly what they literally mean, and never break the query.

Every value is tried with every string operator, on a text column and on a JSON string, on SQLite
and on PostgreSQL (psycopg2 and psycopg 3); the expected rows come from Python's own string
operations over the same data. PostgreSQL text cannot hold NUL, so there a value with NUL equals
and contains nothing, and ordering by it is a spec error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.exceptions import SpecError
from tests.core.warehouses import BACKENDS, Warehouse, cond, connect, pg_schema, sqlite_file, where

LONG = "a'b\"c%_\\" * 1250  # 10,000 characters of quotes, wildcards and backslashes
NOTES: list[str | None] = [
    "plain",
    "x' OR '1'='1",
    "100%",
    "a_b",
    "back\\slash",
    'say "hi"',
    LONG,
    "100x",
    "axb",
    "backslash",
    LONG[:-1],
    "it's",
    "%",
    "_",
    "\\",
    "",
    None,
    "%s",
    "?",
    "ab\\%",
    "café",
    "🙂 smile",
    "PLAIN",
]
ROWS = [
    (i, note, None if note is None else json.dumps({"note": note})) for i, note in enumerate(NOTES, start=1)
]
VALUES = [
    "x' OR '1'='1",
    "%",
    "_",
    "\\",
    "'",
    '"',
    "%%",
    "%s",
    "?",
    "'; DROP TABLE notes; --",
    "a_b",
    "100%",
    "back\\slash",
    'say "hi"',
    "\\%",
    LONG,
    LONG[:-1],
    "x" * 200_000,
    "\x00",
    "a\x00b",
    "",
    "é",
    "🙂",
    "plain",
]

Predicate = Callable[[str, str], bool]
OPERATORS: dict[str, Predicate] = {
    "is": lambda note, value: note == value,
    "contains": lambda note, value: value in note,
    "starts with": lambda note, value: note.startswith(value),
    "ends with": lambda note, value: note.endswith(value),
    "is less than": lambda note, value: note < value,
    "is greater than or equal to": lambda note, value: note >= value,
}
NEGATIVES = {"is not": "is", "does not contain": "contains"}


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    ddl = "CREATE TABLE {schema}.notes (id integer PRIMARY KEY, note text, traits jsonb)"
    with pg_schema("krenalis_security", [ddl], {"notes": ROWS}) as name:
        yield name


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ddl = "CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT, traits JSON)"
    return sqlite_file(tmp_path_factory.mktemp("security") / "notes.db", [ddl], {"notes": ROWS})


@pytest.fixture(scope="module", params=BACKENDS)
def db(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[Warehouse]:
    schema = None if request.param == "sqlite" else request.getfixturevalue("schema")
    warehouse = connect(request.param, sqlite_path, schema)
    yield warehouse
    warehouse.conn.close()


def expected(operator: str, value: str) -> list[int]:
    if operator in NEGATIVES:
        positive = expected(NEGATIVES[operator], value)
        return [i for i, _ in enumerate(NOTES, start=1) if i not in positive]
    if operator == "is one of":
        return [i for i, note in enumerate(NOTES, start=1) if note in (value, "no such note")]
    test = OPERATORS[operator]
    return [i for i, note in enumerate(NOTES, start=1) if note is not None and test(note, value)]


def ordering(operator: str) -> bool:
    return operator.startswith("is less") or operator.startswith("is greater")


@pytest.mark.parametrize("value", VALUES, ids=lambda value: repr(value[:12]) + f"[{len(value)}]")
@pytest.mark.parametrize("prop", ["note", "traits.note"])
def test_values_mean_what_they_say(db: Warehouse, prop: str, value: str) -> None:
    for operator in [*OPERATORS, *NEGATIVES, "is one of"]:
        values = [value, "no such note"] if operator == "is one of" else [value]
        condition = where(cond(prop, operator, *values))
        if db.postgres and "\x00" in value and ordering(operator):
            with pytest.raises(SpecError, match="PostgreSQL text cannot hold NUL"):
                db.ids(condition, table="notes")
            continue
        assert db.ids(condition, table="notes") == expected(operator, value), operator


@pytest.mark.parametrize("value", [v for v in VALUES if "\x00" not in v and v], ids=lambda v: repr(v[:12]))
def test_the_sql_text_does_not_depend_on_the_value(db: Warehouse, value: str) -> None:
    def extraction(text: str) -> Any:
        conditions = [cond("note", op, text) for op in (*OPERATORS, *NEGATIVES)]
        return db.extraction(where(*conditions, cond("traits.note", "is", text)), table="notes")

    hostile, neutral = extraction(value), extraction("neutral")
    assert hostile.sql == neutral.sql
    assert hostile.params.count(value) == neutral.params.count("neutral")
    assert db.ids(None, table="notes") == list(range(1, len(NOTES) + 1))  # the table is untouched


def test_a_huge_value_list(db: Warehouse) -> None:
    values = [f"value {i} ' %" for i in range(2000)] + ["plain"]
    assert db.ids(where(cond("note", "is one of", *values)), table="notes") == [1]
    assert len(db.ids(where(cond("note", "is not one of", *values)), table="notes")) == len(NOTES) - 1


def test_sqlite_matches_stored_nul_characters(tmp_path: Path) -> None:
    stored = [(1, "a\x00b"), (2, "ab"), (3, "\x00"), (4, "xa\x00")]
    path = sqlite_file(tmp_path / "nul.db", ["CREATE TABLE notes (id INTEGER, note TEXT)"], {"notes": stored})
    db = connect("sqlite", path, None)
    assert db.ids(where(cond("note", "is", "a\x00b")), table="notes") == [1]
    assert db.ids(where(cond("note", "contains", "\x00")), table="notes") == [1, 3, 4]
    assert db.ids(where(cond("note", "starts with", "a\x00")), table="notes") == [1]
    assert db.ids(where(cond("note", "ends with", "a\x00")), table="notes") == [4]
    assert db.ids(where(cond("note", "ends with", "\x00b")), table="notes") == [1]
    assert db.ids(where(cond("note", "does not contain", "\x00")), table="notes") == [2]


def test_sqlite_exact_match_beats_a_nocase_column(tmp_path: Path) -> None:
    ddl = "CREATE TABLE notes (id INTEGER, note TEXT COLLATE NOCASE)"
    path = sqlite_file(tmp_path / "nocase.db", [ddl], {"notes": [(1, "Plain"), (2, "plain"), (3, "PLAIN")]})
    db = connect("sqlite", path, None)
    assert db.ids(where(cond("note", "is", "plain")), table="notes") == [2]
    assert db.ids(where(cond("note", "is one of", "PLAIN", "x")), table="notes") == [3]
    assert db.ids(where(cond("note", "is greater than", "Plain")), table="notes") == [2]
    assert db.ids(where(cond("note", "starts with", "p")), table="notes") == [2]


def test_text_from_numbers_and_keys_is_safe(db: Warehouse) -> None:
    """A JSON path's keys are parameters too, and a number-looking value still compares strings."""
    condition: dict[str, Any] = where(cond("traits.note", "is", "100%"))
    extraction = db.extraction(condition, table="notes")
    assert "note'" not in extraction.where and extraction.params.count("100%") == 1
    assert db.ids(condition, table="notes") == [3]
