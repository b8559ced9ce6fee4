"""Profiles that leave the audience (``core/leave.py``): real syncs against localstripe, then
keep / clear / delete with the guard, on SQLite and PostgreSQL ledgers. Stripe calls are counted
by the API's ``calls`` Counter; the ledger is read back row by row.

"Left the filter" and "deleted from the warehouse" look the same here: the run's audience (the
keys it extracted) no longer has the key. ``test_read_audience_*`` checks that the audience read
from a real extract file compares exactly with the keys the ledger holds.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import stripe

from krenalis_airflow.core.leave import (
    LEFT,
    LeaveOptions,
    LeaveResult,
    Leaving,
    OnLeave,
    audience_of,
    check_leave_limit,
    clearing,
    find_leavers,
    left_marker,
    read_audience,
    report_rows,
)
from krenalis_airflow.core.ledger import Ledger, LedgerEntry, key_digest
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.spec import Export
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions, SyncResult
from krenalis_airflow.exceptions import RunFailed, TooManyLeaving
from support.fault_proxy import FaultProxy
from support.localstripe_process import STRIPE_TEST_KEY
from support.stripe_contract import violations
from tests.core.warehouses import state_store

PIPELINE = "leave_test"
DEST = "key:0123456789abcdef0123"


# -- fixtures: a ledger on each database, a sync and a leave step against localstripe -------------


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str, str]]:
    """A DB-API connection to the state database, its placeholder and a table prefix of its own."""
    with state_store(request.param, tmp_path, ("ledger",)) as found:
        yield found


@dataclass
class World:
    """One pipeline against the emptied localstripe, with its ledger."""

    client: stripe.StripeClient  # localstripe seen directly
    api_client: stripe.StripeClient  # what the pipeline talks to (localstripe, or the fault proxy)
    conn: Any
    placeholder: str
    prefix: str
    pipeline: str = PIPELINE

    def ledger(self, pipeline: str | None = None) -> Ledger:
        ledger = Ledger(self.conn, self.placeholder, pipeline or self.pipeline, self.prefix)
        ledger.ensure_table()
        return ledger

    def api(self) -> StripeCustomers:
        return StripeCustomers(self.api_client, retries=2, backoff=0.01, max_backoff=0.02)

    def sync(self, records: list[Record], pipeline: str | None = None, **options: Any) -> SyncResult:
        opts = SyncOptions(
            pipeline_id=pipeline or self.pipeline,
            mode=options.pop("mode", "create_and_update"),
            stripe_field="email",
            destination=DEST,
            **options,
        )
        return Syncer(self.api(), self.ledger(pipeline), opts).run(lambda: iter(records))

    def leave(
        self, audience: list[str], on_leave: OnLeave = "clear", max_leave: int | str = "100%", **options: Any
    ) -> tuple[LeaveResult, StripeCustomers]:
        """The leave step of a run whose audience is ``audience``: find, guard, apply."""
        opts = LeaveOptions(
            PIPELINE,
            on_leave,
            max_leave,
            "email",
            DEST,
            **options,
        )
        api, ledger = self.api(), self.ledger()
        leavers = find_leavers(ledger, audience_of(audience), opts)
        check_leave_limit(leavers, opts)
        return Leaving(api, ledger, opts).run(leavers), api

    def rows(self, pipeline: str | None = None) -> dict[str, LedgerEntry]:
        keys = [key for key, _ in self._all(pipeline)]
        return self.ledger(pipeline).entries(keys)

    def _all(self, pipeline: str | None) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        cursor.execute(
            f"SELECT profile_key, status FROM {self.prefix}ledger WHERE pipeline_id = {self.placeholder}",
            (pipeline or self.pipeline,),
        )
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.close()
        return rows

    def table(self) -> list[tuple[Any, ...]]:
        """Every ledger row of every pipeline, ``synced_at`` left out."""
        cursor = self.conn.cursor()
        cursor.execute(
            f"SELECT pipeline_id, profile_key, match_value, customer_ids, payload_hash, field_hashes,"
            f" status, attempts, error, destination, origin FROM {self.prefix}ledger"
            " ORDER BY pipeline_id, profile_key"
        )
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.close()
        return rows

    def customer(self, customer_id: str) -> dict[str, Any]:
        return self.client.v1.customers.retrieve(customer_id).to_dict()

    def customers(self) -> dict[str, dict[str, Any]]:
        listed = self.client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
        return {str(c.email): c.to_dict() for c in listed}


@pytest.fixture
def world(stripe_client: stripe.StripeClient, state: tuple[Any, str, str]) -> World:
    conn, placeholder, prefix = state
    return World(stripe_client, stripe_client, conn, placeholder, prefix)


def profile(key: str, **payload: Any) -> Record:
    email = f"{key}@example.com"
    return Record(key, email, email, payload)


def full(key: str, tier: str = "gold") -> Record:
    return profile(
        key,
        name=f"Name {key}",
        phone="+390000000",
        **{"address.city": "Rome", "address.country": "IT", "metadata.tier": tier},
    )


def unset(value: Any) -> bool:
    """Cleared, as Stripe (null) or localstripe ("") shows it."""
    return value in (None, "")


def metadata(customer: dict[str, Any]) -> dict[str, str]:
    """The customer's metadata as Stripe shows it: localstripe keeps a deleted key as ""."""
    return {key: value for key, value in (customer["metadata"] or {}).items() if value != ""}


def ids(world: World) -> dict[str, str]:
    """key → customer id, from the ledger."""
    return {key: ",".join(entry.customer_ids) for key, entry in world.rows().items()}


# -- clear ----------------------------------------------------------------------------------


def test_clear_unsets_what_the_pipeline_wrote_and_keeps_what_it_does_not_own(world: World) -> None:
    records = [full(f"p{i}") for i in range(1, 5)]
    assert world.sync(records).created == 4
    customer = ids(world)
    # Another system writes to the same customers: a metadata key and a field this pipeline does not own.
    for key in ("p2", "p3"):
        world.client.v1.customers.update(
            customer[key], params={"metadata": {"crm": "x"}, "description": "from the CRM"}
        )

    # p2 stopped matching the filter, p3 was deleted from the warehouse: neither is extracted.
    result, api = world.leave(["p1", "p4"], "clear")

    assert (result.leaving, result.cleared, result.deleted, result.kept, result.failed) == (2, 2, 0, 0, 0)
    assert dict(api.calls) == {"customers.update": 2}  # one update per customer, no read
    for key in ("p2", "p3"):
        after = world.customer(customer[key])
        assert after["email"] == f"{key}@example.com"  # the matching field is never cleared
        assert unset(after["name"]) and unset(after["phone"]) and unset(after["address"])
        assert metadata(after) == {"crm": "x"}  # tier (owned) deleted, crm (not owned) kept
        assert after["description"] == "from the CRM"
    assert world.customer(customer["p1"])["metadata"] == {"tier": "gold"}  # still in the audience
    rows = world.rows()
    for key in ("p2", "p3"):
        assert rows[key].status == LEFT
        assert rows[key].customer_ids == (customer[key],)  # kept: the profile may come back to it
        assert (rows[key].payload_hash, rows[key].field_hashes) == ("", "")
        assert rows[key].origin == "created" and rows[key].destination == DEST
    assert rows["p1"].status == "synced" and rows["p1"].field_hashes

    again, api = world.leave(["p1", "p4"], "clear")  # the next run: they left already
    assert (again.leaving, sum(api.calls.values())) == (0, 0)


def test_clear_leaves_preferred_locales_and_counts_it_not_sendable(world: World) -> None:
    world.sync([profile("p1", name="Ada", preferred_locales=["it"]), profile("p2", name="Bob")])
    customer = ids(world)
    result, api = world.leave(["p2"], "clear")
    assert (result.cleared, dict(result.not_sendable)) == (1, {"preferred_locales": 1})
    assert dict(api.calls) == {"customers.update": 1}
    after = world.customer(customer["p1"])
    assert after["preferred_locales"] == ["it"] and unset(after["name"])
    assert "preferred_locales" in world.rows()["p1"].error  # named in the closed row


def test_a_customer_owning_only_unclearable_fields_is_kept_without_a_call(world: World) -> None:
    api = world.api()  # one client for the sync and the leave step, as in a run
    opts = SyncOptions(pipeline_id=PIPELINE, mode="create_and_update", stripe_field="email", destination=DEST)
    Syncer(api, world.ledger(), opts).run(lambda: iter([profile("p1", preferred_locales=["it"])]))
    leave = LeaveOptions(PIPELINE, "clear", "100%", "email", DEST)
    result = Leaving(api, world.ledger(), leave).run(find_leavers(world.ledger(), set(), leave))
    assert (result.cleared, result.kept, dict(result.not_sendable)) == (0, 1, {"preferred_locales": 1})
    assert sum(result.api_calls.values()) == 0  # the sync's create is not counted here
    assert world.rows()["p1"].status == LEFT


def test_clearing_follows_the_clearing_rules() -> None:
    clear = clearing(["address", "shipping", "metadata.plan", "name", "tax_exempt", "preferred_locales"])
    assert clear.params == {
        "address": "",
        "shipping": "",
        "metadata": {"plan": ""},
        "name": "",
        "tax_exempt": "",
    }
    assert clear.unsendable == ("preferred_locales",)
    for params in (clear.params, {"metadata": {"plan": ""}}):
        assert not violations("POST", "/v1/customers/cus_123", params)


# -- delete ---------------------------------------------------------------------------------


def test_delete_removes_only_the_customers_the_pipeline_created(world: World) -> None:
    found = world.client.v1.customers.create(
        params={"email": "p2@example.com", "name": "Before", "metadata": {"crm": "x"}}
    )
    records = [full("p1"), full("p2"), full("p3")]
    first = world.sync(records)
    assert (first.created, first.updated) == (2, 1)  # p2 was matched, not created
    customer = ids(world)
    assert customer["p2"] == found.id

    result, api = world.leave(["p3"], "delete")

    assert (result.leaving, result.deleted, result.cleared, result.not_deleted) == (2, 1, 1, 1)
    assert dict(api.calls) == {"customers.delete": 1, "customers.update": 1}
    assert "p1@example.com" not in world.customers()  # created by the pipeline: deleted
    kept = world.customer(found.id)  # found by the pipeline: never deleted, its owned fields cleared
    assert metadata(kept) == {"crm": "x"} and unset(kept["name"])
    assert result.samples["not deleted"] == [
        f"p2 → {found.id}: not created by this pipeline: cleared instead of deleted"
    ]
    rows = world.rows()
    assert rows["p1"].status == LEFT and rows["p1"].customer_ids == () and rows["p1"].origin == ""
    assert customer["p1"] in rows["p1"].error  # the deleted customer, for a re-create's idempotency key
    assert left_marker(rows["p1"]) == rows["p1"].error and left_marker(rows["p3"]) == ""
    assert rows["p2"].status == LEFT and rows["p2"].customer_ids == (found.id,)

    again, api = world.leave(["p3"], "delete")
    assert (again.leaving, sum(api.calls.values())) == (0, 0)


def test_a_customer_already_deleted_in_stripe_is_closed_not_failed(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    world.client.v1.customers.delete(ids(world)["p1"])
    result, api = world.leave(["p2"], "delete")
    assert (result.gone, result.deleted, result.failed) == (1, 0, 0)
    assert dict(api.calls) == {"customers.delete": 1}
    assert world.rows()["p1"].status == LEFT


def test_delete_never_removes_a_customer_another_pipeline_writes_to(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    other = world.sync([profile("p1", **{"metadata.segment": "b2b", "name": "Other"})], pipeline="other")
    assert other.updated == 1  # the other pipeline matched the customer this one created
    customer = ids(world)

    result, api = world.leave(["p2"], "delete")

    assert (result.deleted, result.cleared, result.not_deleted) == (0, 1, 1)
    assert dict(api.calls) == {"customers.update": 1}
    after = world.customer(customer["p1"])
    assert metadata(after) == {"segment": "b2b"}  # tier deleted, the other pipeline's key kept
    assert after["name"] == "Other"  # a unit the other pipeline also writes is left to it
    assert unset(after["address"])  # owned by this pipeline alone: cleared


def test_a_customer_another_pipeline_only_remembers_is_not_deleted(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    world.sync(
        [profile("p1", name="x")], pipeline="watcher", mode="create_only"
    )  # remembers it, writes nothing
    result, api = world.leave(["p2"], "delete")
    assert (result.deleted, result.cleared, dict(api.calls)) == (0, 1, {"customers.update": 1})
    assert result.samples["not deleted"][0].endswith(
        "another pipeline also writes to it: cleared instead of deleted"
    )
    assert "p1@example.com" in world.customers()


# -- handed over: the same customer, now another profile's -------------------------------------


def test_a_re_keyed_profile_keeps_its_customer(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    customer = ids(world)
    # p1 is re-keyed in the warehouse: a new key with the same email, matched to the same customer.
    moved = Record("p1-new", "p1@example.com", "p1@example.com", full("p1").payload)
    world.sync([moved, full("p2")])
    assert ids(world)["p1-new"] == customer["p1"]

    result, api = world.leave(["p1-new", "p2"], "delete")

    assert (result.leaving, result.kept, result.deleted, sum(api.calls.values())) == (1, 1, 0, 0)
    assert world.customer(customer["p1"])["metadata"] == {"tier": "gold"}
    assert world.rows()["p1"].status == LEFT


def test_two_leavers_of_one_customer_do_not_hand_it_to_each_other(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    twin = Record("p1-twin", "p1@example.com", "p1@example.com", full("p1").payload)
    world.sync([twin, full("p1"), full("p2")])  # a duplicate row, matched to p1's customer
    customer = ids(world)["p1"]
    result, api = world.leave(["p2"], "clear")
    assert (result.leaving, result.cleared, result.kept) == (2, 2, 0)
    assert dict(api.calls) == {"customers.update": 2}  # the same update twice: harmless
    assert metadata(world.customer(customer)) == {}


# -- the guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("on_leave", ["clear", "delete"])
def test_an_emptied_source_trips_max_leave_and_changes_nothing(world: World, on_leave: OnLeave) -> None:
    world.sync([full(f"p{i}") for i in range(10)])
    before_ledger, before_stripe = world.table(), world.customers()
    api = world.api()
    opts = LeaveOptions(PIPELINE, on_leave, "10%", "email", DEST)
    leavers = find_leavers(world.ledger(), audience_of([]), opts)  # nothing extracted

    with pytest.raises(TooManyLeaving) as raised:
        check_leave_limit(leavers, opts)

    message = str(raised.value)
    assert "10 of the 10 profiles" in message and "'10%': 1" in message
    assert "emptied" in message and "max_leave: 100%" in message
    assert isinstance(raised.value, RunFailed)  # terminal: Airflow does not retry it
    assert sum(api.calls.values()) == 0
    assert world.table() == before_ledger and world.customers() == before_stripe


def test_max_leave_as_a_count_and_as_a_share(world: World) -> None:
    world.sync([full(f"p{i}") for i in range(10)])
    everyone = [f"p{i}" for i in range(10)]
    before = world.table()
    with pytest.raises(TooManyLeaving, match="2 of the 10"):
        world.leave(everyone[2:], "clear", max_leave=1)
    with pytest.raises(TooManyLeaving, match="3 of the 10"):
        world.leave(everyone[3:], "clear", max_leave="20%")
    assert world.table() == before

    result, api = world.leave(everyone[2:], "clear", max_leave="20%")  # 2 of 10: within 20%
    assert (result.leaving, result.cleared, result.limit) == (2, 2, 2)
    assert dict(api.calls) == {"customers.update": 2}
    result, api = world.leave(everyone[3:], "clear", max_leave=1)  # 1 more (p2 left already)
    assert (result.leaving, result.in_ledger, result.cleared) == (1, 8, 1)


def test_keep_counts_who_left_and_changes_nothing_even_past_the_limit(world: World) -> None:
    world.sync([full(f"p{i}") for i in range(4)])
    before_ledger, before_stripe = world.table(), world.customers()

    result, api = world.leave([], "keep", max_leave="10%")  # not stopped: keep changes nothing

    assert (result.leaving, result.kept, result.cleared, result.over_limit) == (4, 4, 0, True)
    assert sum(api.calls.values()) == 0
    assert world.table() == before_ledger and world.customers() == before_stripe
    again, _ = world.leave([], "keep")  # the ledger is untouched, so they are counted again
    assert again.leaving == 4


def test_leave_limit_is_the_specs_rule() -> None:
    for max_leave, in_ledger in ((0, 10), (5, 3), ("10%", 99), ("100%", 7), ("2.5%", 1000)):
        export = Export.model_validate(
            {"matching": {"property": "email", "stripe": "email"}, "max_leave": max_leave}
        )
        options = LeaveOptions(PIPELINE, max_leave=max_leave)
        assert options.limit(in_ledger) == export.leave_limit(in_ledger)


# -- dry run --------------------------------------------------------------------------------


@pytest.mark.parametrize("on_leave", ["clear", "delete"])
def test_dry_run_lists_who_would_leave_and_writes_nothing(world: World, on_leave: OnLeave) -> None:
    world.sync([full("p1"), full("p2"), full("p3")])
    customer = ids(world)
    before_ledger, before_stripe = world.table(), world.customers()

    result, api = world.leave(["p1"], on_leave, dry_run=True)

    outcome = "cleared" if on_leave == "clear" else "deleted"
    assert (result.leaving, getattr(result, outcome)) == (2, 2)
    assert sorted(result.samples[outcome]) == [f"p2 → {customer['p2']}", f"p3 → {customer['p3']}"]
    assert ("would be " + outcome) in [name.strip() for name, _, _ in report_rows(result.summary(), True)]
    assert sum(api.calls.values()) == 0
    assert world.table() == before_ledger and world.customers() == before_stripe


# -- failures -------------------------------------------------------------------------------


@pytest.fixture
def proxied(
    fault_proxy: FaultProxy, stripe_client: stripe.StripeClient, state: tuple[Any, str, str]
) -> World:
    conn, placeholder, prefix = state
    client = stripe.StripeClient(
        STRIPE_TEST_KEY, base_addresses={"api": fault_proxy.url}, max_network_retries=0
    )
    return World(stripe_client, client, conn, placeholder, prefix)


def test_a_transient_failure_leaves_the_row_for_the_next_run(proxied: World, fault_proxy: FaultProxy) -> None:
    proxied.sync([full("p1"), full("p2")])
    before = proxied.rows()["p1"]
    fault_proxy.fail_next(3, "server_error", endpoint="DELETE /v1/customers/{id}", status=503)

    result, api = proxied.leave(["p2"], "delete")

    assert (result.failed, result.deleted) == (1, 0)
    assert api.calls["customers.delete"] == 3  # the first try and two retries
    assert proxied.rows()["p1"] == before  # as it was: the next run tries again
    retried, api = proxied.leave(["p2"], "delete")
    assert (retried.deleted, dict(api.calls)) == (1, {"customers.delete": 1})


# -- coming back ----------------------------------------------------------------------------


def test_a_profile_back_after_clear_gets_its_fields_written_again(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    customer = ids(world)["p1"]
    world.leave(["p2"], "clear")
    assert metadata(world.customer(customer)) == {}

    back = world.sync([full("p1"), full("p2")])

    assert (back.created, back.updated, back.unchanged) == (0, 1, 1)
    # The ledger knows the customer (no listing); address is written in part, so its current
    # value is read once to send the other parts back, as for any such update.
    assert dict(back.api_calls) == {"customers.retrieve": 1, "customers.update": 1}
    after = world.customer(customer)
    assert after["metadata"] == {"tier": "gold"} and after["name"] == "Name p1"
    assert after["address"]["city"] == "Rome" and after["phone"] == "+390000000"
    row = world.rows()["p1"]
    assert row.status == "synced" and row.field_hashes and row.origin == "created"
    assert sum(world.sync([full("p1"), full("p2")]).api_calls.values()) == 0


def test_a_profile_back_after_delete_is_created_anew(proxied: World, fault_proxy: FaultProxy) -> None:
    # Through the proxy, whose Idempotency-Key cache behaves like Stripe's (24 hours): the
    # re-create must not replay the first create's key, or Stripe answers with the deleted customer.
    proxied.sync([full("p1"), full("p2")])
    deleted = ids(proxied)["p1"]
    proxied.leave(["p2"], "delete")

    back = proxied.sync([full("p1"), full("p2")])

    assert (back.created, back.unchanged) == (1, 1)
    assert sum(fault_proxy.stats()["replayed"].values()) == 0
    row = proxied.rows()["p1"]
    assert row.status == "synced" and row.customer_ids != (deleted,) and row.origin == "created"
    assert proxied.customers()["p1@example.com"]["metadata"] == {"tier": "gold"}


# -- the audience ---------------------------------------------------------------------------


def test_read_audience_derives_keys_as_the_transform_does() -> None:
    lines = '{"id": 7, "email": "a@x"}\n{"id": "b", "x": [1]}\n\n{"id": true}\n{"id": 2.0}\n'
    assert read_audience(io.StringIO(lines), "id") == audience_of(["7", "b", "true", "2"])
    odd = '{"customer id": "k1", "other": {"nested": 1}}\n'
    assert read_audience(io.StringIO(odd), "customer id") == {key_digest("k1")}


def test_a_rejected_or_deduped_profile_is_still_in_the_audience(world: World) -> None:
    world.sync([full("p1"), full("p2")])
    # p2 was extracted (in the profiles file) but the transform rejected it this time: not a leaver.
    extracted = io.StringIO('{"id": "p1"}\n{"id": "p2"}\n')
    opts = LeaveOptions(PIPELINE, "clear", 0, "email", DEST)
    leavers = find_leavers(world.ledger(), read_audience(extracted, "id"), opts)
    assert (len(leavers), leavers.in_ledger) == (0, 2)
    check_leave_limit(leavers, opts)  # max_leave 0: nothing leaves, nothing trips


def test_entries_synced_to_another_destination_never_leave(world: World) -> None:
    world.sync([full("p1")])
    opts = LeaveOptions(PIPELINE, "clear", "100%", "email", "acct_other")
    assert len(find_leavers(world.ledger(), set(), opts)) == 0


def test_delete_of_a_customer_follows_stripes_contract() -> None:
    assert violations("DELETE", "/v1/customers/cus_123", {}) == []
    assert violations("DELETE", "/v1/customers/cus_123", {"name": "x"})  # it takes no parameters
