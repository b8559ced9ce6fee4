"""Which Stripe a pipeline writes to, as a name that never contains the key.

The ledger, the shared rate limit and the overlap check all need to know whether two runs (or two
pipelines) write to the same Stripe. The best name is the account id (``acct_…``), read with
``GET /v1/account`` when the key may read it. Restricted keys with only Customers permissions
usually may not: then the name is a digest of the API base URL and the key, which tells two keys
apart but not that they belong to one account (a rotated key looks like a new destination, so the
ledger is re-verified once against Stripe rather than trusted).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)
KEY_PREFIX = "key:"
VALUES_BATCH = 5_000  # value index rows written per transaction (SQLite is locked only that long)
LOOKUP_BATCH = 500  # values looked up per ``IN (...)`` query (SQLite allows 999 parameters at least)
ABANDONED = timedelta(days=1)  # a generation still being written after this is a crashed listing's
# The states of a generation (``stripe_value_listings.state``): written batch by batch, then made
# the current one in one short transaction; the one it replaces, and one abandoned, are marked
# dropping (never read again) before their rows are deleted, a chunk per transaction.
WRITING, CURRENT, REPLACED, DROPPING = "writing", "current", "replaced", "dropping"


@dataclass(frozen=True)
class ValueListing:
    """A complete generation of the value index: every customer of ``destination`` by its
    normalised ``field`` value, as a whole listing saw it. Writes since are in Stripe's customer
    events after ``started`` (``Syncer._recorded_index``)."""

    destination: str
    field: str  # email | metadata.<key>
    generation: int
    started: datetime  # when the listing began, less a margin for clocks (UTC)


def key_fingerprint(api_key: str, api_base: str) -> str:
    """A stable, non-reversible name for (base URL, key): ``key:`` and 20 hex digits."""
    digest = hashlib.sha256(f"{api_base.rstrip('/')}\0{api_key}".encode()).hexdigest()
    return KEY_PREFIX + digest[:20]


def is_account(destination: str) -> bool:
    """Whether ``destination`` is a Stripe account id rather than a key fingerprint."""
    return destination.startswith("acct_")


class Destinations:
    """What the state store remembers about destinations, beside the ledger.

    ``<prefix>stripe_accounts``: key fingerprint → the account it belongs to (``""`` when the key
    may not read it). A key belongs to one account for life, so the account is read once per key
    (``GET /v1/account``) and never again: a rerun costs no read. ``<prefix>reconciled``: when
    each pipeline last reconciled its ledger with each destination (see ``reconcile_due``), and how
    many customers that destination held when last listed whole (what a listing would cost: the
    sync weighs it against one lookup per miss).

    The value index, a mirror of what the last whole listing saw: ``<prefix>stripe_value_listings``
    has one row per generation (destination, matching field, when its listing began, state) and
    ``<prefix>stripe_values`` the generation's (normalised value, customer id) pairs, indexed by
    (destination, field, generation, value). A listing writes a new generation in batches of
    ``VALUES_BATCH``, each committed, so other pipelines can write their ledgers meanwhile; readers
    see only a generation made current, in one short transaction, once complete (the later switch
    wins when two listings run at once). Each switch then drops the generations it replaced and
    those abandoned for ``ABANDONED``, never one still being written. The older
    ``<prefix>stripe_listings`` and ``<prefix>stripe_odd_emails`` are no longer used.
    A dry run (``writable=False``) reads what is there and writes nothing.
    """

    def __init__(self, connection: Any, placeholder: str, table_prefix: str, *, writable: bool = True):
        self._conn = connection
        self._ph = placeholder
        self._writable = writable
        self.accounts = f"{table_prefix}stripe_accounts"
        self.reconciled = f"{table_prefix}reconciled"
        self.sizes = f"{table_prefix}stripe_sizes"
        self.listings = f"{table_prefix}stripe_value_listings"
        self.values = f"{table_prefix}stripe_values"
        if writable:
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.accounts} (fingerprint VARCHAR(64) NOT NULL PRIMARY KEY,"
                " account VARCHAR(64) NOT NULL, checked_at VARCHAR(40) NOT NULL)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.reconciled} (pipeline_id VARCHAR(250) NOT NULL,"
                " destination VARCHAR(64) NOT NULL, reconciled_at VARCHAR(40) NOT NULL,"
                " PRIMARY KEY (pipeline_id, destination))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.sizes} (destination VARCHAR(64) NOT NULL PRIMARY KEY,"
                " customers INTEGER NOT NULL, listed_at VARCHAR(40) NOT NULL)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.listings} (generation BIGINT NOT NULL PRIMARY KEY,"
                " destination VARCHAR(64) NOT NULL, stripe_field VARCHAR(255) NOT NULL,"
                " state VARCHAR(16) NOT NULL, started_at VARCHAR(40) NOT NULL, begun_at VARCHAR(40) NOT NULL)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.values} (destination VARCHAR(64) NOT NULL,"
                " stripe_field VARCHAR(255) NOT NULL, generation BIGINT NOT NULL,"
                " value VARCHAR(512) NOT NULL, customer_id VARCHAR(255) NOT NULL)"
            )
            self._execute(
                f"CREATE INDEX IF NOT EXISTS {self.values}_lookup"
                f" ON {self.values} (destination, stripe_field, generation, value)"
            )
            self._conn.commit()

    def resolve(self, fingerprint: str, read_account: Callable[[], str | None]) -> str:
        """The run's destination: the account of the key, read once per key, else ``fingerprint``."""
        known = self._one(f"SELECT account FROM {self.accounts} WHERE fingerprint = {self._ph}", fingerprint)
        if known is None:
            known = read_account() or ""
            if self._writable and fingerprint:
                self._upsert(
                    self.accounts, ("fingerprint", "account", "checked_at"), (fingerprint, known, _now())
                )
        return known or fingerprint

    def known(self, fingerprint: str) -> str | None:
        """The destination ``resolve`` would return, without reading Stripe: None when this key
        was never resolved (the extract step, which holds no Stripe client, then reads everything)."""
        known = self._one(f"SELECT account FROM {self.accounts} WHERE fingerprint = {self._ph}", fingerprint)
        return None if known is None else known or fingerprint

    def reconciled_at(self, pipeline_id: str, destination: str) -> datetime | None:
        """When ``pipeline_id`` last reconciled with ``destination`` (None: never)."""
        found = self._one(
            f"SELECT reconciled_at FROM {self.reconciled} WHERE pipeline_id = {self._ph} AND destination = {self._ph}",
            pipeline_id,
            destination,
        )
        return datetime.fromisoformat(found) if found else None

    def record_reconciled(self, pipeline_id: str, destination: str, when: datetime) -> None:
        """Note a completed reconciliation (never in a dry run)."""
        if self._writable:
            values = (pipeline_id, destination, when.isoformat(timespec="seconds"))
            self._upsert(self.reconciled, ("pipeline_id", "destination", "reconciled_at"), values, keys=2)

    def size(self, destination: str) -> int | None:
        """How many customers ``destination`` held when last listed whole (None: never listed)."""
        found = self._one(f"SELECT customers FROM {self.sizes} WHERE destination = {self._ph}", destination)
        return None if found is None else int(found)

    def record_size(self, destination: str, customers: int) -> None:
        """Note the size of a whole listing (never in a dry run)."""
        if self._writable:
            values = (destination, customers, _now())
            self._upsert(self.sizes, ("destination", "customers", "listed_at"), values)

    def value_listing(self, destination: str, field: str) -> ValueListing | None:
        """The current generation of the value index of ``destination`` by ``field`` (None: no
        whole listing of it recorded yet, or a dry run before any run)."""
        rows = self._rows(
            f"SELECT generation, started_at FROM {self.listings} WHERE destination = {self._ph}"
            f" AND stripe_field = {self._ph} AND state = {self._ph} ORDER BY begun_at DESC",
            destination,
            field,
            CURRENT,
        )
        if not rows:
            return None
        generation, started = rows[0]
        return ValueListing(destination, field, int(generation), datetime.fromisoformat(str(started)))

    def listed_values(self, listing: ValueListing, values: Collection[str]) -> dict[str, list[str]] | None:
        """The customer ids ``listing`` saw with each of ``values`` (absent: none), in batches of
        ``LOOKUP_BATCH``; None when the generation was dropped meanwhile (replaced by a newer
        listing: what was read may be partial, ask again)."""
        found: dict[str, list[str]] = {}
        wanted = sorted(values)
        cursor = self._conn.cursor()
        try:
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                cursor.execute(
                    f"SELECT value, customer_id FROM {self.values} WHERE destination = {self._ph}"
                    f" AND stripe_field = {self._ph} AND generation = {self._ph}"
                    f" AND value IN ({', '.join([self._ph] * len(batch))})",
                    (listing.destination, listing.field, listing.generation, *batch),
                )
                for value, customer_id in cursor.fetchall():
                    found.setdefault(str(value), []).append(str(customer_id))
            # A generation is marked dropping before any of its rows is deleted: still readable
            # now, it was whole when read.
            cursor.execute(
                f"SELECT state FROM {self.listings} WHERE generation = {self._ph}", (listing.generation,)
            )
            state = cursor.fetchone()
        finally:
            cursor.close()
        if self._writable:
            self._conn.commit()  # end the read transaction (PostgreSQL): no lock held through the run
        return found if state is not None and state[0] in (CURRENT, REPLACED) else None

    def begin_values(self, destination: str, field: str, started: datetime) -> ValueWriter | None:
        """A new generation of the value index of ``destination`` by ``field``, for a listing that
        began at ``started``; None in a dry run (nothing is recorded)."""
        if not self._writable:
            return None
        generation = secrets.randbits(62)
        self._execute(
            f"INSERT INTO {self.listings} (generation, destination, stripe_field, state, started_at, begun_at)"
            f" VALUES ({self._ph}, {self._ph}, {self._ph}, {self._ph}, {self._ph}, {self._ph})",
            (generation, destination, field, WRITING, started.isoformat(timespec="seconds"), _now()),
        )
        self._conn.commit()
        return ValueWriter(self, destination, field, generation)

    def _write_values(self, generation: int, rows: list[tuple[str, str, int, str, str]]) -> bool:
        """One batch of a generation's rows, in a transaction of its own; False (nothing written)
        when the generation is no longer being written (taken for abandoned and dropped)."""
        marks = ", ".join([self._ph] * 5)
        insert = (
            f"INSERT INTO {self.values} (destination, stripe_field, generation, value, customer_id)"
            f" VALUES ({marks})"
        )
        return self._while_writing(generation, WRITING, lambda cursor: cursor.executemany(insert, rows))

    def _switch(self, destination: str, field: str, generation: int) -> bool:
        """Make ``generation`` the current one, in one short transaction; False when it was
        dropped meanwhile (written for longer than ``ABANDONED``): the current one stays."""
        replace_current = (
            f"UPDATE {self.listings} SET state = {self._ph} WHERE destination = {self._ph}"
            f" AND stripe_field = {self._ph} AND state = {self._ph} AND generation <> {self._ph}"
        )
        return self._while_writing(
            generation,
            CURRENT,
            lambda cursor: cursor.execute(
                replace_current, (REPLACED, destination, field, CURRENT, generation)
            ),
        )

    def _while_writing(self, generation: int, state: str, then: Callable[[Any], object]) -> bool:
        """In one transaction: move ``generation`` from writing to ``state`` (writing again
        locks its row), then ``then(cursor)``; False, with nothing done, when the generation is
        no longer being written. A cleanup marking it dropping waits for this transaction and
        then deletes what it wrote too: no row is ever left behind by a generation that is gone."""
        cursor = self._conn.cursor()
        try:
            cursor.execute(
                f"UPDATE {self.listings} SET state = {self._ph} WHERE generation = {self._ph} AND state = {self._ph}",
                (state, generation, WRITING),
            )
            if cursor.rowcount != 1:
                self._conn.rollback()
                return False
            then(cursor)
        except BaseException:
            self._conn.rollback()
            raise
        finally:
            cursor.close()
        self._conn.commit()
        return True

    def _drop(self, generation: int) -> None:
        """Mark ``generation`` dropping: never read again, its rows deleted by the next cleanup."""
        self._execute(
            f"UPDATE {self.listings} SET state = {self._ph} WHERE generation = {self._ph}",
            (DROPPING, generation),
        )
        self._conn.commit()

    def drop_stale_values(self) -> int:
        """Delete the generations replaced, and those written for longer than ``ABANDONED``
        (a listing that crashed), a chunk of ``VALUES_BATCH`` values per transaction; never a
        generation still being written. Returns how many generations were dropped."""
        if not self._writable:
            return 0
        abandoned = (datetime.now(UTC) - ABANDONED).isoformat(timespec="seconds")
        self._execute(
            f"UPDATE {self.listings} SET state = {self._ph} WHERE state = {self._ph}"
            f" OR (state = {self._ph} AND begun_at < {self._ph})",
            (DROPPING, REPLACED, WRITING, abandoned),
        )
        self._conn.commit()
        stale = self._rows(
            f"SELECT generation, destination, stripe_field FROM {self.listings} WHERE state = {self._ph}",
            DROPPING,
        )
        where = f"destination = {self._ph} AND stripe_field = {self._ph} AND generation = {self._ph}"
        for generation, destination, field in stale:
            key = (destination, field, generation)
            cursor = self._conn.cursor()
            try:
                while True:  # the chunk's values, found through the index
                    cursor.execute(
                        f"DELETE FROM {self.values} WHERE {where} AND value IN (SELECT value FROM {self.values}"
                        f" WHERE {where} ORDER BY value LIMIT {VALUES_BATCH})",
                        key + key,
                    )
                    deleted = cursor.rowcount
                    self._conn.commit()
                    if deleted <= 0:
                        break
                cursor.execute(f"DELETE FROM {self.listings} WHERE generation = {self._ph}", (generation,))
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cursor.close()
        return len(stale)

    def _one(self, sql: str, *params: str) -> str | None:
        rows = self._rows(sql, *params)
        return str(rows[0][0]) if rows else None

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()]
        except Exception:  # a dry run before any run: the table is not there (each driver has its own class)
            self._conn.rollback()
            return []
        finally:
            cursor.close()

    def _upsert(self, table: str, columns: tuple[str, ...], values: tuple[Any, ...], keys: int = 1) -> None:
        """Insert or replace a row; its first ``keys`` columns are the primary key."""
        marks = ", ".join([self._ph] * len(columns))
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[keys:])
        self._execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            f" ON CONFLICT ({', '.join(columns[:keys])}) DO UPDATE SET {updates}",
            values,
        )
        self._conn.commit()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params) if params else cursor.execute(sql)
        finally:
            cursor.close()


class ValueWriter:
    """One generation of the value index being written as a listing streams by: ``add`` each
    customer's value, then ``finish`` (or ``abandon`` when the listing failed)."""

    def __init__(self, places: Destinations, destination: str, field: str, generation: int) -> None:
        self._places = places
        self.destination, self.field, self.generation = destination, field, generation
        self._rows: list[tuple[str, str, int, str, str]] = []
        self.written = 0
        self._lost = False  # dropped while written (see ``Destinations._write_values``)

    def add(self, value: str, customer_id: str) -> None:
        """Note that the listing saw ``customer_id`` with the normalised ``value``."""
        if self._lost:
            return
        self._rows.append((self.destination, self.field, self.generation, value, customer_id))
        if len(self._rows) >= VALUES_BATCH:
            self._flush()

    def finish(self) -> bool:
        """Write what is left, make this generation the current one, and drop the stale ones;
        False when it could not become current (see ``Destinations._switch``)."""
        self._flush()
        if self._lost or not self._places._switch(self.destination, self.field, self.generation):
            log.warning(
                "The value index of %s by %s was not recorded: this listing took longer than %d hours and "
                "was taken for abandoned; the next whole listing records it",
                self.destination,
                self.field,
                ABANDONED // timedelta(hours=1),
            )
            return False
        dropped = self._places.drop_stale_values()
        log.info(
            "Recorded %d %s values of %s (dropped %d stale generations)",
            self.written,
            self.field,
            self.destination,
            dropped,
        )
        return True

    def abandon(self) -> None:
        """The listing failed: this generation is never to be read; the next switch deletes it."""
        self._rows = []
        self._places._drop(self.generation)

    def _flush(self) -> None:
        if self._rows:
            self._lost = not self._places._write_values(self.generation, self._rows)
            self.written += len(self._rows) * (not self._lost)
            self._rows = []


def reconcile_due(requested: bool, every: timedelta | None, last: datetime | None, now: datetime) -> str:
    """Why this run reconciles ("" when it does not): asked for, never done on this destination
    (a new pipeline, or a new Stripe), or ``export.reconcile``'s interval has passed."""
    if requested:
        return "asked for (reconcile: true)"
    if every is None:
        return ""
    if last is None:
        return "first run on this destination"
    if now - last >= every:
        return (
            f"last reconciled {last.isoformat(timespec='minutes')}, export.reconcile is every {_words(every)}"
        )
    return ""


def _words(interval: timedelta) -> str:
    hours = interval.total_seconds() / 3600
    return f"{hours:g}h" if hours >= 1 else f"{interval.total_seconds() / 60:g}m"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
