"""``decide`` as a table: what a record needs, from its ledger entry, the index of Stripe
customers, the mode and ``full_resync``. A pure function: no Stripe, no ledger database."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from krenalis_airflow.core.ledger import LedgerEntry, field_hashes, payload_hash
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.sync import (
    NOT_SENDABLE,
    UNCHANGED,
    Decision,
    Index,
    Rejected,
    Remember,
    Skipped,
    SyncOptions,
    Write,
    decide,
)

MATCH = "ann@example.com"
SAME = Record("p1", MATCH, "Ann@example.com", {"name": "Ann", "metadata.plan": "pro"})
CHANGED = Record("p1", MATCH, "Ann@example.com", {"name": "Bea", "metadata.plan": "pro"})  # name only
OLD = SAME  # the payload the ledger entries below were recorded for

# Stripe customers, as listed: one holding OLD's payload, one whose name differs from it.
HOLDS = {"id": "cus_1", "email": MATCH, "name": "Ann", "metadata": {"plan": "pro"}}
DIFFERS = {"id": "cus_2", "email": MATCH, "name": "Someone", "metadata": {"plan": "pro"}}


def synced(*ids: str, record: Record = OLD) -> LedgerEntry:
    return LedgerEntry(record.match, ids, payload_hash(record), field_hashes(record.payload))


def rejected(error: str, *ids: str) -> LedgerEntry:
    """As ``Syncer._unsynced`` leaves it: the refused payload's hash, the last synced state kept."""
    return LedgerEntry(MATCH, ids, payload_hash(OLD), "", status="rejected", error=error)


def failed(attempts: int, *ids: str) -> LedgerEntry:
    return LedgerEntry(MATCH, ids, payload_hash(OLD), "", status="failed", attempts=attempts, error="timeout")


REMEMBERED = LedgerEntry(MATCH, ("cus_1",), "")  # create_only found it in Stripe: no payload hash
FOUND = dataclasses.replace(REMEMBERED, origin="matched")  # what create_only records when it finds one
MOVED = dataclasses.replace(synced("cus_9"), match="old@example.com")  # matching value changed since


def done(record: Record, *ids: str, origin: str = "") -> LedgerEntry:
    """The entry the ledger records once Stripe confirms ``record`` (``origin``: "created" by this
    pipeline, "matched" in Stripe, or as the ledger already had it)."""
    return LedgerEntry(record.match, ids, payload_hash(record), field_hashes(record.payload), origin=origin)


NO_INDEX = None  # not built: no record needed it
MISS: Index = {}
ONE_HOLDS: Index = {MATCH: [HOLDS]}
ONE_DIFFERS: Index = {MATCH: [DIFFERS]}
TWO: Index = {MATCH: [HOLDS, DIFFERS]}

C, U, CU = "create_only", "update_only", "create_and_update"

TWO_LISTED = (
    f"email {MATCH!r} matches 2 Stripe customers (cus_1, cus_2); "
    "set duplicate_customers: update_all to update them all"
)

# fmt: off
TABLE: list[tuple[str, LedgerEntry | None, Index | None, str, bool, Record, Decision]] = [
    # id,                                  ledger entry,             index,       mode, full,  record,  → decision
    ("unchanged",                          synced("cus_1"),          NO_INDEX,    CU,   False, SAME,    UNCHANGED),
    ("unchanged, create_only",             synced("cus_1"),          NO_INDEX,    C,    False, SAME,    UNCHANGED),
    ("rejected before, payload unchanged", rejected("bad email"),    NO_INDEX,    CU,   False, SAME,
     Rejected("rejected by Stripe", "bad email (payload unchanged since; not resent)")),
    ("not sendable before, unchanged",     rejected(f"{NOT_SENDABLE}: x"), NO_INDEX, CU, False, SAME,
     Rejected(NOT_SENDABLE, f"{NOT_SENDABLE}: x (payload unchanged since; not resent)")),
    ("rejected before, payload changed",   rejected("bad email"),    MISS,        CU,   False, CHANGED,
     Write(CHANGED, done(CHANGED, origin="created"), previous=rejected("bad email"))),
    ("given up after N failures",          failed(3),                NO_INDEX,    CU,   False, SAME,
     Rejected("given up", "failed in 3 runs in a row: timeout")),
    ("failed fewer than N: retried",       failed(2),                MISS,        CU,   False, SAME,
     Write(SAME, done(SAME, origin="created"), previous=failed(2))),
    ("failed, customer known: retried",    failed(2, "cus_1"),       NO_INDEX,    CU,   False, SAME,
     Write(SAME, done(SAME, "cus_1"), ("cus_1",), (), None, failed(2, "cus_1"))),
    ("ledger knows customer: changed units", synced("cus_1"),        NO_INDEX,    CU,   False, CHANGED,
     Write(CHANGED, done(CHANGED, "cus_1"), ("cus_1",), (), frozenset({"name"}), synced("cus_1"))),
    ("ledger knows customer, update_only", synced("cus_1"),          NO_INDEX,    U,    False, CHANGED,
     Write(CHANGED, done(CHANGED, "cus_1"), ("cus_1",), (), frozenset({"name"}), synced("cus_1"))),
    ("ledger knows customers: each",       synced("cus_1", "cus_2"), NO_INDEX,    CU,   False, CHANGED,
     Write(CHANGED, done(CHANGED, "cus_1", "cus_2"), ("cus_1", "cus_2"), (), frozenset({"name"}),
           synced("cus_1", "cus_2"))),
    ("ledger knows customer, no unit hashes: all", REMEMBERED,       NO_INDEX,    CU,   False, SAME,
     Write(SAME, done(SAME, "cus_1"), ("cus_1",), (), None, REMEMBERED)),
    ("create_only, known customer",        synced("cus_1"),          NO_INDEX,    C,    False, CHANGED,
     Skipped("exists; create_only never updates")),
    ("index miss: create",                 None,                     MISS,        CU,   False, SAME,
     Write(SAME, done(SAME, origin="created"))),
    ("index miss, create_only: create",    None,                     MISS,        C,    False, SAME,
     Write(SAME, done(SAME, origin="created"))),
    ("index miss, update_only: skip",      None,                     MISS,        U,    False, SAME,
     Skipped("no Stripe customer has this email")),
    ("matching value moved: as unknown",   MOVED,                    MISS,        CU,   False, SAME,
     Write(SAME, done(SAME, origin="created"), previous=MOVED)),
    ("several customers: reject",          None,                     TWO,         CU,   False, SAME,
     Rejected("several Stripe customers", TWO_LISTED)),
    ("several customers, update_only: reject", None,                 TWO,         U,    False, SAME,
     Rejected("several Stripe customers", TWO_LISTED)),
    ("create_only found in index: remember, skip", None,             ONE_HOLDS,   C,    False, SAME,
     Remember(FOUND, "already in Stripe; create_only never updates")),
    ("Stripe holds the payload: remember", None,                     ONE_HOLDS,   CU,   False, SAME,
     Remember(done(SAME, "cus_1", origin="matched"))),
    ("Stripe holds it, update_only",       None,                     ONE_HOLDS,   U,    False, SAME,
     Remember(done(SAME, "cus_1", origin="matched"))),
    ("Stripe differs: update those units", None,                     ONE_DIFFERS, CU,   False, SAME,
     Write(SAME, done(SAME, "cus_2", origin="matched"), ("cus_2",), (DIFFERS,), frozenset({"name"}))),
    ("full_resync, unchanged, Stripe holds it", synced("cus_1"),     ONE_HOLDS,   CU,   True,  SAME,
     Remember(done(SAME, "cus_1"))),
    ("full_resync, customer deleted: create", synced("cus_1"),       MISS,        CU,   True,  SAME,
     Write(SAME, done(SAME, origin="created"), previous=synced("cus_1"))),
    ("full_resync, rejected before: resent", rejected("bad email"), ONE_DIFFERS, CU,   True,  SAME,
     Write(SAME, done(SAME, "cus_2", origin="matched"), ("cus_2",), (DIFFERS,), frozenset({"name"}),
           rejected("bad email"))),
    ("full_resync, given up: retried",     failed(3),                MISS,        CU,   True,  SAME,
     Write(SAME, done(SAME, origin="created"), previous=failed(3))),
    ("full_resync, create_only, known",    synced("cus_1"),          ONE_HOLDS,   C,    True,  SAME,
     Remember(FOUND, "already in Stripe; create_only never updates")),
]
# fmt: on

BOTH = done(SAME, "cus_1", "cus_2", origin="matched")
DUPLICATES_UPDATE_ALL = [
    # several customers, update_all: every one, with the units any of them lacks
    (
        CU,
        Write(SAME, BOTH, BOTH.customer_ids, (HOLDS, DIFFERS), frozenset({"name"})),
    ),
    (U, Write(SAME, BOTH, BOTH.customer_ids, (HOLDS, DIFFERS), frozenset({"name"}))),
    (
        C,
        Remember(
            LedgerEntry(MATCH, ("cus_1", "cus_2"), "", origin="matched"),
            "already in Stripe; create_only never updates",
        ),
    ),
]


def options(mode: Any, full_resync: bool = False, **more: Any) -> SyncOptions:
    return SyncOptions(pipeline_id="p", mode=mode, stripe_field="email", full_resync=full_resync, **more)


@pytest.mark.parametrize(
    ("entry", "index", "mode", "full_resync", "record", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_decide(
    entry: LedgerEntry | None,
    index: Index | None,
    mode: str,
    full_resync: bool,
    record: Record,
    expected: Decision,
) -> None:
    assert decide(record, entry, index, options(mode, full_resync)) == expected


@pytest.mark.parametrize(
    ("mode", "expected"), DUPLICATES_UPDATE_ALL, ids=[m for m, _ in DUPLICATES_UPDATE_ALL]
)
def test_several_customers_update_all(mode: str, expected: Decision) -> None:
    assert decide(SAME, None, TWO, options(mode, duplicate_customers="update_all")) == expected


@pytest.mark.parametrize(
    ("attempts", "give_up_after", "gives_up"), [(1, 2, False), (2, 2, True), (5, 6, False)]
)
def test_give_up_after_counts_runs_in_a_row(attempts: int, give_up_after: int, gives_up: bool) -> None:
    decision = decide(SAME, failed(attempts), MISS, options(CU, give_up_after=give_up_after))
    assert isinstance(decision, Rejected if gives_up else Write)


def test_decide_needs_the_index_only_when_the_ledger_does_not_settle_the_record() -> None:
    with pytest.raises(AssertionError, match="index"):
        decide(SAME, None, NO_INDEX, options(CU))


def test_decide_is_pure() -> None:
    entry, index = synced("cus_1"), {MATCH: [copy.deepcopy(DIFFERS)]}
    before = (copy.deepcopy(entry), copy.deepcopy(index), copy.deepcopy(SAME.payload))
    first = decide(SAME, entry, index, options(CU, full_resync=True))
    assert first == decide(SAME, entry, index, options(CU, full_resync=True))
    assert (entry, index, SAME.payload) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.units = None  # type: ignore[misc,union-attr]


# -- verifying against a listing: reconciliation, and entries synced to another destination ------

HERE, ELSEWHERE = "acct_here", "key:0123456789abcdef0123"
LISTED = {"cus_1": HOLDS}  # every customer of the account, by id (the listing)
DRIFTED = {"cus_1": {**HOLDS, "name": "Edited in the dashboard"}}


def here(entry: LedgerEntry, destination: str = HERE) -> LedgerEntry:
    return dataclasses.replace(entry, destination=destination)


def kept(record: Record, *ids: str) -> LedgerEntry:
    return dataclasses.replace(done(record, *ids), destination=HERE)


# fmt: off
VERIFY: list[tuple[str, LedgerEntry, Index | None, dict[str, dict[str, Any]], str, bool, Record, Decision]] = [
    # id,                                   ledger entry,              index,     listing, mode, reconcile, record → decision
    ("reconcile: Stripe holds it",          here(synced("cus_1")),     MISS,      LISTED,  CU, True,  SAME,
     Remember(kept(SAME, "cus_1"))),
    ("reconcile: a field drifted",          here(synced("cus_1")),     MISS,      DRIFTED, CU, True,  SAME,
     Write(SAME, kept(SAME, "cus_1"), ("cus_1",), (DRIFTED["cus_1"],), frozenset({"name"}),
           here(synced("cus_1")), "fields")),
    ("reconcile: changed profile, not drift", here(synced("cus_1")),   MISS,      LISTED,  CU, True,  CHANGED,
     Write(CHANGED, kept(CHANGED, "cus_1"), ("cus_1",), (HOLDS,), frozenset({"name"}), here(synced("cus_1")))),
    ("reconcile: deleted, re-created",      here(synced("cus_1")),     MISS,      {},      CU, True,  SAME,
     Write(SAME, dataclasses.replace(kept(SAME), origin="created"), previous=here(synced("cus_1")),
           drift="deleted")),
    ("reconcile: deleted, update_only",     here(synced("cus_1")),     MISS,      {},      U,  True,  SAME,
     Skipped("no Stripe customer has this email (its customer was deleted in Stripe)")),
    ("reconcile: create_only never repairs", here(synced("cus_1")),    MISS,      DRIFTED, C,  True,  SAME,
     Skipped("exists; create_only never updates")),
    ("reconcile: rejected stays rejected",  here(rejected("bad email", "cus_1")), MISS, LISTED, CU, True, SAME,
     Rejected("rejected by Stripe", "bad email (payload unchanged since; not resent)")),
    ("no reconcile: trusted, unchanged",    here(synced("cus_1")),     NO_INDEX,  LISTED,  CU, False, SAME,
     UNCHANGED),
    ("other destination, same account: re-found by id", here(synced("cus_1"), ELSEWHERE), MISS, LISTED, CU, False,
     SAME, Remember(kept(SAME, "cus_1"))),
    ("other destination, fresh Stripe: create", here(synced("cus_1"), ELSEWHERE), MISS, {}, CU, False, SAME,
     Write(SAME, dataclasses.replace(kept(SAME), origin="created"), previous=here(synced("cus_1"), ELSEWHERE))),
    ("other destination, found by email",   here(synced("cus_1"), ELSEWHERE), ONE_DIFFERS, {"cus_2": DIFFERS}, CU,
     False, SAME, Write(SAME, dataclasses.replace(kept(SAME, "cus_2"), origin="matched"), ("cus_2",), (DIFFERS,),
                        frozenset({"name"}), here(synced("cus_1"), ELSEWHERE))),
    ("other destination, create_only: remembered", here(synced("cus_1"), ELSEWHERE), MISS, LISTED, C, False, SAME,
     Remember(kept(SAME, "cus_1"), "exists; create_only never updates")),
]
# fmt: on


@pytest.mark.parametrize(
    ("entry", "index", "listing", "mode", "reconcile", "record", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in VERIFY],
)
def test_decide_verifies_against_the_listing(
    entry: LedgerEntry,
    index: Index | None,
    listing: dict[str, dict[str, Any]],
    mode: str,
    reconcile: bool,
    record: Record,
    expected: Decision,
) -> None:
    settings = options(mode, destination=HERE, reconcile=reconcile)
    assert decide(record, entry, index, settings, listing) == expected


def test_reconcile_leaves_alone_units_another_pipeline_writes() -> None:
    settings = options(CU, destination=HERE, reconcile=True)
    contested = {"cus_1": frozenset({"name"})}
    decision = decide(SAME, here(synced("cus_1")), MISS, settings, DRIFTED, contested)
    assert decision == Remember(kept(SAME, "cus_1"), withheld=frozenset({"name"}))
    # a unit nobody else writes is still set back
    both = {"cus_1": {**DRIFTED["cus_1"], "metadata": {"plan": "free"}}}
    decision = decide(SAME, here(synced("cus_1")), MISS, settings, both, contested)
    assert isinstance(decision, Write)
    assert (decision.units, decision.withheld, decision.drift) == (
        frozenset({"metadata.plan"}),
        frozenset({"name"}),
        "fields",
    )
