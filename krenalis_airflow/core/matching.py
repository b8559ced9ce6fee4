"""The matching rules: how a profile finds its Stripe customer, in one place.

* Which Stripe fields can be matched on (``matching_problem``): ``email``, ``id`` or one
  ``metadata.<key>``.
* Which modes a matched field allows (``mode_problem``): an id cannot be created, so matching on
  ``id`` needs ``update_only``.
* How a matching value is compared (``normalise_match``): trimmed, and emails case-insensitive.
* What a create writes besides the payload (``written_field``): the matched field itself.

``fields.py`` keeps the table of writable customer fields these rules are checked against.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from krenalis_airflow.core.fields import METADATA_PREFIX, field_problem
from krenalis_airflow.core.transform.validate import stripe_text

Mode = Literal["create_only", "update_only", "create_and_update"]

MATCHABLE = ("email", "id", "metadata.<key>")


def matching_problem(stripe_field: str) -> str | None:
    """Return why ``stripe_field`` cannot be used for matching, or None."""
    if stripe_field in ("email", "id"):
        return None
    if stripe_field.startswith(METADATA_PREFIX) and field_problem(stripe_field) is None:
        return None
    return f"cannot match on {stripe_field!r}; allowed: {', '.join(MATCHABLE)}"


def mode_problem(stripe_field: str, mode: str) -> str | None:
    """Return why ``mode`` cannot be used when matching on ``stripe_field``, or None."""
    if stripe_field == "id" and mode != "update_only":
        return "matching on Stripe 'id' only works with mode: update_only (ids cannot be created)"
    return None


def mapping_problem(stripe_field: str, written: Collection[str], matching_property: str) -> str | None:
    """Return why a mapping that writes the fields ``written`` cannot match on ``stripe_field``.

    A create writes the matched field from the matching property (``written_field``), so the
    mapping must not write it too. None when there is no problem.
    """
    if stripe_field != "id" and stripe_field in written:
        return (
            f"transformation.mapping writes {stripe_field!r}, the matched Stripe field; it is set "
            f"from '{matching_property}' automatically — remove it from the mapping"
        )
    return None


def normalise_match(stripe_field: str, value: Any) -> str:
    """The comparable form of a matching value.

    Surrounding spaces never count (the value written on create is trimmed too, so a trimmed
    and an untrimmed profile value must find the same customer); emails also ignore case.

    The transform step inlines this for string values (``run._finish``, per record): a change
    here must be made there too.
    """
    text = (value if isinstance(value, str) else stripe_text(value)).strip()
    return text.lower() if stripe_field == "email" else text


def written_field(stripe_field: str, mode: str) -> str | None:
    """The matched field, which a create writes too; None when this export never creates
    (``update_only``) or the field cannot be written (``id``)."""
    if stripe_field == "id" or mode == "update_only":
        return None
    return stripe_field
