"""The ledger on real databases: a SQLite file and PostgreSQL (psycopg2), plus ``payload_hash``.

Every PostgreSQL test uses its own table prefix and drops its table at the end.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.ledger import Ledger, LedgerEntry, key_digest, payload_hash, state_digest
from krenalis_airflow.core.records import Record
from tests.core.warehouses import PG_DSN


@dataclass
class Backend:
    name: str
    placeholder: str
    prefix: str
    connect: Callable[[], Any]  # a new connection to the same database
    conn: Any

    def ledger(self, pipeline_id: str = "pipe", conn: Any = None) -> Ledger:
        return Ledger(conn or self.conn, self.placeholder, pipeline_id, self.prefix)

    @property
    def table(self) -> str:
        return f"{self.prefix}ledger"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(sql.replace("?", self.placeholder), params)
            rows = [tuple(row) for row in cursor.fetchall()]
            cursor.close()
            return rows
        finally:
            conn.close()


def _sqlite(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "ledger.db"

    def connect() -> Any:
        return sqlite3.connect(path)

    conn = connect()
    yield Backend("sqlite", "?", "krenalis_", connect, conn)
    conn.close()


def _postgres() -> Iterator[Backend]:
    psycopg2 = pytest.importorskip("psycopg2")

    def connect() -> Any:
        return psycopg2.connect(PG_DSN)

    try:
        conn = connect()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    prefix = f"t_{uuid.uuid4().hex}_"
    yield Backend("postgres", "%s", prefix, connect, conn)
    conn.rollback()
    cursor = conn.cursor()
    cursor.execute(f"DROP TABLE IF EXISTS {prefix}ledger")
    conn.commit()
    conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _sqlite(tmp_path) if request.param == "sqlite" else _postgres()


ENTRIES = {
    "p1": LedgerEntry("ada@x.com", ("cus_1",), "a" * 64),
    "p2": LedgerEntry("bob@x.com", ("cus_2", "cus_3", "cus_4"), "b" * 64),
    "p3": LedgerEntry("carol@x.com", (), ""),
    "p 4/ü": LedgerEntry("dave's@x.com", ("cus_5",), "c" * 64),
}


# --------------------------------------------------------------------------------------------
# Table


def test_ensure_table_creates_the_prefixed_table(db: Backend) -> None:
    ledger = db.ledger()
    assert ledger.table == f"{db.prefix}ledger"
    ledger.ensure_table()
    assert db.query(f"SELECT COUNT(*) FROM {db.table}") == [(0,)]
    assert ledger.entries(list(ENTRIES)) == {}
    assert ledger.synced("") == {}


def test_ensure_table_is_idempotent_and_keeps_rows(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    ledger.ensure_table()
    ledger.record(ENTRIES)
    ledger.ensure_table()
    db.ledger(conn=db.conn).ensure_table()
    assert ledger.entries(list(ENTRIES)) == ENTRIES


# --------------------------------------------------------------------------------------------
# Round trips


def test_record_then_entries_round_trips_entries(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    assert ledger.record(ENTRIES) == 4
    loaded = ledger.entries(list(ENTRIES))
    assert loaded == ENTRIES
    assert loaded["p2"].customer_ids == ("cus_2", "cus_3", "cus_4")
    assert loaded["p3"].customer_ids == ()


def test_record_commits_so_another_connection_sees_the_rows(db: Backend) -> None:
    db.ledger().ensure_table()
    db.ledger().record(ENTRIES)
    other = db.connect()
    try:
        assert db.ledger(conn=other).entries(list(ENTRIES)) == ENTRIES
    finally:
        other.close()


def test_record_accepts_pairs_and_returns_the_count(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    pairs = (item for item in [("k1", ENTRIES["p1"]), ("k2", ENTRIES["p2"])])
    assert ledger.record(pairs) == 2
    assert ledger.record({}) == 0
    assert ledger.record([]) == 0
    assert ledger.entries(["k1", "k2", *ENTRIES]) == {"k1": ENTRIES["p1"], "k2": ENTRIES["p2"]}


def test_record_stores_a_utc_timestamp(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    before = datetime.now().astimezone()
    ledger.record({"p1": ENTRIES["p1"]})
    [(synced_at,)] = db.query(f"SELECT synced_at FROM {db.table} WHERE profile_key = ?", ("p1",))
    stamp = datetime.fromisoformat(synced_at)
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((stamp - before).total_seconds()) < 60


def test_reads_more_rows_than_one_fetch(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    many = {f"k{i:05d}": LedgerEntry(f"{i}@x.com", (f"cus_{i}",), f"{i:064d}") for i in range(10_007)}
    assert ledger.record(many) == 10_007
    assert ledger.synced("") == {key_digest(k): state_digest(e.payload_hash) for k, e in many.items()}
    assert ledger.entries(list(many)) == many


# --------------------------------------------------------------------------------------------
# Upsert


def test_re_recording_a_key_updates_it(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    ledger.record(ENTRIES)
    changed = LedgerEntry("ada.new@x.com", ("cus_9", "cus_10"), "d" * 64)
    assert ledger.record({"p1": changed}) == 1
    assert ledger.entries(list(ENTRIES)) == {**ENTRIES, "p1": changed}
    assert db.query(f"SELECT COUNT(*) FROM {db.table} WHERE profile_key = ?", ("p1",)) == [(1,)]
    assert db.query(f"SELECT COUNT(*) FROM {db.table}") == [(4,)]


def test_re_recording_through_a_new_ledger_object_updates_it(db: Backend) -> None:
    db.ledger().ensure_table()
    db.ledger().record({"p1": ENTRIES["p1"]})
    cleared = LedgerEntry("ada@x.com", (), "")
    db.ledger().record({"p1": cleared})
    assert db.ledger().entries(list(ENTRIES)) == {"p1": cleared}


# --------------------------------------------------------------------------------------------
# Pipelines


def test_entries_are_per_pipeline(db: Backend) -> None:
    first, second = db.ledger("pipe_a"), db.ledger("pipe_b")
    first.ensure_table()
    second.ensure_table()
    entry_a = LedgerEntry("ada@x.com", ("cus_a",), "a" * 64)
    entry_b = LedgerEntry("ada@other.com", ("cus_b",), "b" * 64)
    first.record({"p1": entry_a, "only_a": ENTRIES["p2"]})
    second.record({"p1": entry_b})
    keys = ["p1", "only_a"]
    assert first.entries(keys) == {"p1": entry_a, "only_a": ENTRIES["p2"]}
    assert second.entries(keys) == {"p1": entry_b}
    assert db.ledger("pipe_c").entries(keys) == {}
    assert db.ledger("pipe_c").synced("") == {}
    # Updating one pipeline's row leaves the other's row with the same key alone.
    newer = LedgerEntry("ada@x.com", ("cus_a2",), "e" * 64)
    first.record({"p1": newer})
    assert first.entries(["p1"]) == {"p1": newer}
    assert second.entries(keys) == {"p1": entry_b}
    assert db.query(f"SELECT COUNT(*) FROM {db.table}") == [(3,)]


# --------------------------------------------------------------------------------------------
# payload_hash


BASE = Record("p1", "ada@x.com", "Ada@X.com", {"name": "Ada", "metadata.plan": "pro", "phone": None})


def test_payload_hash_is_a_stable_sha256_hex_digest() -> None:
    digest = payload_hash(BASE)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert payload_hash(Record("p1", "ada@x.com", "Ada@X.com", dict(BASE.payload))) == digest


def test_payload_hash_ignores_dict_key_order() -> None:
    reordered = Record(BASE.key, BASE.match, BASE.match_value, dict(reversed(list(BASE.payload.items()))))
    assert list(reordered.payload) != list(BASE.payload)
    assert payload_hash(reordered) == payload_hash(BASE)


def test_payload_hash_ignores_the_profile_key() -> None:
    assert payload_hash(Record("other", BASE.match, BASE.match_value, BASE.payload)) == payload_hash(BASE)


@pytest.mark.parametrize(
    "changed",
    [
        Record("p1", "ada2@x.com", "Ada@X.com", BASE.payload),  # match
        Record("p1", "ada@x.com", "ada@x.com", BASE.payload),  # match_value (only its case)
        Record("p1", "ada@x.com", "Ada@X.com", {**BASE.payload, "name": "Ada L"}),  # a value
        Record("p1", "ada@x.com", "Ada@X.com", {**BASE.payload, "phone": ""}),  # None → ""
        Record("p1", "ada@x.com", "Ada@X.com", {**BASE.payload, "description": None}),  # a new path
        Record("p1", "ada@x.com", "Ada@X.com", {"name": "Ada", "metadata.plan": "pro"}),  # a dropped path
        Record("p1", "ada@x.com", "Ada@X.com", {**BASE.payload, "metadata.plan": ["pro"]}),  # a list
    ],
)
def test_payload_hash_changes_with_what_a_write_depends_on(changed: Record) -> None:
    assert payload_hash(changed) != payload_hash(BASE)


# --------------------------------------------------------------------------------------------
# Digests and batched entries (what the sync engine holds in memory)


def test_synced_digests_cover_only_synced_profiles_with_a_payload(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    failed = LedgerEntry("eve@x.com", (), "d" * 64, status="failed", attempts=1, error="503")
    ledger.record({**ENTRIES, "p5": failed})
    synced = ledger.synced("")
    assert synced == {
        key_digest(k): state_digest(e.payload_hash) for k, e in ENTRIES.items() if e.payload_hash
    }
    assert key_digest("p5") not in synced and key_digest("p3") not in synced


def test_entries_fetches_the_asked_keys_in_batches(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    many = {f"k{i}": LedgerEntry(f"m{i}", (f"cus_{i}",), f"{i:064x}") for i in range(1203)}
    ledger.record(many)
    wanted = [f"k{i}" for i in range(0, 1203, 2)] + ["absent"]
    assert ledger.entries(wanted) == {key: many[key] for key in wanted if key in many}
    assert ledger.entries([]) == {}


# --------------------------------------------------------------------------------------------
# Destination and origin (columns added after the first release)


def test_an_older_table_gains_destination_and_origin(db: Backend) -> None:
    old_columns = (
        "pipeline_id VARCHAR(250) NOT NULL, profile_key VARCHAR(500) NOT NULL, match_value TEXT NOT NULL,"
        " customer_ids TEXT NOT NULL, payload_hash VARCHAR(64) NOT NULL, field_hashes TEXT NOT NULL,"
        " status VARCHAR(10) NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL,"
        " synced_at VARCHAR(40) NOT NULL, PRIMARY KEY (pipeline_id, profile_key)"
    )
    cursor = db.conn.cursor()
    cursor.execute(f"CREATE TABLE {db.table} ({old_columns})")
    cursor.execute(
        f"INSERT INTO {db.table} VALUES ('pipe', 'p1', 'ada@x.com', 'cus_1', '{'a' * 64}', '', 'synced', 0, '', 'x')"
    )
    db.conn.commit()
    cursor.close()
    ledger = db.ledger()
    ledger.ensure_table()
    ledger.ensure_table()  # twice: the columns are only added once
    assert ledger.entries(["p1"]) == {"p1": LedgerEntry("ada@x.com", ("cus_1",), "a" * 64)}
    # Synced before destinations were recorded: not trusted for any destination.
    assert ledger.synced("acct_1") == {}


def test_entries_keep_their_destination_and_origin_and_synced_is_per_destination(db: Backend) -> None:
    ledger = db.ledger()
    ledger.ensure_table()
    here = LedgerEntry("ada@x.com", ("cus_1",), "a" * 64, destination="acct_1", origin="created")
    there = LedgerEntry("bob@x.com", ("cus_2",), "b" * 64, destination="key:abc", origin="matched")
    ledger.record({"p1": here, "p2": there})
    assert ledger.entries(["p1", "p2"]) == {"p1": here, "p2": there}
    assert ledger.synced("acct_1") == {key_digest("p1"): state_digest("a" * 64)}
    assert ledger.synced("key:abc") == {key_digest("p2"): state_digest("b" * 64)}


def test_overlaps_name_the_other_pipelines_of_the_destination_and_the_shared_units(db: Backend) -> None:
    def entry(customer: str, destination: str, *units: str) -> LedgerEntry:
        hashes = "{" + ",".join(f'"{unit}":"0"' for unit in units) + "}"
        return LedgerEntry("m", (customer,), "a" * 64, hashes, destination=destination)

    a, b, c = db.ledger("a"), db.ledger("b"), db.ledger("c")
    a.ensure_table()
    a.record({"1": entry("cus_1", "acct_1", "name", "metadata.plan"), "2": entry("cus_2", "acct_1", "name")})
    b.record({"1": entry("cus_1", "acct_1", "name", "phone"), "3": entry("cus_3", "acct_1", "name")})
    c.record({"1": entry("cus_1", "acct_2", "name")})  # another Stripe: its cus_1 is another customer
    b.record({"9": entry("cus_2", "acct_1", "phone")})  # same customer, no shared unit

    assert list(a.overlaps("acct_1")) == [("b", "cus_1", frozenset({"name"}))]
    assert list(b.overlaps("acct_1")) == [("a", "cus_1", frozenset({"name"}))]
    assert list(c.overlaps("acct_2")) == []
    assert list(a.overlaps("acct_9")) == []
