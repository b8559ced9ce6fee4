"""compile_filter on real databases: a SQLite file, and PostgreSQL through psycopg2 and psycopg 3.

Every test runs on every backend; the data below is built so that a text comparison, a dropped NULL
or a value pasted into SQL would each give a different answer than the right one.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.conditions import Group
from krenalis_airflow.core.filters import compile_filter
from krenalis_airflow.exceptions import SpecError

PG_DSN = "host=127.0.0.1 dbname=test user=postgres"
LONG = "a'b\"c%_\\" * 1250  # 10,000 characters of quotes, wildcards and backslashes

COLUMNS = ["id", "email", "plan", "orders", "lifetime_value", "vip", "signed_up_at", "note"]
# id, email, plan, orders, lifetime_value, vip, signed_up_at, note
ROWS: list[tuple[Any, ...]] = [
    (1, "a@x.com", "free", 0, 0.0, False, "2023-12-31 23:59:59", "plain"),
    (2, "b@x.com", "pro", 5, 100.0, True, "2024-01-15 08:00:00", "x' OR '1'='1"),
    (3, "c@x.com", "pro", 12, 250.5, True, "2024-03-01 00:00:00", "100%"),
    (4, "d@x.com", "enterprise", 40, 1999.99, False, "2024-06-30 12:30:00", "a_b"),
    (5, "e@x.com", None, None, None, None, None, "back\\slash"),
    (6, "f@x.com", "free", 1, 9.5, False, "2024-02-29 00:00:00", 'say "hi"'),
    (7, "g@x.com", "team", 3, 100.5, True, "2024-01-01 00:00:00", LONG),
    (8, "h@x.com", "free", 2, 100.0, False, "2024-04-01 09:00:00", "100x"),
    (9, "i@x.com", "pro", 20, 50.0, None, "2024-05-05 05:05:05", "axb"),
    (10, "j@x.com", "free", 7, 75.0, True, "2024-01-31 10:00:00", "backslash"),
    (11, "k@x.com", "team", 9, 10.0, False, "2024-02-01 00:00:00", LONG[:-1]),
]
ALL = [row[0] for row in ROWS]

SQLITE_DDL = """CREATE TABLE profiles (id INTEGER PRIMARY KEY, email TEXT, plan TEXT, orders INTEGER,
    lifetime_value REAL, vip INTEGER, signed_up_at TIMESTAMP, note TEXT)"""
PG_DDL = """CREATE TABLE {schema}.profiles (id integer PRIMARY KEY, email text, plan text, orders integer,
    lifetime_value numeric(12, 2), vip boolean, signed_up_at timestamp, note text)"""


@dataclass
class Backend:
    name: str
    conn: Any
    placeholder: str
    table: str

    def ids(self, filter_data: dict[str, Any] | None) -> list[int]:
        """The ids of the rows the filter keeps."""
        group = Group.model_validate(filter_data) if filter_data is not None else None
        where, params = compile_filter(group, COLUMNS, self.placeholder)
        sql = f"SELECT id FROM {self.table} AS src" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        cursor = self.conn.cursor()
        cursor.execute(sql, params)
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


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    """A uniquely named schema holding ``profiles``; dropped at the end of the module."""
    try:
        conn = pg_connect("psycopg2")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    schema = f"krenalis_filters_{uuid.uuid4().hex[:8]}"
    cursor = conn.cursor()
    cursor.execute(f"CREATE SCHEMA {schema}")
    cursor.execute(PG_DDL.format(schema=schema))
    cursor.executemany(f"INSERT INTO {schema}.profiles VALUES ({', '.join(['%s'] * 8)})", ROWS)
    yield schema
    cursor.execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("filters") / "profiles.db"
    conn = sqlite3.connect(path)
    conn.execute(SQLITE_DDL)
    rows = [(*row[:5], None if row[5] is None else int(row[5]), *row[6:]) for row in ROWS]  # vip as 0/1
    conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module", params=["sqlite", "psycopg2", "psycopg3"])
def db(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        conn = sqlite3.connect(sqlite_path)
        yield Backend("sqlite", conn, "?", "profiles")
    else:
        schema = request.getfixturevalue("pg_schema")
        conn = pg_connect(request.param)
        yield Backend(request.param, conn, "%s", f"{schema}.profiles")
    conn.close()


# --------------------------------------------------------------------------------------------
# Every operator


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond("plan", "is", "pro"), [2, 3, 9]),
        (cond("plan", "is not", "free"), [2, 3, 4, 5, 7, 9, 11]),
        (cond("plan", "is one of", "team", "enterprise"), [4, 7, 11]),
        (cond("plan", "is not one of", "free", "pro"), [4, 5, 7, 11]),
        (cond("orders", "is less than", "3"), [1, 6, 8]),
        (cond("orders", "is less than or equal to", "3"), [1, 6, 7, 8]),
        (cond("orders", "is greater than", "10"), [3, 4, 9]),
        (cond("orders", "is greater than or equal to", "20"), [4, 9]),
        (cond("plan", "is null"), [5]),
        (cond("plan", "is not null"), [i for i in ALL if i != 5]),
        (cond("vip", "is true"), [2, 3, 7, 10]),
        (cond("vip", "is false"), [1, 4, 6, 8, 11]),
    ],
    ids=lambda value: value["operator"] if isinstance(value, dict) else None,
)
def test_every_operator(db: Backend, condition: dict[str, Any], expected: list[int]) -> None:
    assert db.ids(where(condition)) == expected


def test_no_filter_keeps_everything(db: Backend) -> None:
    assert compile_filter(None, COLUMNS, db.placeholder) == ("", [])
    assert db.ids(None) == ALL


# --------------------------------------------------------------------------------------------
# NULL semantics (as documented in the module)


def test_negations_keep_null(db: Backend) -> None:
    """A profile with no plan "is not free" and "is not one of free, pro"."""
    assert 5 in db.ids(where(cond("plan", "is not", "free")))
    assert 5 in db.ids(where(cond("plan", "is not one of", "free", "pro")))
    assert 5 in db.ids(where(cond("orders", "is not", "3")))


def test_equalities_and_comparisons_never_match_null(db: Backend) -> None:
    for condition in (
        cond("orders", "is less than", "1000"),
        cond("orders", "is greater than or equal to", "-1"),
        cond("plan", "is one of", "free", "pro", "team", "enterprise"),
        cond("lifetime_value", "is less than or equal to", "1000000"),
    ):
        assert 5 not in db.ids(where(condition)), condition


def test_is_false_does_not_match_null(db: Backend) -> None:
    falses = db.ids(where(cond("vip", "is false")))
    assert 5 not in falses and 9 not in falses
    assert sorted(falses + db.ids(where(cond("vip", "is true"))) + [5, 9]) == ALL


def test_null_inside_or_groups(db: Backend) -> None:
    """A NULL comparison is "unknown": inside OR it neither matches nor hides the other branch."""
    assert db.ids(where(cond("orders", "is greater than", "30"), cond("plan", "is null"), logical="or")) == [
        4,
        5,
    ]


# --------------------------------------------------------------------------------------------
# Groups


def test_nested_groups(db: Backend) -> None:
    pro_and_big = where(cond("plan", "is", "pro"), cond("orders", "is greater than", "10"))
    assert db.ids(where(pro_and_big, cond("plan", "is null"), logical="or")) == [3, 5, 9]


def test_deeply_nested_groups(db: Backend) -> None:
    free_or_team = where(cond("plan", "is", "free"), cond("plan", "is", "team"), logical="or")
    vip_or_rich = where(
        cond("vip", "is true"),
        where(cond("lifetime_value", "is greater than", "50"), cond("orders", "is less than", "3")),
        logical="or",
    )
    # free/team rows: 1, 6, 7, 8, 10, 11; vip: 7, 10; rich with few orders: 8 (100.0, 2)
    assert db.ids(where(free_or_team, vip_or_rich)) == [7, 8, 10]


def test_group_precedence_is_explicit(db: Backend) -> None:
    """a AND (b OR c) is not (a AND b) OR c: every group is parenthesised."""
    b_or_c = where(cond("plan", "is", "team"), cond("orders", "is greater than", "15"), logical="or")
    assert db.ids(where(cond("vip", "is true"), b_or_c)) == [7]
    a_and_b = where(cond("vip", "is true"), cond("plan", "is", "team"))
    assert db.ids(where(a_and_b, cond("orders", "is greater than", "15"), logical="or")) == [4, 7, 9]


# --------------------------------------------------------------------------------------------
# Types: string values from YAML compare as the column's type


def test_integers_compare_as_numbers(db: Backend) -> None:
    # As text, "5", "3", "2" and "7" would all be greater than "10".
    assert db.ids(where(cond("orders", "is greater than", "10"))) == [3, 4, 9]
    assert db.ids(where(cond("orders", "is one of", "5", "40"))) == [2, 4]
    assert db.ids(where(cond("orders", "is", "12"))) == [3]


def test_decimals_compare_as_numbers(db: Backend) -> None:
    # As text, "9.5" and "75.0" would be greater than "100".
    assert db.ids(where(cond("lifetime_value", "is greater than or equal to", "100"))) == [2, 3, 4, 7, 8]
    assert db.ids(where(cond("lifetime_value", "is", "100"))) == [2, 8]  # stored as 100.0 / 100.00
    assert db.ids(where(cond("lifetime_value", "is", "100.5"))) == [7]
    assert db.ids(where(cond("lifetime_value", "is less than", "9.75"))) == [1, 6]


def test_booleans(db: Backend) -> None:
    assert db.ids(where(cond("vip", "is true"), cond("plan", "is", "pro"))) == [2, 3]
    assert db.ids(where(cond("vip", "is false"), cond("plan", "is", "free"))) == [1, 6, 8]


def test_timestamps_compare_with_iso_strings(db: Backend) -> None:
    """Same-format ISO values work everywhere (SQLite compares them as text, PostgreSQL as time)."""
    assert db.ids(where(cond("signed_up_at", "is less than", "2024-01-01"))) == [1]
    assert db.ids(where(cond("signed_up_at", "is greater than or equal to", "2024-04-01 09:00:00"))) == [
        4,
        8,
        9,
    ]
    assert db.ids(where(cond("signed_up_at", "is", "2024-03-01 00:00:00"))) == [3]
    between = where(
        cond("signed_up_at", "is greater than", "2024-01-31"),
        cond("signed_up_at", "is less than", "2024-03-01"),
    )
    assert db.ids(between) == [6, 10, 11]


def test_values_are_read_as_the_column_type(db: Backend) -> None:
    """PostgreSQL parses the value as the column's type; SQLite only converts numbers."""
    postgres = db.name != "sqlite"
    assert db.ids(where(cond("lifetime_value", "is", "100.50"))) == [7]
    # Timestamps: PostgreSQL reads any ISO form; SQLite compares text, so the format must match.
    assert db.ids(where(cond("signed_up_at", "is", "2024-03-01T00:00:00"))) == ([3] if postgres else [])
    assert db.ids(where(cond("signed_up_at", "is", "2024-03-01"))) == ([3] if postgres else [])
    # Booleans: 'true' is a PostgreSQL boolean, but only text to SQLite (use "is true" there).
    assert db.ids(where(cond("vip", "is", "true"))) == ([2, 3, 7, 10] if postgres else [])
    assert db.ids(where(cond("vip", "is", "1"))) == [2, 3, 7, 10]  # '1' is true to PostgreSQL too


def test_a_value_the_column_type_cannot_read(db: Backend) -> None:
    """PostgreSQL fails loudly; SQLite keeps the value as text, which equals no number."""
    for value in ("abc", "10.5"):
        condition = where(cond("orders", "is", value))
        if db.name == "sqlite":
            assert db.ids(condition) == []
        else:
            with pytest.raises(Exception, match="invalid input syntax for type integer"):
                db.ids(condition)


# --------------------------------------------------------------------------------------------
# Injection: values mean what they literally say


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x' OR '1'='1", [2]),
        ("100%", [3]),
        ("a_b", [4]),
        ("back\\slash", [5]),
        ('say "hi"', [6]),
        (LONG, [7]),
        (LONG[:-1], [11]),
        ("%", []),
        ("_", []),
        ("\\", []),
        ("'", []),
        ('"', []),
        ("100%%", []),
        ("%s", []),
        ("?", []),
        ("'; DROP TABLE profiles; --", []),
    ],
    ids=lambda value: repr(value[:20]) if isinstance(value, str) else None,
)
def test_values_match_literally(db: Backend, value: str, expected: list[int]) -> None:
    assert db.ids(where(cond("note", "is", value))) == expected
    assert db.ids(where(cond("note", "is one of", value, "no such note"))) == expected
    assert db.ids(where(cond("note", "is not", value))) == [i for i in ALL if i not in expected]


def test_values_never_reach_the_sql_text(db: Backend) -> None:
    values = ["x' OR '1'='1", "%", "_", "\\", LONG]
    group = Group.model_validate(where(cond("note", "is one of", *values), cond("plan", "is not", "';--")))
    sql, params = compile_filter(group, COLUMNS, db.placeholder)
    assert params == [*values, "';--"]
    assert sql.count(db.placeholder) == len(params)
    assert "'" not in sql and "OR '1'" not in sql and len(sql) < 200
    assert db.ids(None) == ALL  # the table is still there, untouched


# --------------------------------------------------------------------------------------------
# Errors


def test_unknown_property_names_its_key_path(db: Backend) -> None:
    spec_filter = where(
        cond("plan", "is", "pro"),
        cond("orders", "is null"),
        where(cond("lifetime_valu", "is greater than", "1"), cond("Email", "is", "x")),
    )
    with pytest.raises(SpecError) as caught:
        compile_filter(Group.model_validate(spec_filter), COLUMNS, db.placeholder, source="pipes/vip.yaml")
    error = caught.value
    assert error.source == "pipes/vip.yaml"
    assert [p.path for p in error.problems] == [
        "filter.conditions[2].conditions[0].property",
        "filter.conditions[2].conditions[1].property",
    ]
    first, second = (p.message for p in error.problems)
    assert "'lifetime_valu'" in first and "did you mean 'lifetime_value'?" in first
    assert "available columns: id, email, plan, orders, lifetime_value, vip, signed_up_at, note" in first
    assert "did you mean 'email'?" in second
    assert "pipes/vip.yaml: filter.conditions[2].conditions[0].property: no column 'lifetime_valu'" in str(
        error
    )


def test_unsupported_placeholder_is_a_programming_error() -> None:
    group = Group.model_validate(where(cond("plan", "is", "pro")))
    with pytest.raises(ValueError, match="unsupported placeholder ':1'"):
        compile_filter(group, COLUMNS, ":1")
