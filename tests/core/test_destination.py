"""Which Stripe a run writes to, and when it reconciles: ``core/destination.py`` on SQLite and
PostgreSQL (each PostgreSQL test uses its own table prefix and drops its tables)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.destination import (
    VALUES_BATCH,
    Destinations,
    ValueListing,
    is_account,
    key_fingerprint,
    reconcile_due,
)
from tests.core.warehouses import PG_DSN, state_store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str, str]]:
    """(connection, placeholder, table prefix)"""
    tables = ("stripe_accounts", "reconciled", "stripe_sizes", "stripe_value_listings", "stripe_values")
    with state_store(request.param, tmp_path, tables) as found:
        yield found


def test_a_fingerprint_names_key_and_base_url_without_the_key() -> None:
    key = "sk_test_" + "abcdef123456"
    one = key_fingerprint(key, "https://api.stripe.com")
    assert one == key_fingerprint(key, "https://api.stripe.com/")
    assert one != key_fingerprint(key, "http://127.0.0.1:8420")
    assert one != key_fingerprint(key + "x", "https://api.stripe.com")
    assert one.startswith("key:") and len(one) == 24 and "abcdef" not in one
    assert is_account("acct_123") and not is_account(one)


def test_the_account_is_read_once_per_key(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    reads: list[str] = []

    def read(answer: str | None) -> Any:
        def account() -> str | None:
            reads.append("read")
            return answer

        return account

    places = Destinations(conn, ph, prefix)
    assert places.resolve("key:1", read("acct_A")) == "acct_A"
    assert places.resolve("key:1", read("acct_other")) == "acct_A"  # a key never changes account
    assert places.resolve("key:2", read(None)) == "key:2"  # this key may not read the account
    assert places.resolve("key:2", read("acct_A")) == "key:2"  # … and is not asked again
    assert reads == ["read", "read"]


def test_a_dry_run_reads_what_is_there_and_writes_nothing(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    dry = Destinations(conn, ph, prefix, writable=False)  # before any real run: no tables
    assert dry.resolve("key:1", lambda: "acct_A") == "acct_A"
    assert dry.reconciled_at("p", "acct_A") is None
    dry.record_reconciled("p", "acct_A", datetime.now(UTC))
    real = Destinations(conn, ph, prefix)
    assert real.reconciled_at("p", "acct_A") is None
    assert real.resolve("key:1", lambda: None) == "key:1", "the dry run cached nothing"


def test_reconciliations_are_remembered_per_pipeline_and_destination(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)
    first, later = datetime(2026, 11, 1, 8, tzinfo=UTC), datetime(2026, 11, 2, 9, tzinfo=UTC)
    places.record_reconciled("p", "acct_A", first)
    places.record_reconciled("p", "acct_A", later)
    places.record_reconciled("q", "acct_A", first)
    assert places.reconciled_at("p", "acct_A") == later
    assert places.reconciled_at("q", "acct_A") == first
    assert places.reconciled_at("p", "acct_B") is None


NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
DAY = timedelta(hours=24)


@pytest.mark.parametrize(
    ("requested", "every", "last", "expected"),
    [
        (True, None, NOW, "asked for (reconcile: true)"),
        (False, None, None, ""),  # reconcile: off
        (False, DAY, None, "first run on this destination"),
        (False, DAY, NOW - timedelta(hours=23), ""),
        (False, DAY, NOW - DAY, "last reconciled 2026-11-29T12:00+00:00, export.reconcile is every 24h"),
        (
            False,
            timedelta(minutes=30),
            NOW - timedelta(hours=1),
            "last reconciled 2026-11-30T11:00+00:00, export.reconcile is every 30m",
        ),
    ],
)
def test_reconcile_due(
    requested: bool, every: timedelta | None, last: datetime | None, expected: str
) -> None:
    assert reconcile_due(requested, every, last, NOW) == expected


def test_the_size_of_a_destination_is_remembered_for_the_next_run(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)
    assert places.size("acct_A") is None
    places.record_size("acct_A", 1_000_000)
    places.record_size("acct_A", 1_000_042)
    assert places.size("acct_A") == 1_000_042
    Destinations(conn, ph, prefix, writable=False).record_size("acct_A", 1)  # a dry run writes nothing
    assert places.size("acct_A") == 1_000_042 and places.size("acct_B") is None


# -- the value index: generations ----------------------------------------------------------------

T1 = datetime(2026, 11, 1, 8, tzinfo=UTC)
T2 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def other(conn: Any, tmp_path: Path) -> Any:
    """A second connection to the same state store: another run, another pipeline."""
    if isinstance(conn, sqlite3.Connection):
        return sqlite3.connect(tmp_path / "state.db", timeout=0)  # never waits: a lock fails at once
    import psycopg2

    return psycopg2.connect(PG_DSN)


def values_of(places: Destinations, generation: int) -> int:
    cursor = places._conn.cursor()
    cursor.execute(f"SELECT COUNT(*) FROM {places.values} WHERE generation = {places._ph}", (generation,))
    count = int(cursor.fetchone()[0])
    cursor.close()
    places._conn.commit()
    return count


def record_ann(places: Destinations) -> None:
    """A complete listing of acct_A by email that saw ann@x.com (cus_1)."""
    writer = places.begin_values("acct_A", "email", T1)
    assert writer is not None
    writer.add("ann@x.com", "cus_1")
    assert writer.finish()


def generations(places: Destinations) -> dict[int, str]:
    """generation → state, of every generation recorded."""
    cursor = places._conn.cursor()
    cursor.execute(f"SELECT generation, state FROM {places.listings}")
    found = {int(g): str(state) for g, state in cursor.fetchall()}
    cursor.close()
    places._conn.commit()
    return found


def test_a_generation_is_read_only_once_complete(store: tuple[Any, str, str], tmp_path: Path) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)
    reader = other(conn, tmp_path)
    try:
        seen = Destinations(reader, ph, prefix, writable=False)
        writer = places.begin_values("acct_A", "email", T1)
        assert writer is not None
        for n in range(VALUES_BATCH * 2 + 7):
            writer.add(f"u{n}@example.com", f"cus_{n}")
        assert values_of(places, writer.generation) == VALUES_BATCH * 2  # two batches written, committed
        # Meanwhile the store is not locked: another pipeline writes (SQLite: no wait allowed).
        Destinations(reader, ph, prefix).record_size("acct_B", 5)
        assert seen.value_listing("acct_A", "email") is None  # a partial listing is never read
        assert writer.finish()
        listing = seen.value_listing("acct_A", "email")
        assert listing == ValueListing("acct_A", "email", writer.generation, T1)
        found = seen.listed_values(listing, ["u0@example.com", f"u{VALUES_BATCH * 2 + 6}@example.com", "x"])
        assert found == {"u0@example.com": ["cus_0"], f"u{VALUES_BATCH * 2 + 6}@example.com": ["cus_10006"]}
        assert seen.value_listing("acct_A", "metadata.profile_id") is None  # one index per field
        assert seen.value_listing("acct_B", "email") is None
    finally:
        reader.close()


def test_many_values_are_looked_up_in_batches(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)
    writer = places.begin_values("acct_A", "metadata.profile_id", T1)
    assert writer is not None
    for n in range(3_000):
        writer.add(str(n), f"cus_{n}")
    writer.add("7", "cus_twin")
    writer.finish()
    listing = places.value_listing("acct_A", "metadata.profile_id")
    assert listing is not None
    found = places.listed_values(listing, [str(n) for n in range(0, 4_000, 2)])  # 2,000: four queries
    assert found is not None
    assert len(found) == 1_500 and found["2998"] == ["cus_2998"] and sorted(found["6"]) == ["cus_6"]
    assert sorted((places.listed_values(listing, ["7"]) or {})["7"]) == ["cus_7", "cus_twin"]


def test_two_listings_at_once_never_corrupt_each_other(store: tuple[Any, str, str], tmp_path: Path) -> None:
    conn, ph, prefix = store
    second = other(conn, tmp_path)
    try:
        one, two = Destinations(conn, ph, prefix), Destinations(second, ph, prefix)
        kept = one.begin_values("acct_A", "email", T1)  # a third listing, still being written at the end
        assert kept is not None
        kept.add("keep@x.com", "cus_k")
        early = one.begin_values("acct_A", "email", T1)
        late = two.begin_values("acct_A", "email", T2)
        assert early is not None and late is not None and early.generation != late.generation
        for n in range(VALUES_BATCH + 10):  # interleaved batches
            early.add(f"u{n}@example.com", f"cus_{n}")
            late.add(f"u{n}@example.com", f"cus_{n}")
        assert late.finish()  # the later listing switches first: its generation is read …
        listing = one.value_listing("acct_A", "email")
        assert listing is not None and listing.generation == late.generation and listing.started == T2
        # … and the other, still being written, keeps every row it wrote.
        assert values_of(one, early.generation) == VALUES_BATCH
        assert generations(one)[early.generation] == "writing"
        assert early.finish()  # the later switch wins
        listing = two.value_listing("acct_A", "email")
        assert listing is not None and listing.generation == early.generation and listing.started == T1
        assert values_of(one, early.generation) == VALUES_BATCH + 10
        assert values_of(one, late.generation) == 0  # replaced: dropped by the switch
        assert late.generation not in generations(one)
        assert two.listed_values(listing, ["u3@example.com"]) == {"u3@example.com": ["cus_3"]}
        assert generations(one)[kept.generation] == "writing"  # begun today: not abandoned
    finally:
        second.close()


def test_replaced_abandoned_and_failed_generations_are_dropped(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)

    def listed(destination: str, field: str, count: int) -> int:
        writer = places.begin_values(destination, field, T1)
        assert writer is not None
        for n in range(count):
            writer.add(f"v{n}", f"cus_{n}")
        assert writer.finish()
        return writer.generation

    other_field = listed("acct_A", "metadata.id", 3)
    crashed = places.begin_values("acct_B", "email", T1)  # a listing whose process died
    failed = places.begin_values("acct_A", "email", T1)  # one whose listing raised
    slow = places.begin_values("acct_A", "email", T1)  # one still listing, for longer than a day
    assert crashed is not None and failed is not None and slow is not None
    for writer in (crashed, failed, slow):
        for n in range(VALUES_BATCH + 1):
            writer.add(f"v{n}", f"cus_{n}")
    failed.abandon()
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="seconds")
    cursor = conn.cursor()
    cursor.execute(
        f"UPDATE {places.listings} SET begun_at = {ph} WHERE generation IN ({ph}, {ph})",
        (two_days_ago, crashed.generation, slow.generation),
    )
    conn.commit()
    young = places.begin_values("acct_A", "email", T1)  # one still listing, begun today
    assert young is not None
    young.add("v0", "cus_0")
    first = listed("acct_A", "email", 2)
    assert generations(places) == {other_field: "current", first: "current", young.generation: "writing"}
    assert [values_of(places, g.generation) for g in (crashed, failed, slow)] == [0, 0, 0]
    assert values_of(places, young.generation) == 0  # nothing flushed yet: still in its batch
    second = listed("acct_A", "email", 2)
    assert generations(places) == {other_field: "current", second: "current", young.generation: "writing"}
    assert values_of(places, first) == 0 and values_of(places, other_field) == 3
    # The slow listing, taken for abandoned, ends: it does not replace the one read now.
    assert not slow.finish()
    assert generations(places) == {other_field: "current", second: "current", young.generation: "writing"}
    assert values_of(places, slow.generation) == 0
    assert young.finish()  # and the young one, ending last, wins
    assert generations(places) == {other_field: "current", young.generation: "current"}
    assert values_of(places, second) == 0 and values_of(places, young.generation) == 1


def test_a_generation_dropped_while_read_is_not_trusted(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)
    record_ann(places)
    listing = places.value_listing("acct_A", "email")
    assert listing is not None and places.listed_values(listing, ["ann@x.com"]) == {"ann@x.com": ["cus_1"]}
    places._drop(listing.generation)  # what a newer listing's switch does before deleting its rows
    assert values_of(places, listing.generation) == 1
    assert places.listed_values(listing, ["ann@x.com"]) is None  # may be partial: list instead
    assert places.value_listing("acct_A", "email") is None


def test_a_dry_run_records_no_value_and_reads_what_is_there(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    dry = Destinations(conn, ph, prefix, writable=False)
    assert dry.value_listing("acct_A", "email") is None  # no tables yet
    assert dry.begin_values("acct_A", "email", T1) is None and dry.drop_stale_values() == 0
    places = Destinations(conn, ph, prefix)
    record_ann(places)
    listing = dry.value_listing("acct_A", "email")
    assert listing is not None and dry.listed_values(listing, ["ann@x.com"]) == {"ann@x.com": ["cus_1"]}
