"""Duplicate profiles: several selected profiles share one matching value.

Streaming passes over the records, holding one integer per record:

1. the 64-bit hash of every matching value, sorted to find the hashes seen twice (*suspects*);
2. ``reject`` only: for the records with a suspect hash, their exact matching values and keys
   (a hash collision is told apart here, so it never makes a false duplicate);
3. the records again, each kept, rejected or skipped (``Duplicates.verdict``, called in file order).

``keep_first`` needs no second pass: in the last one, the first record of a suspect value is
kept and remembered, and the later ones are skipped naming it. ``reject`` must know every
profile of a value before the first one goes out, hence its second pass.

The passes need only each record's key and matching value (``find_duplicates``); the dedupe
step reads just those two from each line and copies the lines it keeps unchanged.

``reject`` rejects every profile of a duplicated value (naming the others): a problem in the data,
counted against ``export.max_rejected``. ``keep_first`` keeps the first one in extraction order,
which is ``export.order_by`` (default: key ascending), and *skips* the others: the user's rule
at work, counted by reason (``KEPT_FIRST``) and never written as a rejection.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import IO, Literal, Protocol, TypeVar

from krenalis_airflow.core.records import JsonlWriter, Keys, LeftOut, Rejection, Skip, read_keyed_lines

STEP = "dedupe"
KIND = "duplicate profile"  # the rejection kind (reject)
KEPT_FIRST = "duplicate profile; keep_first kept another"  # the skip reason (keep_first)
SHOWN = 5  # how many other keys a rejection names
MASK = (1 << 64) - 1

Policy = Literal["reject", "keep_first"]


class Keyed(Protocol):
    """What deduplication reads of a record: its key and its matching value."""

    @property
    def key(self) -> str:
        """The profile key, named in rejections."""

    @property
    def match(self) -> str:
        """The matching value; records sharing it are duplicates."""


K = TypeVar("K", bound=Keyed)


class Duplicates:
    """The verdict on each record of the last pass; ``verdict`` must be called once per record,
    in file order (``keep_first`` remembers the first record of each suspect value as it goes)."""

    def __init__(
        self, suspects: set[int], groups: dict[str, list[str]], policy: Policy, stripe_field: str
    ) -> None:
        self.suspects = suspects
        self.groups = groups  # reject: every key of each shared value
        self.first: dict[str, str] = {}  # keep_first: the key kept for each suspect value seen
        self.policy = policy
        self.stripe_field = stripe_field

    def verdict(self, key: str, match: str) -> Rejection | Skip | None:
        """None when the record is kept; else why it is not."""
        if not self.suspects or hash(match) & MASK not in self.suspects:
            return None
        if self.policy == "keep_first":
            first = self.first.setdefault(match, key)
            if first == key:
                return None
            detail = f"{self.stripe_field} {match!r} is also on profile {first}, kept first"
            return Skip(key, STEP, KEPT_FIRST, detail)
        keys = self.groups.get(match, ())
        if len(keys) <= 1:
            return None
        shared = [k for k in keys if k != key]
        listed = ", ".join(shared[:SHOWN]) + (
            f" and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
        )
        reason = f"{self.stripe_field} {match!r} is shared with profile(s) {listed}"
        return Rejection(key, STEP, KIND, reason + " (duplicate_profiles: reject)")


def find_duplicates(records: Callable[[], Iterable[Keyed]], policy: Policy, stripe_field: str) -> Duplicates:
    """Pass 1, and pass 2 when the policy is ``reject`` and some hash repeats."""
    suspects = _repeated_hashes(records())
    groups: dict[str, list[str]] = {}
    if suspects and policy == "reject":
        for record in records():
            if hash(record.match) & MASK in suspects:
                groups.setdefault(record.match, []).append(record.key)
    return Duplicates(suspects, groups, policy, stripe_field)


def dedupe(
    records: Callable[[], Iterable[K]], policy: Policy, stripe_field: str
) -> Iterator[K | Rejection | Skip]:
    """Yield each record, or a Rejection (``reject``) or Skip (``keep_first``) for the duplicates.
    ``records`` is called three times with ``reject`` and some hash repeated, else twice."""
    duplicates = find_duplicates(records, policy, stripe_field)
    for record in records():
        yield duplicates.verdict(record.key, record.match) or record


def dedupe_file(
    open_records: Callable[[], AbstractContextManager[IO[str]]],
    kept: IO[str],
    rejected: IO[str],
    policy: Policy,
    stripe_field: str,
) -> tuple[int, LeftOut]:
    """The dedupe step over JSONL files: the records kept, and what was left out (rejections are
    written to ``rejected``; skips are only counted).

    Only the key and the matching value of each line are decoded; kept lines are copied as
    they are. ``open_records`` opens the records file (two or three times, as ``dedupe``).
    """

    def keys() -> Iterator[Keys]:
        with open_records() as stream:
            for found, _line in read_keyed_lines(stream):
                yield found

    duplicates = find_duplicates(keys, policy, stripe_field)
    left = LeftOut()
    with open_records() as stream, JsonlWriter(kept) as ok, JsonlWriter(rejected) as bad:
        for found, line in read_keyed_lines(stream):
            verdict = duplicates.verdict(found.key, found.match)
            if verdict is None:
                ok.write_line(line)
            else:
                left.leave_out(verdict, bad)
    return ok.count, left


def _repeated_hashes(records: Iterable[Keyed]) -> set[int]:
    """The hashes of matching values seen more than once (a sorted list of ints: ~40 MB at 1M)."""
    ordered = sorted(hash(record.match) & MASK for record in records)
    return {a for a, b in itertools.pairwise(ordered) if a == b}
