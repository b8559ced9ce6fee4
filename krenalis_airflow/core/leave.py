"""Profiles that leave the audience: found from the ledger, guarded, then kept, cleared or deleted.

A profile *leaves* when the ledger says this pipeline synced it to this run's Stripe but the run
did not extract it: it stopped matching the filter, or it was deleted from the warehouse. A
profile the transform rejected or dedupe dropped was extracted, so it is still in the audience.
Leavers are found from the ledger alone (``find_leavers``): no Stripe call beyond the writes.

What happens to them is ``export.on_leave``:

* ``keep`` — nothing (the behaviour before ``on_leave``): counted and sampled, the ledger
  untouched, so the count is every ledger profile outside this run's audience.
* ``clear`` — one update per customer unsets the units this pipeline wrote (the keys of
  ``LedgerEntry.fields()``): owned metadata keys deleted, other fields cleared as the clearing
  rules allow (``fields.to_params``). Never the matching field (the customer would no longer be
  found), never a unit another pipeline's ledger also writes to that customer, never what no
  request can clear (``preferred_locales``: counted as not sendable). ``address`` and
  ``shipping`` are one unit each in the ledger, so they are removed whole.
* ``delete`` — ``DELETE /v1/customers/{id}`` for customers this pipeline created (``origin``
  ``created``) and no other ledger entry holds. A customer it found (``matched``, or an old row
  without an origin) or that another pipeline also writes to is cleared instead: ``delete`` never
  leaves more of this pipeline's data behind than ``clear``, and never deletes what it does not own.

A customer that another profile of this pipeline now holds (the profile was re-keyed in the
warehouse: same email, new key) is handed over: nothing is sent, the leaver's row is closed.

The guard (``check_leave_limit``): with ``clear`` or ``delete``, more leavers than
``export.max_leave`` (of the ledger's entries for this destination) fail the run with
``TooManyLeaving`` before anything is written — an emptied source table or a broken filter must
never wipe Stripe. ``keep`` changes nothing, so it is never stopped; the result still says when the
count is past the limit.

After Stripe confirms, a leaver's row gets status ``left``, an empty payload hash and no field
hashes: it is not found again by the next run, and if the profile comes back the sync sees a
payload it never wrote and sends it whole. A cleared row keeps its customer ids (and origin); a
deleted row has none (the profile comes back as a create) and its ``error`` names the deleted
customer (``LEFT_DELETED``), so a re-create can get an idempotency key of its own. A transient
failure leaves the row as it was, so the next run tries again.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import IO, Any, Literal, Protocol

import msgspec

from krenalis_airflow.core.fields import GROUPS, to_params, unit_of
from krenalis_airflow.core.ledger import Checkpoints, LedgerEntry, key_digest
from krenalis_airflow.core.spec import PipelineSpec, count_or_share
from krenalis_airflow.core.transform.validate import stripe_text
from krenalis_airflow.exceptions import (
    CustomerMissing,
    RecordRejected,
    RetryableSyncError,
    TooManyLeaving,
    UnsendablePayload,
)

log = logging.getLogger(__name__)
LEFT = "left"  # the ledger status of a profile that left the audience
LEFT_CLEARED = "left the audience; cleared by on_leave: clear"
LEFT_DELETED = "left the audience; deleted {customer} by on_leave: delete"
LEFT_KEPT = "left the audience; {why}"
SAMPLES = 5
READ_SIZE = 1 << 18  # characters of the profiles file decoded at a time
OnLeave = Literal["keep", "clear", "delete"]


class LeaveApi(Protocol):
    """The Stripe customer calls leaving profiles need (``StripeCustomers`` has them)."""

    calls: Counter[str]

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        """Update a customer's fields and return its id."""

    def delete(self, customer_id: str) -> None:
        """Delete a customer; ``CustomerMissing`` when Stripe has none."""


class LeaveLedger(Protocol):
    """The ledger calls leaving profiles need (``Ledger`` has them; ``EmptyLedger`` for a dry run)."""

    def entries_of(self, destination: str) -> Iterator[tuple[str, LedgerEntry]]:
        """``(key, entry)`` of each profile of the pipeline with customers in ``destination``, not left."""

    def entries(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        """The entries of ``keys`` (those that have one)."""

    def count_of(self, destination: str) -> int:
        """How many entries ``entries_of(destination)`` streams."""

    def holders(self, destination: str, customer_ids: Sequence[str]) -> list[tuple[str, str, LedgerEntry]]:
        """``(pipeline, key, entry)`` of the entries (any pipeline) holding one of ``customer_ids``."""

    def record(self, entries: dict[str, LedgerEntry]) -> int:
        """Write ``entries``; returns how many rows were written."""


@dataclass(frozen=True)
class LeaveOptions:
    """How a run treats the profiles that left its audience, from the spec and the run's flags."""

    pipeline_id: str
    on_leave: OnLeave = "keep"
    max_leave: int | str = "10%"  # as the spec wrote it: a count, or a share of the ledger
    stripe_field: str = "email"  # the matching field: never cleared
    destination: str = ""  # the Stripe this run writes to: only its ledger entries can leave
    dry_run: bool = False
    concurrency: int = 8
    checkpoint_every: int = 100

    @classmethod
    def of(
        cls, spec: PipelineSpec, *, destination: str, dry_run: bool = False, concurrency: int = 8
    ) -> LeaveOptions:
        """The options of a run of ``spec`` writing to ``destination``."""
        export = spec.export
        return cls(
            pipeline_id=spec.id,
            on_leave=export.on_leave,
            max_leave=export.max_leave,
            stripe_field=export.matching.stripe,
            destination=destination,
            dry_run=dry_run,
            concurrency=concurrency,
        )

    def limit(self, in_ledger: int) -> int:
        """How many may leave in one run (``Export.leave_limit``'s rule, for these options)."""
        return count_or_share(self.max_leave, in_ledger)


# -- the audience and who left it ----------------------------------------------------------------


def audience_of(keys: Iterable[str]) -> set[int]:
    """The audience as 64-bit digests of profile keys (``ledger.key_digest``), small in memory."""
    return {key_digest(key) for key in keys}


def read_audience(stream: IO[str], key_column: str) -> set[int]:
    """The audience of a run: the digests of the keys of the extracted profiles (the extract
    step's JSONL file), derived as the transform derives a record's key (``stripe_text``).

    Only the key column is decoded, a block of lines at a time."""
    decoder = msgspec.json.Decoder(_key_struct(key_column))
    audience: set[int] = set()
    while lines := stream.readlines(READ_SIZE):
        for row in decoder.decode_lines("".join(lines)):
            key = row.key
            audience.add(key_digest(key if type(key) is str else stripe_text(key)))
    return audience


def _key_struct(key_column: str) -> type[Any]:
    return msgspec.defstruct("ProfileKey", [("key", Any, None)], rename={"key": key_column})


@dataclass(frozen=True)
class Leavers:
    """The ledger entries of the profiles that left the audience (found before the sync)."""

    entries: list[tuple[str, LedgerEntry]]  # (key, entry)
    in_ledger: int  # entries of the pipeline with customers in the destination (not left before)
    audience: int  # profiles extracted by this run

    def __len__(self) -> int:
        return len(self.entries)


def find_leavers(ledger: LeaveLedger, audience: set[int], options: LeaveOptions) -> Leavers:
    """The entries synced to ``options.destination`` whose key is not in ``audience``, streamed
    from the ledger (only the leavers are kept in memory). No Stripe call."""
    entries: list[tuple[str, LedgerEntry]] = []
    in_ledger = 0
    for key, entry in ledger.entries_of(options.destination):
        in_ledger += 1
        if key_digest(key) not in audience:
            entries.append((key, entry))
    return Leavers(entries, in_ledger, len(audience))


def listed_leavers(ledger: LeaveLedger, keys: Sequence[str], options: LeaveOptions, audience: int) -> Leavers:
    """The leavers of ``keys``, found by the extract step in the warehouse (``core/inputs.py``),
    with their entries (those still synced to ``options.destination``). No Stripe call."""
    entries = ledger.entries(keys)
    left = [
        (key, entry)
        for key in keys
        if (entry := entries.get(key)) is not None
        and entry.destination == options.destination
        and entry.status != "left"
        and entry.customer_ids
    ]
    return Leavers(left, ledger.count_of(options.destination), audience)


def check_leave_limit(leavers: Leavers, options: LeaveOptions) -> None:
    """Raise ``TooManyLeaving`` when ``clear`` or ``delete`` would change more customers than
    ``export.max_leave`` allows: call it before the sync writes anything. ``keep`` is never stopped."""
    limit = options.limit(leavers.in_ledger)
    if options.on_leave == "keep" or len(leavers) <= limit:
        return
    first = ", ".join(key for key, _ in leavers.entries[:SAMPLES])
    raise TooManyLeaving(
        f"{len(leavers)} of the {leavers.in_ledger} profiles this pipeline synced to Stripe would leave "
        f"its audience in this run (they are in the ledger but not among the {leavers.audience} "
        f"extracted profiles; e.g. {first}), more than export.max_leave allows ({options.max_leave!r}: "
        f"{limit}); with on_leave: {options.on_leave} nothing was written to Stripe or the ledger. "
        "An emptied or half-loaded source table, a broken filter or a changed source.key usually "
        "causes this: check the source and the filter (krenalis-airflow preview/plan) and run again. "
        "If these profiles really left, raise export.max_leave for one run (e.g. max_leave: 100%)."
    )


# -- what each leaver needs (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keep:
    """Nothing to send. ``close``: whether the ledger row is closed (status ``left``)."""

    why: str
    close: bool = True


@dataclass(frozen=True, slots=True)
class Clear:
    """One update of ``params`` per customer of the entry; ``unsendable``: units left as they are."""

    params: dict[str, Any]
    unsendable: tuple[str, ...] = ()
    instead: str = ""  # under delete: why it is cleared instead (NOT_CREATED, SHARED)


@dataclass(frozen=True, slots=True)
class Delete:
    """``DELETE /v1/customers/{customer_id}``."""

    customer_id: str


Action = Keep | Clear | Delete
NOT_CREATED = "not created by this pipeline: cleared instead of deleted"
SHARED = "another pipeline also writes to it: cleared instead of deleted"


def leave_action(
    key: str, entry: LedgerEntry, options: LeaveOptions, others: Sequence[tuple[str, str, LedgerEntry]] = ()
) -> Action:
    """What the leaving profile ``key`` needs under ``options.on_leave``; ``others``: the other
    ledger entries (any pipeline) that hold its customers. Reads nothing, changes nothing."""
    if options.on_leave == "keep":
        return Keep("kept (on_leave: keep)", close=False)
    mine = [k for pipeline, k, _ in others if pipeline == options.pipeline_id]
    if mine:
        return Keep(f"its customer is now synced for profile {mine[0]}: handed over")
    shared = [e for pipeline, _, e in others if pipeline != options.pipeline_id]
    theirs = {unit for e in shared for unit in e.fields()}  # never cleared: another pipeline writes them
    created = entry.origin == "created" and len(entry.customer_ids) == 1
    if options.on_leave == "delete" and created and not shared:
        return Delete(entry.customer_ids[0])
    clear = clearing(entry.fields().keys() - theirs - {unit_of(options.stripe_field)})
    if not clear.params and not clear.unsendable:
        return Keep("nothing this pipeline wrote is left to clear")
    if options.on_leave == "delete":
        return replace(clear, instead=NOT_CREATED if not created else SHARED)
    return clear


def clearing(units: Iterable[str]) -> Clear:
    """The update that unsets ``units`` (``to_params``' clearing rules); units no request can
    clear (``preferred_locales``) are named in ``unsendable`` instead."""
    payload: dict[str, Any] = {}
    unsendable = []
    for unit in sorted(units):
        paths = GROUPS.get(unit, (unit,))
        try:
            to_params(dict.fromkeys(paths), creating=False)
        except UnsendablePayload:
            unsendable.append(unit)
            continue
        payload.update(dict.fromkeys(paths))
    return Clear(to_params(payload, creating=False) if payload else {}, tuple(unsendable))


# -- applying ----------------------------------------------------------------------------------


@dataclass
class LeaveResult:
    """What became of the profiles that left the audience (in a dry run: what would)."""

    on_leave: str = "keep"
    dry_run: bool = False
    leaving: int = 0  # profiles in the ledger, not in this run's audience
    in_ledger: int = 0
    limit: int = 0  # export.max_leave for this ledger
    cleared: int = 0  # leavers whose customers had their owned fields unset
    deleted: int = 0  # customers deleted
    kept: int = 0  # leavers whose customers stay as they are (see samples["kept"] for why)
    not_deleted: int = 0  # under delete: not created by this pipeline (or shared): cleared instead
    gone: int = 0  # customers already deleted in Stripe
    failed: int = 0  # transient failures: the next run tries again
    rejected: int = 0  # Stripe refused the clear (400): the row is closed with Stripe's message
    not_sendable: Counter[str] = field(default_factory=Counter)  # units no request can clear
    samples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    api_calls: Counter[str] = field(default_factory=Counter)

    @property
    def over_limit(self) -> bool:
        """More left than ``export.max_leave`` (only ``keep`` runs get this far when it is so)."""
        return self.leaving > self.limit

    def sample(self, outcome: str, text: str) -> None:
        """Keep ``text`` (``key → customer``) as an example of ``outcome`` until there are enough."""
        if len(self.samples[outcome]) < SAMPLES:
            self.samples[outcome].append(text)

    def summary(self) -> dict[str, Any]:
        """The counts as plain values, for the run summary (``summary.json``, ``krenalis_runs``)."""
        return {
            "on_leave": self.on_leave,
            "left_audience": self.leaving,
            "in_ledger": self.in_ledger,
            "max_leave": self.limit,
            "cleared": self.cleared,
            "deleted": self.deleted,
            "kept": self.kept,
            "not_deleted": self.not_deleted,
            "gone": self.gone,
            "failed": self.failed,
            "rejected": self.rejected,
            "not_sendable": dict(self.not_sendable),
            "samples": {outcome: list(texts) for outcome, texts in self.samples.items()},
        }


def report_rows(left: Mapping[str, Any], dry_run: bool) -> list[tuple[str, int, str]]:
    """``(name, count, detail)`` rows for the run's report table, from ``LeaveResult.summary()``."""
    would = "would be " if dry_run else ""
    detail = f"on_leave: {left['on_leave']}, {left['in_ledger']} in the ledger, max_leave {left['max_leave']}"
    if left["left_audience"] > left["max_leave"]:  # only keep gets here past the limit: say so
        detail += "; past max_leave (keep changes nothing, so the run goes on)"
    rows = [("left the audience", left["left_audience"], detail)]
    for name, count, more in (
        (f"{would}cleared", left["cleared"], ""),
        (f"{would}deleted", left["deleted"], ""),
        ("kept", left["kept"], ""),
        ("not deleted (cleared)", left["not_deleted"], "not created by this pipeline, or shared"),
        ("already deleted", left["gone"], ""),
        ("leave failed", left["failed"], "retried by the next run"),
        ("leave rejected", left["rejected"], ""),
    ):
        if count:
            rows.append((f"  {name}", count, more))
    if unsendable := left["not_sendable"]:
        rows.append(("  not clearable", sum(unsendable.values()), str(unsendable)))
    return rows


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What happened to one leaver: the count it adds to, and its closed ledger row (None: as is)."""

    key: str
    outcome: str  # a LeaveResult counter: cleared, deleted, kept, gone, failed, rejected
    entry: LedgerEntry | None
    detail: str


class Leaving:
    """Applies ``options.on_leave`` to the leavers, after the sync: sends (in a thread pool),
    counts, and closes the ledger rows of what Stripe confirmed, checkpointed in batches."""

    def __init__(self, api: LeaveApi, ledger: LeaveLedger, options: LeaveOptions) -> None:
        self.api = api
        self.ledger = ledger
        self.options = options
        self.result = LeaveResult(on_leave=options.on_leave, dry_run=options.dry_run)
        self._staged = Checkpoints(ledger, options.checkpoint_every)

    def run(self, leavers: Leavers) -> LeaveResult:
        """Keep, clear or delete each leaver; returns the counts (``result``)."""
        result, calls_before = self.result, Counter(self.api.calls)  # the api may be the sync's
        result.leaving, result.in_ledger = len(leavers), leavers.in_ledger
        result.limit = self.options.limit(leavers.in_ledger)
        actions = self._actions(leavers)
        for key, entry, action in actions:
            self._note(key, entry, action)
        if self.options.dry_run:  # counted by _note; nothing sent, nothing recorded
            return result
        sent = [(key, entry, action) for key, entry, action in actions if not isinstance(action, Keep)]
        try:
            self._close_kept(actions)
            if sent:
                with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="stripe-leave") as pool:
                    for done in pool.map(lambda item: self._send(*item), sent):
                        self._count(done)
        finally:
            self._staged.flush()
            result.api_calls.update(self.api.calls - calls_before)
        return result

    def _actions(self, leavers: Leavers) -> list[tuple[str, LedgerEntry, Action]]:
        """Each leaver with what it needs; the other holders of its customers are read once."""
        holders: dict[str, list[tuple[str, str, LedgerEntry]]] = defaultdict(list)
        if self.options.on_leave != "keep" and leavers.entries:
            ids = sorted({cid for _, entry in leavers.entries for cid in entry.customer_ids})
            for pipeline, key, entry in self.ledger.holders(self.options.destination, ids):
                for cid in entry.customer_ids:
                    holders[cid].append((pipeline, key, entry))
        pipeline_id, leaving = self.options.pipeline_id, {key for key, _ in leavers.entries}
        actions = []
        for key, entry in leavers.entries:
            others = [  # a profile of this pipeline leaving too is no heir to hand the customer to
                holder
                for cid in entry.customer_ids
                for holder in holders.get(cid, ())
                if not (holder[0] == pipeline_id and holder[1] in leaving)
            ]
            actions.append((key, entry, leave_action(key, entry, self.options, others)))
        return actions

    def _note(self, key: str, entry: LedgerEntry, action: Action) -> None:
        """Count what is known before sending: unclearable units, and the outcome of a dry run."""
        result, customers = self.result, ", ".join(entry.customer_ids)
        if isinstance(action, Clear):
            result.not_sendable.update(action.unsendable)
            for unit in action.unsendable:
                result.sample("not sendable", f"{key} → {customers}: {unit} cannot be cleared")
            if action.instead:
                result.not_deleted += 1
                result.sample("not deleted", f"{key} → {customers}: {action.instead}")
        if isinstance(action, Keep):
            result.kept += 1
            result.sample("kept", f"{key} → {customers}: {action.why}")
        elif self.options.dry_run:
            outcome = "deleted" if isinstance(action, Delete) else "cleared" if action.params else "kept"
            setattr(result, outcome, getattr(result, outcome) + 1)
            result.sample(outcome, f"{key} → {customers}")

    def _close_kept(self, actions: Sequence[tuple[str, LedgerEntry, Action]]) -> None:
        """Close the rows of the leavers that need no request (not under ``keep``)."""
        for key, entry, action in actions:
            if isinstance(action, Keep) and action.close:
                self._staged.stage(key, _closed(entry, LEFT_KEPT.format(why=action.why)))

    def _send(self, key: str, entry: LedgerEntry, action: Action) -> _Outcome:
        """Send one leaver's request(s); runs in the pool. Terminal errors propagate."""
        customers = ", ".join(entry.customer_ids)
        try:
            if isinstance(action, Delete):
                self.api.delete(action.customer_id)
                deleted = LEFT_DELETED.format(customer=action.customer_id)
                return _Outcome(key, "deleted", _closed(entry, deleted, keep_customers=False), customers)
            assert isinstance(action, Clear)
            for customer_id in entry.customer_ids if action.params else ():
                self.api.update(customer_id, action.params)
            outcome = "cleared" if action.params else "kept"  # only unclearable units were owned
            return _Outcome(key, outcome, _closed(entry, _cleared_note(action)), customers)
        except CustomerMissing:
            note = f"left the audience; {customers} already deleted in Stripe"  # named: see left_marker
            gone = _closed(entry, note, keep_customers=False)
            return _Outcome(key, "gone", gone, customers)
        except RecordRejected as exc:
            refused = _closed(entry, f"left the audience; Stripe refused to clear it: {exc}")
            return _Outcome(key, "rejected", refused, f"{customers}: {exc}")
        except RetryableSyncError as exc:
            return _Outcome(key, "failed", None, f"{customers}: {exc}")

    def _count(self, done: _Outcome) -> None:
        """Count (and sample) one leaver's outcome and stage its closed row; from the calling thread."""
        setattr(self.result, done.outcome, getattr(self.result, done.outcome) + 1)
        self.result.sample(done.outcome, f"{done.key} → {done.detail}")
        if done.entry is not None:
            self._staged.stage(done.key, done.entry)


def _closed(entry: LedgerEntry, note: str, *, keep_customers: bool = True) -> LedgerEntry:
    """The ledger row of a profile that left: nothing owned, so a return resends its payload whole.
    A deleted customer's id goes (the profile would come back as a create), and so does its origin."""
    return replace(
        entry,
        customer_ids=entry.customer_ids if keep_customers else (),
        payload_hash="",
        field_hashes="",
        status=LEFT,
        attempts=0,
        error=note,
        origin=entry.origin if keep_customers else "",
    )


def _cleared_note(action: Clear) -> str:
    note = LEFT_CLEARED
    if action.instead:
        note += f" ({action.instead})"
    if action.unsendable:
        note += f"; not clearable, left as they are: {', '.join(action.unsendable)}"
    return note


def left_marker(previous: LedgerEntry | None) -> str:
    """What a returning profile's create must add to its idempotency key: the note of its closed
    row (which names the customer ``delete`` removed), "" for any other entry. Without it, a
    profile created, deleted on leaving and back within 24 hours with the same payload would
    replay the first create's key, and Stripe would answer with the deleted customer."""
    return previous.error if previous is not None and previous.status == LEFT else ""


def apply_leave(api: LeaveApi, ledger: LeaveLedger, leavers: Leavers, options: LeaveOptions) -> LeaveResult:
    """``Leaving(api, ledger, options).run(leavers)``: call it after the sync."""
    return Leaving(api, ledger, options).run(leavers)
