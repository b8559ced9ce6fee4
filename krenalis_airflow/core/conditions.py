"""The filter model of a pipeline spec: conditions, nested and/or groups, and what values mean.

Which profiles a pipeline selects; ``filters.py`` compiles it to SQL. This module knows nothing
about databases: it holds the Krenalis operator set, the value counts, and the conversion of a
YAML value (always a string) to the Python value of a column's kind.
"""

from __future__ import annotations

import builtins
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from krenalis_airflow.core.model import Model

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROPERTY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Operator → how many values it takes: an exact count, or "1+" for one or more (as in Krenalis).
OPERATORS: dict[str, int | str] = {
    "is": 1,
    "is not": 1,
    "is less than": 1,
    "is less than or equal to": 1,
    "is greater than": 1,
    "is greater than or equal to": 1,
    "is between": 2,
    "is not between": 2,
    "contains": 1,
    "does not contain": 1,
    "is one of": "1+",
    "is not one of": "1+",
    "starts with": 1,
    "ends with": 1,
    "is before": 1,
    "is on or before": 1,
    "is after": 1,
    "is on or after": 1,
    "is true": 0,
    "is false": 0,
    "is empty": 0,
    "is not empty": 0,
    "is null": 0,
    "is not null": 0,
    "exists": 0,
    "does not exist": 0,
}

# A negative operator selects exactly the rows its positive operator does not (NULLs included).
NEGATIONS = {
    "is not": "is",
    "is not one of": "is one of",
    "is not between": "is between",
    "does not contain": "contains",
    "is not empty": "is empty",
    "is not null": "is null",
    "does not exist": "exists",
}
EQUALITY = frozenset({"is", "is one of"})
ORDERING = {
    "is less than": "<",
    "is less than or equal to": "<=",
    "is greater than": ">",
    "is greater than or equal to": ">=",
}
DATE_ORDERING = {"is before": "<", "is on or before": "<=", "is after": ">", "is on or after": ">="}
TEXT_MATCHING = frozenset({"contains", "starts with", "ends with"})
_COUNT_WORDS = {0: "no values", 1: "exactly one value", 2: "exactly two values"}


class Kind(StrEnum):
    """What a filter knows about a column's type; the value is how errors name it."""

    TEXT = "text"
    INTEGER = "integer"
    NUMBER = "numeric"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMP_TZ = "timestamp with time zone"
    UUID = "uuid"
    JSON = "JSON"
    OTHER = "of a type the filter passes to the database as text"


class Condition(Model):
    """``{property, operator, values}``: one test on one profile property.

    ``property`` is a column name, or a path into a JSON column (``traits.plan``).
    """

    property: str
    operator: str
    values: tuple[str, ...] = ()

    @field_validator("property")
    @classmethod
    def _property_is_a_path(cls, value: str) -> str:
        if not PROPERTY_PATH.match(value):
            raise ValueError(
                f"{value!r} is not a column name or a JSON path such as traits.plan (letters, digits and _)"
            )
        return value

    @field_validator("operator")
    @classmethod
    def _known_operator(cls, value: str) -> str:
        if value not in OPERATORS:
            allowed = ", ".join(repr(op) for op in OPERATORS)
            raise ValueError(f"unknown operator {value!r}; allowed: {allowed}")
        return value

    @field_validator("values", mode="before")
    @classmethod
    def _values_are_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            if any(v is None for v in value):
                raise ValueError("a value is null; to select missing values use the operator 'is null'")
            return [v if isinstance(v, str) else _scalar_text(v) for v in value]
        return value

    @model_validator(mode="after")
    def _value_count(self) -> Condition:
        arity = OPERATORS[self.operator]
        count = len(self.values)
        if arity == "1+" and count < 1:
            raise ValueError(f"operator {self.operator!r} takes one or more values")
        if isinstance(arity, int) and count != arity:
            raise ValueError(f"operator {self.operator!r} takes {_COUNT_WORDS[arity]}, got {count}")
        return self

    @builtins.property  # the field named "property" shadows the builtin inside this class
    def column(self) -> str:
        """The column the property reads: the first segment of its path."""
        return self.property.split(".")[0]

    @builtins.property
    def keys(self) -> tuple[str, ...]:
        """The JSON object keys after the column (empty for a plain column)."""
        return tuple(self.property.split(".")[1:])


def _condition_or_group(value: Any) -> str:
    is_group = isinstance(value, Group) or (isinstance(value, dict) and "conditions" in value)
    return "group" if is_group else "condition"


class Group(Model):
    """``{logical, conditions}``: conditions joined by and/or; groups nest."""

    logical: Literal["and", "or"] = "and"
    conditions: tuple[
        Annotated[
            Annotated[Condition, Tag("condition")] | Annotated[Group, Tag("group")],
            Discriminator(_condition_or_group),
        ],
        ...,
    ] = Field(min_length=1)

    def properties(self) -> Iterator[str]:
        """Every property the group's conditions read, nested groups included."""
        for item in self.conditions:
            yield from item.properties() if isinstance(item, Group) else (item.property,)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------
# Values: YAML strings → Python values of a column's kind (ValueError says what is wrong)

_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def parse_value(kind: Kind, text: str) -> Any:
    """The value ``text`` means for a column of ``kind``; ``ValueError`` when it means none.

    Text, JSON and other kinds keep the string. Date-times become naive UTC ``datetime``s (an
    offset is converted to UTC, no offset means UTC), except for ``TIMESTAMP_TZ`` where they are
    aware.
    """
    parser = _PARSERS.get(kind)
    return text if parser is None else parser(text)


def parse_integer(text: str) -> int:
    """A condition's value as an integer; ValueError names the bad text."""
    if not _INTEGER.match(text):
        raise ValueError(f"{_show(text)} is not a whole number")
    return int(text)


def parse_number(text: str) -> Decimal:
    """A condition's value as an exact Decimal; ValueError names the bad text."""
    if not _NUMBER.match(text):
        raise ValueError(f"{_show(text)} is not a number")
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
        raise ValueError(f"{_show(text)} is not a number") from None


def parse_boolean(text: str) -> bool:
    """A condition's ``true``/``false`` (any case); ValueError names the bad text."""
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError(f"{_show(text)} is not a boolean; use true or false") from None


def parse_date(text: str) -> dt.date:
    """A condition's YYYY-MM-DD value; ValueError names the bad text."""
    try:
        if _DATE.match(text):
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError(f"{_show(text)} is not a date (YYYY-MM-DD)")


def parse_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 date or date-time as naive UTC."""
    aware = parse_timestamp_tz(text)
    return aware.astimezone(dt.UTC).replace(tzinfo=None)


def parse_timestamp_tz(text: str) -> dt.datetime:
    """An ISO 8601 date or date-time, aware (UTC when it has no offset)."""
    try:
        if not _DATE.match(text[:10]):
            raise ValueError
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        message = "is not an ISO 8601 date or date-time such as 2024-03-01 or 2024-03-01T12:30:00"
        raise ValueError(f"{_show(text)} {message}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def parse_uuid(text: str) -> str:
    """A condition's UUID in canonical form, so comparisons ignore case and braces."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ValueError(f"{_show(text)} is not a UUID") from None


def _show(text: str) -> str:
    """The value as errors quote it: repr, cut short when long."""
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "…"


_PARSERS = {
    Kind.INTEGER: parse_integer,
    Kind.NUMBER: parse_number,
    Kind.BOOLEAN: parse_boolean,
    Kind.DATE: parse_date,
    Kind.TIMESTAMP: parse_timestamp,
    Kind.TIMESTAMP_TZ: parse_timestamp_tz,
    Kind.UUID: parse_uuid,
}
