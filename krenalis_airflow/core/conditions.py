"""The filter model of a pipeline spec: conditions and nested and/or groups.

Which profiles a pipeline selects; ``filters.py`` compiles it to SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from krenalis_airflow.core.model import Model

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Operator → how many values it takes: an exact count, or "1+" for one or more.
OPERATORS: dict[str, int | str] = {
    "is": 1,
    "is not": 1,
    "is one of": "1+",
    "is not one of": "1+",
    "is less than": 1,
    "is less than or equal to": 1,
    "is greater than": 1,
    "is greater than or equal to": 1,
    "is null": 0,
    "is not null": 0,
    "is true": 0,
    "is false": 0,
}


class Condition(Model):
    """``{property, operator, values}``: one test on one profile property."""

    property: str
    operator: str
    values: tuple[str, ...] = ()

    @field_validator("property")
    @classmethod
    def _property_is_identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not a column name (letters, digits and _)")
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
            wanted = {0: "no values", 1: "exactly one value"}.get(arity, f"{arity} values")
            raise ValueError(f"operator {self.operator!r} takes {wanted}, got {count}")
        return self


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
        for item in self.conditions:
            yield from item.properties() if isinstance(item, Group) else (item.property,)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
