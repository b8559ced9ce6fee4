"""Flat payloads to Stripe params, held to Stripe's published contract (no Stripe needed)."""

from __future__ import annotations

from typing import Any

import pytest

from krenalis_airflow.core.fields import (
    GROUPS,
    SCALAR_FIELDS,
    contract_problems,
    holds,
    needs_current,
    to_params,
    unit_of,
    update_payload,
)
from krenalis_airflow.core.stripe_api import LIST_FIELDS
from krenalis_airflow.exceptions import UnsendablePayload

SHIPPING = {"shipping.name": "Ada", "shipping.address.line1": "1 Via Roma", "shipping.address.city": "Rome"}


def test_every_writable_field_is_read_back_from_stripe() -> None:
    """What is compared on lookup (full_resync, first sync) must cover all a pipeline writes."""
    assert {unit_of(path) for path in SCALAR_FIELDS} | {"metadata"} <= set(LIST_FIELDS)


@pytest.mark.parametrize("cleared", [None, []])
def test_locales_cannot_be_cleared_on_update_and_are_omitted_on_create(cleared: Any) -> None:
    payload = {"name": "Ada", "preferred_locales": cleared}
    assert to_params(payload, creating=True) == {"name": "Ada"}
    with pytest.raises(UnsendablePayload, match="cannot clear preferred locales"):
        to_params(payload, creating=False)
    assert to_params({"preferred_locales": ["en"]}, creating=False) == {"preferred_locales": ["en"]}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({**SHIPPING, "shipping.name": None}, "shipping.name: Stripe requires"),
        ({"shipping.name": "Ada", "shipping.phone": "+39"}, "shipping.address: Stripe requires"),
        ({"shipping.name": "Ada", "shipping.address.line1": None}, "shipping.address: Stripe requires"),
        ({"shipping.phone": "+39"}, "shipping.name: Stripe requires"),
    ],
)
def test_a_shipping_hash_needs_name_and_address_on_create_and_update(payload: dict, problem: str) -> None:
    for creating in (True, False):
        with pytest.raises(UnsendablePayload, match=problem):
            to_params(payload, creating=creating)


def test_shipping_cleared_whole_or_complete_is_sendable() -> None:
    assert to_params(dict.fromkeys(SHIPPING), creating=False) == {"shipping": ""}
    assert to_params(SHIPPING, creating=True) == {
        "shipping": {"name": "Ada", "address": {"line1": "1 Via Roma", "city": "Rome"}}
    }
    with_cleared_part = to_params({**SHIPPING, "shipping.address.city": None}, creating=False)
    assert with_cleared_part["shipping"]["address"] == {"line1": "1 Via Roma", "city": ""}


def test_contract_problems_of_params_themselves() -> None:
    assert contract_problems({"preferred_locales": ["it"], "shipping": "", "address": ""}) == []
    assert len(contract_problems({"preferred_locales": "", "shipping": {"address": {}}})) == 3


def test_update_payload_completes_hashes_and_leaves_out_locales_stripe_does_not_hold() -> None:
    current = {"shipping": {"name": "Ada", "address": {"line1": "1 Via Roma", "city": "Rome"}}}
    payload = {"shipping.address.city": "Milan", "preferred_locales": None}
    assert needs_current(payload) and not needs_current({"name": "x", "preferred_locales": ["it"]})
    assert update_payload(payload, current) == {
        "shipping.address.city": "Milan",
        "shipping.name": "Ada",
        "shipping.address.line1": "1 Via Roma",
    }
    assert update_payload({"preferred_locales": []}, {"preferred_locales": []}) == {}
    assert update_payload({"preferred_locales": []}, {"preferred_locales": ["it"]}) == {
        "preferred_locales": []
    }


@pytest.mark.parametrize(
    ("customer", "path", "desired", "held"),
    [
        ({"tax_exempt": "none"}, "tax_exempt", None, True),  # Stripe's way of saying "unset"
        ({"tax_exempt": "exempt"}, "tax_exempt", None, False),
        ({"tax_exempt": "none"}, "tax_exempt", "none", True),
        ({"tax_exempt": "none"}, "tax_exempt", "reverse", False),
        ({"preferred_locales": []}, "preferred_locales", None, True),
        ({"address": {"city": "Rome"}}, "address.city", "Rome", True),
        ({"metadata": {}}, "metadata.plan", None, True),
    ],
)
def test_holds(customer: dict, path: str, desired: Any, held: bool) -> None:
    assert holds(customer, path, desired) is held


def test_groups_cover_every_nested_field() -> None:
    nested = {path for path in SCALAR_FIELDS if "." in path}
    assert nested == {path for parts in GROUPS.values() for path in parts}
