"""Which Stripe a run writes to, and when it reconciles: ``core/destination.py`` on SQLite and
PostgreSQL (each PostgreSQL test uses its own table prefix and drops its tables)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.destination import (
    Destinations,
    WholeListing,
    is_account,
    key_fingerprint,
    reconcile_due,
)
from tests.core.warehouses import state_store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str, str]]:
    """(connection, placeholder, table prefix)"""
    tables = ("stripe_accounts", "reconciled", "stripe_sizes", "stripe_listings", "stripe_odd_emails")
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


def test_each_whole_listing_replaces_the_odd_emails_it_saw(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    places = Destinations(conn, ph, prefix)
    assert places.last_listing("acct_A") is None
    first = WholeListing(
        datetime(2026, 11, 1, 8, tzinfo=UTC), (("ann@x.com", "cus_1"), ("bob@y.com", "cus_2"))
    )
    places.record_listing("acct_A", first)
    places.record_listing("acct_B", WholeListing(first.started, (("carl@z.com", "cus_3"),)))
    found = places.last_listing("acct_A")
    assert found is not None and found.started == first.started
    assert sorted(found.odd_emails or ()) == [("ann@x.com", "cus_1"), ("bob@y.com", "cus_2")]
    later = WholeListing(
        datetime(2026, 11, 2, 9, tzinfo=UTC), (("bob@y.com", "cus_2"), ("dan@w.com", "cus_4"))
    )
    places.record_listing("acct_A", later)  # what the new listing saw, nothing of the old one
    found = places.last_listing("acct_A")
    assert found is not None and found.started == later.started
    assert sorted(found.odd_emails or ()) == [("bob@y.com", "cus_2"), ("dan@w.com", "cus_4")]
    places.record_listing("acct_A", WholeListing(later.started, None))  # too many to keep
    assert places.last_listing("acct_A") == WholeListing(later.started, None)
    places.record_listing("acct_A", WholeListing(later.started, ()))  # then none at all
    assert places.last_listing("acct_A") == WholeListing(later.started, ())
    assert places.last_listing("acct_B") == WholeListing(first.started, (("carl@z.com", "cus_3"),))
    Destinations(conn, ph, prefix, writable=False).record_listing("acct_B", later)  # a dry run writes nothing
    assert places.last_listing("acct_B") == WholeListing(first.started, (("carl@z.com", "cus_3"),))


def test_a_dry_run_before_any_listing_reads_none(store: tuple[Any, str, str]) -> None:
    conn, ph, prefix = store
    assert Destinations(conn, ph, prefix, writable=False).last_listing("acct_A") is None  # no tables yet
