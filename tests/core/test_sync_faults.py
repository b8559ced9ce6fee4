"""The sync engine under fire: real HTTP through the fault proxy in front of localstripe."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import stripe

from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.ratelimit import Limits, RateLimiter
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions, SyncResult
from krenalis_airflow.exceptions import TerminalSyncError
from support.fault_proxy import FaultProxy, RateLimits

KEY = "sk_test_krenalis"


def records(n: int) -> list[Record]:
    return [
        Record(f"p{i:03}", f"u{i}@example.com", f"u{i}@example.com", {"name": f"User {i}"}) for i in range(n)
    ]


def emails_in_stripe(client: stripe.StripeClient) -> Counter[str]:
    return Counter(c.email for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter())


def sync(
    proxy: FaultProxy,
    tmp_path: Path,
    items: list[Record],
    *,
    key: str = KEY,
    full_resync: bool = False,
    **limits: float,
) -> SyncResult:
    client = stripe.StripeClient(key, base_addresses={"api": proxy.url}, max_network_retries=0)
    limiter = RateLimiter(Limits(limits.get("rate", 200), limits.get("endpoint_rate", 200)))
    api = StripeCustomers(client, limiter=limiter, retries=8, backoff=0.02, max_backoff=0.2)
    ledger = Ledger(sqlite3.connect(tmp_path / "state.sqlite"), "?", "faults")
    ledger.ensure_table()
    options = SyncOptions(
        pipeline_id="faults",
        mode="create_and_update",
        stripe_field="email",
        concurrency=8,
        full_resync=full_resync,
    )
    return Syncer(api, ledger, options).run(lambda: iter(items))


def test_a_429_storm_loses_nothing_and_duplicates_nothing(fault_proxy, stripe_client, tmp_path) -> None:
    fault_proxy.configure(error_rate_429=0.3, lock_timeout_rate=0.05)
    result = sync(fault_proxy, tmp_path, records(60))
    assert (result.created, result.failed) == (60, 0)
    faulted = fault_proxy.stats()["faulted"]
    assert sum(faulted.get("rate_limit", {}).values()) > 5  # the storm really happened
    assert emails_in_stripe(stripe_client) == Counter({f"u{i}@example.com": 1 for i in range(60)})


def test_staying_under_the_rate_limit_avoids_429s(fault_proxy, stripe_client, tmp_path) -> None:
    fault_proxy.configure(rate_limits=RateLimits(global_rps=40, endpoint_rps=40))
    result = sync(fault_proxy, tmp_path, records(40), rate=30, endpoint_rate=30)
    assert result.created == 40
    assert not fault_proxy.stats()["faulted"]  # the client-side buckets kept it under the limit


def test_5xx_bursts_and_dropped_connections_are_survived(fault_proxy, stripe_client, tmp_path) -> None:
    fault_proxy.burst_5xx(6, status=503)
    fault_proxy.fail_next(3, "drop_before", endpoint="POST /v1/customers")
    result = sync(fault_proxy, tmp_path, records(30))
    assert (result.created, result.failed) == (30, 0)
    assert emails_in_stripe(stripe_client) == Counter({f"u{i}@example.com": 1 for i in range(30)})


def test_a_create_lost_after_stripe_made_it_is_replayed_not_duplicated(
    fault_proxy, stripe_client, tmp_path
) -> None:
    # Stripe creates the customer, then the answer never arrives: the retry carries the same
    # idempotency key and gets the first answer back (Idempotent-Replayed), not a second customer.
    fault_proxy.fail_next(5, "drop_after", endpoint="POST /v1/customers")
    result = sync(fault_proxy, tmp_path, records(20))
    assert (result.created, result.failed) == (20, 0)
    assert sum(fault_proxy.stats()["replayed"].values()) == 5
    assert emails_in_stripe(stripe_client) == Counter({f"u{i}@example.com": 1 for i in range(20)})


def test_a_bad_key_fails_fast_without_a_retry_storm(fault_proxy, tmp_path) -> None:
    with pytest.raises(TerminalSyncError, match="401"):
        sync(fault_proxy, tmp_path, records(50), key="rk_test_revoked_key")
    assert fault_proxy.stats()["totals"]["received"] <= 2


def test_the_api_key_never_appears_in_any_log_line(fault_proxy, tmp_path, caplog) -> None:
    secret = "sk_test_thisIsTheSecretKeyValue"
    fault_proxy.configure(error_rate_429=0.2, error_rate_5xx=0.1)
    with caplog.at_level(logging.DEBUG):
        sync(fault_proxy, tmp_path, records(20), key=secret)
        with pytest.raises(TerminalSyncError):
            sync(
                fault_proxy,
                tmp_path,
                records(1) and [Record("x", "x@example.com", "x@example.com", {})],
                key="rk_test_" + secret[8:],
            )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records and "thisIsTheSecretKeyValue" not in logged


def test_full_resync_recreates_a_deleted_customer_with_a_fresh_idempotency_key(
    fault_proxy, stripe_client, tmp_path
) -> None:
    # Through the proxy, whose Idempotency-Key cache behaves like Stripe's: a re-create that
    # reused the first create's key would get the deleted customer back instead of a new one.
    items = records(3)
    assert sync(fault_proxy, tmp_path, items).created == 3
    gone = next(
        c for c in stripe_client.v1.customers.list(params={"limit": 100}).data if c.email == "u1@example.com"
    )
    stripe_client.v1.customers.delete(gone.id)

    normal = sync(fault_proxy, tmp_path, items)  # the ledger still believes in the deleted customer
    assert normal.updated == 0 and normal.unchanged == 3

    repaired = sync(fault_proxy, tmp_path, items, full_resync=True)
    assert (repaired.created, repaired.unchanged) == (1, 2)
    assert sum(fault_proxy.stats()["replayed"].values()) == 0
    again = emails_in_stripe(stripe_client)
    assert again == Counter({f"u{i}@example.com": 1 for i in range(3)})
    recreated = next(
        c for c in stripe_client.v1.customers.list(params={"limit": 100}).data if c.email == "u1@example.com"
    )
    assert recreated.id != gone.id
    ledger = Ledger(sqlite3.connect(tmp_path / "state.sqlite"), "?", "faults").entries(["p001"])
    assert ledger["p001"].customer_ids == (recreated.id,)  # rebuilt from what Stripe holds
