"""The upsert engine: decide per record what Stripe needs, write only that, record what Stripe confirmed.

A run goes **decide → write → stage/checkpoint**:

1. *Decide* (``decide``, a pure function of the record, its ledger entry, the index of Stripe
   customers and the options) returns a ``Decision``: ``Unchanged``, ``Skipped`` (with the
   reason), ``Rejected`` (kind, reason), ``Remember`` (a ledger entry to stage, nothing to send)
   or ``Write`` (a create, or an update of these units of these customers). Per record, in
   order of cost:

   a. The ledger has this profile with the same matching value and the same payload hash →
      *unchanged*, no API call (unless ``full_resync``). The same holds for a payload Stripe
      rejected (reported again, not resent) and for one that failed in ``give_up_after`` runs.
   b. The ledger knows its customer(s) but the payload changed → *update* the units that changed.
   c. Otherwise look the matching value up in an index of every Stripe customer (built once,
      only when some record needs it, with ``limit=100`` pages; or, matching by id, from one
      retrieve per such record, and matching by email or metadata, from the value index the last
      whole listing recorded and the events since, when that costs fewer reads: ``Syncer._look_up``,
      ``Syncer._recorded_index``) → create, update, or nothing to do when Stripe already holds the
      payload.

2. *Write*: the ``Syncer`` applies the decisions in order, counting their outcomes; writes run
   concurrently in a small thread pool.
3. *Stage and checkpoint*: the writer alone stages ledger entries, from the calling thread and
   only for what Stripe confirmed (or refused, or what a decision remembers), and writes them to
   the ledger every ``checkpoint_every`` entries and whenever the run stops early.

Creates carry an idempotency key derived from the pipeline, profile, payload and the customer
the ledger last knew, so a create retried after a crash returns the customer already created,
while a deliberate re-create (``full_resync`` after the customer was deleted) gets a fresh key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from krenalis_airflow.core.destination import ValueListing
from krenalis_airflow.core.fields import (
    holds,
    needs_current,
    read_path,
    to_params,
    unit_of,
    update_payload,
)
from krenalis_airflow.core.leave import left_marker
from krenalis_airflow.core.ledger import (
    Checkpoints,
    LedgerEntry,
    field_hashes,
    key_digest,
    payload_hash,
    state_digest,
)
from krenalis_airflow.core.matching import normalise_match
from krenalis_airflow.core.records import Record, Rejection
from krenalis_airflow.exceptions import (
    RecordRejected,
    RetryableSyncError,
    TerminalSyncError,
    UnsendablePayload,
)

log = logging.getLogger(__name__)
STEP = "upsert"
NOT_SENDABLE = "not sendable"  # the rejection kind of a payload no valid request can express
SAMPLES = 5
LEDGER_BATCH = 500  # records whose ledger entries are fetched in one query
# Matching by id, up to this many misses are looked up one call each (a missing or deleted id
# is simply not found); past it, one listing of 100 customers a call is the cheaper bet. At
# this size the lookups cost no more than listing an account of 10,000 customers. Once a
# listing has counted the destination's customers, the limit is that listing's pages.
ID_LOOKUPS = 100
# A listing keeps only the customers the run's misses need (memory follows the misses, not the
# account); past this many misses it keeps every customer instead.
WANTED_MAX = 200_000
INPUTS_BATCH = 10_000  # input digests of unchanged records written to the ledger at once
# A listing's start is taken this much before the local clock, so that Stripe's clock, a little
# behind, cannot date a write made during the listing before it (its event would be missed).
CLOCK_MARGIN = timedelta(minutes=5)
# Stripe keeps events 30 days; a listing older than this (a day's margin) cannot be followed by them.
EVENTS_KEPT = timedelta(days=29)

Index = Mapping[str, Sequence[dict[str, Any]]]  # normalised matching value → Stripe customers


class CustomerApi(Protocol):
    """The Stripe customer calls the sync makes; faked in tests."""

    calls: Counter[str]

    def list_all(self) -> Iterator[dict[str, Any]]:
        """Every customer in the account."""

    def account_id(self) -> str | None:
        """The account the key belongs to, or None when the key may not read it."""

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        """The customer's fields; raises if it does not exist."""

    def find(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's fields, or None if it does not exist."""

    def customer_events(self, since: int) -> Iterator[tuple[list[dict[str, Any]], bool]] | None:
        """Pages of customer events after ``since`` (Unix seconds), newest first, each with whether
        more follow; an event is ``{"type", "created", "object"}``. None when events cannot be read."""

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        """Create a customer (idempotently) and return its id."""

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        """Update a customer's fields and return its id."""

    def delete(self, customer_id: str) -> None:
        """Delete a customer (``export.on_leave: delete``)."""


class LedgerStore(Protocol):
    """The ledger the sync reads and writes; a dry run gets one that writes nothing."""

    def synced(self, destination: str) -> dict[int, int]:
        """The synced set: key digest → state digest of every record last written to ``destination``."""

    def entries(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        """The ledger rows of ``keys``, by key."""

    def record(self, entries: dict[str, LedgerEntry]) -> int:
        """Write ``entries``; returns how many rows were written."""

    def record_inputs(self, inputs: Sequence[tuple[str, int]]) -> int:
        """Record ``(key, input digest)`` of unchanged records (``core/inputs.py``)."""

    def overlaps(self, destination: str) -> Iterable[tuple[str, str, frozenset[str]]]:
        """``(other pipeline, customer id, units both write)`` for customers of ``destination``."""


class ValueSink(Protocol):
    """One generation of the value index, written as a whole listing streams by."""

    def add(self, value: str, customer_id: str) -> None:
        """Note that the listing saw ``customer_id`` with the normalised ``value``."""

    def finish(self) -> bool:
        """Make what was added the current generation (False: it could not be)."""

    def abandon(self) -> None:
        """The listing failed: what was added is never to be read."""


class ValueIndex(Protocol):
    """What every whole listing saw, by matching value, kept in the state store
    (``Destinations``) so that a later run finds its misses without listing again
    (``Syncer._recorded_index``); a dry run gets one that records nothing."""

    def value_listing(self, destination: str, field: str) -> ValueListing | None:
        """The last complete listing of ``destination`` recorded by ``field`` (None: none)."""

    def listed_values(self, listing: ValueListing, values: Collection[str]) -> dict[str, list[str]] | None:
        """The customer ids ``listing`` saw with each of ``values``; None when it is gone meanwhile."""

    def begin_values(self, destination: str, field: str, started: datetime) -> ValueSink | None:
        """A new generation for a listing begun at ``started`` (None: record nothing)."""


@dataclass
class Wanted:
    """What a listing of Stripe must keep for this run (see ``Syncer._wanted``)."""

    matches: set[str] = field(default_factory=set)  # normalised matching values
    ids: set[str] = field(default_factory=set)  # customer ids


@dataclass(frozen=True)
class SyncOptions:
    """How one sync runs, from the spec and the run's flags."""

    pipeline_id: str
    mode: Literal["create_only", "update_only", "create_and_update"]
    stripe_field: str  # email | id | metadata.<key>
    duplicate_customers: Literal["reject", "update_all"] = "reject"
    dry_run: bool = False
    full_resync: bool = False
    concurrency: int = 8
    checkpoint_every: int = 100
    give_up_after: int = 3  # runs in a row a profile may fail for transient reasons
    destination: str = ""  # the Stripe written to: ledger entries of another one are verified, not trusted
    account_size: int | None = None  # customers in the destination when last listed whole (None: unknown)
    reconcile: bool = False  # verify every synced customer against one listing of Stripe; repair drift
    # The extract step read only the profiles whose input changed (core/inputs.py): their entries are
    # fetched as they stream by instead of holding a digest of every synced profile in memory.
    changed_only: bool = False


@dataclass
class Overlap:
    """Customers to which another pipeline writes a unit this one writes too."""

    customers: int = 0
    samples: list[str] = field(default_factory=list)


@dataclass
class SyncResult:
    """What a sync did, counted by outcome, with rejections and samples."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    drifted: int = 0  # customers whose owned fields (or existence) differed from the ledger
    repaired: int = 0  # of those, set back (not counted as created or updated)
    contested: int = 0  # drifted only in fields another pipeline also writes: left alone
    elsewhere: Counter[str] = field(default_factory=Counter)  # entries synced to another destination
    overlaps: dict[tuple[str, str], Overlap] = field(default_factory=dict)  # by (other pipeline, unit)
    destination: str = ""  # the Stripe this run wrote to
    listed: int | None = None  # customers in the account, when this run listed it whole
    reconciled: str = ""  # why this run reconciled ("" when it did not)
    skipped: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)
    samples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    api_calls: Counter[str] = field(default_factory=Counter)

    def sample(self, outcome: str, text: str) -> None:
        """Keep ``text`` as an example of ``outcome`` until there are enough."""
        if len(self.samples[outcome]) < SAMPLES:
            self.samples[outcome].append(text)

    def overlap(self, pipeline: str, unit: str, customer_id: str) -> None:
        """Note that ``pipeline`` also writes ``unit`` to ``customer_id``."""
        found = self.overlaps.setdefault((pipeline, unit), Overlap())
        found.customers += 1
        if len(found.samples) < SAMPLES:
            found.samples.append(customer_id)


# -- deciding -------------------------------------------------------------------------------
# What a record needs, as a value: ``decide`` reads nothing and changes nothing.


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Nothing to send and nothing to stage: the ledger records this payload as synced."""


UNCHANGED = Unchanged()


@dataclass(frozen=True, slots=True)
class Skipped:
    """Left alone by the spec's own rules (the mode): counted under ``reason``, not a problem."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A problem, reported as a rejection of ``kind`` and not sent."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class Remember:
    """Nothing to send, but ``entry`` to stage in the ledger: the customer found in Stripe under
    ``create_only`` (then counted as skipped for ``skipped``), or an update whose every unit Stripe
    already holds (``skipped`` None: counted unchanged)."""

    entry: LedgerEntry
    skipped: str | None = None
    withheld: frozenset[str] = frozenset()  # drifted units another pipeline also writes: left alone


@dataclass(frozen=True, slots=True)
class Write:
    """A create (no ``customer_ids``) or an update of ``units`` of each of ``customer_ids``.

    ``drift``: why a write of an unchanged profile is needed, "fields" (Stripe's values differ
    from what the ledger says was written) or "deleted" (the customer is gone); "" otherwise."""

    record: Record
    entry: LedgerEntry  # what the ledger records once Stripe confirms (customer ids filled in then)
    customer_ids: tuple[str, ...] = ()  # empty → create
    customers: tuple[dict[str, Any], ...] = ()  # their current state, when already listed
    units: frozenset[str] | None = None  # on update, the payload units to send (None: all)
    previous: LedgerEntry | None = None  # the ledger's entry before this run
    drift: str = ""
    withheld: frozenset[str] = frozenset()  # drifted units another pipeline also writes: left alone


Decision = Unchanged | Skipped | Rejected | Remember | Write


def decide(  # noqa: C901 - one table of cases, read top to bottom (tests/core/test_sync_decide.py)
    record: Record,
    previous: LedgerEntry | None,
    index: Index | None,
    options: SyncOptions,
    customers: Mapping[str, dict[str, Any]] | None = None,
    contested: Mapping[str, frozenset[str]] | None = None,
) -> Decision:
    """What ``record`` needs, given its ledger entry (``previous``, None if it has none), the
    ``index`` of the Stripe customers found by matching value and the ``options``.

    ``customers`` is every Stripe customer by id when the account was listed whole (a
    reconciliation, or entries synced to another destination): a known customer is then checked
    against Stripe itself rather than trusted. ``contested``: by customer id, the units another
    pipeline also writes, which a reconciliation does not set back (each pipeline would undo the
    other's). A pure function: no I/O, no mutation. ``index`` may be None only for a record the
    ledger settles (see ``Syncer._needs_lookup``).
    """
    digest = payload_hash(record)
    entry = previous if previous is not None and previous.match == record.match else None
    trusted = entry is not None and entry.destination == options.destination
    if entry is not None and entry.payload_hash == digest and not options.full_resync:
        if entry.status == "synced" and trusted and not options.reconcile:
            return UNCHANGED
        if entry.status == "rejected":
            kind = NOT_SENDABLE if entry.error.startswith(f"{NOT_SENDABLE}: ") else "rejected by Stripe"
            return Rejected(kind, f"{entry.error} (payload unchanged since; not resent)")
        if entry.status == "failed" and entry.attempts >= options.give_up_after:
            return Rejected("given up", f"failed in {entry.attempts} runs in a row: {entry.error}")
    done = LedgerEntry(
        record.match,
        (),
        digest,
        field_hashes(record.payload),
        destination=options.destination,
        input=record.input,
    )
    drift = ""
    if entry is not None and entry.customer_ids and not options.full_resync:
        kept = replace(done, customer_ids=entry.customer_ids, origin=entry.origin)
        if customers is not None and (options.reconcile or not trusted):
            found = tuple(customers[i] for i in entry.customer_ids if i in customers)
            if len(found) == len(entry.customer_ids):  # the customers are in this Stripe: check them
                if options.mode == "create_only":
                    exists = "exists; create_only never updates"
                    return Skipped(exists) if trusted else Remember(kept, exists)
                same = trusted and entry.status == "synced" and entry.payload_hash == digest
                units, withheld = _differing(record, found, contested)
                return _update(record, kept, found, units, previous, "fields" if same else "", withheld)
            # Gone from this Stripe: deleted (then re-created or re-matched), or another account.
            drift = "deleted" if trusted else ""
        elif trusted:
            if options.mode == "create_only":
                return Skipped("exists; create_only never updates")
            before, now = entry.fields(), done.fields()
            changed = frozenset(u for u in now if before.get(u) != now[u]) if before else None
            return _update(record, kept, (), changed, previous)
    assert index is not None, "the index is built whenever a record misses the ledger"
    matches = index.get(record.match, ())
    if not matches:
        if options.mode == "update_only":
            gone = " (its customer was deleted in Stripe)" if drift else ""
            return Skipped(f"no Stripe customer has this {options.stripe_field}{gone}")
        return Write(record, replace(done, origin="created"), previous=previous, drift=drift)
    if len(matches) > 1 and options.duplicate_customers == "reject":
        listed = ", ".join(c["id"] for c in matches[:SAMPLES])
        return Rejected(
            "several Stripe customers",
            f"{options.stripe_field} {record.match!r} matches {len(matches)} Stripe customers ({listed}); "
            "set duplicate_customers: update_all to update them all",
        )
    ids = tuple(c["id"] for c in matches)
    if options.mode == "create_only":
        # Known to exist: remember the customer, but with no payload hash, so that a later
        # switch to an updating mode still sends the payload.
        known = LedgerEntry(record.match, ids, "", destination=options.destination, origin="matched")
        return Remember(known, "already in Stripe; create_only never updates")
    origin = entry.origin if entry is not None and set(ids) == set(entry.customer_ids) else "matched"
    found = tuple(matches)
    units, _ = _differing(record, found, None)
    return _update(record, replace(done, customer_ids=ids, origin=origin), found, units, previous, drift)


def _differing(
    record: Record, customers: Sequence[dict[str, Any]], contested: Mapping[str, frozenset[str]] | None
) -> tuple[frozenset[str], frozenset[str]]:
    """The payload units some of ``customers`` do not hold, and those of them left alone because
    another pipeline also writes them to every one of these customers."""
    units = frozenset(
        unit_of(path)
        for path, value in record.payload.items()
        if not all(holds(c, path, value) for c in customers)
    )
    if not contested or not units:
        return units, frozenset()
    shared = units.intersection(*(contested.get(c["id"], frozenset()) for c in customers))
    return units - shared, shared


def _update(
    record: Record,
    done: LedgerEntry,
    customers: tuple[dict[str, Any], ...],
    units: frozenset[str] | None,
    previous: LedgerEntry | None,
    drift: str = "",
    withheld: frozenset[str] = frozenset(),
) -> Remember | Write:
    """An update of the changed units, or only ``done`` to remember when no unit Stripe sees changed."""
    if units is not None and not units:
        return Remember(done, withheld=withheld)
    return Write(record, done, done.customer_ids, customers, units, previous, drift, withheld)


# -- applying -------------------------------------------------------------------------------


class Syncer:
    """Syncs records to Stripe customers: one ``run`` per sync, its outcome in ``result``.

    ``run`` streams the records that are not plainly unchanged past the ledger, asks ``decide``
    what each needs, and hands the decisions to the writer (``_execute``), which alone sends
    requests (in a thread pool), stages ledger entries (``_stage``) and checkpoints them. Outcomes
    are counted in ``result`` as the decisions are applied and the writes complete.
    """

    def __init__(
        self, api: CustomerApi, ledger: LedgerStore, options: SyncOptions, values: ValueIndex | None = None
    ) -> None:
        self.api = api
        self.ledger = ledger
        self.options = options
        self.values = values  # the value index (None: neither read nor recorded)
        self.result = SyncResult()
        self._staged = Checkpoints(ledger, options.checkpoint_every)
        self._busy: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._inputs: list[tuple[str, int]] = []  # input digests of unchanged records, to record
        self._busy_lock = threading.Lock()

    # -- planning ---------------------------------------------------------------------------

    def run(self, records: Callable[[], Iterable[Record]]) -> SyncResult:
        """Sync every record; ``records`` is called once or twice (it must be re-readable).

        Only digests of the synced profiles are held in memory; the full ledger entries of the
        records that are not plainly unchanged are fetched in batches as they stream by. A
        reconciliation (or a ledger written to another destination) lists the account once and
        checks the known customers against it.
        """
        options = self.options
        trusting = not (options.full_resync or options.reconcile)
        synced = self.ledger.synced(options.destination) if trusting and not options.changed_only else {}
        contested = self._contested() if options.reconcile else None
        wanted = self._wanted(records(), synced)
        index: Index | None = None
        customers: dict[str, dict[str, Any]] | None = None
        if wanted is None:
            index, customers = self._build_index(None)
        elif options.stripe_field == "id" and 0 < len(wanted.matches) <= self._lookup_limit():
            index = self._look_up(wanted.matches)
        elif (
            options.stripe_field != "id"
            and wanted.matches
            and (found := self._recorded_index(wanted.matches)) is not None
        ):
            index = found
        elif wanted.matches:
            index, customers = self._build_index(wanted)
        decisions = (
            (record, decide(record, entry, index, options, customers, contested))
            for record, entry in self._pending_entries(records(), synced, count_unchanged=True)
        )
        self._execute(decisions)
        for other, customer_id, units in self.ledger.overlaps(options.destination):  # as the run left it
            for unit in units:
                self.result.overlap(other, unit, customer_id)
        self.result.api_calls.update(self.api.calls)
        return self.result

    def _pending_entries(
        self, records: Iterable[Record], synced: dict[int, int], *, count_unchanged: bool = False
    ) -> Iterator[tuple[Record, LedgerEntry | None]]:
        """Each record that is not synced and unchanged, with its ledger entry (None if it has none)."""
        batch: list[Record] = []
        for record in records:
            if synced.get(key_digest(record.key)) == state_digest(payload_hash(record)):
                if count_unchanged:
                    self._unchanged(record)
                continue
            batch.append(record)
            if len(batch) == LEDGER_BATCH:
                yield from self._with_entries(batch, count_unchanged)
                batch = []
        yield from self._with_entries(batch, count_unchanged)

    def _with_entries(
        self, batch: list[Record], counting: bool
    ) -> Iterator[tuple[Record, LedgerEntry | None]]:
        if batch:
            entries = self.ledger.entries([record.key for record in batch])
            for record in batch:
                entry = entries.get(record.key)
                if counting and entry is not None and entry.destination != self.options.destination:
                    self.result.elsewhere[entry.destination or "(not recorded)"] += 1
                yield record, entry

    def _needs_lookup(self, record: Record, entry: LedgerEntry | None) -> bool:
        """Whether ``decide`` will need the index of Stripe customers for this record."""
        if entry is None or entry.match != record.match or entry.destination != self.options.destination:
            return True
        if entry.customer_ids:
            return self.options.reconcile
        settled = entry.status == "rejected" or entry.attempts >= self.options.give_up_after
        return not (settled and entry.payload_hash == payload_hash(record))

    def _lookup_limit(self) -> int:
        """Up to how many misses one lookup each beats a listing: the listing's pages when the
        destination's size is known (``Destinations.size``), else ``ID_LOOKUPS``."""
        size = self.options.account_size
        return ID_LOOKUPS if size is None else max(ID_LOOKUPS, -(-size // 100))

    def _wanted(self, records: Iterable[Record], synced: dict[int, int]) -> Wanted | None:
        """What the records the ledger does not settle need from Stripe: their matching values, and
        the customer ids of their entries synced to another destination (to find them by id).
        None (keep the whole listing) past ``WANTED_MAX`` of them, as holding them would cost about
        what holding the listing does, and in a reconciliation that needs a listing at all (every
        customer the ledger knows is checked)."""
        wanted = Wanted()
        for record, entry in self._pending_entries(records, synced):
            if self.options.full_resync or self._needs_lookup(record, entry):
                if self.options.reconcile:
                    return None
                wanted.matches.add(record.match)
                if entry is not None and entry.customer_ids:
                    wanted.ids.update(entry.customer_ids)
                if len(wanted.matches) > WANTED_MAX:
                    return None
        return wanted

    def _contested(self) -> dict[str, frozenset[str]] | None:
        """By customer id, the units another pipeline also writes to it, which a reconciliation
        never sets back (see ``decide``); None when there are none."""
        contested: dict[str, set[str]] = defaultdict(set)
        for _, customer_id, units in self.ledger.overlaps(self.options.destination):
            contested[customer_id].update(units)
        return {customer: frozenset(units) for customer, units in contested.items()} or None

    def _build_index(
        self, wanted: Wanted | None
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
        """The Stripe customers by matching value and by id, from one listing of the account:
        those ``wanted`` (every one when None), so memory follows the records that need a
        lookup, not the size of the account. Every customer's value goes to the value index as
        the listing streams by (``_recording``), for the next runs."""
        index: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_id: dict[str, dict[str, Any]] = {}
        listed = 0
        sink = self._recording()
        try:
            for customer in self.api.list_all():
                listed += 1
                value = (
                    customer.get("id")
                    if self.options.stripe_field == "id"
                    else read_path(customer, self.options.stripe_field)
                )
                match = normalise_match(self.options.stripe_field, value) if value not in (None, "") else None
                if sink is not None and match is not None:
                    sink.add(match, customer["id"])
                if wanted is not None and match not in wanted.matches and customer["id"] not in wanted.ids:
                    continue
                by_id[customer["id"]] = customer
                if match is not None:
                    index[match].append(customer)
        except BaseException:
            if sink is not None:
                try:
                    sink.abandon()
                except Exception:  # the listing's own error is the one to report
                    log.warning("Could not mark the unfinished value index abandoned", exc_info=True)
            raise
        if sink is not None:
            sink.finish()
        log.info(
            "Listed %d Stripe customers; kept %d, indexed by %s",
            listed,
            len(by_id),
            self.options.stripe_field,
        )
        self.result.listed = listed
        return index, by_id

    def _recording(self) -> ValueSink | None:
        """Where this whole listing records every customer's value (None: nowhere): matching by
        email or metadata, not in a dry run. The listing's start is taken ``CLOCK_MARGIN`` early."""
        options = self.options
        if self.values is None or options.stripe_field == "id" or options.dry_run:
            return None
        started = datetime.now(UTC) - CLOCK_MARGIN
        return self.values.begin_values(options.destination, options.stripe_field, started)

    def _look_up(self, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The index of the customers with these ids, one retrieve each (see ``ID_LOOKUPS``)."""
        index = {}
        for customer_id in sorted(ids):
            if (customer := self.api.find(customer_id)) is not None:
                index[customer_id] = [customer]
        log.info("Looked up %d Stripe customer ids, %d found", len(ids), len(index))
        return index

    def _recorded_index(self, misses: set[str]) -> dict[str, list[dict[str, Any]]] | None:
        """The index of the customers with these (normalised) values, found without listing the
        account, or None (list it) when that is unsafe or would cost as many reads as the listing.

        The last whole listing recorded every customer's value (``ValueIndex``); Stripe's customer
        events since it began tell what changed since. The candidates for a miss are the customers
        recorded with it that no later event moved away or deleted, and those an event shows with
        it; each is retrieved by id, as it is now, and kept when it still holds a miss. A miss with
        no candidate has no customer. Stripe's ``email=`` filter (exact, case-sensitive) and its
        search API (lagging up to an hour) could each miss a customer, so neither is used.
        """
        options = self.options
        listing = (
            None
            if self.values is None
            else self.values.value_listing(options.destination, options.stripe_field)
        )
        candidates = self._index_refused(listing) or self._candidates(listing, misses)
        if isinstance(candidates, str):
            log.info("Matching by %s: listing the account (%s)", options.stripe_field, candidates)
            return None
        index: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for customer_id in sorted(candidates):
            if (customer := self.api.find(customer_id)) is None:
                continue  # deleted since
            value = read_path(customer, options.stripe_field)
            match = normalise_match(options.stripe_field, value) if value not in (None, "") else None
            if match in misses:  # still holds it (an event may have shown an older state)
                index[match].append(customer)
        log.info(
            "Matching by %s: %d values looked up in the recorded listing, %d customers retrieved, %d found",
            options.stripe_field,
            len(misses),
            len(candidates),
            sum(len(found) for found in index.values()),
        )
        return index

    def _index_refused(self, listing: ValueListing | None) -> str:
        """Why the recorded listing cannot stand in for a listing ("" when it may)."""
        if self.options.full_resync:  # trusts no shortcut: the ledger's, nor this one
            return "a full resync compares every profile with a fresh listing"
        if listing is None:
            return f"no whole listing of this account by {self.options.stripe_field} is recorded yet"
        if self.options.account_size is None:
            return "the account's size is not recorded"
        if datetime.now(UTC) - listing.started >= EVENTS_KEPT:
            return (
                f"the last whole listing, {listing.started:%Y-%m-%d}, is older than {EVENTS_KEPT.days} days: "
                "Stripe keeps events 30"
            )
        return ""

    def _candidates(self, listing: ValueListing | None, misses: set[str]) -> set[str] | str:
        """The ids of the customers that may hold one of ``misses`` now (see ``_recorded_index``),
        or why to list instead (a str): events cannot be read, the listing was replaced while
        read, or reading events and retrieving the candidates would cost the listing's pages
        (events are read lazily, newest first: this stops as soon as that is known).

        Only the events of customers that matter are kept (those recorded with a miss, and those
        an event shows with one), so memory follows the misses, not the events: a customer whose
        newer event was not kept for another value may be retrieved for nothing, never missed."""
        assert listing is not None and self.values is not None  # see _index_refused
        field_, pages = self.options.stripe_field, -(-(self.options.account_size or 0) // 100)
        recorded = self.values.listed_values(listing, misses)
        if recorded is None:
            return "the recorded listing was replaced while read"
        candidates = {customer for ids in recorded.values() for customer in ids}
        if len(candidates) >= pages:
            return f"{len(candidates)} recorded customers to retrieve: no cheaper than {pages} pages"
        events = self.api.customer_events(int(listing.started.timestamp()))
        if events is None:
            return "Stripe's events cannot be read: the key lacks Events: read, or the API has none"
        latest: dict[str, bool] = {}  # customer id → whether its latest event leaves it with a miss
        read = 0
        for page, _ in events:
            read += 1
            for event in page:
                customer = event["object"]
                value = read_path(customer, field_)
                with_miss = value not in (None, "") and normalise_match(field_, value) in misses
                holds_miss = with_miss and event["type"] != "customer.deleted"
                if customer["id"] in latest or not (with_miss or customer["id"] in candidates):
                    continue  # an older state, or one that matters to no miss
                latest[customer["id"]] = holds_miss
                if holds_miss:
                    candidates.add(customer["id"])
                else:
                    candidates.discard(customer["id"])
            if read + len(candidates) >= pages:
                return (
                    f"{read} pages of events since the last listing and {len(candidates)} customers to "
                    f"retrieve: no cheaper than {pages} pages"
                )
        log.info("Read %d pages of Stripe customer events since the last listing", read)
        return candidates

    def _count_settled(self, record: Record, decision: Unchanged | Skipped | Rejected | Remember) -> None:
        """Count the outcome of a decision that needs no request."""
        if isinstance(decision, Rejected):
            self._reject(record, decision.kind, decision.reason)
        elif isinstance(decision, Skipped):
            self._skip(record, decision.reason)
        elif isinstance(decision, Remember) and decision.skipped is not None:
            self._skip(record, decision.skipped)
        else:
            self._unchanged(record, staged=isinstance(decision, Remember))
            if isinstance(decision, Remember) and decision.withheld:
                self._contest(record, decision.entry.customer_ids, decision.withheld)

    def _unchanged(self, record: Record, *, staged: bool = False) -> None:
        """Count an unchanged record; record its input digest when the ledger lacks it (unless
        its entry is ``staged`` with it), so the next extract can skip it (``core/inputs.py``)."""
        self.result.unchanged += 1
        if record.input is not None and not record.input_recorded and not staged and not self.options.dry_run:
            self._inputs.append((record.key, record.input))
            if len(self._inputs) >= INPUTS_BATCH:
                self._flush_inputs()

    def _flush_inputs(self) -> None:
        if self._inputs:
            self.ledger.record_inputs(self._inputs)
            self._inputs = []

    def _contest(self, record: Record, ids: Sequence[str], units: frozenset[str]) -> None:
        """Count a drift left alone: another pipeline writes these units to these customers too."""
        self.result.contested += 1
        self.result.sample("contested", f"{record.key} → {', '.join(ids)}: {', '.join(sorted(units))}")

    def _skip(self, record: Record, reason: str) -> None:
        self.result.skipped[reason] += 1
        self.result.sample("skipped", f"{record.key}: {reason}")

    def _reject(self, record: Record, kind: str, reason: str) -> None:
        self.result.rejections.append(Rejection(record.key, STEP, kind, reason))

    # -- writing ----------------------------------------------------------------------------

    def _execute(self, decisions: Iterator[tuple[Record, Decision]]) -> None:  # noqa: C901 - the writer's loop: dry run, pool, and the stop path must stay together
        """The writer: applies each decision in turn, sending writes and staging ledger entries."""
        if self.options.dry_run:  # nothing is sent nor staged
            for record, decision in decisions:
                if not isinstance(decision, Write):
                    self._count_settled(record, decision)
                    continue
                try:  # what can be checked without reading from Stripe
                    self._requests(decision, {c["id"]: c for c in decision.customers}.get)
                except UnsendablePayload as exc:
                    self._reject(record, NOT_SENDABLE, f"{NOT_SENDABLE}: {exc}")
                    continue
                self._drifted(decision)
                self._count(decision, decision.customer_ids or ("(new)",))
            return
        limit = self.options.concurrency * 4
        with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="stripe") as pool:
            running: dict[Future[tuple[str, ...] | None], Write] = {}
            try:
                for record, decision in decisions:
                    if not isinstance(decision, Write):
                        self._count_settled(record, decision)
                        if isinstance(decision, Remember):
                            self._stage(record.key, decision.entry)
                        continue
                    self._drifted(decision)
                    running[pool.submit(self._send, decision)] = decision
                    if len(running) >= limit:
                        self._collect(running, wait(running, return_when=FIRST_COMPLETED).done)
                while running:
                    self._collect(running, wait(running, return_when=FIRST_COMPLETED).done)
            except BaseException:
                # Stop sending, but record what Stripe confirmed while the error travelled.
                for future in running:
                    future.cancel()
                finished = {f for f in wait(running).done if not f.cancelled()}
                self._collect(running, finished, stopping=True)
                raise
            finally:
                self._staged.flush()
                self._flush_inputs()

    def _send(self, write: Write) -> tuple[str, ...] | None:
        """Write to Stripe: the ids Stripe confirmed, or None when Stripe already held it all."""
        if not write.customer_ids:
            params = to_params(self._with_match(write.record), creating=True)
            return (self.api.create(params, self._idempotency_key(write)),)
        known = {c["id"]: c for c in write.customers}
        requests = self._requests(
            write, lambda customer_id: known.get(customer_id) or self.api.retrieve(customer_id)
        )
        for customer_id, params in requests:
            with self._customer(customer_id):
                self.api.update(customer_id, params)
        return write.customer_ids if requests else None

    def _requests(
        self, write: Write, current: Callable[[str], dict[str, Any] | None]
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(customer id, params)`` of each update ``write`` needs, all built (and checked against
        Stripe's contract: ``UnsendablePayload``) before any is sent. A create is checked whole.
        Where building an update needs the customer's ``current`` values and they are None
        (a dry run does not read), that customer's update is left out unchecked."""
        record = write.record
        if not write.customer_ids:
            to_params(self._with_match(record), creating=True)
            return []
        payload = {
            path: value
            for path, value in record.payload.items()
            if write.units is None or unit_of(path) in write.units
        }
        requests = []
        for customer_id in write.customer_ids:
            sent: dict[str, Any] = payload
            if needs_current(payload):
                if (values := current(customer_id)) is None:
                    continue
                sent = update_payload(payload, values)
            if params := to_params(sent, creating=False):  # never an empty update
                requests.append((customer_id, params))
        return requests

    def _idempotency_key(self, write: Write) -> str:
        """Same pipeline, profile, payload and last known customer → same key (see module doc)."""
        known = ",".join(write.previous.customer_ids) if write.previous else ""
        seed = f"{self.options.pipeline_id}\0{write.record.key}\0{write.entry.payload_hash}\0{known}"
        if left := left_marker(write.previous):  # back after on_leave deleted its customer: a new one
            seed += f"\0{left}"
        return "krenalis-" + hashlib.sha256(seed.encode()).hexdigest()[:40]

    def _customer(self, customer_id: str) -> threading.Lock:
        """One lock per customer: never two requests writing to the same customer at once."""
        with self._busy_lock:
            return self._busy[customer_id]

    def _with_match(self, record: Record) -> dict[str, Any]:
        field_ = self.options.stripe_field
        return {**record.payload, field_: record.match_value}

    def _collect(
        self,
        running: dict[Future[tuple[str, ...] | None], Write],
        done: set[Future[tuple[str, ...] | None]],
        *,
        stopping: bool = False,
    ) -> None:
        """Count and stage the outcome of each finished write."""
        for future in done:
            write = running.pop(future)
            try:
                ids = future.result()
            except TerminalSyncError:
                if stopping:  # the run is already failing for this reason
                    continue
                raise
            except (RecordRejected, UnsendablePayload) as exc:
                if isinstance(exc, RecordRejected):
                    kind, reason = "rejected by Stripe", str(exc)
                else:  # refused here, before sending: no request Stripe accepts could express it
                    kind, reason = NOT_SENDABLE, f"{NOT_SENDABLE}: {exc}"
                self._reject(write.record, kind, reason)
                self._stage(write.record.key, self._unsynced(write, "rejected", reason))
                continue
            except RetryableSyncError as exc:
                self.result.failed += 1
                self.result.sample("failed", f"{write.record.key}: {exc}")
                self._stage(write.record.key, self._unsynced(write, "failed", str(exc)))
                continue
            if ids is None:  # Stripe, as read, already held it all: nothing was sent
                self.result.unchanged += 1
                ids = write.customer_ids
            else:
                self._count(write, ids)
            self._stage(write.record.key, replace(write.entry, customer_ids=ids))

    @staticmethod
    def _unsynced(write: Write, status: str, error: str) -> LedgerEntry:
        """The ledger entry of a write Stripe did not confirm: the last synced state is kept."""
        before = write.previous if write.previous and write.previous.match == write.record.match else None
        failed_before = before.attempts if before and before.status == "failed" else 0
        return LedgerEntry(
            match=write.record.match,
            customer_ids=before.customer_ids if before else (),
            payload_hash=write.entry.payload_hash,
            field_hashes=before.field_hashes if before else "",
            status=status,
            attempts=failed_before + 1 if status == "failed" else 0,
            error=error,
            destination=before.destination if before else write.entry.destination,
            origin=before.origin if before else "",
        )

    def _drifted(self, write: Write) -> None:
        """Count a write that sets back what Stripe changed (or re-creates what it deleted)."""
        if write.withheld:
            self._contest(write.record, write.customer_ids, write.withheld)
        if write.drift:
            self.result.drifted += 1
            what = "deleted in Stripe" if write.drift == "deleted" else ", ".join(sorted(write.units or ()))
            ids = ", ".join(write.customer_ids or (write.previous.customer_ids if write.previous else ()))
            self.result.sample("drifted", f"{write.record.key} → {ids}: {what}")

    def _count(self, write: Write, ids: tuple[str, ...]) -> None:
        """Count a write Stripe confirmed (or, in a dry run, one that would be sent)."""
        if write.drift:  # a repair, not a change of the profile
            self.result.repaired += not self.options.dry_run
            if not self.options.dry_run:
                self.result.sample("repaired", f"{write.record.key} → {', '.join(ids)}")
            return
        outcome = "updated" if write.customer_ids else "created"
        setattr(self.result, outcome, getattr(self.result, outcome) + 1)
        self.result.sample(outcome, f"{write.record.key} → {', '.join(ids)}")

    def _stage(self, key: str, entry: LedgerEntry) -> None:
        """Stage ``entry`` for the ledger, written at the next checkpoint (only by the writer:
        ``_execute`` and ``_collect``, never while deciding)."""
        self._staged.stage(key, entry)
