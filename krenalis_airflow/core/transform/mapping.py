"""The mapping transformation: Stripe field path → Jinja2 expression over the profile.

Expressions run in an ``ImmutableSandboxedEnvironment`` (no attribute tricks, no mutation) with
``StrictUndefined`` so a typo fails loudly instead of writing an empty string to Stripe. They
are compiled once per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from krenalis_airflow.core.transform.base import PerRecord
from krenalis_airflow.exceptions import TransformError

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined)


def syntax_problems(mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(field, message)`` for every expression that does not parse."""
    problems = []
    for field, expression in mapping.items():
        if not isinstance(expression, str) or not expression.strip():
            problems.append((field, "the expression is empty; write e.g. first_name ~ ' ' ~ last_name"))
            continue
        try:
            _ENV.compile_expression(expression)
        except TemplateSyntaxError as exc:
            problems.append((field, f"invalid Jinja2 expression {expression!r}: {exc.message}"))
    return problems


def variables(mapping: Mapping[str, str]) -> dict[str, set[str]]:
    """The profile properties each field's expression reads."""
    return {
        field: meta.find_undeclared_variables(_ENV.parse("{{ " + expression + " }}"))
        for field, expression in mapping.items()
    }


class MappingTransform(PerRecord):
    """Turns one profile into a flat payload ``{field path: value}``."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._compiled = [
            (field, _ENV.compile_expression(expression, undefined_to_none=False))
            for field, expression in mapping.items()
        ]

    def __call__(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for field, expression in self._compiled:
            try:
                payload[field] = value = expression(**profile)
                if isinstance(value, Undefined):  # a bare missing name or unsafe attribute
                    value._fail_with_undefined_error()
            except Exception as exc:  # any failure of a user expression rejects the profile
                raise TransformError(f"{field}: {type(exc).__name__}: {exc}") from exc
        return payload
