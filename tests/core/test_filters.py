"""Filters on real databases: a SQLite file, and PostgreSQL through psycopg2 and psycopg 3.

Every test runs on every backend, through ``prepare_extraction`` (probe, types, compile) as the
operator does. The data is built so that a text comparison, a dropped NULL, a case-insensitive
match or an unescaped wildcard would each give a different answer than the right one.
Injection-style values are in ``test_filters_security.py``; random filters in
``test_filters_property.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from krenalis_airflow.core.conditions import NEGATIONS, OPERATORS, Group, Kind
from krenalis_airflow.core.filters import compile_filter, sqlite_timestamp
from krenalis_airflow.exceptions import SpecError
from tests.core.warehouses import BACKENDS, Warehouse, cond, connect, pg_schema, sqlite_file, where

COLUMNS = [
    "id",
    "email",
    "plan",
    "orders",
    "lifetime_value",
    "vip",
    "signed_up_at",
    "city",
    "birthday",
    "traits",
]
TRAITS: list[Any] = [
    {"plan": "free", "score": 10, "beta": True, "tags": ["a"]},
    {"plan": "Pro", "score": 2.5, "beta": False},
    {"plan": "pro", "score": "10"},
    {"plan": None},
    None,  # the column is NULL
    {},
    {"plan": "", "nested": {"level": "gold"}},
    {"plan": "team", "score": 100},
    {"score": -1, "beta": True},
    {"plan": "free", "nested": {"level": "silver"}},
    {"plan": "pro plus", "nested": {}},
]
# id, email, plan, orders, lifetime_value, vip, signed_up_at, city, birthday
BASE: list[tuple[Any, ...]] = [
    (1, "a@x.com", "free", 0, 0.0, False, "2023-12-31 23:59:59", "Rome", "1990-01-01"),
    (2, "b@x.com", "pro", 5, 100.0, True, "2024-01-15 08:00:00", "rome", "1985-06-15"),
    (3, "c@x.com", "pro", 12, 250.5, True, "2024-03-01 00:00:00", "", None),
    (4, "d@x.com", "enterprise", 40, 1999.99, False, "2024-06-30 12:30:00", "ROME", "2000-02-29"),
    (5, "e@x.com", None, None, None, None, None, None, None),
    (6, "f@x.com", "free", 1, 9.5, False, "2024-02-29 00:00:00", "Milan", "1990-01-01"),
    (7, "g@x.com", "team", 3, 100.5, True, "2024-01-01 00:00:00", "Roma", "1970-12-31"),
    (8, "h@x.com", "free", 2, 100.0, False, "2024-04-01 09:00:00", "milano", "1999-12-31"),
    (9, "i@x.com", "pro", 20, 50.0, None, "2024-05-05 05:05:05", "", "2001-01-01"),
    (10, "j@x.com", "free", 7, 75.0, True, "2024-01-31 10:00:00", "Paris", "1990-01-02"),
    (11, "k@x.com", "team", 9, 10.0, False, "2024-02-01 00:00:00", "paris %_", None),
]
ROWS = [
    (*row, None if traits is None else json.dumps(traits)) for row, traits in zip(BASE, TRAITS, strict=True)
]
ALL = [row[0] for row in ROWS]

SQLITE_DDL = """CREATE TABLE profiles (id INTEGER PRIMARY KEY, email TEXT, plan TEXT, orders INTEGER,
    lifetime_value REAL, vip BOOLEAN, signed_up_at TIMESTAMP, city TEXT, birthday DATE, traits JSON)"""
PG_DDL = """CREATE TABLE {schema}.profiles (id integer PRIMARY KEY, email text, plan text, orders integer,
    lifetime_value numeric(12, 2), vip boolean, signed_up_at timestamp, city varchar(40), birthday date,
    traits jsonb)"""


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    with pg_schema("krenalis_filters", [PG_DDL], {"profiles": ROWS}) as name:
        yield name


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("filters") / "profiles.db"
    return sqlite_file(path, [SQLITE_DDL], {"profiles": ROWS})


@pytest.fixture(scope="module", params=BACKENDS)
def db(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[Warehouse]:
    schema = None if request.param == "sqlite" else request.getfixturevalue("schema")
    warehouse = connect(request.param, sqlite_path, schema)
    yield warehouse
    warehouse.conn.close()


# --------------------------------------------------------------------------------------------
# Every operator

EVERY_OPERATOR = [
    (cond("plan", "is", "pro"), [2, 3, 9]),
    (cond("plan", "is not", "free"), [2, 3, 4, 5, 7, 9, 11]),
    (cond("orders", "is less than", "3"), [1, 6, 8]),
    (cond("orders", "is less than or equal to", "3"), [1, 6, 7, 8]),
    (cond("orders", "is greater than", "10"), [3, 4, 9]),
    (cond("orders", "is greater than or equal to", "20"), [4, 9]),
    (cond("orders", "is between", "3", "9"), [2, 7, 10, 11]),
    (cond("orders", "is not between", "3", "9"), [1, 3, 4, 5, 6, 8, 9]),
    (cond("city", "contains", "om"), [1, 2, 7]),
    (cond("city", "does not contain", "om"), [3, 4, 5, 6, 8, 9, 10, 11]),
    (cond("plan", "is one of", "team", "enterprise"), [4, 7, 11]),
    (cond("plan", "is not one of", "free", "pro"), [4, 5, 7, 11]),
    (cond("city", "starts with", "R"), [1, 4, 7]),
    (cond("city", "ends with", "e"), [1, 2]),
    (cond("signed_up_at", "is before", "2024-01-15T08:00:00"), [1, 7]),
    (cond("signed_up_at", "is on or before", "2024-01-15T08:00:00"), [1, 2, 7]),
    (cond("signed_up_at", "is after", "2024-04-01T09:00:00"), [4, 9]),
    (cond("signed_up_at", "is on or after", "2024-04-01T09:00:00"), [4, 8, 9]),
    (cond("vip", "is true"), [2, 3, 7, 10]),
    (cond("vip", "is false"), [1, 4, 6, 8, 11]),
    (cond("city", "is empty"), [3, 5, 9]),
    (cond("city", "is not empty"), [1, 2, 4, 6, 7, 8, 10, 11]),
    (cond("plan", "is null"), [5]),
    (cond("plan", "is not null"), [i for i in ALL if i != 5]),
    (cond("traits.plan", "exists"), [1, 2, 3, 4, 7, 8, 10, 11]),
    (cond("traits.plan", "does not exist"), [5, 6, 9]),
]


def test_every_operator_is_covered() -> None:
    assert sorted(c["operator"] for c, _ in EVERY_OPERATOR) == sorted(OPERATORS)


@pytest.mark.parametrize(
    ("condition", "expected"),
    EVERY_OPERATOR,
    ids=lambda value: value["operator"] if isinstance(value, dict) else None,
)
def test_every_operator(db: Warehouse, condition: dict[str, Any], expected: list[int]) -> None:
    assert db.ids(where(condition)) == expected


def test_no_filter_keeps_everything(db: Warehouse) -> None:
    extraction = db.extraction(None)
    assert (extraction.where, extraction.params) == ("", [])
    assert db.ids(None) == ALL


# --------------------------------------------------------------------------------------------
# NULL semantics (as documented in filters.py)

PAIRS = [
    (cond("plan", "is", "free"), cond("plan", "is not", "free")),
    (cond("plan", "is one of", "free", "pro"), cond("plan", "is not one of", "free", "pro")),
    (cond("orders", "is between", "1", "9"), cond("orders", "is not between", "1", "9")),
    (cond("city", "contains", "o"), cond("city", "does not contain", "o")),
    (cond("city", "is empty"), cond("city", "is not empty")),
    (cond("birthday", "is empty"), cond("birthday", "is not empty")),
    (cond("plan", "is null"), cond("plan", "is not null")),
    (cond("traits.plan", "exists"), cond("traits.plan", "does not exist")),
    (cond("traits.plan", "is", "free"), cond("traits.plan", "is not", "free")),
    (cond("traits.score", "is one of", "10", "x"), cond("traits.score", "is not one of", "10", "x")),
    (cond("traits.score", "is between", "0", "50"), cond("traits.score", "is not between", "0", "50")),
    (cond("traits.plan", "contains", "r"), cond("traits.plan", "does not contain", "r")),
    (cond("traits.plan", "is empty"), cond("traits.plan", "is not empty")),
    (cond("traits.nested.level", "is null"), cond("traits.nested.level", "is not null")),
]


@pytest.mark.parametrize(("positive", "negative"), PAIRS, ids=lambda c: f"{c['property']} {c['operator']}")
def test_a_negative_selects_exactly_what_its_positive_does_not(
    db: Warehouse, positive: dict[str, Any], negative: dict[str, Any]
) -> None:
    assert NEGATIONS[negative["operator"]] == positive["operator"]
    selected, rest = db.ids(where(positive)), db.ids(where(negative))
    assert not set(selected) & set(rest)
    assert sorted(selected + rest) == ALL


def test_negations_keep_null(db: Warehouse) -> None:
    """A profile with no plan "is not free", "is not one of free, pro", "does not contain x"."""
    for condition in (
        cond("plan", "is not", "free"),
        cond("plan", "is not one of", "free", "pro"),
        cond("orders", "is not", "3"),
        cond("orders", "is not between", "0", "100"),
        cond("city", "does not contain", "x"),
    ):
        assert 5 in db.ids(where(condition)), condition


def test_positives_never_match_null(db: Warehouse) -> None:
    for condition in (
        cond("orders", "is less than", "1000"),
        cond("orders", "is greater than or equal to", "-1"),
        cond("orders", "is between", "-1000", "1000"),
        cond("plan", "is one of", "free", "pro", "team", "enterprise"),
        cond("lifetime_value", "is less than or equal to", "1000000"),
        cond("city", "contains", ""),
        cond("city", "starts with", ""),
        cond("signed_up_at", "is after", "1900-01-01"),
        cond("birthday", "is before", "2100-01-01"),
    ):
        assert 5 not in db.ids(where(condition)), condition


def test_is_false_does_not_match_null(db: Warehouse) -> None:
    falses = db.ids(where(cond("vip", "is false")))
    assert 5 not in falses and 9 not in falses
    assert sorted(falses + db.ids(where(cond("vip", "is true"))) + [5, 9]) == ALL


def test_null_inside_or_groups(db: Warehouse) -> None:
    """A NULL comparison is "unknown": inside OR it neither matches nor hides the other branch."""
    either = where(cond("orders", "is greater than", "30"), cond("plan", "is null"), logical="or")
    assert db.ids(either) == [4, 5]


def test_empty_means_null_or_the_empty_string(db: Warehouse) -> None:
    assert db.ids(where(cond("city", "is empty"))) == [3, 5, 9]
    assert db.ids(where(cond("city", "is null"))) == [5]
    assert db.ids(where(cond("birthday", "is empty"))) == [3, 5, 11]  # a date is only ever NULL


# --------------------------------------------------------------------------------------------
# Groups


def test_nested_groups(db: Warehouse) -> None:
    pro_and_big = where(cond("plan", "is", "pro"), cond("orders", "is greater than", "10"))
    assert db.ids(where(pro_and_big, cond("plan", "is null"), logical="or")) == [3, 5, 9]


def test_deeply_nested_groups(db: Warehouse) -> None:
    free_or_team = where(cond("plan", "is", "free"), cond("plan", "is", "team"), logical="or")
    vip_or_rich = where(
        cond("vip", "is true"),
        where(cond("lifetime_value", "is greater than", "50"), cond("orders", "is less than", "3")),
        logical="or",
    )
    # free/team rows: 1, 6, 7, 8, 10, 11; vip: 7, 10; rich with few orders: 8 (100.0, 2)
    assert db.ids(where(free_or_team, vip_or_rich)) == [7, 8, 10]


def test_group_precedence_is_explicit(db: Warehouse) -> None:
    """a AND (b OR c) is not (a AND b) OR c."""
    b_or_c = where(cond("plan", "is", "team"), cond("orders", "is greater than", "15"), logical="or")
    assert db.ids(where(cond("vip", "is true"), b_or_c)) == [7]
    a_and_b = where(cond("vip", "is true"), cond("plan", "is", "team"))
    assert db.ids(where(a_and_b, cond("orders", "is greater than", "15"), logical="or")) == [4, 7, 9]


def test_negated_group_members_inside_or(db: Warehouse) -> None:
    either = where(cond("plan", "is not", "free"), cond("city", "does not contain", "o"), logical="or")
    assert db.ids(either) == [2, 3, 4, 5, 6, 7, 9, 10, 11]


# --------------------------------------------------------------------------------------------
# Strings: case-sensitive, by code point, wildcards literal


def test_string_operators_are_case_sensitive(db: Warehouse) -> None:
    assert db.ids(where(cond("city", "is", "rome"))) == [2]
    assert db.ids(where(cond("city", "is one of", "ROME", "paris"))) == [4]
    assert db.ids(where(cond("city", "contains", "OM"))) == [4]
    assert db.ids(where(cond("city", "starts with", "r"))) == [2]
    assert db.ids(where(cond("city", "ends with", "E"))) == [4]
    assert db.ids(where(cond("traits.plan", "is", "pro"))) == [3]


def test_text_comparisons_are_by_code_point(db: Warehouse) -> None:
    # Upper case sorts before lower case, '' before everything, whatever the database's locale.
    assert db.ids(where(cond("city", "is less than", "a"))) == [1, 3, 4, 6, 7, 9, 10]
    assert db.ids(where(cond("city", "is between", "P", "Rome"))) == [1, 4, 7, 10]  # ROME < Roma


def test_wildcards_are_literal(db: Warehouse) -> None:
    assert db.ids(where(cond("city", "contains", "%"))) == [11]
    assert db.ids(where(cond("city", "contains", "_"))) == [11]
    assert db.ids(where(cond("city", "ends with", "%_"))) == [11]
    assert db.ids(where(cond("city", "starts with", "_"))) == []
    assert db.ids(where(cond("city", "contains", "o%"))) == []
    assert db.ids(where(cond("city", "contains", "R_me"))) == []


def test_the_empty_value(db: Warehouse) -> None:
    """Every non-NULL string contains, starts and ends with ''."""
    non_null = [i for i in ALL if i != 5]
    for operator in ("contains", "starts with", "ends with"):
        assert db.ids(where(cond("city", operator, ""))) == non_null
    assert db.ids(where(cond("city", "does not contain", ""))) == [5]
    assert db.ids(where(cond("city", "is", ""))) == [3, 9]


# --------------------------------------------------------------------------------------------
# Types: values are converted to the column's type


def test_kinds_are_probed(db: Warehouse) -> None:
    filter_data = where(*(cond(c, "is not null") for c in COLUMNS))
    kinds = db.extraction(filter_data).kinds
    assert kinds["orders"] is Kind.INTEGER and kinds["lifetime_value"] is Kind.NUMBER
    assert kinds["vip"] is Kind.BOOLEAN and kinds["birthday"] is Kind.DATE
    assert kinds["signed_up_at"] is Kind.TIMESTAMP and kinds["traits"] is Kind.JSON
    assert kinds["city"] is Kind.TEXT and kinds["plan"] is Kind.TEXT


def test_integers_compare_as_numbers(db: Warehouse) -> None:
    # As text, "5", "3", "2" and "7" would all be greater than "10".
    assert db.ids(where(cond("orders", "is greater than", "10"))) == [3, 4, 9]
    assert db.ids(where(cond("orders", "is one of", "5", "40"))) == [2, 4]
    assert db.ids(where(cond("orders", "is", "+12"))) == [3]


def test_decimals_compare_as_numbers(db: Warehouse) -> None:
    # As text, "9.5" and "75.0" would be greater than "100".
    assert db.ids(where(cond("lifetime_value", "is greater than or equal to", "100"))) == [2, 3, 4, 7, 8]
    assert db.ids(where(cond("lifetime_value", "is", "100"))) == [2, 8]  # stored as 100.0 / 100.00
    assert db.ids(where(cond("lifetime_value", "is", "100.50"))) == [7]
    assert db.ids(where(cond("lifetime_value", "is less than", "9.75"))) == [1, 6]
    assert db.ids(where(cond("lifetime_value", "is between", "1e2", "1.005E2"))) == [2, 7, 8]


def test_booleans(db: Warehouse) -> None:
    assert db.ids(where(cond("vip", "is true"), cond("plan", "is", "pro"))) == [2, 3]
    assert db.ids(where(cond("vip", "is", "true"))) == [2, 3, 7, 10]
    assert db.ids(where(cond("vip", "is", "FALSE"))) == [1, 4, 6, 8, 11]
    assert db.ids(where(cond("vip", "is not", "1"))) == [1, 4, 5, 6, 8, 9, 11]


def test_timestamps_read_any_iso_form(db: Warehouse) -> None:
    """The same instant in any ISO 8601 spelling, on both databases (SQLite normalises the text)."""
    for value in (
        "2024-03-01",
        "2024-03-01T00:00:00",
        "2024-03-01 00:00:00.000",
        "2024-03-01T01:00:00+01:00",
    ):
        assert db.ids(where(cond("signed_up_at", "is", value))) == [3], value
    assert db.ids(where(cond("signed_up_at", "is less than", "2024-01-01"))) == [1]
    between = where(cond("signed_up_at", "is between", "2024-01-31T10:00:00Z", "2024-02-29"))
    assert db.ids(between) == [6, 10, 11]


def test_dates(db: Warehouse) -> None:
    assert db.ids(where(cond("birthday", "is before", "1990-01-01"))) == [2, 7]
    assert db.ids(where(cond("birthday", "is on or before", "1990-01-01"))) == [1, 2, 6, 7]
    assert db.ids(where(cond("birthday", "is", "1990-01-01"))) == [1, 6]
    assert db.ids(where(cond("birthday", "is between", "1990-01-01", "1999-12-31"))) == [1, 6, 8, 10]
    assert db.ids(where(cond("birthday", "is after", "2000-02-28"))) == [4, 9]


def test_sqlite_reads_every_iso_spelling_of_stored_timestamps(tmp_path: Path) -> None:
    """SQLite stores text: 'T' or space, offsets and Z are all read as the instant they name."""
    stored = [
        (1, "2024-03-01 10:00:00"),
        (2, "2024-03-01T10:00:00"),
        (3, "2024-03-01T12:00:00+02:00"),
        (4, "2024-03-01T10:00:00Z"),
        (5, "2024-03-01T10:00:00.001"),
        (6, "2024-03-01"),
        (7, "not a date"),
    ]
    path = sqlite_file(
        tmp_path / "t.db", ["CREATE TABLE profiles (id INTEGER, at DATETIME)"], {"profiles": stored}
    )
    db = connect("sqlite", path, None)
    assert db.ids(where(cond("at", "is", "2024-03-01T10:00:00"))) == [1, 2, 3, 4]
    assert db.ids(where(cond("at", "is after", "2024-03-01T10:00:00"))) == [5]
    assert db.ids(where(cond("at", "is before", "2024-03-01T10:00:00"))) == [6]
    assert db.ids(where(cond("at", "is not", "2024-03-01T10:00:00"))) == [5, 6, 7]  # 7 is no date


def test_sqlite_date_operators_on_iso_text_columns(tmp_path: Path) -> None:
    stored = [(1, "2024-03-01T10:00:00"), (2, "2023-01-01"), (3, "soon"), (4, None)]
    path = sqlite_file(
        tmp_path / "t.db", ["CREATE TABLE profiles (id INTEGER, at TEXT)"], {"profiles": stored}
    )
    db = connect("sqlite", path, None)
    assert db.ids(where(cond("at", "is before", "2024-01-01"))) == [2]
    assert db.ids(where(cond("at", "is on or after", "2023-01-01"))) == [1, 2]
    assert db.ids(where(cond("at", "is", "2023-01-01"))) == [2]  # plain text equality


def test_sqlite_timestamp_rounds_like_sqlite() -> None:
    import datetime as dt

    assert sqlite_timestamp(dt.datetime(2024, 3, 1, 10, 0, 0, 1499)) == "2024-03-01 10:00:00.001"
    assert sqlite_timestamp(dt.datetime(2024, 3, 1, 23, 59, 59, 999600)) == "2024-03-02 00:00:00.000"
    aware = dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert sqlite_timestamp(aware) == "2024-03-01 10:00:00.000"


# --------------------------------------------------------------------------------------------
# JSON paths


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond("traits.plan", "is", "free"), [1, 10]),
        (cond("traits.plan", "is one of", "team", "pro plus"), [8, 11]),
        (cond("traits.plan", "contains", "ro"), [2, 3, 11]),
        (cond("traits.plan", "starts with", "pro"), [3, 11]),
        (cond("traits.plan", "ends with", "am"), [8]),
        (cond("traits.plan", "is empty"), [4, 5, 6, 7, 9]),
        (cond("traits.plan", "is null"), [4, 5, 6, 9]),
        (cond("traits.score", "is greater than", "5"), [1, 8]),  # "10" (row 3) is a string
        (cond("traits.score", "is", "10"), [1, 3]),  # the string "10" and the number 10
        (cond("traits.score", "is", "10.0"), [1]),
        (cond("traits.score", "is between", "0", "50"), [1, 2]),
        (cond("traits.score", "is less than", "abc"), [3]),  # a text value compares strings
        (cond("traits.score", "is less than", "0"), [9]),
        (cond("traits.beta", "is true"), [1, 9]),
        (cond("traits.beta", "is false"), [2]),
        (cond("traits.nested.level", "is one of", "gold", "silver"), [7, 10]),
        (cond("traits.nested.level", "exists"), [7, 10]),
        (cond("traits.nested", "exists"), [7, 10, 11]),
        (cond("traits.tags", "exists"), [1]),
        (cond("traits.nested.level.deeper", "exists"), []),
        (cond("traits", "is null"), [5]),
        (cond("traits", "exists"), [i for i in ALL if i != 5]),
    ],
    ids=lambda value: f"{value['property']} {value['operator']}" if isinstance(value, dict) else None,
)
def test_json_paths(db: Warehouse, condition: dict[str, Any], expected: list[int]) -> None:
    assert db.ids(where(condition)) == expected


def test_json_keys_are_parameters(db: Warehouse) -> None:
    extraction = db.extraction(where(cond("traits.nested.level", "is", "gold")))
    assert "level" not in extraction.sql and "nested" not in extraction.sql
    assert "gold" in extraction.params


def test_sqlite_json_in_a_text_column_and_invalid_json(tmp_path: Path) -> None:
    stored = [(1, '{"plan": "pro"}'), (2, "not json"), (3, None), (4, '{"plan": "free"}'), (5, "[1, 2]")]
    path = sqlite_file(
        tmp_path / "t.db", ["CREATE TABLE profiles (id INTEGER, traits TEXT)"], {"profiles": stored}
    )
    db = connect("sqlite", path, None)
    assert db.ids(where(cond("traits.plan", "is", "pro"))) == [1]
    assert db.ids(where(cond("traits.plan", "is not", "pro"))) == [2, 3, 4, 5]
    assert db.ids(where(cond("traits.plan", "does not exist"))) == [2, 3, 5]
    assert db.ids(where(cond("traits", "is", "not json"))) == [2]  # without a path: the text


# --------------------------------------------------------------------------------------------
# The SQL


def test_values_never_reach_the_sql_text(db: Warehouse) -> None:
    values = ["x' OR '1'='1", "%", "_", "\\"]
    extraction = db.extraction(where(cond("city", "is one of", *values), cond("plan", "is not", "';--")))
    assert extraction.params == [*values, "';--"]
    assert extraction.where.count(db.placeholder) == len(extraction.params)
    assert "'" not in extraction.where and len(extraction.where) < 200


def test_display_shows_the_sql_and_its_parameters(db: Warehouse) -> None:
    extraction = db.extraction(where(cond("orders", "is greater than", "10")))
    assert extraction.display() == f"{extraction.sql}\n-- parameters: {extraction.params!r}"
    assert extraction.params == [10]


def test_other_dialects_get_their_own_quoting_and_placeholders() -> None:
    group = Group.model_validate(where(cond("plan", "is not", "free"), cond("city", "starts with", "a%")))
    sql, params = compile_filter(group, COLUMNS, "%s", dialect="mysql")
    assert sql == "((`plan` IS NULL OR `plan` != %s) AND `city` LIKE %s ESCAPE '\\\\')"
    assert params == ["free", "a\\%%"]
    sql, params = compile_filter(group, COLUMNS, "?", dialect="mssql")
    assert "[plan]" in sql and params == ["free", "a\\%%"]
    sql, _ = compile_filter(group, COLUMNS, "?", dialect="no-such-database")
    assert '"plan"' in sql


def test_json_paths_need_sqlite_or_postgresql() -> None:
    group = Group.model_validate(where(cond("traits.plan", "is", "pro")))
    with pytest.raises(SpecError, match=r"JSON paths \(traits\.plan\) work on SQLite and PostgreSQL"):
        compile_filter(group, COLUMNS, "%s", dialect="mysql")


# --------------------------------------------------------------------------------------------
# Errors


def problems_of(db: Warehouse, filter_data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        db.extraction(filter_data)
    assert caught.value.source == "pipes/test.yaml"
    return {problem.path: problem.message for problem in caught.value.problems}


def test_values_that_do_not_convert_name_their_key_path(db: Warehouse) -> None:
    spec_filter = where(
        cond("orders", "is", "abc"),
        cond("lifetime_value", "is greater than", "ten"),
        where(cond("vip", "is", "yes"), cond("orders", "is between", "1", "2.5"), logical="or"),
        cond("signed_up_at", "is before", "yesterday"),
        cond("birthday", "is one of", "1990-01-01", "2024-02-30"),
        cond("plan", "is", "fine"),
    )
    assert problems_of(db, spec_filter) == {
        "filter.conditions[0].values[0]": "'abc' is not a whole number (column orders is integer)",
        "filter.conditions[1].values[0]": "'ten' is not a number (column lifetime_value is numeric)",
        "filter.conditions[2].conditions[0].values[0]": "'yes' is not a boolean; use true or false "
        "(column vip is boolean)",
        "filter.conditions[2].conditions[1].values[1]": "'2.5' is not a whole number (column orders is integer)",
        "filter.conditions[3].values[0]": "'yesterday' is not an ISO 8601 date or date-time such as "
        "2024-03-01 or 2024-03-01T12:30:00 (column signed_up_at is timestamp)",
        "filter.conditions[4].values[1]": "'2024-02-30' is not a date (YYYY-MM-DD) (column birthday is date)",
    }


def test_operators_that_do_not_apply_to_the_column(db: Warehouse) -> None:
    spec_filter = where(
        cond("orders", "contains", "1"),
        cond("plan", "exists"),
        cond("vip", "is less than", "true"),
        cond("orders.x", "is", "1"),
    )
    problems = problems_of(db, spec_filter)
    assert problems["filter.conditions[0].operator"] == (
        "operator 'contains' does not apply to column orders, which is integer; "
        "it applies to JSON, text values"
    )
    assert problems["filter.conditions[1].operator"].startswith("'exists' tests a key of a JSON column")
    assert "does not apply to column vip, which is boolean" in problems["filter.conditions[2].operator"]
    assert problems["filter.conditions[3].property"].startswith(
        "orders.x reads into column orders, which is integer; a JSON path needs a column of"
    )


def test_postgres_has_no_dates_in_text(db: Warehouse) -> None:
    condition = where(cond("city", "is before", "2024-01-01"))
    if db.postgres:
        assert (
            "does not apply to column city, which is text"
            in problems_of(db, condition)["filter.conditions[0].operator"]
        )
    else:
        assert db.ids(condition) == []  # no city is a date


def test_unknown_property_names_its_key_path(db: Warehouse) -> None:
    spec_filter = where(
        cond("plan", "is", "pro"),
        cond("orders", "is null"),
        where(
            cond("lifetime_valu", "is greater than", "1"),
            cond("Email", "is", "x"),
            cond("trait.plan", "exists"),
        ),
    )
    problems = problems_of(db, spec_filter)
    assert list(problems) == [
        "filter.conditions[2].conditions[0].property",
        "filter.conditions[2].conditions[1].property",
        "filter.conditions[2].conditions[2].property",
    ]
    first, second, third = problems.values()
    assert "'lifetime_valu'" in first and "did you mean 'lifetime_value'?" in first
    assert f"available columns: {', '.join(COLUMNS)}" in first
    assert "did you mean 'email'?" in second
    assert "no column 'trait' in the source; did you mean 'traits'?" in third


@pytest.mark.parametrize(
    ("operator", "values", "says"),
    [
        ("is between", ["1"], "takes exactly two values, got 1"),
        ("is not between", ["1", "2", "3"], "takes exactly two values, got 3"),
        ("contains", [], "takes exactly one value, got 0"),
        ("is before", ["a", "b"], "takes exactly one value, got 2"),
        ("is one of", [], "takes one or more values"),
        ("is empty", ["x"], "takes no values, got 1"),
        ("exists", ["x"], "takes no values, got 1"),
    ],
)
def test_value_counts(operator: str, values: list[str], says: str) -> None:
    with pytest.raises(ValidationError, match=f"operator '{operator}' {says}"):
        Group.model_validate(where(cond("plan", operator, *values)))


def test_unsupported_placeholder_is_a_programming_error() -> None:
    group = Group.model_validate(where(cond("plan", "is", "pro")))
    with pytest.raises(ValueError, match="unsupported placeholder ':1'"):
        compile_filter(group, COLUMNS, ":1")
