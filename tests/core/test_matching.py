"""The matching rules (core/matching.py): normalisation, matchable fields, modes, what a create writes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from krenalis_airflow.core.matching import (
    MATCHABLE,
    mapping_problem,
    matching_problem,
    mode_problem,
    normalise_match,
    written_field,
)
from krenalis_airflow.core.spec import parse_spec
from krenalis_airflow.core.transform.base import PerRecord
from krenalis_airflow.core.transform.run import TransformSettings, transform_profiles
from krenalis_airflow.exceptions import SpecError

MODES = ("create_only", "update_only", "create_and_update")

# --------------------------------------------------------------------------------------------
# normalise_match


@pytest.mark.parametrize(
    ("stripe_field", "value", "expected"),
    [
        ("email", "Ada@Example.com", "ada@example.com"),
        ("email", "  ada@example.com\t", "ada@example.com"),
        ("email", " ADA@EXAMPLE.COM ", "ada@example.com"),
        ("id", " cus_ABC ", "cus_ABC"),  # ids keep their case
        ("metadata.crm_id", " CRM-7 ", "CRM-7"),
        ("metadata.crm_id", "Crm-7", "Crm-7"),
        ("metadata.crm_id", 42, "42"),
        ("metadata.crm_id", True, "true"),
        ("metadata.crm_id", 3.0, "3"),
        ("metadata.crm_id", Decimal("12.50"), "12.50"),
        (
            "metadata.crm_id",
            UUID("12345678-1234-5678-1234-567812345678"),
            "12345678-1234-5678-1234-567812345678",
        ),
        ("metadata.signup", date(2024, 1, 31), "2024-01-31"),
        ("email", "", ""),
    ],
)
def test_normalise_match(stripe_field: str, value: Any, expected: str) -> None:
    assert normalise_match(stripe_field, value) == expected


class _Echo(PerRecord):
    def __call__(self, profile: Any) -> dict[str, Any]:
        return {"name": "x"}


@pytest.mark.parametrize("value", ["  Ada@Example.COM ", "ada@example.com", "Ünï@Example.com ", "A@B.CO"])
@pytest.mark.parametrize("stripe_field", ["email", "metadata.crm_id"])
def test_the_transform_steps_inlined_normalisation_agrees_with_normalise_match(
    stripe_field: str, value: str
) -> None:
    settings = TransformSettings("id", "m", stripe_field, "create_and_update", "mapping")
    [record] = transform_profiles([{"id": "1", "m": value}], _Echo(), settings)
    assert record.match == normalise_match(stripe_field, value)  # type: ignore[union-attr]
    assert record.match_value == value.strip()  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# matching_problem: which Stripe fields can be matched on


@pytest.mark.parametrize("field", ["email", "id", "metadata.crm_id", "metadata.a b", "metadata." + "k" * 40])
def test_matchable_fields(field: str) -> None:
    assert matching_problem(field) is None


@pytest.mark.parametrize(
    "field", ["name", "phone", "Email", "address.city", "metadata.", "metadata.a]", "metadata." + "k" * 41]
)
def test_other_fields_cannot_be_matched_on(field: str) -> None:
    assert matching_problem(field) == f"cannot match on {field!r}; allowed: email, id, metadata.<key>"


def test_matchable_lists_what_the_message_allows() -> None:
    assert MATCHABLE == ("email", "id", "metadata.<key>")


# --------------------------------------------------------------------------------------------
# mode_problem: which modes a matched field allows


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", ["email", "metadata.crm_id"])
def test_email_and_metadata_match_in_every_mode(field: str, mode: str) -> None:
    assert mode_problem(field, mode) is None


def test_id_matches_only_under_update_only() -> None:
    assert mode_problem("id", "update_only") is None
    for mode in ("create_only", "create_and_update"):
        assert mode_problem("id", mode) == (
            "matching on Stripe 'id' only works with mode: update_only (ids cannot be created)"
        )


# --------------------------------------------------------------------------------------------
# mapping_problem: the mapping must not write the matched field


def test_a_mapping_must_not_write_the_matched_field() -> None:
    assert mapping_problem("email", {"email": "mail", "name": "n"}, "mail") == (
        "transformation.mapping writes 'email', the matched Stripe field; it is set from 'mail' "
        "automatically — remove it from the mapping"
    )
    assert mapping_problem("metadata.crm_id", ["metadata.crm_id"], "crm") is not None


def test_a_mapping_may_write_other_fields_and_id_is_never_written() -> None:
    assert mapping_problem("email", {"name": "n"}, "mail") is None
    assert mapping_problem("metadata.crm_id", {"metadata.plan": "p"}, "crm") is None
    assert mapping_problem("id", {"id": "x"}, "stripe_id") is None  # not writable; fields.py says why


# --------------------------------------------------------------------------------------------
# written_field: what a create writes besides the payload


@pytest.mark.parametrize(
    ("field", "mode", "expected"),
    [
        ("email", "create_only", "email"),
        ("email", "create_and_update", "email"),
        ("email", "update_only", None),
        ("metadata.crm_id", "create_and_update", "metadata.crm_id"),
        ("metadata.crm_id", "update_only", None),
        ("id", "update_only", None),
        ("id", "create_and_update", None),  # not allowed by the spec, and never written anyway
    ],
)
def test_written_field(field: str, mode: str, expected: str | None) -> None:
    assert written_field(field, mode) == expected


# --------------------------------------------------------------------------------------------
# the spec applies these rules


def _spec(mode: str, stripe: str, mapping: str = "name: name") -> str:
    return f"""
id: p
source: {{conn_id: w, table: customers, key: id}}
export:
  mode: {mode}
  matching: {{property: m, stripe: {stripe!r}}}
transformation:
  mapping:
    {mapping}
"""


def test_the_spec_reports_the_mode_rule_at_matching_stripe() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec("create_only", "id"))
    [problem] = caught.value.problems
    assert problem.path == "export.matching.stripe"
    assert problem.message == mode_problem("id", "create_only")


def test_the_spec_reports_the_mapping_rule_at_the_mapped_field() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec("create_and_update", "email", "email: m"))
    [problem] = caught.value.problems
    assert problem.path == "transformation.mapping.email"
    assert problem.message == mapping_problem("email", ["email"], "m")


def test_the_spec_reports_an_unmatchable_field() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec("create_and_update", "name"))
    [problem] = caught.value.problems
    assert problem.path == "export.matching.stripe"
    assert problem.message == matching_problem("name")
