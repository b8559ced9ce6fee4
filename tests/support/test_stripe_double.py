"""The Stripe double of the big-account benchmark answers as Stripe does, through the real SDK.

The benchmark's figures (calls, duplicates) are only as good as the double's paging and filters:
these pin them on a small account (2,500 customers, one in 1,000 with its email in another case).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from krenalis_airflow.core.stripe_api import StripeCustomers
from support.stripe_double import EPOCH, StripeDouble, base_email, base_id

CUSTOMERS = 2500
ODD = 1042  # odd_case_every=1000 → 42, 1042, 2042 hold Person{i}@Example.com
SINCE = EPOCH + 100


@pytest.fixture(scope="module")
def double() -> Iterator[StripeDouble]:
    with StripeDouble(
        CUSTOMERS,
        odd_case_every=1000,
        events=[("customer.updated", 3), ("customer.deleted", 4)],
        events_since=SINCE,
    ) as server:
        yield server


@pytest.fixture
def client(double: StripeDouble) -> stripe.StripeClient:
    double.reset(everything=True)
    return stripe.StripeClient("sk_test_double", base_addresses={"api": double.url}, max_network_retries=0)


def emails(client: stripe.StripeClient, email: str) -> list[str]:
    return [c.id for c in client.v1.customers.list(params={"email": email}).data]


def test_auto_paging_yields_every_customer_once_newest_first(
    client: stripe.StripeClient, double: StripeDouble
) -> None:
    listed = list(client.v1.customers.list(params={"limit": 100}).auto_paging_iter())

    assert [c.id for c in listed] == [base_id(i) for i in range(CUSTOMERS)]
    assert [c.created for c in listed] == sorted((c.created for c in listed), reverse=True)
    first = listed[0].to_dict()
    assert first["object"] == "customer" and first["email"] == "person0@example.com"
    assert (first["metadata"], first["preferred_locales"], first["tax_exempt"]) == (
        {"profile_id": "0"},
        [],
        "none",
    )
    assert first["address"] is None and first["livemode"] is False and "deleted" not in first
    assert double.calls() == {"customers.list": 25}  # counted at the double, 100 a page


def test_pages_before_a_customer_and_the_default_limit(client: stripe.StripeClient) -> None:
    before = client.v1.customers.list(params={"limit": 100, "ending_before": base_id(250)})
    default = client.v1.customers.list()

    assert [c.id for c in before.data] == [base_id(i) for i in range(150, 250)] and before.has_more
    assert len(default.data) == 10 and default.has_more and default.url == "/v1/customers"


def test_the_engine_lists_the_whole_account(client: stripe.StripeClient, double: StripeDouble) -> None:
    api = StripeCustomers(client)

    assert sum(1 for _ in api.list_all()) == CUSTOMERS
    assert api.calls["customers.list"] == double.calls()["customers.list"] == 25


def test_the_email_filter_is_exact_and_case_sensitive(
    client: stripe.StripeClient, double: StripeDouble
) -> None:
    assert emails(client, "person5@example.com") == [base_id(5)]
    assert emails(client, "Person5@example.com") == []  # Stripe compares emails as written
    assert emails(client, f"person{ODD}@example.com") == []
    assert emails(client, base_email(ODD, odd=True)) == [base_id(ODD)]
    assert emails(client, "person05@example.com") == emails(client, f"person{CUSTOMERS}@example.com") == []
    assert double.calls() == {"customers.list(email)": 6}


def test_the_created_filter(client: stripe.StripeClient) -> None:
    def ids(**bounds: int) -> list[str]:
        params: Any = {"limit": 100, "created": bounds}
        page = client.v1.customers.list(params=params)
        return [c.id for c in page.data]

    assert ids(gt=EPOCH - 10) == [base_id(i) for i in range(10)]
    assert ids(gte=EPOCH - 10) == [base_id(i) for i in range(11)]
    assert ids(lt=EPOCH - 2497) == [base_id(2498), base_id(2499)]
    assert ids(gte=EPOCH - 5, lte=EPOCH - 3) == [base_id(3), base_id(4), base_id(5)]
    made = client.v1.customers.create(params={"email": "new@example.org"})
    assert ids(gt=EPOCH) == [made.id]  # created now: newer than every computed customer


def test_an_unknown_customer_is_stripes_404(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.retrieve(base_id(CUSTOMERS))

    assert raised.value.http_status == 404 and raised.value.code == "resource_missing"
    assert StripeCustomers(client).find("cus_nope") is None


def test_creates_are_idempotent_per_key(client: stripe.StripeClient, double: StripeDouble) -> None:
    params = {"email": "New@Example.org", "name": "New", "metadata": {"profile_id": "x1"}}
    first = client.v1.customers.create(params=params, options={"idempotency_key": "k1"})  # type: ignore[arg-type]
    again = client.v1.customers.create(params=params, options={"idempotency_key": "k1"})  # type: ignore[arg-type]
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "other@example.org"}, options={"idempotency_key": "k1"})

    assert first.id == again.id and first.email == "New@Example.org"
    assert double.state()["created"] == 1 and double.calls()["customers.create"] == 3
    assert client.v1.customers.list().data[0].id == first.id  # the newest comes first
    assert emails(client, "New@Example.org") == [first.id] and emails(client, "new@example.org") == []


def test_updates_merge_metadata_and_move_the_email(client: stripe.StripeClient) -> None:
    cid = base_id(7)
    client.v1.customers.update(cid, params={"metadata": {"plan": "gold"}, "email": "seven@example.org"})
    cleared = client.v1.customers.update(cid, params={"metadata": {"profile_id": ""}, "phone": ""})

    assert cleared.to_dict()["metadata"] == {"plan": "gold"} and cleared.phone is None
    assert client.v1.customers.retrieve(cid).email == "seven@example.org"
    assert emails(client, "seven@example.org") == [cid] and emails(client, "person7@example.com") == []
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter"):
        unknown: Any = {"nickname": "x"}
        client.v1.customers.update(cid, params=unknown)


def test_a_deleted_customer_reads_deleted_and_leaves_the_list(client: stripe.StripeClient) -> None:
    client.v1.customers.delete(base_id(1))

    assert client.v1.customers.retrieve(base_id(1)).to_dict() == {
        "id": base_id(1),
        "object": "customer",
        "deleted": True,
    }
    assert [c.id for c in client.v1.customers.list(params={"limit": 3}).data] == [
        base_id(0),
        base_id(2),
        base_id(3),
    ]
    assert emails(client, "person1@example.com") == []


def test_events_of_the_api_changes_and_the_seeded_ones(
    client: stripe.StripeClient, double: StripeDouble
) -> None:
    made = client.v1.customers.create(params={"email": "e@example.org"})
    client.v1.customers.update(made.id, params={"name": "E"})

    created = client.v1.events.list(params={"types": ["customer.created"]})
    since = list(client.v1.events.list(params={"created": {"gt": SINCE}, "limit": 1}).auto_paging_iter())

    assert [(e.type, e.data.object.id) for e in created.data] == [("customer.created", made.id)]
    assert [e.type for e in since] == [
        "customer.updated",
        "customer.created",
        "customer.deleted",
        "customer.updated",
    ]
    assert since[-1].data.object.id == base_id(3)  # the seeded changes, oldest last
    assert since[0].to_dict()["data"]["previous_attributes"] == {"name": None}
    assert double.calls()["events.list"] == 1 + 4  # four pages of one


def test_duplicates_are_found_at_the_double(client: stripe.StripeClient, double: StripeDouble) -> None:
    client.v1.customers.create(params={"email": "PERSON9@example.com"})  # customer 9 holds person9@…
    client.v1.customers.create(params={"email": "twin@example.org", "metadata": {"profile_id": "t"}})
    client.v1.customers.create(params={"email": "Twin@Example.org", "metadata": {"profile_id": "t"}})

    found = double.duplicates()

    assert found["created"] == 3
    assert {d["value"]: len(d["ids"]) for d in found["by_email"]} == {
        "person9@example.com": 2,
        "twin@example.org": 2,
    }
    assert [d["value"] for d in found["by_profile_id"]] == ["t"]
