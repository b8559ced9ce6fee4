"""Duplicate profiles: several selected profiles share one matching value.

Three streaming passes over the records, holding one integer per record:

1. the 64-bit hash of every matching value, sorted to find the hashes seen twice;
2. for the records with such a hash only, their exact matching values and keys (a hash collision
   is told apart here, so it never makes a false duplicate);
3. the records again, each yielded or rejected.

``reject`` rejects every profile of a duplicated value (naming the others); ``keep_first`` keeps
the first one in extraction order, which is ``export.order_by`` (default: key ascending).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

from krenalis_airflow.core.records import Record, Rejection

STEP = "dedupe"
KIND = "duplicate profile"
SHOWN = 5  # how many other keys a rejection names
MASK = (1 << 64) - 1


def dedupe(
    records: Callable[[], Iterable[Record]], policy: Literal["reject", "keep_first"], stripe_field: str
) -> Iterator[Record | Rejection]:
    """Yield each record, or a Rejection for the duplicates. ``records`` is called three times."""
    suspects = _repeated_hashes(records())
    groups: dict[str, list[str]] = {}
    if suspects:
        for record in records():
            if hash(record.match) & MASK in suspects:
                groups.setdefault(record.match, []).append(record.key)
    for record in records():
        keys = groups.get(record.match)
        if keys is None or len(keys) == 1:
            yield record
        elif policy == "keep_first" and keys[0] == record.key:
            yield record
        elif policy == "keep_first":
            reason = f"{stripe_field} {record.match!r} is also on profile {keys[0]}, kept first"
            yield Rejection(record.key, STEP, KIND, reason)
        else:
            shared = [k for k in keys if k != record.key]
            listed = ", ".join(shared[:SHOWN]) + (
                f" and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
            )
            reason = f"{stripe_field} {record.match!r} is shared with profile(s) {listed}"
            reason += " (duplicate_profiles: reject)"
            yield Rejection(record.key, STEP, KIND, reason)


def _repeated_hashes(records: Iterable[Record]) -> set[int]:
    """The hashes of matching values seen more than once (a sorted list of ints: ~40 MB at 1M)."""
    ordered = sorted(hash(record.match) & MASK for record in records)
    return {a for a, b in itertools.pairwise(ordered) if a == b}
