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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

KEY_PREFIX = "key:"
TOO_MANY = -1  # ``stripe_listings.odd_emails`` when a listing found more odd emails than it keeps


@dataclass(frozen=True)
class WholeListing:
    """What a whole listing of a destination saw that makes exact ``email=`` lookups safe after it
    (``Syncer._email_index``): Stripe's ``email=`` filter is case-sensitive, so every customer whose
    stored email is not in matching form (upper case, surrounding spaces) must be known another way:
    those the listing saw are kept here, those written since are in the events after ``started``."""

    started: datetime  # when the listing began, less a margin for clocks (UTC)
    odd_emails: tuple[tuple[str, str], ...] | None  # (normalised email, customer id); None: too many


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
    sync weighs it against one lookup per miss). ``<prefix>stripe_listings`` and
    ``<prefix>stripe_odd_emails``: when that listing began and the customers whose email it saw
    stored in a form other than the matching one (``WholeListing``), replaced by each listing.
    A dry run (``writable=False``) reads what is there and writes nothing.
    """

    def __init__(self, connection: Any, placeholder: str, table_prefix: str, *, writable: bool = True):
        self._conn = connection
        self._ph = placeholder
        self._writable = writable
        self.accounts = f"{table_prefix}stripe_accounts"
        self.reconciled = f"{table_prefix}reconciled"
        self.sizes = f"{table_prefix}stripe_sizes"
        self.listings = f"{table_prefix}stripe_listings"
        self.odd_emails = f"{table_prefix}stripe_odd_emails"
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
                f"CREATE TABLE IF NOT EXISTS {self.listings} (destination VARCHAR(64) NOT NULL PRIMARY KEY,"
                " started_at VARCHAR(40) NOT NULL, odd_emails INTEGER NOT NULL)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.odd_emails} (destination VARCHAR(64) NOT NULL,"
                " email VARCHAR(512) NOT NULL, customer_id VARCHAR(255) NOT NULL,"
                " PRIMARY KEY (destination, customer_id))"
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

    def last_listing(self, destination: str) -> WholeListing | None:
        """What the last whole listing of ``destination`` saw (None: never listed whole)."""
        rows = self._rows(
            f"SELECT started_at, odd_emails FROM {self.listings} WHERE destination = {self._ph}", destination
        )
        if not rows:
            return None
        started, count = datetime.fromisoformat(str(rows[0][0])), int(rows[0][1])
        if count == TOO_MANY:
            return WholeListing(started, None)
        odd = self._rows(
            f"SELECT email, customer_id FROM {self.odd_emails} WHERE destination = {self._ph}", destination
        )
        return WholeListing(started, tuple((str(email), str(customer)) for email, customer in odd))

    def record_listing(self, destination: str, listing: WholeListing) -> None:
        """Replace what the last whole listing of ``destination`` saw, in one transaction (never in a
        dry run). Two runs recording at once leave the union of their odd emails: more than needed,
        never fewer."""
        if not self._writable:
            return
        odd = listing.odd_emails
        cursor = self._conn.cursor()
        try:
            cursor.execute(f"DELETE FROM {self.odd_emails} WHERE destination = {self._ph}", (destination,))
            if odd:
                cursor.executemany(
                    f"INSERT INTO {self.odd_emails} (destination, email, customer_id)"
                    f" VALUES ({self._ph}, {self._ph}, {self._ph})"
                    " ON CONFLICT (destination, customer_id) DO UPDATE SET email = excluded.email",
                    [(destination, email, customer) for email, customer in odd],
                )
            cursor.execute(
                f"INSERT INTO {self.listings} (destination, started_at, odd_emails)"
                f" VALUES ({self._ph}, {self._ph}, {self._ph})"
                " ON CONFLICT (destination) DO UPDATE SET started_at = excluded.started_at,"
                " odd_emails = excluded.odd_emails",
                (
                    destination,
                    listing.started.isoformat(timespec="seconds"),
                    TOO_MANY if odd is None else len(odd),
                ),
            )
        except BaseException:
            self._conn.rollback()
            raise
        finally:
            cursor.close()
        self._conn.commit()

    def _one(self, sql: str, *params: str) -> str | None:
        rows = self._rows(sql, *params)
        return str(rows[0][0]) if rows else None

    def _rows(self, sql: str, *params: str) -> list[tuple[Any, ...]]:
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
