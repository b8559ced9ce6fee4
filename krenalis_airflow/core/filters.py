"""Compile a spec's ``filter`` into one parameterised SQL boolean expression, in the source's dialect.

The expression is built with SQLAlchemy Core and compiled for the source connection's dialect
(``hook.dialect_name``) and placeholder (``hook.placeholder``: ``?`` or ``%s``). SQLite and
PostgreSQL are tested; another dialect gets its own quoting and parameter style, compares values
as the database converts them from text, and has no JSON paths.

Safety
    Every value from the spec, JSON path keys included, is a bound parameter; none is ever pasted
    into the SQL text. The text holds only SQL, quoted column names checked against the source's
    real columns, and constants written here (``'text'``, ``'{}'``, a date format).

Values and types
    YAML values are strings; each is converted in Python to the column's kind (``Kind``, probed
    from the source: ``extract.prepare_extraction``) and bound as that type, so ``"100"`` compares
    as a number with a numeric column. A value that does not convert is a ``SpecError`` naming the
    value's key path: ``filter.conditions[1].values[0]: 'abc' is not a number (column
    lifetime_value is numeric)``. Booleans take true/false (or 1/0); dates YYYY-MM-DD; date-times
    ISO 8601 (``2024-03-01``, ``2024-03-01T12:30:00``, ``…+02:00``, ``…Z``): an offset is
    converted to UTC and a value without one is UTC. A column of another type (PostgreSQL inet,
    interval …) gets the text and the database converts it. SQLite has no date type: a column
    declared DATE, DATETIME or TIMESTAMP holds ISO text, which is normalised with ``date()`` /
    ``strftime('%Y-%m-%d %H:%M:%f')`` on both sides, so SQLite compares date-times to the
    millisecond, whatever the ISO spelling (``T`` or space, offset or ``Z``).

NULL semantics (the same on every database)
    * A positive operator never matches NULL (or, in JSON, a missing key): ``is``, ``is one of``,
      comparisons, ``is between``, ``contains``, ``starts with``, ``ends with``, the date
      operators, ``is true`` and ``is false`` (NULL is neither true nor false).
    * A negative operator selects exactly the rows its positive does not, NULLs included:
      ``is not``, ``is not one of``, ``is not between``, ``does not contain``, ``is not empty``,
      ``is not null``, ``does not exist``. A profile with no plan "is not free".
    * ``is null``: SQL NULL; for a JSON path, a missing key or JSON ``null``.
      ``is empty``: NULL or the empty string ``''`` (only NULL for numbers, dates, booleans);
      for a JSON path, missing, ``null`` or ``""``.
      ``exists`` / ``does not exist`` apply to JSON only: is the key there (even holding ``null``)?
    Groups combine conditions with AND/OR only; a negative is compiled as
    ``x IS NULL OR NOT (test)``, so an "unknown" never leaks into a result.

Strings
    Every string operator is case-sensitive and compares by code point, on every database:
    text comparisons carry ``COLLATE "C"`` on PostgreSQL and ``COLLATE BINARY`` on SQLite
    (a column declared ``COLLATE NOCASE`` is still compared exactly). ``contains`` /
    ``starts with`` / ``ends with`` are LIKE with ``%``, ``_`` and ``\\`` escaped on PostgreSQL
    (and other dialects), and ``instr`` / a byte-wise suffix test on SQLite, whose LIKE ignores
    case. An empty value is contained in every non-NULL string. PostgreSQL text cannot hold NUL
    (``\\x00``), so there a value with NUL equals and is contained in nothing.

JSON paths
    ``traits.plan``: the first segment is a column (PostgreSQL ``json``/``jsonb``; SQLite a column
    of text holding JSON, invalid JSON reading as missing), the rest are object keys. ``is``
    matches a JSON string equal to the value, or a JSON number equal to it when the value is a
    number; comparisons and ``is between`` compare JSON numbers when the value is a number, else
    JSON strings; string operators match JSON strings; ``is true`` / ``is false`` JSON booleans.

Dates
    ``is before`` / ``is on or before`` / ``is after`` / ``is on or after`` work on date and
    timestamp columns (the comparisons work there too), and on SQLite also on ISO 8601 text
    (text columns and JSON strings). On PostgreSQL, cast text to a timestamp in a ``query:``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.engine.interfaces import BindTyping, Dialect
from sqlalchemy.sql.elements import ColumnElement

from krenalis_airflow.core.conditions import (
    DATE_ORDERING,
    EQUALITY,
    NEGATIONS,
    ORDERING,
    TEXT_MATCHING,
    Condition,
    Group,
    Kind,
    parse_number,
    parse_value,
)
from krenalis_airflow.exceptions import FilterProblem, SpecError, SpecProblem

PLACEHOLDERS: dict[str, Literal["qmark", "format"]] = {"?": "qmark", "%s": "format"}
SQLITE, POSTGRESQL = "sqlite", "postgresql"
SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%f"  # what strftime() makes of any ISO form, to the millisecond

Expr = ColumnElement[Any]
_SQL_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_DATE_KINDS = frozenset({Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMP_TZ})


def compile_filter(
    group: Group | None,
    columns: Sequence[str],
    placeholder: str,
    *,
    source: str = "<spec>",
    dialect: str | None = None,
    kinds: Mapping[str, Kind] | None = None,
) -> tuple[str, list[Any]]:
    """Return ``(sql, params)`` for ``group``, or ``("", [])`` when there is no filter.

    ``columns`` are the source's actual column names and ``kinds`` what is known of their types
    (a column missing from it is ``Kind.OTHER``: its values are bound as text). ``dialect`` is
    the SQLAlchemy dialect name; without it ``?`` means SQLite and ``%s`` PostgreSQL. Every
    problem (unknown column, operator that does not apply, value that does not convert) is
    reported in one ``SpecError`` with ``source`` as its file.
    """
    if group is None:
        return "", []
    check_placeholder(placeholder)
    name = dialect_name(dialect, placeholder)
    if problems := filter_problems(group, columns):
        raise SpecError(source, problems)
    builder = _Builder(name, kinds or {})
    expression = builder.group(group, "filter")
    if builder.problems:
        raise SpecError(source, builder.problems)
    return render(expression, sql_dialect(name, placeholder))


def filter_problems(group: Group | None, columns: Sequence[str], path: str = "filter") -> list[SpecProblem]:
    """Every condition whose property is not a column, with its key path in the spec."""
    if group is None:
        return []
    problems: list[SpecProblem] = []
    for index, item in enumerate(group.conditions):
        item_path = f"{path}.conditions[{index}]"
        if isinstance(item, Group):
            problems.extend(filter_problems(item, columns, item_path))
        elif item.column not in columns:
            problems.append(
                SpecProblem(f"{item_path}.property", unknown_column_message(item.column, columns))
            )
    return problems


def value_problems(group: Group | None, dialect: str, kinds: Mapping[str, Kind]) -> list[SpecProblem]:
    """Every operator that does not apply to its column and every value that does not convert to
    its column's type, with key paths; ``kinds`` as for ``compile_filter`` (columns not checked)."""
    if group is None:
        return []
    builder = _Builder(dialect, kinds)
    builder.group(group, "filter")
    return builder.problems


def unknown_column_message(name: str, columns: Sequence[str]) -> str:
    """``no column 'x' in the source; did you mean 'y'? available: a, b`` (the hint when one is close)."""
    message = f"no column {name!r} in the source"
    if hint := _closest(name, columns):
        message += f"; did you mean {hint!r}?"
    return f"{message}; available columns: {', '.join(columns) or '(none)'}"


def quote_identifier(name: str, dialect: Dialect | None = None) -> str:
    """Quote one identifier, always: the dialect's way, or standard double quotes."""
    if dialect is not None:
        return str(dialect.identifier_preparer.quote_identifier(name))
    return '"' + name.replace('"', '""') + '"'


def check_placeholder(placeholder: str) -> None:
    """Refuse a DB-API placeholder style the SQL builder cannot write."""
    if placeholder not in PLACEHOLDERS:
        raise ValueError(f"unsupported placeholder {placeholder!r}; use one of {', '.join(PLACEHOLDERS)}")


def dialect_name(dialect: str | None, placeholder: str) -> str:
    """The SQLAlchemy dialect name; without one, guessed from the placeholder (old callers)."""
    if dialect is None:
        return SQLITE if placeholder == "?" else POSTGRESQL
    name = dialect.lower().split("+")[0]
    return POSTGRESQL if name == "postgres" else name


@functools.cache
def sql_dialect(name: str, placeholder: str) -> Dialect:
    """A SQLAlchemy dialect that renders ``placeholder`` and never adds casts to parameters."""
    check_placeholder(placeholder)
    dialect: Dialect
    if name == SQLITE:
        from sqlalchemy.dialects.sqlite.base import SQLiteDialect

        dialect = SQLiteDialect(paramstyle=PLACEHOLDERS[placeholder])
    elif name == POSTGRESQL:
        from sqlalchemy.dialects.postgresql.base import PGDialect

        dialect = PGDialect(paramstyle=PLACEHOLDERS[placeholder])
    else:
        try:
            dialect = sa.dialects.registry.load(name)(paramstyle=PLACEHOLDERS[placeholder])
        except Exception:  # an unknown name, or a dialect that needs its driver: plain SQL
            dialect = DefaultDialect(paramstyle=PLACEHOLDERS[placeholder])
    dialect.bind_typing = BindTyping.NONE
    return dialect


def render(expression: Expr, dialect: Dialect) -> tuple[str, list[Any]]:
    """SQL text (parenthesised, so it can be combined) and positional parameters of ``expression``."""
    compiled = expression.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    return f"({compiled})", [params[name] for name in compiled.positiontup or ()]


def _closest(name: str, columns: Sequence[str]) -> str | None:
    same_case = [c for c in columns if c.lower() == name.lower()]
    if same_case:
        return same_case[0]
    close = difflib.get_close_matches(name, columns, n=1)
    return close[0] if close else None


# --------------------------------------------------------------------------------------------
# Building the expression


@dataclass(frozen=True)
class _Test:
    """A positive test, and what may be NULL in it (its negation must keep those rows)."""

    expr: Expr
    nullable: tuple[Expr, ...] = ()

    def negated(self) -> Expr:
        return sa.or_(*(value.is_(None) for value in self.nullable), sa.not_(self.expr))


_NEVER = _Test(sa.false())
_JSON_COLUMNS = {POSTGRESQL: {Kind.JSON}, SQLITE: {Kind.JSON, Kind.TEXT, Kind.OTHER}}


class _Builder:
    def __init__(self, dialect: str, kinds: Mapping[str, Kind]) -> None:
        self.dialect = dialect
        self.kinds = kinds
        self.problems: list[SpecProblem] = []

    def group(self, group: Group, path: str) -> Expr:
        parts = [
            self.group(item, f"{path}.conditions[{index}]")
            if isinstance(item, Group)
            else self.condition(item, f"{path}.conditions[{index}]")
            for index, item in enumerate(group.conditions)
        ]
        return sa.and_(*parts) if group.logical == "and" else sa.or_(*parts)

    def condition(self, condition: Condition, path: str) -> Expr:
        try:
            subject = self.subject(condition)
            positive = NEGATIONS.get(condition.operator, condition.operator)
            test = _test(subject, positive, condition.values)
        except FilterProblem as problem:
            self.problems.append(SpecProblem(path + problem.key, problem.message))
            return sa.false()
        return test.negated() if condition.operator in NEGATIONS else test.expr

    def subject(self, condition: Condition) -> _Subject:
        kind = self.kinds.get(condition.column, Kind.OTHER)
        column: Expr = sa.column(sa.sql.quoted_name(condition.column, quote=True))
        if condition.keys or kind is Kind.JSON:
            return self._json(condition, column, kind)
        subject = _Column(self.dialect, kind, f"column {condition.column}", column)
        _check_operator(subject, condition.operator)
        return subject

    def _json(self, condition: Condition, column: Expr, kind: Kind) -> _Subject:
        if self.dialect not in (SQLITE, POSTGRESQL):
            message = f"JSON paths ({condition.property}) work on SQLite and PostgreSQL sources only"
            raise FilterProblem(".property", message)
        if kind not in _JSON_COLUMNS[self.dialect]:
            where = "json or jsonb" if self.dialect == POSTGRESQL else "text holding JSON"
            message = (
                f"{condition.property} reads into column {condition.column}, which is {kind}; "
                f"a JSON path needs a column of {where}"
            )
            raise FilterProblem(".property", message)
        subject = _Json(self.dialect, Kind.JSON, condition.property, column, condition.keys)
        _check_operator(subject, condition.operator)
        return subject


def _test(subject: _Subject, operator_name: str, values: Sequence[str]) -> _Test:
    if operator_name in EQUALITY:
        return subject.equal(values)
    if operator_name in ORDERING:
        return subject.order(ORDERING[operator_name], values[0])
    if operator_name == "is between":
        return subject.between(values[0], values[1])
    if operator_name in TEXT_MATCHING:
        return subject.match(operator_name, values[0])
    if operator_name in DATE_ORDERING:
        return subject.date_order(DATE_ORDERING[operator_name], values[0])
    if operator_name in ("is true", "is false"):
        return _Test(subject.truth(operator_name == "is true"))
    if operator_name == "is empty":
        return _Test(subject.empty())
    if operator_name == "is null":
        return _Test(subject.null())
    if operator_name == "exists":
        return _Test(subject.exists())
    raise AssertionError(f"operator {operator_name!r} has no SQL")  # pragma: no cover - OPERATORS guards


# Which kinds of subject each operator applies to (other dialects only know Kind.OTHER).
_EVERY_KIND = frozenset(Kind)
_ORDERED = _EVERY_KIND - {Kind.BOOLEAN, Kind.UUID}
_STRINGS = frozenset({Kind.TEXT, Kind.JSON, Kind.OTHER})


def _applicable(operator_name: str, dialect: str) -> frozenset[Kind]:
    operator_name = NEGATIONS.get(operator_name, operator_name)
    loose = dialect != POSTGRESQL  # SQLite's text dates and 0/1 booleans; other dialects decide
    if operator_name in ORDERING or operator_name == "is between":
        return _ORDERED
    if operator_name in TEXT_MATCHING:
        return _STRINGS
    if operator_name in DATE_ORDERING:
        return _DATE_KINDS | (_STRINGS if loose else frozenset())
    if operator_name in ("is true", "is false"):
        extra = {Kind.INTEGER, Kind.NUMBER} if loose else set()
        return frozenset({Kind.BOOLEAN, Kind.JSON, Kind.OTHER, *extra})
    if operator_name == "exists":
        return frozenset({Kind.JSON})
    return _EVERY_KIND


def _check_operator(subject: _Subject, operator_name: str) -> None:
    if subject.kind in _applicable(operator_name, subject.dialect):
        return
    if operator_name in ("exists", "does not exist"):
        message = (
            f"{operator_name!r} tests a key of a JSON column (traits.plan); {subject.label} is a "
            "column of the source, which always exists: use 'is null' / 'is not null'"
        )
    else:
        kinds = sorted(kind.value for kind in _applicable(operator_name, subject.dialect) - {Kind.OTHER})
        message = (
            f"operator {operator_name!r} does not apply to {subject.label}, which is {subject.kind}; "
            f"it applies to {', '.join(kinds)} values"
        )
    raise FilterProblem(".operator", message)


# --------------------------------------------------------------------------------------------
# Subjects: what a condition tests (a column, or a value inside a JSON column)


class _Subject:
    def __init__(self, dialect: str, kind: Kind, label: str, column: Expr) -> None:
        self.dialect = dialect
        self.kind = kind
        self.label = label
        self.column = column

    # Conversions -------------------------------------------------------------------------

    def parse(self, kind: Kind, text: str, index: int) -> Any:
        """``text`` as a bound parameter of ``kind``, ready for this dialect's driver."""
        try:
            value = parse_value(kind, text)
        except ValueError as exc:
            raise FilterProblem(f".values[{index}]", f"{exc} ({self._described(kind)})") from None
        return self.bind(value)

    def bind(self, value: Any) -> Expr:
        if self.dialect == SQLITE:
            value = _sqlite_value(value)
        return sa.bindparam(None, value)

    def _described(self, kind: Kind) -> str:
        return f"{self.label} is {kind}"

    def cannot_hold(self, text: str) -> bool:
        """True when no stored string can equal or contain ``text`` (NUL on PostgreSQL)."""
        return self.dialect == POSTGRESQL and "\x00" in text

    def no_nul(self, text: str, index: int) -> str:
        if self.cannot_hold(text):
            message = "PostgreSQL text cannot hold NUL (\\x00), so this value cannot be compared; remove it"
            raise FilterProblem(f".values[{index}]", message)
        return text

    # Tests, overridden -------------------------------------------------------------------

    def equal(self, values: Sequence[str]) -> _Test:
        raise NotImplementedError

    def order(self, sql_operator: str, value: str) -> _Test:
        raise NotImplementedError

    def between(self, low: str, high: str) -> _Test:
        raise NotImplementedError

    def match(self, operator_name: str, value: str) -> _Test:
        raise NotImplementedError

    def date_order(self, sql_operator: str, value: str) -> _Test:
        raise NotImplementedError

    def truth(self, wanted: bool) -> Expr:
        raise NotImplementedError

    def empty(self) -> Expr:
        raise NotImplementedError

    def null(self) -> Expr:
        raise NotImplementedError

    def exists(self) -> Expr:
        raise NotImplementedError

    # Shared building blocks --------------------------------------------------------------

    def text_match(self, operator_name: str, text: Expr, value: str) -> _Test:
        """``contains`` / ``starts with`` / ``ends with`` on ``text``, case-sensitive everywhere."""
        if value == "":
            return _Test(text.is_not(None))
        if self.cannot_hold(value):
            return _NEVER
        if self.dialect == SQLITE:
            return _Test(self._sqlite_match(operator_name, text, value), (text,))
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {"contains": f"%{escaped}%", "starts with": f"{escaped}%", "ends with": f"%{escaped}"}
        subject = text.collate("C") if self.dialect == POSTGRESQL else text
        return _Test(subject.like(self.bind(pattern[operator_name]), escape="\\"), (text,))

    def _sqlite_match(self, operator_name: str, text: Expr, value: str) -> Expr:
        """instr() is case-sensitive (SQLite's LIKE is not); the suffix is compared as bytes."""
        if operator_name == "contains":
            return sa.func.instr(text, self.bind(value)) > sa.literal_column("0")
        if operator_name == "starts with":  # the first occurrence is at 1 exactly when it starts so
            return sa.func.instr(text, self.bind(value)) == sa.literal_column("1")
        suffix = sa.cast(self.bind(value), sa.LargeBinary)
        return sa.func.substr(sa.cast(text, sa.LargeBinary), -sa.func.length(suffix)) == suffix


class _Column(_Subject):
    """A plain column; ``kind`` says how its values convert and compare."""

    def comparable(self, kind: Kind | None = None) -> Expr:
        """The column as it is compared: exact collation for text, normalised dates on SQLite."""
        kind = kind or self.kind
        if self.dialect == SQLITE and kind is Kind.DATE:
            return sa.func.date(self.column)
        if self.dialect == SQLITE and kind is Kind.TIMESTAMP:
            return sa.func.strftime(sa.literal_column(f"'{SQLITE_TIMESTAMP}'"), self.column)
        return self.column

    def collated(self) -> Expr:
        collation = {SQLITE: "binary", POSTGRESQL: "C"}.get(self.dialect)
        if self.kind is Kind.TEXT and collation:
            return self.column.collate(collation)
        return self.comparable()

    def value(self, text: str, index: int) -> Any:
        if self.kind in (Kind.TEXT, Kind.OTHER):
            return self.bind(self.no_nul(text, index))
        return self.parse(self.kind, text, index)

    def equal(self, values: Sequence[str]) -> _Test:
        textual = self.kind in (Kind.TEXT, Kind.OTHER)
        kept = [(i, v) for i, v in enumerate(values) if not (textual and self.cannot_hold(v))]
        if not kept:
            return _NEVER
        bound = [self.value(text, index) for index, text in kept]
        target = self.collated()
        expr = target == bound[0] if len(bound) == 1 else target.in_(bound)
        return _Test(expr, (self.comparable(),))

    def order(self, sql_operator: str, value: str) -> _Test:
        return _Test(
            _SQL_OPERATORS[sql_operator](self.collated(), self.value(value, 0)), (self.comparable(),)
        )

    def between(self, low: str, high: str) -> _Test:
        expr = self.collated().between(self.value(low, 0), self.value(high, 1))
        return _Test(expr, (self.comparable(),))

    def match(self, operator_name: str, value: str) -> _Test:
        text = sa.cast(self.column, sa.Text) if self._needs_text_cast() else self.column
        return self.text_match(operator_name, text, value)

    def date_order(self, sql_operator: str, value: str) -> _Test:
        compare = _SQL_OPERATORS[sql_operator]
        if self.kind is Kind.OTHER and self.dialect not in (SQLITE, POSTGRESQL):
            return _Test(compare(self.column, self.bind(value)), (self.column,))  # the database reads it
        kind = self.kind if self.kind in _DATE_KINDS else Kind.TIMESTAMP  # ISO text on SQLite
        target = self.comparable(kind)
        return _Test(compare(target, self.parse(kind, value, 0)), (target,))

    def truth(self, wanted: bool) -> Expr:
        if self.dialect in (SQLITE, POSTGRESQL):
            return self.column.is_(sa.literal_column("TRUE" if wanted else "FALSE"))
        return self.column.is_(sa.true() if wanted else sa.false())

    def empty(self) -> Expr:
        if self.kind not in (Kind.TEXT, Kind.OTHER):
            return self.column.is_(None)
        text = sa.cast(self.column, sa.Text) if self._needs_text_cast() else self.column
        return sa.or_(self.column.is_(None), text == sa.literal_column("''"))

    def null(self) -> Expr:
        return self.column.is_(None)

    def _needs_text_cast(self) -> bool:
        """A PostgreSQL column of another type (inet, citext …) is matched by its text form."""
        return self.dialect == POSTGRESQL and self.kind is Kind.OTHER


class _Json(_Subject):
    """The value at ``keys`` inside a JSON column: a string, number, boolean, null, or missing."""

    def __init__(self, dialect: str, kind: Kind, label: str, column: Expr, keys: Sequence[str]) -> None:
        super().__init__(dialect, kind, label, column)
        self.keys = tuple(keys)

    # The value, by JSON type (NULL when it is missing or of another type) ---------------------

    def json_type(self) -> Expr:
        """SQLite: null/true/false/integer/real/text/array/object; PostgreSQL: jsonb_typeof names."""
        if self.dialect == SQLITE:
            return sa.case(
                (sa.not_(sa.func.json_valid(self.column)), sa.null()),
                else_=sa.func.json_type(self.column, self._sqlite_path()),
            )
        return sa.func.jsonb_typeof(self._pg_value())

    def string(self) -> Expr:
        if self.dialect == SQLITE:
            return self._sqlite_typed("text")
        return sa.case((self.json_type() == _const("string"), self._pg_text()))

    def number(self) -> Expr:
        if self.dialect == SQLITE:
            return self._sqlite_typed("integer", "real")
        return sa.case((self.json_type() == _const("number"), sa.cast(self._pg_text(), sa.Numeric)))

    def _sqlite_path(self) -> Expr:
        return self.bind("$" + "".join(f".{key}" for key in self.keys))

    def _sqlite_typed(self, *types: str) -> Expr:
        is_type = sa.func.json_type(self.column, self._sqlite_path()).in_([_const(t) for t in types])
        value = sa.func.json_extract(self.column, self._sqlite_path())
        return sa.case((sa.not_(sa.func.json_valid(self.column)), sa.null()), (is_type, value))

    def _pg_value(self) -> Expr:
        value: Expr = sa.cast(self.column, JSONB)
        for key in self.keys:
            value = value.op("->", return_type=JSONB)(self.bind(key))
        return value

    def _pg_text(self) -> Expr:
        return self._pg_value().op("#>>", return_type=sa.Text)(sa.literal_column("'{}'"))

    def _collated_string(self) -> Expr:
        string = self.string()
        return string.collate("C") if self.dialect == POSTGRESQL else string

    # Tests ------------------------------------------------------------------------------------

    def equal(self, values: Sequence[str]) -> _Test:
        strings = [self.bind(v) for v in values if not self.cannot_hold(v)]
        numbers = [self.bind(number) for v in values if (number := _number_or_none(v)) is not None]
        parts = [_guarded_in(self._collated_string(), self.string(), strings)]
        parts.append(_guarded_in(self.number(), self.number(), numbers))
        return _Test(sa.or_(*parts))

    def order(self, sql_operator: str, value: str) -> _Test:
        compare = _SQL_OPERATORS[sql_operator]
        number = _number_or_none(value)
        if number is not None:
            return _Test(compare(self.number(), self.bind(number)), (self.number(),))
        return _Test(compare(self._collated_string(), self.bind(self.no_nul(value, 0))), (self.string(),))

    def between(self, low: str, high: str) -> _Test:
        numbers = (_number_or_none(low), _number_or_none(high))
        if numbers[0] is not None and numbers[1] is not None:
            expr = self.number().between(self.bind(numbers[0]), self.bind(numbers[1]))
            return _Test(expr, (self.number(),))
        bounds = (self.bind(self.no_nul(low, 0)), self.bind(self.no_nul(high, 1)))
        return _Test(self._collated_string().between(*bounds), (self.string(),))

    def match(self, operator_name: str, value: str) -> _Test:
        return self.text_match(operator_name, self.string(), value)

    def date_order(self, sql_operator: str, value: str) -> _Test:
        moment = sa.func.strftime(sa.literal_column(f"'{SQLITE_TIMESTAMP}'"), self.string())
        return _Test(_SQL_OPERATORS[sql_operator](moment, self.parse(Kind.TIMESTAMP, value, 0)), (moment,))

    def _described(self, kind: Kind) -> str:
        return f"{self.label} is compared as a {kind}"

    def truth(self, wanted: bool) -> Expr:
        word = "true" if wanted else "false"
        if self.dialect == SQLITE:
            return self.json_type() == _const(word)
        return sa.and_(self.json_type() == _const("boolean"), self._pg_text() == _const(word))

    def empty(self) -> Expr:
        string = self.string()
        blank = sa.and_(string.is_not(None), string == sa.literal_column("''"))
        return sa.or_(self.null(), blank)

    def null(self) -> Expr:
        json_type = self.json_type()
        return sa.or_(json_type.is_(None), json_type == _const("null"))

    def exists(self) -> Expr:
        return self.json_type().is_not(None)


def _guarded_in(target: Expr, value: Expr, bound: Sequence[Expr]) -> Expr:
    """``value IS NOT NULL AND target IN (…)``: never unknown, so it can be negated inside OR."""
    if not bound:
        return sa.false()
    test = target == bound[0] if len(bound) == 1 else target.in_(bound)
    return sa.and_(value.is_not(None), test)


def _number_or_none(text: str) -> Decimal | None:
    try:
        return parse_number(text)
    except ValueError:
        return None


def _const(word: str) -> Expr:
    """A string constant written by this module (never a value from a spec)."""
    assert word.isalpha(), word
    return sa.literal_column(f"'{word}'")


def _sqlite_value(value: Any) -> Any:
    """What sqlite3 binds: numbers as int/float, dates and date-times as strftime-normal text."""
    if isinstance(value, Decimal):
        integral = value == value.to_integral_value() and abs(value) < 2**63
        return int(value) if integral else float(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return float(value)
    if isinstance(value, dt.datetime):
        return sqlite_timestamp(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def sqlite_timestamp(value: dt.datetime) -> str:
    """``value`` as SQLite's ``strftime('%Y-%m-%d %H:%M:%f')`` writes it (UTC, rounded to the ms)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    milliseconds = (value.microsecond + 500) // 1000  # 0 … 1000: a carry moves the second on
    value = value.replace(microsecond=0) + dt.timedelta(milliseconds=milliseconds)
    return value.strftime("%Y-%m-%d %H:%M:%S") + f".{value.microsecond // 1000:03d}"
