"""The sync engine against real localstripe over HTTP, with an SQLite ledger. No Airflow here."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import stripe

from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions, SyncResult
from krenalis_airflow.exceptions import RetryableSyncError, TerminalSyncError


def record(key: str, email: str, **payload: Any) -> Record:
    return Record(key, email.strip().lower(), email.strip(), payload)


class RecordingApi(StripeCustomers):
    """The real client, remembering the idempotency keys it sent."""

    def __init__(self, client: stripe.StripeClient) -> None:
        super().__init__(client)
        self.keys: list[str] = []

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        self.keys.append(idempotency_key)
        return super().create(params, idempotency_key)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    ledger = Ledger(conn, "?", "test_pipeline")
    ledger.ensure_table()
    return ledger


@pytest.fixture
def sync(stripe_client: stripe.StripeClient, ledger: Ledger) -> Callable[..., SyncResult]:
    def run(records: list[Record], **options: Any) -> SyncResult:
        opts = SyncOptions(
            **{
                "pipeline_id": "test_pipeline",
                "mode": "create_and_update",
                "stripe_field": "email",
                **options,
            }
        )
        return Syncer(StripeCustomers(stripe_client), ledger, opts).run(lambda: iter(records))

    return run


def customers(client: stripe.StripeClient) -> list[dict[str, Any]]:
    return [c.to_dict() for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()]


def by_email(client: stripe.StripeClient) -> dict[str, dict[str, Any]]:
    return {c["email"]: c for c in customers(client)}


def test_first_run_creates_rerun_writes_nothing_and_k_changes_write_k(sync, stripe_client) -> None:
    records = [
        record(f"p{i}", f"user{i}@example.com", name=f"User {i}", **{"metadata.plan": "pro"})
        for i in range(12)
    ]
    first = sync(records)
    assert (first.created, first.updated, first.unchanged) == (12, 0, 0)
    assert first.api_calls["customers.create"] == 12
    stored = by_email(stripe_client)
    assert stored["user3@example.com"]["name"] == "User 3"
    assert stored["user3@example.com"]["metadata"] == {"plan": "pro"}

    second = sync(records)
    assert (second.created, second.updated, second.unchanged) == (0, 0, 12)
    assert sum(second.api_calls.values()) == 0  # the ledger answers: not even a list call

    changed = list(records)
    for i in (2, 5, 7):
        changed[i] = record(f"p{i}", f"user{i}@example.com", name=f"Renamed {i}", **{"metadata.plan": "pro"})
    third = sync(changed)
    assert (third.created, third.updated, third.unchanged) == (0, 3, 9)
    assert dict(third.api_calls) == {"customers.update": 3}
    assert by_email(stripe_client)["user5@example.com"]["name"] == "Renamed 5"
    assert len(customers(stripe_client)) == 12


def test_email_matching_ignores_case_and_spaces(sync, stripe_client) -> None:
    existing = stripe_client.v1.customers.create(params={"email": " Ada@Example.COM ", "name": "Old"})
    result = sync([record("p1", "ada@example.com", name="Ada Lovelace")])
    assert (result.created, result.updated) == (0, 1)
    assert stripe_client.v1.customers.retrieve(existing.id).name == "Ada Lovelace"
    assert len(customers(stripe_client)) == 1


def test_customer_already_holding_the_payload_is_not_written(sync, stripe_client) -> None:
    stripe_client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"plan": "pro"}}
    )
    result = sync([record("p1", "ada@example.com", name="Ada", **{"metadata.plan": "pro"})])
    assert (result.created, result.updated, result.unchanged) == (0, 0, 1)
    assert "customers.update" not in result.api_calls
    again = sync([record("p1", "ada@example.com", name="Ada", **{"metadata.plan": "pro"})])
    assert sum(again.api_calls.values()) == 0  # recorded in the ledger without a write


def test_create_only_and_update_only(sync, stripe_client) -> None:
    stripe_client.v1.customers.create(params={"email": "old@example.com", "name": "Old"})
    records = [
        record("p1", "old@example.com", name="New name"),
        record("p2", "new@example.com", name="Newcomer"),
    ]
    only_update = sync(records, mode="update_only")
    assert (only_update.created, only_update.updated, sum(only_update.skipped.values())) == (0, 1, 1)
    assert "new@example.com" not in by_email(stripe_client)

    stripe_client.v1.customers.create(params={"email": "third@example.com", "name": "Third"})
    only_create = sync([*records, record("p3", "third@example.com", name="Changed")], mode="create_only")
    assert (only_create.created, only_create.updated) == (1, 0)
    assert by_email(stripe_client)["third@example.com"]["name"] == "Third"  # never updated
    assert by_email(stripe_client)["new@example.com"]["name"] == "Newcomer"


def test_metadata_matching_creates_with_the_matched_key(stripe_client, ledger) -> None:
    stripe_client.v1.customers.create(params={"name": "Known", "metadata": {"profile_id": "p1"}})
    opts = SyncOptions(
        pipeline_id="test_pipeline", mode="create_and_update", stripe_field="metadata.profile_id"
    )
    records = [
        Record("p1", "p1", "p1", {"name": "Known renamed"}),
        Record("p2", "p2", "p2", {"name": "Fresh"}),
    ]
    result = Syncer(StripeCustomers(stripe_client), ledger, opts).run(lambda: iter(records))
    assert (result.created, result.updated) == (1, 1)
    by_profile = {c["metadata"]["profile_id"]: c for c in customers(stripe_client)}
    assert by_profile["p1"]["name"] == "Known renamed"
    assert by_profile["p2"]["name"] == "Fresh"


def test_id_matching_updates_by_customer_id(stripe_client, ledger) -> None:
    target = stripe_client.v1.customers.create(params={"email": "x@example.com", "name": "Before"})
    opts = SyncOptions(pipeline_id="test_pipeline", mode="update_only", stripe_field="id")
    records = [
        Record("p1", target.id, target.id, {"name": "After"}),
        Record("p2", "cus_missing", "cus_missing", {}),
    ]
    result = Syncer(StripeCustomers(stripe_client), ledger, opts).run(lambda: iter(records))
    assert (result.created, result.updated, sum(result.skipped.values())) == (0, 1, 1)
    assert stripe_client.v1.customers.retrieve(target.id).name == "After"


def test_duplicate_customers_reject_or_update_all(sync, stripe_client) -> None:
    for _ in range(2):
        stripe_client.v1.customers.create(params={"email": "twin@example.com", "name": "Twin"})
    rejected = sync([record("p1", "twin@example.com", name="Both")])
    assert rejected.updated == 0
    assert [r.kind for r in rejected.rejections] == ["several Stripe customers"]
    assert "matches 2 Stripe customers" in rejected.rejections[0].reason

    updated = sync([record("p1", "twin@example.com", name="Both")], duplicate_customers="update_all")
    assert updated.updated == 1
    assert {c["name"] for c in customers(stripe_client)} == {"Both"}


def test_null_clears_and_metadata_merges_key_by_key(sync, stripe_client) -> None:
    existing = stripe_client.v1.customers.create(
        params={
            "email": "m@example.com",
            "phone": "+39 333",
            "metadata": {"keep": "me", "plan": "free", "old": "x"},
        }
    )
    sync([record("p1", "m@example.com", phone=None, **{"metadata.plan": "pro", "metadata.old": None})])
    after = stripe_client.v1.customers.retrieve(existing.id).to_dict()
    assert after["phone"] in (None, "")
    assert after["metadata"].get("keep") == "me"
    assert after["metadata"].get("plan") == "pro"
    assert after["metadata"].get("old") in (None, "")


def test_dry_run_writes_nothing_and_records_nothing(sync, stripe_client, ledger) -> None:
    result = sync(
        [record("p1", "a@example.com", name="A"), record("p2", "b@example.com", name="B")], dry_run=True
    )
    assert result.created == 2
    assert customers(stripe_client) == []
    assert ledger.entries(["p1", "p2"]) == {}
    assert "customers.create" not in result.api_calls


def test_full_resync_compares_with_stripe_itself(sync, stripe_client) -> None:
    records = [record("p1", "a@example.com", name="A")]
    sync(records)
    customer = customers(stripe_client)[0]
    stripe_client.v1.customers.update(customer["id"], params={"name": "Edited in Stripe"})
    assert sync(records).updated == 0  # the ledger cannot see edits made in Stripe
    repaired = sync(records, full_resync=True)
    assert repaired.updated == 1
    assert stripe_client.v1.customers.retrieve(customer["id"]).name == "A"


def test_creates_carry_deterministic_idempotency_keys(stripe_client, tmp_path) -> None:
    keys = []
    for attempt in range(2):
        conn = sqlite3.connect(tmp_path / f"state{attempt}.sqlite")
        ledger = Ledger(conn, "?", "test_pipeline")
        ledger.ensure_table()
        api = RecordingApi(stripe_client)
        opts = SyncOptions(
            pipeline_id="test_pipeline", mode="create_only", stripe_field="email", concurrency=1
        )
        Syncer(api, ledger, opts).run(lambda: iter([record("p1", "z@example.com", name="Z")]))
        keys.append(api.keys)
        stripe_client.v1.customers.delete(customers(stripe_client)[0]["id"])
    assert keys[0] == keys[1] and len(keys[0]) == 1
    assert keys[0][0].startswith("krenalis-")


def test_bad_key_fails_terminally_without_recording(stripe_url: str, ledger: Ledger) -> None:
    client = stripe.StripeClient("rk_test_not_allowed", base_addresses={"api": stripe_url})
    opts = SyncOptions(pipeline_id="test_pipeline", mode="create_and_update", stripe_field="email")
    with pytest.raises(TerminalSyncError, match="401"):
        Syncer(StripeCustomers(client), ledger, opts).run(lambda: iter([record("p1", "a@example.com")]))
    assert ledger.entries(["p1"]) == {}


def test_partial_address_keeps_the_parts_the_pipeline_does_not_write(sync, stripe_client) -> None:
    """Stripe replaces a nested hash whole; the engine sends the unwritten parts back unchanged."""
    existing = stripe_client.v1.customers.create(
        params={
            "email": "addr@example.com",
            "address": {"line1": "Via Roma 1", "city": "Milano", "country": "IT"},
        }
    )
    first = sync([record("p1", "addr@example.com", **{"address.city": "Torino"})])  # found through the index
    assert first.updated == 1
    second = sync([record("p1", "addr@example.com", **{"address.city": "Roma"})])  # found through the ledger
    assert second.updated == 1 and second.api_calls["customers.retrieve"] == 1
    address = stripe_client.v1.customers.retrieve(existing.id).to_dict()["address"]
    assert (address["line1"], address["city"], address["country"]) == ("Via Roma 1", "Roma", "IT")


def test_shipping_is_written_then_removed_whole(sync, stripe_client) -> None:
    """Stripe refuses shipping[name]="": clearing every part must send shipping="" instead."""
    shipping = {
        "shipping.name": "Ada",
        "shipping.phone": "+39 06 1234",
        "shipping.address.line1": "1 Via Roma",
        "shipping.address.city": "Rome",
    }
    created = sync([record("p1", "ada@example.com", **shipping)])
    assert created.created == 1, created.rejections
    stored = by_email(stripe_client)["ada@example.com"]["shipping"]
    assert (stored["name"], stored["phone"], stored["address"]["city"]) == ("Ada", "+39 06 1234", "Rome")

    moved = sync([record("p1", "ada@example.com", **{**shipping, "shipping.address.city": "Milan"})])
    assert moved.updated == 1, moved.rejections
    stored = by_email(stripe_client)["ada@example.com"]["shipping"]
    assert (stored["name"], stored["address"]["line1"], stored["address"]["city"]) == (
        "Ada",
        "1 Via Roma",
        "Milan",
    )

    cleared = sync([record("p1", "ada@example.com", **dict.fromkeys(shipping))])
    assert (cleared.updated, cleared.rejections, cleared.failed) == (1, [], 0)
    assert by_email(stripe_client)["ada@example.com"]["shipping"] is None


def test_an_update_sends_only_the_units_that_changed(sync, stripe_client) -> None:
    payload = {"name": "Ada", "phone": "+39 1", "address.city": "Milano", "metadata.plan": "pro"}
    sync([record("p1", "ada@example.com", **payload)])
    customer_id = customers(stripe_client)[0]["id"]
    stripe_client.v1.customers.update(customer_id, params={"phone": "+39 edited in Stripe"})

    renamed = sync([record("p1", "ada@example.com", **{**payload, "name": "Ada L."})])
    assert dict(renamed.api_calls) == {"customers.update": 1}  # no retrieve: the address did not change
    after = stripe_client.v1.customers.retrieve(customer_id).to_dict()
    assert after["name"] == "Ada L."
    assert after["phone"] == "+39 edited in Stripe"  # an unchanged unit is not sent again
    assert after["address"]["city"] == "Milano"


def test_errors_never_carry_the_api_key(stripe_url: str, ledger: Ledger) -> None:
    key = "rk_test_secret123456"
    client = stripe.StripeClient(key, base_addresses={"api": stripe_url})
    opts = SyncOptions(pipeline_id="test_pipeline", mode="create_and_update", stripe_field="email")
    with pytest.raises(TerminalSyncError) as raised:
        Syncer(StripeCustomers(client), ledger, opts).run(lambda: iter([record("p1", "a@example.com")]))
    assert "secret123456" not in str(raised.value) and "rk_test_" not in str(raised.value)


def test_a_payload_stripe_rejected_is_not_resent_until_it_changes(sync, stripe_client, ledger) -> None:
    bad = record("p1", "bad@example", name="Bad")  # Stripe answers 400 email_invalid
    first = sync([bad, record("p2", "ok@example.com", name="Ok")])
    assert first.created == 1 and [r.kind for r in first.rejections] == ["rejected by Stripe"]
    assert ledger.entries(["p1"])["p1"].status == "rejected"

    again = sync([bad, record("p2", "ok@example.com", name="Ok")])
    assert sum(again.api_calls.values()) == 0  # reported again, not resent
    assert "not resent" in again.rejections[0].reason

    fixed = sync([record("p1", "bad@example.com", name="Fixed"), record("p2", "ok@example.com", name="Ok")])
    assert fixed.created == 1 and not fixed.rejections
    assert ledger.entries(["p1"])["p1"].status == "synced"


class Flaky(StripeCustomers):
    """The real client, except that writes for some emails fail as a 5xx storm would."""

    def __init__(
        self, client: stripe.StripeClient, failing: set[str], terminal_after: int | None = None
    ) -> None:
        super().__init__(client)
        self.failing = failing
        self.terminal_after = terminal_after
        self.creates = 0

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        self.creates += 1
        if self.terminal_after is not None and self.creates > self.terminal_after:
            raise TerminalSyncError("the key was revoked (401)")
        if params.get("email") in self.failing:
            raise RetryableSyncError("customers.create failed 4 time(s) (HTTP 503: unavailable)")
        return super().create(params, idempotency_key)


def test_transient_failures_are_retried_next_run_then_given_up(stripe_client, ledger) -> None:
    opts = SyncOptions(
        pipeline_id="test_pipeline", mode="create_and_update", stripe_field="email", give_up_after=2
    )
    records = [record("p1", "flaky@example.com", name="F"), record("p2", "fine@example.com", name="G")]
    api = Flaky(stripe_client, {"flaky@example.com"})
    outcomes = [Syncer(api, ledger, opts).run(lambda: iter(records)) for _ in range(3)]
    assert [(o.created, o.failed) for o in outcomes] == [(1, 1), (0, 1), (0, 0)]
    assert [r.kind for r in outcomes[2].rejections] == ["given up"]
    given_up = ledger.entries(["p1"])["p1"]
    assert given_up.status == "failed" and given_up.attempts == 2
    assert api.creates == 3  # the third run did not try again

    api.failing.clear()
    healed = Syncer(api, ledger, opts).run(
        lambda: iter([record("p1", "flaky@example.com", name="F2"), records[1]])
    )
    assert healed.created == 1 and ledger.entries(["p1"])["p1"].status == "synced"


def test_a_terminal_error_mid_run_keeps_what_stripe_confirmed(stripe_client, ledger) -> None:
    opts = SyncOptions(
        pipeline_id="test_pipeline", mode="create_and_update", stripe_field="email", concurrency=1
    )
    records = [record(f"p{i}", f"u{i}@example.com", name=f"U{i}") for i in range(8)]
    with pytest.raises(TerminalSyncError):
        Syncer(Flaky(stripe_client, set(), terminal_after=5), ledger, opts).run(lambda: iter(records))
    recorded = ledger.entries([r.key for r in records])
    assert len(recorded) == 5 and all(e.status == "synced" for e in recorded.values())
    assert len(customers(stripe_client)) == 5
    rest = Syncer(StripeCustomers(stripe_client), ledger, opts).run(lambda: iter(records))
    assert (rest.created, rest.unchanged) == (3, 5)
    assert len(customers(stripe_client)) == 8


# -- requests real Stripe accepts (Stripe's published contract, not localstripe's laxity) ---------


def test_clearing_locales_stripe_holds_is_rejected_before_anything_is_sent(
    sync, stripe_client, ledger
) -> None:
    sync([record("p1", "ada@example.com", name="Ada", preferred_locales=["it"])])
    cleared = record("p1", "ada@example.com", name="Ada L.", preferred_locales=None)
    result = sync([cleared])
    assert (result.updated, result.unchanged) == (0, 0)
    [rejection] = result.rejections
    assert rejection.kind == "not sendable"
    assert "cannot clear preferred locales" in rejection.reason
    assert dict(result.api_calls) == {"customers.retrieve": 1}  # read to see what Stripe holds; no write
    stored = by_email(stripe_client)["ada@example.com"]
    assert (stored["name"], stored["preferred_locales"]) == ("Ada", ["it"])
    assert ledger.entries(["p1"])["p1"].status == "rejected"

    again = sync([cleared])  # reported again, never resent, until the payload changes
    assert sum(again.api_calls.values()) == 0 and [r.kind for r in again.rejections] == ["not sendable"]
    replaced = sync([record("p1", "ada@example.com", name="Ada L.", preferred_locales=["en"])])
    assert replaced.updated == 1 and not replaced.rejections
    assert by_email(stripe_client)["ada@example.com"]["preferred_locales"] == ["en"]


def test_clearing_locales_where_stripe_holds_none_sends_only_the_rest(sync, stripe_client) -> None:
    sync([record("p1", "ada@example.com", name="Ada"), record("p2", "bob@example.com", name="Bob")])
    result = sync(
        [
            record("p1", "ada@example.com", name="Ada", preferred_locales=[]),  # nothing else changed
            record("p2", "bob@example.com", name="Bob B.", preferred_locales=None),
        ]
    )
    assert (result.updated, result.unchanged, result.rejections) == (1, 1, [])
    assert dict(result.api_calls) == {"customers.retrieve": 2, "customers.update": 1}
    assert by_email(stripe_client)["bob@example.com"]["name"] == "Bob B."
    rerun = sync(
        [
            record("p1", "ada@example.com", name="Ada", preferred_locales=[]),
            record("p2", "bob@example.com", name="Bob B.", preferred_locales=None),
        ]
    )
    assert sum(rerun.api_calls.values()) == 0  # both recorded as synced: Stripe was read to hold them


def test_a_shipping_hash_missing_a_required_part_is_rejected_on_create_and_update(
    sync, stripe_client
) -> None:
    no_address = record("p1", "ada@example.com", **{"shipping.name": "Ada", "shipping.phone": "+39"})
    created = sync([no_address], dry_run=True)
    assert [r.kind for r in created.rejections] == ["not sendable"]  # a dry run sees it too
    created = sync([no_address])
    assert created.created == 0 and "shipping.address: Stripe requires" in created.rejections[0].reason
    assert "customers.create" not in created.api_calls and customers(stripe_client) == []

    shipping = {
        "shipping.name": "Bob",
        "shipping.address.line1": "1 Via Roma",
        "shipping.address.city": "Rome",
    }
    sync([record("p2", "bob@example.com", **shipping)])
    nameless = sync([record("p2", "bob@example.com", **{**shipping, "shipping.name": None})])
    assert nameless.updated == 0 and "shipping.name: Stripe requires" in nameless.rejections[0].reason
    assert "customers.update" not in nameless.api_calls
    assert by_email(stripe_client)["bob@example.com"]["shipping"]["name"] == "Bob"

    # Only the name is written, the rest completed from Stripe: clearing it is still refused.
    only_name = sync([record("p2", "bob@example.com", **{"shipping.name": None})])
    assert "shipping.name: Stripe requires" in only_name.rejections[0].reason
    assert dict(only_name.api_calls) == {"customers.retrieve": 1}
    assert by_email(stripe_client)["bob@example.com"]["shipping"]["name"] == "Bob"


def test_full_resync_compares_every_written_field_with_what_stripe_returns(sync, stripe_client) -> None:
    records = [
        record(
            "p1",
            "ada@example.com",
            name="Ada",
            phone="+39 06 1234",
            description="VIP",
            preferred_locales=["it", "en"],
            tax_exempt="exempt",
            **{"address.city": "Rome", "address.country": "IT", "metadata.plan": "pro"},
            **{"shipping.name": "Ada", "shipping.address.line1": "1 Via Roma"},
        ),
        record("p2", "bob@example.com", name="Bob", tax_exempt=None, preferred_locales=None),
    ]
    assert sync(records).created == 2
    resync = sync(records, full_resync=True)
    assert (resync.updated, resync.unchanged) == (0, 2)
    assert dict(resync.api_calls) == {"customers.list": 1}


def test_update_only_by_id_looks_missing_ids_up_one_call_each_never_listing(stripe_client, ledger) -> None:
    target = stripe_client.v1.customers.create(params={"email": "x@example.com", "name": "Before"})
    gone = stripe_client.v1.customers.create(params={"email": "gone@example.com"})
    stripe_client.v1.customers.delete(gone.id)
    opts = SyncOptions(pipeline_id="test_pipeline", mode="update_only", stripe_field="id")
    records = [
        Record("p1", target.id, target.id, {"name": "After"}),
        Record("p2", "cus_missing", "cus_missing", {"name": "Nobody"}),
        Record("p3", gone.id, gone.id, {"name": "Deleted"}),
    ]

    def run() -> SyncResult:
        return Syncer(StripeCustomers(stripe_client), ledger, opts).run(lambda: iter(records))

    first = run()
    assert (first.updated, sum(first.skipped.values())) == (1, 2)
    assert dict(first.api_calls) == {"customers.retrieve": 3, "customers.update": 1}
    rerun = run()
    assert dict(rerun.api_calls) == {"customers.retrieve": 2}  # the two misses, no listing
    assert stripe_client.v1.customers.retrieve(target.id).name == "After"


def test_many_missing_ids_are_found_by_one_listing(stripe_client, ledger, monkeypatch) -> None:
    monkeypatch.setattr("krenalis_airflow.core.sync.ID_LOOKUPS", 2)
    target = stripe_client.v1.customers.create(params={"email": "x@example.com", "name": "Before"})
    opts = SyncOptions(pipeline_id="test_pipeline", mode="update_only", stripe_field="id")
    records = [Record("p0", target.id, target.id, {"name": "After"})]
    records += [Record(f"p{i}", f"cus_missing{i}", f"cus_missing{i}", {"name": "x"}) for i in range(1, 3)]
    result = Syncer(StripeCustomers(stripe_client), ledger, opts).run(lambda: iter(records))
    assert (result.updated, sum(result.skipped.values())) == (1, 2)
    assert dict(result.api_calls) == {"customers.list": 1, "customers.update": 1}


def test_every_writable_field_set_changed_and_cleared_in_requests_stripe_accepts(sync, stripe_client) -> None:
    """Runs every writable field through create, change and clear: the contract check of the
    localstripe wrapper (support/stripe_contract.py) fails this test on any request real
    Stripe would refuse."""
    first = {
        "name": "Ada",
        "phone": "+39 06 1234",
        "description": "VIP",
        "preferred_locales": ["it"],
        "tax_exempt": "exempt",
        **{f"address.{part}": f"A {part}" for part in ("line1", "line2", "city", "state", "postal_code")},
        "address.country": "IT",
        "shipping.name": "Ada",
        "shipping.phone": "+39 06 5678",
        **{
            f"shipping.address.{part}": f"S {part}"
            for part in ("line1", "line2", "city", "state", "postal_code")
        },
        "shipping.address.country": "IT",
        "metadata.plan": "pro",
        "metadata.crm.id": "42",
    }
    assert sync([record("p1", "ada@example.com", **first)]).created == 1
    changed = {
        path: (value + "!" if isinstance(value, str) and "country" not in path else value)
        for path, value in first.items()
    }
    changed |= {"preferred_locales": ["en", "it"], "tax_exempt": "reverse", "address.country": "DE"}
    assert sync([record("p1", "ada@example.com", **changed)]).updated == 1
    stored = by_email(stripe_client)["ada@example.com"]
    assert (stored["name"], stored["tax_exempt"], stored["address"]["country"]) == ("Ada!", "reverse", "DE")
    assert stored["shipping"]["address"]["line2"] == "S line2!"

    partial = {**changed, "address.line2": None, "shipping.address.line2": None, "metadata.plan": None}
    assert sync([record("p1", "ada@example.com", **partial)]).updated == 1
    stored = by_email(stripe_client)["ada@example.com"]
    assert stored["address"]["line2"] in (None, "") and stored["address"]["city"] == "A city!"
    assert {k: v for k, v in stored["metadata"].items() if v} == {"crm.id": "42!"}  # localstripe keeps ""

    cleared = {path: None for path in changed if path != "preferred_locales"} | {"preferred_locales": ["en"]}
    result = sync([record("p1", "ada@example.com", **cleared)])
    assert (result.updated, result.rejections) == (1, [])
    stored = by_email(stripe_client)["ada@example.com"]
    assert (
        stored["shipping"] is None and stored["tax_exempt"] == "none" and not any(stored["metadata"].values())
    )
    assert stored["name"] in (None, "") and stored["preferred_locales"] == ["en"]
    assert sync([record("p1", "ada@example.com", **cleared)], full_resync=True).updated == 0
