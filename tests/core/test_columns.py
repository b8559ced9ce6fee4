"""Every column a spec names, checked against the source's real columns and types (SQLite and
PostgreSQL through psycopg2 and psycopg 3): what ``validate --connect`` and the extract step report,
each problem at its file:line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from string import Template

import pytest

from krenalis_airflow.core.columns import check_source, key_path, with_lines
from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.exceptions import SpecError, SpecProblem
from tests.core.warehouses import BACKENDS, Warehouse, connect, pg_schema, sqlite_file

COLUMNS = "id, email, first_name, ltv, vip, signup, traits, uid, updated_at"
SQLITE_DDL = (
    "CREATE TABLE profiles (id INTEGER PRIMARY KEY, email TEXT, first_name TEXT, ltv REAL, vip BOOLEAN,"
    " signup DATE, traits JSON, uid TEXT, updated_at TIMESTAMP)"
)
PG_DDL = (
    "CREATE TABLE {schema}.profiles (id integer PRIMARY KEY, email text, first_name text,"
    " ltv numeric(10, 2), vip boolean, signup date, traits jsonb, uid uuid, updated_at timestamp)"
)
ROW = (1, "a@x.com", "Ada", 10.5, True, "2024-01-01", '{"email": "b@x.com"}', None, "2024-01-01 00:00:00")

# The line of each key the cases change is fixed: key 5, filter 9, matching 12, order_by 15,
# inputs 17, mapping 18.
SPEC = Template("""\
id: columns_check
source:
  conn_id: warehouse
  table: $table
  key: $key
filter:
  logical: and
  conditions:
    - {property: $fprop, operator: $fop, values: [$fval]}
export:
  matching:
    property: $match
    stripe: email
  duplicate_profiles: keep_first
  order_by: $order
transformation:
$transformation
""")
MAPPING = "  mapping:\n    name: $expr\n    metadata.plan: traits.plan"
CODE = (
    "  inputs: [first_name, $input]\n"
    "  python: \"def transform(profile):\\n    return {'name': profile['first_name']}\\n\""
)
DEFAULTS = {
    "key": "id",
    "fprop": "first_name",
    "fop": "is not",
    "fval": '"Ada"',
    "match": "email",
    "order": "updated_at desc",
    "expr": "first_name ~ ' '",
    "input": "email",
}
NOT_MATCHABLE = "the matching property must be a text, integer or UUID column"

# (case, changes, expected problems: (line, key path, what the message says))
CASES: list[tuple[str, dict[str, str], list[tuple[int, str, str]]]] = [
    ("good spec", {}, []),
    ("integer matching", {"match": "id"}, []),
    ("uuid matching", {"match": "uid"}, []),
    ("python inputs", {"code": "yes"}, []),
    ("filter on a JSON path", {"fprop": "traits.plan", "fval": '"pro"'}, []),
    (
        "key not a column",
        {"key": "ident"},
        [(5, "source.key", f"no column 'ident' in the source; available columns: {COLUMNS}")],
    ),
    (
        "matching property not a column",
        {"match": "mail"},
        [(12, "export.matching.property", "no column 'mail' in the source; did you mean 'email'?")],
    ),
    (
        "matching property a JSON path",
        {"match": "traits.email"},
        [
            (
                12,
                "export.matching.property",
                "'traits.email' is a JSON path; the matching property must be a column",
            )
        ],
    ),
    (
        "boolean matching property",
        {"match": "vip"},
        [
            (
                12,
                "export.matching.property",
                f"column vip is boolean; {NOT_MATCHABLE}: a boolean has two values",
            )
        ],
    ),
    (
        "float matching property",
        {"match": "ltv"},
        [(12, "export.matching.property", f"column ltv is numeric; {NOT_MATCHABLE}: decimal and floating")],
    ),
    (
        "date matching property",
        {"match": "signup"},
        [(12, "export.matching.property", f"column signup is date; {NOT_MATCHABLE}: a date does not")],
    ),
    (
        "JSON matching property",
        {"match": "traits"},
        [(12, "export.matching.property", f"column traits is JSON; {NOT_MATCHABLE}: a JSON value")],
    ),
    (
        "filter property not a column",
        {"fprop": "country"},
        [(9, "filter.conditions[0].property", "no column 'country' in the source")],
    ),
    (
        "filter value not a number",
        {"fprop": "ltv", "fop": "is greater than", "fval": '"lots"'},
        [(9, "filter.conditions[0].values[0]", "'lots' is not a number (column ltv is numeric)")],
    ),
    (
        "filter value not a date",
        {"fprop": "signup", "fop": "is after", "fval": '"2024-13-01"'},
        [
            (
                9,
                "filter.conditions[0].values[0]",
                "'2024-13-01' is not a date (YYYY-MM-DD) (column signup is date)",
            )
        ],
    ),
    (
        "filter value not a boolean",
        {"fprop": "vip", "fop": "is", "fval": '"maybe"'},
        [(9, "filter.conditions[0].values[0]", "'maybe' is not a boolean; use true or false")],
    ),
    (
        "order_by not a column",
        {"order": "updated desc"},
        [(15, "export.order_by", "no column 'updated' in the source; did you mean 'updated_at'?")],
    ),
    (
        "inputs not a column",
        {"code": "yes", "input": "nmae"},
        [(17, "transformation.inputs[1]", "no column 'nmae' in the source")],
    ),
    (
        "mapping reads a column the source lacks",
        {"expr": "frist_name ~ ' '"},
        [
            (
                18,
                "transformation.mapping.name",
                "no column 'frist_name' in the source; did you mean 'first_name'?",
            )
        ],
    ),
    (
        "every problem at once, in file order",
        {"order": "updated", "match": "vip", "key": "ident", "fprop": "country"},
        [
            (5, "source.key", "no column 'ident'"),
            (9, "filter.conditions[0].property", "no column 'country'"),
            (12, "export.matching.property", "column vip is boolean"),
            (15, "export.order_by", "no column 'updated'"),
        ],
    ),
]


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    with pg_schema("krenalis_columns", [PG_DDL], {"profiles": [ROW]}) as name:
        yield name


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("columns") / "profiles.db"
    return sqlite_file(path, [SQLITE_DDL], {"profiles": [ROW]})


@pytest.fixture(scope="module", params=BACKENDS)
def db(request: pytest.FixtureRequest, sqlite_path: Path) -> Iterator[Warehouse]:
    schema = None if request.param == "sqlite" else request.getfixturevalue("schema")
    warehouse = connect(request.param, sqlite_path, schema)
    yield warehouse
    warehouse.conn.close()


def write_spec(folder: Path, db: Warehouse, changes: dict[str, str]) -> Path:
    values = {**DEFAULTS, **changes, "table": db.table("profiles")}
    code = Template(CODE if "code" in changes else MAPPING).substitute(values)
    path = folder / "pipelines" / "columns_check.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SPEC.substitute(values, transformation=code), encoding="utf-8")
    return path


def check(db: Warehouse, path: Path) -> list[SpecProblem]:
    try:
        check_source(
            db.conn.cursor(), load_spec(path), str(path), dialect=db.dialect, placeholder=db.placeholder
        )
    except SpecError as exc:
        assert exc.source == str(path)
        return exc.problems
    return []


@pytest.mark.parametrize(("changes", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_every_column_the_spec_names_is_checked_with_its_line(
    db: Warehouse, tmp_path: Path, changes: dict[str, str], expected: list[tuple[int, str, str]]
) -> None:
    path = write_spec(tmp_path, db, changes)
    problems = check(db, path)
    assert [(p.line, p.path) for p in problems] == [(line, key) for line, key, _ in expected]
    for problem, (line, key, says) in zip(problems, expected, strict=True):
        assert problem.render(str(path)).startswith(f"{path}:{line}: {key}: {says}")


def test_a_json_path_matching_property_says_how_to_select_it_in_the_dialect(
    db: Warehouse, tmp_path: Path
) -> None:
    (problem,) = check(db, write_spec(tmp_path, db, {"match": "traits.email"}))
    read = "traits->>'email'" if db.postgres else "json_extract(traits, '$.email')"
    assert f"(SELECT *, {read} AS traits_email FROM …) and match on traits_email" in problem.message


def test_a_query_source_is_checked_by_its_result_columns(db: Warehouse, tmp_path: Path) -> None:
    path = write_spec(tmp_path, db, {"match": "mail"})
    query = f"SELECT id, email AS mail, first_name, traits, updated_at FROM {db.table('profiles')}"
    path.write_text(path.read_text().replace(f"table: {db.table('profiles')}", f"query: {query}"))
    assert check(db, path) == []
    path.write_text(path.read_text().replace("email AS mail", "vip AS mail"))
    (problem,) = check(db, path)
    assert (problem.line, problem.path) == (12, "export.matching.property")
    assert problem.message.startswith("column mail is boolean")


def test_sqlite_column_without_a_declared_type_takes_its_values_type(tmp_path: Path) -> None:
    """``SELECT …, ltv * 1 AS score``: SQLite declares no type; the values are real numbers."""
    db = connect("sqlite", sqlite_file(tmp_path / "w.db", [SQLITE_DDL], {"profiles": [ROW]}), None)
    path = write_spec(tmp_path, db, {"match": "score"})
    query = "SELECT *, ltv * 1 AS score FROM profiles"
    path.write_text(path.read_text().replace("table: profiles", f"query: {query}"))
    (problem,) = check(db, path)
    assert problem.message.startswith("column score is numeric")


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("source.key", ("source", "key")),
        (
            "filter.conditions[1].conditions[0].values[2]",
            ("filter", "conditions", 1, "conditions", 0, "values", 2),
        ),
        ("transformation.inputs[3]", ("transformation", "inputs", 3)),
        ("transformation.mapping.address.city", ("transformation", "mapping", "address.city")),
    ],
)
def test_key_paths(path: str, keys: tuple[str | int, ...]) -> None:
    assert key_path(path) == keys


def test_a_key_the_file_does_not_spell_out_takes_its_parents_line() -> None:
    lines = {("export",): 10, ("export", "matching"): 11}
    problems = [SpecProblem("export.order_by", "b"), SpecProblem("source.key", "a"), SpecProblem("x", "c", 3)]
    assert [(p.line, p.path) for p in with_lines(problems, lines)] == [
        (None, "source.key"),
        (3, "x"),
        (10, "export.order_by"),
    ]
