"""Duplicate profiles: several selected profiles share one matching value.

Two streaming passes over the records; only the matching values are held in memory.
``reject`` rejects every profile of a duplicated value (naming the others); ``keep_first``
keeps the first one in extraction order, which is ``export.order_by`` (default: key ascending).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal

from krenalis_airflow.core.records import Record, Rejection

STEP = "dedupe"
KIND = "duplicate profile"
SHOWN = 5  # how many other keys a rejection names


def dedupe(
    records: Callable[[], Iterable[Record]], policy: Literal["reject", "keep_first"], stripe_field: str
) -> Iterator[Record | Rejection]:
    """Yield each record, or a Rejection for the duplicates. ``records`` is called twice."""
    first: dict[str, str] = {}
    others: dict[str, list[str]] = {}
    for record in records():
        if record.match in first:
            others.setdefault(record.match, []).append(record.key)
        else:
            first[record.match] = record.key
    for record in records():
        if record.match not in others:
            yield record
        elif policy == "keep_first" and first[record.match] == record.key:
            yield record
        elif policy == "keep_first":
            reason = f"{stripe_field} {record.match!r} is also on profile {first[record.match]}, kept first"
            yield Rejection(record.key, STEP, KIND, reason)
        else:
            keys = [first[record.match], *others[record.match]]
            shared = [k for k in keys if k != record.key]
            listed = ", ".join(shared[:SHOWN]) + (
                f" and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
            )
            reason = f"{stripe_field} {record.match!r} is shared with profile(s) {listed}"
            reason += " (duplicate_profiles: reject)"
            yield Rejection(record.key, STEP, KIND, reason)
