"""What a listing of Stripe keeps in memory: the customers the run's misses need, not the account;
and when lookups replace the listing: retrieves by id, and matching by email or metadata, the value
index the last whole listing recorded (``Destinations``) with Stripe's customer events since.

The customer API here is a double (an account of thousands of customers that localstripe would
take minutes to hold); the requests it would answer are Stripe's list pages, retrieves and event
pages (``created[gt]``), counted. It has no ``email=`` filter: the sync must not need one."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import stripe

from krenalis_airflow.core.destination import Destinations, ValueListing
from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions


class Account:
    """``size`` customers ``U<i>@Example.com`` (``u<i>@example.com`` when ``canonical``), created a
    day ago, listed 100 a page; writes are recorded, and each write (the run's or ``edit``'s) is an
    event, as in Stripe."""

    def __init__(self, size: int, *, canonical: bool = False) -> None:
        address = "u{}@example.com" if canonical else "U{}@Example.com"
        self.customers: dict[str, dict[str, Any]] = {
            f"cus_{i}": {"id": f"cus_{i}", "email": address.format(i), "name": f"U {i}"} for i in range(size)
        }
        self.calls: Counter[str] = Counter()
        self.created: list[dict[str, Any]] = []
        self.events_readable = True
        day_ago = int(time.time()) - 86_400
        self.events = [(day_ago, "customer.created", dict(c)) for c in self.customers.values()]

    def list_all(self) -> Iterator[dict[str, Any]]:
        listed = list(self.customers.values())
        for start in range(0, len(listed), 100):
            self.calls["customers.list"] += 1
            yield from (dict(c) for c in listed[start : start + 100])

    def account_id(self) -> str | None:
        return "acct_big"

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        raise AssertionError("not expected")

    def find(self, customer_id: str) -> dict[str, Any] | None:
        self.calls["customers.retrieve"] += 1
        found = self.customers.get(customer_id)
        return None if found is None else dict(found)

    def customer_events(self, since: int) -> Iterator[tuple[list[dict[str, Any]], bool]] | None:
        if not self.events_readable:
            self.calls["events.list"] += 1  # answered 403 (or 404 by localstripe)
            return None
        newest_first = [
            {"type": kind, "created": when, "object": dict(snapshot)}
            for when, kind, snapshot in reversed(self.events)
            if when > since
        ]

        def pages() -> Iterator[tuple[list[dict[str, Any]], bool]]:
            for start in range(0, max(len(newest_first), 1), 100):
                self.calls["events.list"] += 1
                yield newest_first[start : start + 100], start + 100 < len(newest_first)

        return pages()

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        self.calls["customers.create"] += 1
        self.created.append(params)
        customer_id = f"cus_new_{len(self.created)}"
        self.edit(customer_id, {"id": customer_id, **params}, "customer.created")
        return customer_id

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        self.calls["customers.update"] += 1
        self.edit(customer_id, params)
        return customer_id

    def edit(self, customer_id: str, fields: dict[str, Any], kind: str = "customer.updated") -> None:
        """A write (by anyone), with its event; ``customer.deleted`` removes the customer."""
        customer = self.customers.setdefault(customer_id, {"id": customer_id})
        customer.update(fields)
        if kind == "customer.deleted":
            del self.customers[customer_id]
        self.events.append((int(time.time()), kind, dict(customer)))

    def delete(self, customer_id: str) -> None:
        raise AssertionError("not expected")


def record(email: str, name: str) -> Record:
    return Record(email, email.lower(), email, {"name": name})


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    found = Ledger(sqlite3.connect(tmp_path / "state.db"), "?", "big")
    found.ensure_table()
    return found


@pytest.fixture
def places(ledger: Ledger) -> Destinations:
    """The state store's value index, on the ledger's connection (as ``run.sync_records`` has it)."""
    return Destinations(ledger._conn, "?", "krenalis_")


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


# -- matching by email or metadata: the value index the last listing recorded, and the events since --


def listed_once(
    account: Account, ledger: Ledger, places: Destinations, field: str = "email"
) -> tuple[SyncOptions, ValueListing]:
    """The options of a run after one that listed ``account`` whole (the size ``run.sync_records``
    reads back from the state store) and the value index that listing recorded; counters reset."""
    options = SyncOptions(
        pipeline_id="big", mode="create_and_update", stripe_field=field, destination="acct_big"
    )
    first_one = record(f"first{len(account.created)}@example.com", "First")  # a miss: the run lists
    if field != "email":
        first_one = Record("first", "first", "first", {"name": "First"})
    first = Syncer(account, ledger, options, places).run(lambda: iter([first_one]))
    assert first.listed is not None
    listing = places.value_listing("acct_big", field)
    assert listing is not None
    account.calls.clear()
    return replace(options, account_size=first.listed), listing


def reads(account: Account) -> dict[str, int]:
    return {k: v for k, v in account.calls.items() if k not in ("customers.create", "customers.update")}


def generations(places: Destinations) -> list[tuple[str, str]]:
    """(field, state) of every generation of the value index recorded."""
    cursor = places._conn.cursor()
    cursor.execute(f"SELECT stripe_field, state FROM {places.listings} ORDER BY begun_at")
    return [tuple(row) for row in cursor.fetchall()]


def test_new_emails_in_a_big_account_are_found_in_the_recorded_listing(
    ledger: Ledger, places: Destinations
) -> None:
    account = Account(50_000, canonical=True)
    options, listing = listed_once(account, ledger, places)
    records = [record(f"new{n}@example.com", "New") for n in range(300)]
    result = Syncer(account, ledger, options, places).run(lambda: iter(records))
    assert result.created == 300 and result.listed is None
    # No email lookup, no listing: the one page of events since the listing (the first run's create).
    assert reads(account) == {"events.list": 1}
    assert places.value_listing("acct_big", "email") == listing  # nothing recorded again
    assert generations(places) == [("email", "current")]


def test_customers_stored_in_another_form_or_written_since_are_found_not_created_again(
    ledger: Ledger, places: Destinations
) -> None:
    account = Account(50_000, canonical=True)
    account.edit("cus_ann", {"email": "Ann@X.com", "name": "Ann"}, "customer.created")  # before the listing
    account.edit("cus_dan", {"email": "Dan@W.com", "name": "Dan"}, "customer.created")
    account.edit("cus_eve", {"email": " eve@v.com ", "name": "Eve"}, "customer.created")
    account.events = [(when - 86_400, kind, c) for when, kind, c in account.events]  # a day ago
    options, _ = listed_once(account, ledger, places)
    account.edit("cus_7", {"email": "Bob@Y.com"})  # after the listing: only its events tell
    account.edit("cus_carl", {"email": "Carl@Z.com", "name": "Carl"}, "customer.created")
    account.edit("cus_dan", {}, "customer.deleted")
    account.edit("cus_3", {"name": "Three"})  # still u3@example.com, then moved away from it:
    account.edit("cus_3", {"email": "Three@X.com"})  # its latest event tells; not retrieved
    account.edit("cus_8", {"email": "Frank@U.com"})  # not a profile of this run: never retrieved
    account.calls.clear()
    records = [
        record("ann@x.com", "Ann 2"),
        record("BOB@y.com", "Bob"),
        record("carl@z.com", "Carl 2"),
        record("dan@w.com", "Dan 2"),
        record("eve@v.com", "Eve 2"),
        record("gus@t.com", "Gus"),
        record("u3@example.com", "Three"),
    ]
    result = Syncer(account, ledger, options, places).run(lambda: iter(records))
    assert (result.created, result.updated) == (3, 4)
    created = sorted(p["email"] for p in account.created[1:])
    assert created == ["dan@w.com", "gus@t.com", "u3@example.com"]  # Dan was deleted, cus_3 moved
    # Ann and Eve from the recorded listing, Bob and Carl from the events; Dan's deletion and
    # cus_3's move are in the events too: they cost no retrieve.
    assert reads(account) == {"events.list": 1, "customers.retrieve": 4}
    assert account.customers["cus_7"]["name"] == "Bob" and account.customers["cus_eve"]["name"] == "Eve 2"
    assert (
        account.customers["cus_ann"]["name"] == "Ann 2" and account.customers["cus_carl"]["name"] == "Carl 2"
    )


def test_several_customers_with_one_email_are_all_found(ledger: Ledger, places: Destinations) -> None:
    account = Account(20_000, canonical=True)
    options, _ = listed_once(account, ledger, places)
    account.edit("cus_twin", {"email": "U7@example.com"}, "customer.created")  # cus_7 is u7@example.com
    result = Syncer(account, ledger, options, places).run(lambda: iter([record("u7@example.com", "Seven")]))
    assert [r.kind for r in result.rejections] == ["several Stripe customers"]
    assert "cus_7" in result.rejections[0].reason and "cus_twin" in result.rejections[0].reason
    assert reads(account) == {"events.list": 1, "customers.retrieve": 2}


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("never listed", "no whole listing of this account by email is recorded yet"),
        ("events unreadable", "Stripe's events cannot be read"),
        ("listed 31 days ago", "is older than 29 days: Stripe keeps events 30"),
        ("size unknown", "the account's size is not recorded"),
        (
            "events dearer",
            "200 pages of events since the last listing and 0 customers to retrieve: no cheaper",
        ),
        ("candidates dearer", "200 recorded customers to retrieve: no cheaper than 200 pages"),
        ("full resync", "a full resync compares every profile with a fresh listing"),
    ],
)
def test_the_recorded_listing_gives_way_to_a_listing_when_unsafe_or_dearer(
    ledger: Ledger, places: Destinations, caplog: pytest.LogCaptureFixture, case: str, why: str
) -> None:
    account = Account(20_000, canonical=True)
    listing: ValueListing | None = None
    if case == "never listed":
        options = SyncOptions(
            pipeline_id="big", mode="create_and_update", stripe_field="email", destination="acct_big"
        )
        options = replace(options, account_size=20_000)
    else:
        options, listing = listed_once(account, ledger, places)
    account.events_readable = case != "events unreadable"
    if case == "listed 31 days ago":
        assert listing is not None
        old = (listing.started - timedelta(days=31)).isoformat(timespec="seconds")
        places._conn.execute(f"UPDATE {places.listings} SET started_at = ?", (old,))
        places._conn.commit()
    if case == "size unknown":
        options = replace(options, account_size=None)
    if case == "full resync":
        options = replace(options, full_resync=True)
    if case == "events dearer":  # 250 pages of events since the listing
        for n in range(25_000):
            account.edit(f"cus_{n % 20_000}", {"name": f"Edited {n}"})
        account.calls.clear()
    records = [record(f"new{n}@example.com", "New") for n in range(300)]
    if case == "candidates dearer":  # 200 existing customers to retrieve cost the 200 pages
        records = [record(f"u{n}@example.com", "Renamed") for n in range(200)]
    size = len(account.customers)
    with caplog.at_level(logging.INFO, logger="krenalis_airflow.core.sync"):
        result = Syncer(account, ledger, options, places).run(lambda: iter(records))
    assert "Matching by email: listing the account (" in caplog.text and why in caplog.text
    assert (result.created, result.updated) == ((0, 200) if case == "candidates dearer" else (300, 0))
    assert result.listed == size
    assert account.calls["events.list"] == {"events unreadable": 1, "events dearer": 200}.get(case, 0)
    assert "customers.retrieve" not in account.calls
    # The listing recorded a new generation; the one it replaced is gone.
    assert generations(places) == [("email", "current")]
    now = places.value_listing("acct_big", "email")
    assert now is not None and (listing is None or now.generation != listing.generation)


def test_a_listing_records_every_value_and_when_it_began(ledger: Ledger, places: Destinations) -> None:
    account = Account(1_000, canonical=False)  # every email in upper case
    account.edit("cus_blank", {"email": "", "name": "No email"}, "customer.created")
    account.edit("cus_none", {"email": None, "name": "No email"}, "customer.created")
    before = datetime.now(UTC)
    _, listing = listed_once(account, ledger, places)
    assert before - timedelta(minutes=6) < listing.started < before  # a margin for Stripe's clock
    found = places.listed_values(listing, ["u7@example.com", "U7@Example.com", "", "first0@example.com"])
    assert found == {"u7@example.com": ["cus_7"]}  # normalised; blank emails are not recorded
    cursor = places._conn.cursor()
    cursor.execute(f"SELECT COUNT(*) FROM {places.values}")
    assert cursor.fetchone()[0] == 1_000


def test_a_listing_that_fails_records_nothing_readable(ledger: Ledger, places: Destinations) -> None:
    account = Account(12_000, canonical=True)

    def broken() -> Iterator[dict[str, Any]]:
        for number, customer in enumerate(Account.list_all(account)):
            if number == 11_000:  # past two batches of values already written
                raise RuntimeError("Stripe went away")
            yield customer

    account.list_all = broken  # type: ignore[method-assign]
    options = SyncOptions(
        pipeline_id="big", mode="create_and_update", stripe_field="email", destination="acct_big"
    )
    with pytest.raises(RuntimeError, match="Stripe went away"):
        Syncer(account, ledger, options, places).run(lambda: iter([record("new@example.com", "New")]))
    assert places.value_listing("acct_big", "email") is None
    assert generations(places) == [("email", "dropping")]  # deleted by the next listing's switch
    del account.list_all
    listed_once(account, ledger, places)
    assert generations(places) == [("email", "current")]


def profile(number: int | str, name: str) -> Record:
    return Record(f"p{number}", str(number), str(number), {"name": name})


def test_a_metadata_field_is_found_in_the_recorded_listing_too(ledger: Ledger, places: Destinations) -> None:
    account = Account(50_000, canonical=True)
    for customer in account.customers.values():
        customer["metadata"] = {"profile_id": customer["id"].removeprefix("cus_")}
    options, listing = listed_once(account, ledger, places, "metadata.profile_id")
    assert places.listed_values(listing, ["7", "x"]) == {"7": ["cus_7"]}
    account.edit("cus_9", {"metadata": {"profile_id": " 70000 "}})  # since the listing, in another form
    account.calls.clear()
    records = [profile(f"new{n}", "New") for n in range(300)] + [profile(7, "Seven"), profile(70000, "Nine")]
    result = Syncer(account, ledger, options, places).run(lambda: iter(records))
    assert (result.created, result.updated, result.listed) == (300, 2, None)
    assert reads(account) == {"events.list": 1, "customers.retrieve": 2}  # not 500 pages
    assert account.customers["cus_7"]["name"] == "Seven" and account.customers["cus_9"]["name"] == "Nine"
    assert generations(places) == [("metadata.profile_id", "current")]


def test_a_dry_run_records_nothing_and_still_reads(ledger: Ledger, places: Destinations) -> None:
    account = Account(20_000, canonical=True)
    options = SyncOptions(
        pipeline_id="big",
        mode="create_and_update",
        stripe_field="email",
        destination="acct_big",
        dry_run=True,
    )
    dry = Destinations(places._conn, "?", "dry_", writable=False)  # before any real run: no tables
    result = Syncer(account, ledger, options, dry).run(lambda: iter([record("new@example.com", "New")]))
    assert result.listed == 20_000 and dry.value_listing("acct_big", "email") is None
    real, _ = listed_once(account, ledger, places)
    dry = Destinations(places._conn, "?", "krenalis_", writable=False)
    options = replace(real, dry_run=True)
    records = [record(f"new{n}@example.com", "New") for n in range(300)] + [record("u7@example.com", "Seven")]
    result = Syncer(account, ledger, options, dry).run(lambda: iter(records))
    assert (result.created, result.updated, result.listed) == (300, 1, None)
    assert reads(account) == {"events.list": 1, "customers.retrieve": 1}
    assert generations(places) == [("email", "current")] and not account.created[1:]


class EventsServer(stripe.HTTPClient):
    """Answers ``GET /v1/events`` with ``pages`` in turn (or ``status`` with an error), noting each URL."""

    name = "events-double"

    def __init__(self, pages: list[dict[str, Any]], status: int = 200) -> None:
        super().__init__()
        self.pages, self.status = pages, status
        self.urls: list[str] = []

    def request(
        self, method: str, url: str, headers: Any, post_data: Any = None, *, _usage: Any = None
    ) -> tuple[str, int, Any]:
        self.urls.append(unquote(url))
        if self.status != 200:
            return json.dumps({"error": {"type": "invalid_request_error", "message": "no"}}), self.status, {}
        return json.dumps(self.pages[len(self.urls) - 1]), 200, {}

    def close(self) -> None:
        pass


def event(number: int, kind: str, email: str) -> dict[str, Any]:
    customer = {"id": f"cus_{number}", "object": "customer", "email": email, "metadata": {}}
    return {
        "id": f"evt_{number}",
        "object": "event",
        "type": kind,
        "created": number,
        "data": {"object": customer},
    }


def test_stripe_customer_events_are_read_a_page_at_a_time_or_not_at_all() -> None:
    server = EventsServer(
        [
            {"object": "list", "data": [event(3, "customer.updated", "Bob@Y.com")], "has_more": True},
            {"object": "list", "data": [event(2, "customer.deleted", "x@y.com")], "has_more": False},
        ]
    )
    pages = StripeCustomers(stripe.StripeClient("sk_test_x", http_client=server)).customer_events(1_000)
    assert pages is not None and len(server.urls) == 1  # the first page is read at once
    found = list(pages)
    assert [
        (e["type"], e["object"]["id"], e["object"]["email"], more) for page, more in found for e in page
    ] == [
        ("customer.updated", "cus_3", "Bob@Y.com", True),
        ("customer.deleted", "cus_2", "x@y.com", False),
    ]
    asked = "types[0]=customer.created&types[1]=customer.updated&types[2]=customer.deleted&created[gt]=1000"
    assert asked in server.urls[0] and "limit=100" in server.urls[0]
    assert server.urls[1].endswith("&starting_after=evt_3")
    for status in (403, 404):  # a key without Events: read; an API without events (localstripe)
        refused = StripeCustomers(stripe.StripeClient("sk_test_x", http_client=EventsServer([], status)))
        assert refused.customer_events(1_000) is None and refused.calls == {"events.list": 1}
