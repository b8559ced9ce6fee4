"""What a listing of Stripe keeps in memory: the customers the run's misses need, not the account.

The customer API here is a double (an account of thousands of customers that localstripe would
take minutes to hold); the requests it would answer are Stripe's list pages, counted."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.sync import Syncer, SyncOptions


class Account:
    """``size`` customers ``u<i>@example.com``, listed 100 a page; writes are recorded."""

    def __init__(self, size: int) -> None:
        self.customers = [
            {"id": f"cus_{i}", "email": f"U{i}@Example.com", "name": f"U {i}"} for i in range(size)
        ]
        self.calls: Counter[str] = Counter()
        self.created: list[dict[str, Any]] = []

    def list_all(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self.customers), 100):
            self.calls["customers.list"] += 1
            yield from (dict(c) for c in self.customers[start : start + 100])

    def account_id(self) -> str | None:
        return "acct_big"

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        raise AssertionError("not expected")

    def find(self, customer_id: str) -> dict[str, Any] | None:
        self.calls["customers.retrieve"] += 1
        number = int(customer_id.removeprefix("cus_")) if customer_id.removeprefix("cus_").isdigit() else -1
        return dict(self.customers[number]) if 0 <= number < len(self.customers) else None

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        self.calls["customers.create"] += 1
        self.created.append(params)
        return f"cus_new_{len(self.created)}"

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        self.calls["customers.update"] += 1
        return customer_id

    def delete(self, customer_id: str) -> None:
        raise AssertionError("not expected")


def record(email: str, name: str) -> Record:
    return Record(email, email.lower(), email, {"name": name})


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    found = Ledger(sqlite3.connect(tmp_path / "state.db"), "?", "big")
    found.ensure_table()
    return found


def test_a_listing_keeps_only_the_customers_the_misses_need(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    account = Account(5_000)
    records = [
        record("u7@example.com", "Seven"),
        record("new1@example.com", "New"),
        record("new2@example.com", "New"),
    ]
    options = SyncOptions(
        pipeline_id="big", mode="create_and_update", stripe_field="email", destination="acct_big"
    )
    with caplog.at_level(logging.INFO, logger="krenalis_airflow.core.sync"):
        result = Syncer(account, ledger, options).run(lambda: iter(records))
    assert "Listed 5000 Stripe customers; kept 1, indexed by email" in caplog.text
    # Matched case-insensitively in the listing (U7@Example.com), created only what is new.
    assert (result.created, result.updated) == (2, 1)
    assert account.calls == {"customers.list": 50, "customers.create": 2, "customers.update": 1}
    assert sorted(p["email"] for p in account.created) == ["new1@example.com", "new2@example.com"]


def test_a_reconciliation_keeps_the_whole_listing(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    account = Account(1_000)
    records = [record("u7@example.com", "U 7")]
    options = SyncOptions(
        pipeline_id="big", mode="create_and_update", stripe_field="email", destination="acct_big"
    )
    Syncer(account, ledger, options).run(lambda: iter(records))
    with caplog.at_level(logging.INFO, logger="krenalis_airflow.core.sync"):
        result = Syncer(account, ledger, SyncOptions(**{**options.__dict__, "reconcile": True})).run(
            lambda: iter(records)
        )
    assert "Listed 1000 Stripe customers; kept 1000" in caplog.text
    assert (result.drifted, result.unchanged) == (0, 1)


def by_id(number: int) -> Record:
    return Record(f"p{number}", f"cus_{number}", f"cus_{number}", {"name": f"Renamed {number}"})


@pytest.mark.parametrize(
    ("size", "calls"),
    [
        (None, {"customers.list": 500}),  # size unknown: 300 misses are more than ID_LOOKUPS
        (50_000, {"customers.retrieve": 300}),  # known: 300 lookups beat 500 pages
        (20_000, {"customers.list": 200}),  # known: 200 pages beat 300 lookups
    ],
)
def test_matching_by_id_looks_up_or_lists_whichever_costs_fewer_reads(
    ledger: Ledger, size: int | None, calls: dict[str, int]
) -> None:
    account = Account(50_000 if size is None else size)
    step = len(account.customers) // 300
    records = [by_id(n * step) for n in range(300)]  # 300 misses, spread over the account
    options = SyncOptions(
        pipeline_id="big", mode="update_only", stripe_field="id", destination="acct_big", account_size=size
    )
    result = Syncer(account, ledger, options).run(lambda: iter(records))
    assert result.updated == 300
    assert {k: v for k, v in account.calls.items() if k != "customers.update"} == calls
    assert result.listed == (None if "customers.retrieve" in calls else len(account.customers))
