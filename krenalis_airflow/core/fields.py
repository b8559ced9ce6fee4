"""The Stripe customer fields a pipeline may write, and how flat payloads become API params.

A transformation produces a *flat payload*: ``{"name": "Ada", "address.country": "IT",
"metadata.plan": "pro"}``. ``None`` means "clear this field" (or "delete this metadata key");
a path the payload does not contain is left untouched in Stripe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from krenalis_airflow.exceptions import UnsendablePayload

ADDRESS_PARTS = ("line1", "line2", "city", "state", "postal_code", "country")

# The writable customer fields a profile sync can own. Left out on purpose: ``balance`` (Stripe
# moves it with every invoice; overwriting it from a warehouse would erase credits and debts),
# ``invoice_prefix`` (Stripe generates one per customer, and null has no value to reset it to),
# ``invoice_settings.*`` (its hash also holds ``default_payment_method``: not worth risking
# payments on how Stripe merges it), payment sources and test clocks. ``tax_exempt`` (none |
# exempt | reverse) is a per-customer tax fact warehouses often hold; null resets it, and Stripe
# then reports ``none``.
SCALAR_FIELDS = frozenset(
    {"name", "email", "phone", "description", "preferred_locales", "tax_exempt"}
    | {f"address.{part}" for part in ADDRESS_PARTS}
    | {"shipping.name", "shipping.phone"}
    | {f"shipping.address.{part}" for part in ADDRESS_PARTS}
)
METADATA_PREFIX = "metadata."
LOCALES = "preferred_locales"
METADATA_KEY = re.compile(r"^[^\[\]]{1,40}$")


def field_problem(path: str) -> str | None:
    """Return why ``path`` is not a writable customer field, or None when it is."""
    if path in SCALAR_FIELDS:
        return None
    if path.startswith(METADATA_PREFIX):
        key = path[len(METADATA_PREFIX) :]
        if METADATA_KEY.match(key):
            return None
        return "a metadata key has 1 to 40 characters and no '[' or ']'"
    allowed = ", ".join(sorted(SCALAR_FIELDS)) + ", metadata.<key>"
    return f"unknown Stripe customer field {path!r}; allowed: {allowed}"


def unit_of(path: str) -> str:
    """The unit a path is written in: a top-level param (``address`` for ``address.city``), or one
    metadata key. Updates send whole units, so a changed unit is the smallest thing sent."""
    return path if path.startswith(METADATA_PREFIX) else path.split(".", 1)[0]


def to_params(payload: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """Turn a flat payload into nested Stripe params that Stripe's published contract accepts.

    On create, ``None`` values (and an empty ``preferred_locales``) are simply omitted. On
    update, ``None`` becomes ``""``, which is how the Stripe API unsets a field or deletes a
    metadata key; an address or shipping hash whose every part is cleared is sent as ``""``
    whole. What no request can express raises ``UnsendablePayload`` (see ``contract_problems``).
    """
    params: dict[str, Any] = {}
    for path, value in payload.items():
        if value is None or (path == LOCALES and not value):
            if creating:
                continue
            value = ""
        node = params
        *parents, leaf = path.split(".", 1) if path.startswith(METADATA_PREFIX) else path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for group in GROUPS:
        if group in params and _all_cleared(params[group]):
            params[group] = ""
    if problems := contract_problems(params):
        raise UnsendablePayload("; ".join(problems))
    return params


def contract_problems(params: Mapping[str, Any]) -> list[str]:
    """Why Stripe would refuse ``params`` (create or update), as the fix a person can make.

    From the customer endpoints' parameters in Stripe's OpenAPI description (and the
    ``CustomerCreateParams``/``CustomerUpdateParams`` that stripe-python generates from it):

    * ``preferred_locales`` is a list of strings with no ``""`` to unset it, and an empty list
      is encoded as no parameter at all: once set, locales can be replaced, never cleared.
    * ``shipping``, sent as a hash, requires ``name`` (``""`` cannot unset it) and ``address``;
      ``shipping=""`` removes it whole.
    """
    problems = []
    if params.get(LOCALES) == "":
        problems.append(
            f"{LOCALES}: Stripe's API cannot clear preferred locales once set (it takes a non-empty "
            "list and has no empty value to unset it); write at least one locale, or leave "
            f"{LOCALES} out of the transformation"
        )
    shipping = params.get("shipping")
    if isinstance(shipping, dict):
        if not shipping.get("name"):
            problems.append(
                "shipping.name: Stripe requires a shipping name whenever shipping is set; write "
                "one, or clear every shipping field to remove shipping"
            )
        address = shipping.get("address")
        if not (isinstance(address, dict) and any(address.values())):
            problems.append(
                "shipping.address: Stripe requires a shipping address whenever shipping is set; "
                "write at least one shipping.address field, or clear every shipping field to remove "
                "shipping"
            )
    return problems


def _all_cleared(node: Any) -> bool:
    if isinstance(node, dict):
        return all(_all_cleared(value) for value in node.values())
    return node == ""


def read_path(customer: Mapping[str, Any], path: str) -> Any:
    """Read a flat path (``address.city``, ``metadata.plan``) from a customer dict."""
    if path.startswith(METADATA_PREFIX):
        return (customer.get("metadata") or {}).get(path[len(METADATA_PREFIX) :])
    node: Any = customer
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def same_value(desired: Any, actual: Any) -> bool:
    """Whether Stripe already holds ``desired``; Stripe reports an unset field as null or ""."""
    if desired in (None, "", []) and actual in (None, "", []):
        return True
    return bool(desired == actual)


def holds(customer: Mapping[str, Any], path: str, desired: Any) -> bool:
    """Whether ``customer`` (as Stripe returned it) already holds ``desired`` at ``path``.

    ``tax_exempt`` unset is reported by Stripe as ``"none"``, which is what clearing it gives.
    """
    actual = read_path(customer, path)
    if path == "tax_exempt" and desired is None:
        return actual in (None, "", "none")
    return same_value(desired, actual)


def needs_current(payload: Mapping[str, Any]) -> bool:
    """Whether an update of ``payload`` needs the customer's current values first: a partly
    written hash is completed from them (see ``complete_groups``), and clearing
    ``preferred_locales`` can only be done where Stripe holds none already."""
    return bool(partial_groups(payload)) or (LOCALES in payload and not payload[LOCALES])


def update_payload(payload: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """What an update of ``payload`` must send to a customer whose current values are ``current``:
    partly written hashes completed, and what Stripe already holds that no request could write
    (cleared locales where there are none) left out. Empty when there is nothing to send."""
    completed = complete_groups(payload, current)
    if LOCALES in completed and holds(current, LOCALES, completed[LOCALES]):
        del completed[LOCALES]
    return completed


# Stripe replaces a nested hash (address, shipping) whole on update: parts not sent are wiped.
# A payload that writes only some parts is completed from the customer's current values, so
# that parts the pipeline does not write stay untouched.
GROUPS = {
    "address": tuple(f"address.{part}" for part in ADDRESS_PARTS),
    "shipping": ("shipping.name", "shipping.phone", *(f"shipping.address.{part}" for part in ADDRESS_PARTS)),
}


def partial_groups(payload: Mapping[str, Any]) -> list[str]:
    """The nested hashes the payload writes only in part."""
    return [
        group
        for group, parts in GROUPS.items()
        if any(p in payload for p in parts) and not all(p in payload for p in parts)
    ]


def complete_groups(payload: Mapping[str, Any], customer: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` plus the current values of the parts it leaves out of partially written hashes."""
    completed = dict(payload)
    for group in partial_groups(payload):
        for path in GROUPS[group]:
            if path not in completed and (current := read_path(customer, path)) not in (None, ""):
                completed[path] = current
    return completed
