"""The ledger: what was last written to Stripe for each profile of a pipeline.

One row per (pipeline, profile key): the matching value, the Stripe customer id(s), a hash of the
last payload Stripe confirmed (and one per field), which Stripe it went to (``destination``: the
account id, or a fingerprint of the key; see ``core/destination.py``) and whether this pipeline
created the customer (``origin``). A rerun compares hashes and writes only what changed; an entry
written to another destination is not trusted (``core/sync.py`` verifies it against Stripe).
It lives in any DB-API database every worker can reach (by default the source warehouse);
the SQL is the common subset of SQLite (≥ 3.24) and PostgreSQL (``INSERT … ON CONFLICT``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from krenalis_airflow.core.fields import unit_of
from krenalis_airflow.core.records import Record


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """Where a profile stands with Stripe.

    ``status`` is ``synced`` (Stripe confirmed ``payload_hash``), ``rejected`` (Stripe refused that
    payload: not resent until it changes) or ``failed`` (transient failures in ``attempts``
    consecutive runs). ``field_hashes`` always describe the last *synced* payload, so a retry
    after a failure still sends every unit that differs from what Stripe holds.
    """

    match: str
    customer_ids: tuple[str, ...]
    payload_hash: str
    field_hashes: str = ""  # JSON {unit: short hash} of the last synced payload
    status: str = "synced"
    attempts: int = 0
    error: str = ""
    destination: str = ""  # the Stripe it was synced to ("" in rows older than the column)
    origin: str = ""  # "created" when this pipeline created the customer, "matched" when it found it
    # The digest of the input row this entry's payload came from (core/inputs.py), written with it;
    # None (not known, or not read back from the ledger) clears it: the next run reads the profile.
    input: int | None = None

    def fields(self) -> dict[str, str]:
        """The per-field hashes of the last write, by field (empty for an old row)."""
        return dict(json.loads(self.field_hashes)) if self.field_hashes else {}


def payload_hash(record: Record) -> str:
    """A stable hash of everything a write depends on: the matching value and the payload."""
    canonical = json.dumps([record.match, record.match_value, record.payload], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


COLUMNS = (
    "pipeline_id",
    "profile_key",
    "match_value",
    "customer_ids",
    "payload_hash",
    "field_hashes",
    "status",
    "attempts",
    "error",
    "destination",
    "origin",
    "input_digest",
    "synced_at",
)
ROWS_PER_INSERT = 999 // len(COLUMNS)  # parameters per statement stay within SQLite's oldest limit
ENTRY = COLUMNS[1 : COLUMNS.index("input_digest")]  # what a LedgerEntry is read from, with the key
ADDED_COLUMNS = {  # columns added after the first release: ensure_table adds them to older tables
    "destination": "VARCHAR(64) NOT NULL DEFAULT ''",
    "origin": "VARCHAR(10) NOT NULL DEFAULT ''",
    "input_digest": "BIGINT",  # core/inputs.py: of the input row whose payload was last synced
}


def field_hashes(payload: Mapping[str, Any]) -> str:
    """Short per-unit hashes of a payload, so an update can send only the units that changed."""
    units: dict[str, dict[str, Any]] = {}
    for path, value in payload.items():
        units.setdefault(unit_of(path), {})[path] = value
    digests = {
        unit: hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for unit, values in units.items()
    }
    return json.dumps(digests, sort_keys=True, separators=(",", ":"))


def key_digest(key: str) -> int:
    """A 64-bit digest of a profile key, so the synced set stays small in memory."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def state_digest(payload_hash: str) -> int:
    """A 64-bit digest of a payload hash, to compare with the synced set."""
    return int(payload_hash[:16], 16)


class Ledger:
    """Ledger rows of one pipeline over a DB-API connection (``placeholder``: ``?`` or ``%s``)."""

    def __init__(self, connection: Any, placeholder: str, pipeline_id: str, table_prefix: str = "krenalis_"):
        self._conn = connection
        self._ph = placeholder
        self._pipeline = pipeline_id
        self.table = f"{table_prefix}ledger"

    def ensure_table(self) -> None:
        """Create the ledger table (and its index) if it is missing."""
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " pipeline_id VARCHAR(250) NOT NULL,"
            " profile_key VARCHAR(500) NOT NULL,"
            " match_value TEXT NOT NULL,"
            " customer_ids TEXT NOT NULL,"
            " payload_hash VARCHAR(64) NOT NULL,"
            " field_hashes TEXT NOT NULL,"
            " status VARCHAR(10) NOT NULL,"
            " attempts INTEGER NOT NULL,"
            " error TEXT NOT NULL,"
            f" destination {ADDED_COLUMNS['destination']},"
            f" origin {ADDED_COLUMNS['origin']},"
            f" input_digest {ADDED_COLUMNS['input_digest']},"
            " synced_at VARCHAR(40) NOT NULL,"
            " PRIMARY KEY (pipeline_id, profile_key))"
        )
        for name in set(ADDED_COLUMNS) - self._columns():
            self._execute(f"ALTER TABLE {self.table} ADD COLUMN {name} {ADDED_COLUMNS[name]}")
        # For ``overlaps``: the pipelines of a destination, and their entries of a customer, by seeks.
        for name, columns in (
            ("pipelines", "destination, pipeline_id"),
            ("customers", "destination, customer_ids"),
            ("matches", "pipeline_id, match_value"),  # for core/inputs.py: a changed profile's duplicates
        ):
            self._execute(f"CREATE INDEX IF NOT EXISTS {self.table}_{name} ON {self.table} ({columns})")
        self._conn.commit()

    def _columns(self) -> set[str]:
        cursor = self._conn.cursor()
        try:
            cursor.execute(f"SELECT * FROM {self.table} WHERE 1 = 0")
            return {column[0].lower() for column in cursor.description}
        finally:
            cursor.close()

    def exists(self) -> bool:
        """Whether the ledger table is there (a dry run must not create it)."""
        cursor = self._conn.cursor()
        try:
            cursor.execute(f"SELECT 1 FROM {self.table} WHERE 1 = 0")
            return True
        except Exception:  # each driver has its own "no such table" error class
            self._conn.rollback()
            return False
        finally:
            cursor.close()

    def synced(self, destination: str) -> dict[int, int]:
        """``key_digest(key) → state_digest(payload_hash)`` of every profile synced to ``destination``.

        Enough to recognise an unchanged record without loading its entry: two 64-bit ints per
        profile instead of a full ``LedgerEntry`` (about 120 MB instead of 860 MB at 1M profiles).
        Entries synced to another destination are left out: they are verified, not trusted.
        """
        cursor = self._conn.cursor()
        try:
            cursor.execute(
                f"SELECT profile_key, payload_hash FROM {self.table}"
                f" WHERE pipeline_id = {self._ph} AND status = 'synced' AND destination = {self._ph}",
                (self._pipeline, destination),
            )
            digests: dict[int, int] = {}
            while rows := cursor.fetchmany(10_000):
                for key, digest in rows:
                    if digest:  # create_only remembers customers without a payload
                        digests[key_digest(key)] = state_digest(digest)
            return digests
        finally:
            cursor.close()

    def entries(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        """The full entries of ``keys`` (those that have one), 500 keys per query."""
        sql = (
            f"SELECT {', '.join(ENTRY)} FROM {self.table}"
            f" WHERE pipeline_id = {self._ph} AND profile_key IN ({{marks}})"
        )
        return {key: _entry(row) for key, *row in self._select_in(sql, (self._pipeline,), keys)}

    def record(self, entries: Mapping[str, LedgerEntry] | Iterable[tuple[str, LedgerEntry]]) -> int:
        """Upsert entries and commit. A ``synced`` entry must be one Stripe has confirmed."""
        items = list(dict(entries).items())  # one row per key: a statement may not touch a row twice
        if not items:
            return 0
        now = datetime.now(UTC).isoformat(timespec="seconds")
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[2:])
        row_marks = f"({', '.join([self._ph] * len(COLUMNS))})"
        rows = [
            (
                self._pipeline,
                key,
                e.match,
                ",".join(e.customer_ids),
                e.payload_hash,
                e.field_hashes,
                e.status,
                e.attempts,
                e.error[:2000],
                e.destination,
                e.origin,
                e.input,
                now,
            )
            for key, e in items
        ]
        cursor = self._conn.cursor()
        try:
            # Many rows per statement: one round trip each (executemany is one per row on psycopg2).
            for start in range(0, len(rows), ROWS_PER_INSERT):
                chunk = rows[start : start + ROWS_PER_INSERT]
                cursor.execute(
                    f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES {', '.join([row_marks] * len(chunk))}"
                    f" ON CONFLICT (pipeline_id, profile_key) DO UPDATE SET {updates}",
                    [value for row in chunk for value in row],
                )
        finally:
            cursor.close()
        self._conn.commit()
        return len(rows)

    def record_inputs(self, inputs: Sequence[tuple[str, int]]) -> int:
        """Record the input digests of profiles found unchanged (``core/inputs.py``) and commit:
        one ``UPDATE … FROM (VALUES …)`` per 500 profiles (SQLite ≥ 3.33, PostgreSQL)."""
        cursor = self._conn.cursor()
        try:
            for start in range(0, len(inputs), 500):
                chunk = inputs[start : start + 500]
                values = ", ".join([f"({self._ph}, {self._ph})"] * len(chunk))
                cursor.execute(
                    f"UPDATE {self.table} SET input_digest = v.column2 FROM (VALUES {values}) AS v"
                    f" WHERE {self.table}.pipeline_id = {self._ph} AND {self.table}.profile_key = v.column1",
                    (*(item for pair in chunk for item in pair), self._pipeline),
                )
        finally:
            cursor.close()
        self._conn.commit()
        return len(inputs)

    def keys_matching(self, matches: Sequence[str]) -> list[tuple[str, str]]:
        """``(key, matching value)`` of this pipeline's entries holding one of ``matches``."""
        sql = (
            f"SELECT profile_key, match_value FROM {self.table}"
            f" WHERE pipeline_id = {self._ph} AND match_value IN ({{marks}})"
        )
        return [(key, match) for key, match in self._select_in(sql, (self._pipeline,), matches)]

    def count_of(self, destination: str) -> int:
        """How many entries ``entries_of(destination)`` would stream."""
        cursor = self._conn.cursor()
        try:
            cursor.execute(
                f"SELECT COUNT(*) FROM {self.table} WHERE pipeline_id = {self._ph} AND destination = {self._ph}"
                " AND status <> 'left' AND customer_ids <> ''",
                (self._pipeline, destination),
            )
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def overlaps(self, destination: str) -> Iterator[tuple[str, str, frozenset[str]]]:
        """``(other pipeline, customer id, units both write)`` for each customer of ``destination``
        that another pipeline's ledger (in this table) also writes to, on a unit this one writes.

        Costs one index seek per pipeline of the destination, plus, for each other pipeline, one
        join of this pipeline's entries with its entries of the same customers (single-customer
        entries: ``update_all`` entries of several customers are compared as a whole)."""
        for other in self._pipelines_of(destination):
            cursor = self._conn.cursor()
            try:
                cursor.execute(
                    f"SELECT a.customer_ids, a.field_hashes, b.field_hashes FROM {self.table} a"
                    f" JOIN {self.table} b ON b.destination = a.destination AND b.customer_ids = a.customer_ids"
                    f" WHERE a.pipeline_id = {self._ph} AND a.destination = {self._ph}"
                    f" AND b.pipeline_id = {self._ph} AND a.customer_ids <> ''",
                    (self._pipeline, destination, other),
                )
                while rows := cursor.fetchmany(1000):
                    for ids, mine, theirs in rows:
                        if shared := _units(mine) & _units(theirs):
                            yield other, ids, shared
            finally:
                cursor.close()

    def _pipelines_of(self, destination: str) -> list[str]:
        """The other pipelines with entries for ``destination`` (a loose index scan)."""
        found: list[str] = []
        after = ""
        cursor = self._conn.cursor()
        try:
            while True:
                cursor.execute(
                    f"SELECT MIN(pipeline_id) FROM {self.table}"
                    f" WHERE destination = {self._ph} AND pipeline_id > {self._ph}",
                    (destination, after),
                )
                row = cursor.fetchone()
                if row is None or row[0] is None:
                    return found
                after = row[0]
                if after != self._pipeline:
                    found.append(after)
        finally:
            cursor.close()

    def _execute(self, sql: str) -> None:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    # -- profiles that leave the audience (core/leave.py) ---------------------------------------

    def entries_of(self, destination: str, *, batch: int = 10_000) -> Iterator[tuple[str, LedgerEntry]]:
        """``(key, entry)`` of every profile of this pipeline that has customers in ``destination``
        and has not left the audience (status ``left``), streamed ``batch`` rows at a time.

        Read it to the end before writing to the ledger on the same connection."""
        cursor = self._conn.cursor()
        try:
            cursor.execute(
                f"SELECT {', '.join(ENTRY)} FROM {self.table}"
                f" WHERE pipeline_id = {self._ph} AND destination = {self._ph}"
                " AND status <> 'left' AND customer_ids <> ''",
                (self._pipeline, destination),
            )
            while rows := cursor.fetchmany(batch):
                for key, *row in rows:
                    yield key, _entry(row)
        finally:
            cursor.close()

    def holders(self, destination: str, customer_ids: Sequence[str]) -> list[tuple[str, str, LedgerEntry]]:
        """``(pipeline id, key, entry)`` of every entry of this table, of any pipeline, that has not
        left and holds one of ``customer_ids`` (as its only customer) in ``destination``; 500 ids
        a query, through the ``(destination, customer_ids)`` index."""
        sql = (
            f"SELECT pipeline_id, {', '.join(ENTRY)} FROM {self.table}"
            f" WHERE destination = {self._ph} AND customer_ids IN ({{marks}}) AND status <> 'left'"
        )
        rows = self._select_in(sql, (destination,), customer_ids)
        return [(pipeline, key, _entry(row)) for pipeline, key, *row in rows]

    def _select_in(self, sql: str, params: tuple[Any, ...], values: Sequence[str]) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (whose ``{marks}`` is an ``IN`` list) for ``values``, 500 a query."""
        found: list[tuple[Any, ...]] = []
        cursor = self._conn.cursor()
        try:
            for start in range(0, len(values), 500):
                chunk = list(values[start : start + 500])
                cursor.execute(sql.format(marks=", ".join([self._ph] * len(chunk))), (*params, *chunk))
                found += [tuple(row) for row in cursor.fetchall()]
            return found
        finally:
            cursor.close()


def _entry(row: Sequence[Any]) -> LedgerEntry:
    """A ledger row's columns ``ENTRY[1:]`` (from ``match_value`` to ``origin``) as its entry."""
    match, ids, *rest = row
    return LedgerEntry(match, tuple(ids.split(",")) if ids else (), *rest)


class Recording(Protocol):
    """Where entries are recorded: a ``Ledger`` (or a stand-in)."""

    def record(self, entries: dict[str, LedgerEntry]) -> int:
        """Write ``entries``; returns how many rows were written."""


class Checkpoints:
    """The entries one writer staged for the ledger, written every ``every`` entries and at
    ``flush``: the sync and the leave step record only what Stripe confirmed (or refused), and a
    task killed mid-run loses at most ``every`` confirmations (their writes are idempotent)."""

    def __init__(self, ledger: Recording, every: int) -> None:
        self._ledger = ledger
        self._every = every
        self._pending: dict[str, LedgerEntry] = {}

    def stage(self, key: str, entry: LedgerEntry) -> None:
        """Stage ``entry``; write what is staged once there are ``every`` entries."""
        self._pending[key] = entry
        if len(self._pending) >= self._every:
            self.flush()

    def flush(self) -> None:
        """Write what is staged now."""
        if self._pending:
            self._ledger.record(self._pending)
            self._pending = {}


def _units(field_hashes: str) -> frozenset[str]:
    """The units a ``field_hashes`` column names."""
    return frozenset(json.loads(field_hashes)) if field_hashes else frozenset()


class EmptyLedger:
    """The ledger of a pipeline that never ran, for a dry run that must not create the table."""

    def synced(self, destination: str) -> dict[int, int]:
        """Nothing was synced before."""
        return {}

    def entries(self, keys: Sequence[str]) -> dict[str, LedgerEntry]:
        """No key has a ledger row."""
        return {}

    def record(self, entries: Mapping[str, LedgerEntry]) -> int:
        """Refuse: a dry run must never write the ledger."""
        raise AssertionError("a dry run records nothing")

    def record_inputs(self, inputs: Sequence[tuple[str, int]]) -> int:
        """Refuse: a dry run must never write the ledger."""
        raise AssertionError("a dry run records nothing")

    def overlaps(self, destination: str) -> Iterator[tuple[str, str, frozenset[str]]]:
        """No entries, so nothing shared with other pipelines."""
        return iter(())

    def entries_of(self, destination: str, *, batch: int = 10_000) -> Iterator[tuple[str, LedgerEntry]]:
        """No profile can leave a pipeline that never ran."""
        return iter(())

    def count_of(self, destination: str) -> int:
        """No entries."""
        return 0

    def holders(self, destination: str, customer_ids: Sequence[str]) -> list[tuple[str, str, LedgerEntry]]:
        """No entry holds any customer."""
        return []
