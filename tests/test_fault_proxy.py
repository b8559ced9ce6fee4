"""The fault proxy (support/fault_proxy.py), through the real stripe SDK and a real localstripe.

The last group pins down what stripe 16.x does with each fault by itself when
``max_network_retries`` > 0, which is what the sync engine's own retry policy builds on.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
import stripe
from stripe._http_client import HTTPClient

from support.fault_proxy import (
    STATS_PATH,
    FaultConfig,
    FaultKind,
    FaultProxy,
    Latency,
    RateLimits,
    endpoint_of,
)
from support.localstripe_process import STRIPE_TEST_KEY

pytest_plugins = ["tests.support.fixtures"]  # fault_proxy, proxied_client


def upstream_emails(stripe_client: stripe.StripeClient) -> list[str]:
    """What localstripe holds, seen directly (not through the proxy)."""
    return sorted(c.email or "" for c in stripe_client.v1.customers.list(params={"limit": 100}).data)


def client_for(proxy: FaultProxy, retries: int | None = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        STRIPE_TEST_KEY, base_addresses={"api": proxy.url}, max_network_retries=retries
    )


def wait_until_received(proxy: FaultProxy, count: int, timeout: float = 5.0) -> None:
    """Block until the proxy has received ``count`` requests (so a later one really comes second)."""
    deadline = time.monotonic() + timeout
    while proxy.stats()["totals"]["received"] < count:
        assert time.monotonic() < deadline, "the proxy never received the request"
        time.sleep(0.01)


def outcome(call: Callable[[], Any]) -> str:
    """``"ok"`` or the stripe error class name."""
    try:
        call()
    except stripe.StripeError as exc:
        return type(exc).__name__
    return "ok"


# -- endpoints and pass-through --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("post", "/v1/customers", "POST /v1/customers"),
        ("POST", "/v1/customers/cus_NffrFeUfNV2Hib", "POST /v1/customers/{id}"),
        (
            "GET",
            "/v1/customers/cus_abcdefgh1jklmn/tax_ids/txi_1Mp2Qr3St4Uv5W",
            "GET /v1/customers/{id}/tax_ids/{id}",
        ),
        ("GET", "/v1/customers/search", "GET /v1/customers/search"),
        ("GET", "/v1/payment_methods", "GET /v1/payment_methods"),
        (
            "GET",
            "/v1/customers/cus_S5cPrfCEPIDi9c/cash_balance_transactions",
            "GET /v1/customers/{id}/cash_balance_transactions",
        ),
        ("DELETE", "/v1/customers/cus_S5cPrfCEPIDi9c/discount", "DELETE /v1/customers/{id}/discount"),
    ],
)
def test_endpoints_collapse_object_ids(method: str, path: str, expected: str) -> None:
    assert endpoint_of(method, path) == expected


def test_requests_pass_through(fault_proxy: FaultProxy, proxied_client: stripe.StripeClient) -> None:
    created = proxied_client.v1.customers.create(
        params={"email": "a@example.com"}, options={"idempotency_key": "k-a"}
    )
    updated = proxied_client.v1.customers.update(
        created.id, params={"name": "Ada", "metadata": {"tier": "gold"}}
    )
    listed = proxied_client.v1.customers.list(params={"limit": 10})

    assert (updated.id, updated.name) == (created.id, "Ada")
    assert updated.metadata is not None and updated.metadata.to_dict() == {"tier": "gold"}
    assert [c.id for c in listed.data] == [created.id]
    assert created.last_response is not None and created.last_response.idempotency_key == "k-a"
    assert fault_proxy.stats()["forwarded"] == {
        "POST /v1/customers": 1,
        "POST /v1/customers/{id}": 1,
        "GET /v1/customers": 1,
    }


def test_unreachable_upstream_is_a_502_api_error() -> None:
    with FaultProxy("http://127.0.0.1:1") as proxy, pytest.raises(stripe.APIError) as caught:
        client_for(proxy).v1.customers.list()
    assert caught.value.http_status == 502
    assert proxy.stats()["faulted"] == {"upstream_error": {"GET /v1/customers": 1}}


# -- latency and rate limits -----------------------------------------------------------------------


def test_latency_differs_for_reads_and_writes(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient
) -> None:
    fault_proxy.configure(latency=Latency(read=0.2, write=0.35))
    started = time.monotonic()
    proxied_client.v1.customers.list()
    read = time.monotonic() - started
    started = time.monotonic()
    proxied_client.v1.customers.create(params={"email": "slow@example.com"})
    write = time.monotonic() - started
    assert read >= 0.2 and write >= 0.35


def paced(call: Callable[[], Any], count: int, per_second: float) -> list[str]:
    """Make ``count`` calls at ``per_second``, on a fixed schedule; return their outcomes."""
    start = time.monotonic()
    outcomes = []
    for i in range(count):
        time.sleep(max(0.0, start + i / per_second - time.monotonic()))
        outcomes.append(outcome(call))
    return outcomes


def test_global_rate_limit(fault_proxy: FaultProxy, proxied_client: stripe.StripeClient) -> None:
    fault_proxy.configure(rate_limits=RateLimits(global_rps=20, burst=0.25))  # 5 tokens, 20/s
    below = paced(proxied_client.v1.customers.list, count=15, per_second=12)  # 3x the bucket
    assert below == ["ok"] * 15

    started = time.monotonic()
    above = [outcome(proxied_client.v1.customers.list) for _ in range(40)]
    elapsed = time.monotonic() - started
    assert above.count("RateLimitError") > 0
    assert set(above) == {"ok", "RateLimitError"}
    assert above.count("ok") <= 5 + 20 * elapsed + 1
    assert fault_proxy.stats()["faulted"] == {
        "rate_limit_global": {"GET /v1/customers": above.count("RateLimitError")}
    }


def test_endpoint_rate_limit_counts_each_endpoint_apart(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient, stripe_client: stripe.StripeClient
) -> None:
    ids = [stripe_client.v1.customers.create(params={"email": f"{i}@example.com"}).id for i in range(3)]
    fault_proxy.configure(rate_limits=RateLimits(endpoint_rps=5, per_endpoint={"GET /v1/customers": 50}))

    retrieves = [outcome(partial(proxied_client.v1.customers.retrieve, ids[i % 3])) for i in range(15)]
    lists = [outcome(proxied_client.v1.customers.list) for _ in range(10)]

    assert 0 < retrieves.count("RateLimitError") <= 10
    assert lists == ["ok"] * 10
    assert set(fault_proxy.stats()["faulted"]["rate_limit_endpoint"]) == {"GET /v1/customers/{id}"}


def test_per_key_rate_limits_give_every_account_its_own_buckets(fault_proxy: FaultProxy) -> None:
    fault_proxy.configure(rate_limits=RateLimits(global_rps=5, per_key=True))  # 5 tokens each
    one = client_for(fault_proxy)
    other = stripe.StripeClient("sk_test_another_account", base_addresses={"api": fault_proxy.url})
    first = [outcome(one.v1.customers.list) for _ in range(8)]
    second = [outcome(other.v1.customers.list) for _ in range(3)]
    assert first.count("RateLimitError") >= 2  # its 5 tokens are spent...
    assert second == ["ok"] * 3  # ...but not the other account's
    fault_proxy.configure(rate_limits=RateLimits(global_rps=5))  # one set of buckets for all
    shared = [outcome(c.v1.customers.list) for c in (one, other) * 5]
    assert shared.count("RateLimitError") >= 2


# -- Stripe's error shapes -------------------------------------------------------------------------


def test_rate_limit_429_reads_as_stripe_rate_limit_error(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient
) -> None:
    fault_proxy.configure(error_rate_429=1.0, retry_after=2)
    with pytest.raises(stripe.RateLimitError) as caught:
        proxied_client.v1.customers.list()
    error = caught.value
    assert error.http_status == 429
    assert error.error is not None and (error.error.type, error.error.code) == (
        "invalid_request_error",
        "rate_limit",
    )
    assert error.headers is not None and error.headers["Retry-After"] == "2"
    assert "stripe-should-retry" not in error.headers  # a plain 429 is not to be retried blindly
    assert error.request_id is not None and error.request_id.startswith("req_")


def test_lock_timeout_on_writes_only(fault_proxy: FaultProxy, proxied_client: stripe.StripeClient) -> None:
    fault_proxy.configure(lock_timeout_rate=1.0)
    assert outcome(proxied_client.v1.customers.list) == "ok"
    with pytest.raises(stripe.RateLimitError) as caught:
        proxied_client.v1.customers.create(params={"email": "locked@example.com"})
    assert caught.value.error is not None and caught.value.error.code == "lock_timeout"
    assert caught.value.code is None  # stripe 16 leaves RateLimitError.code unset: read .error.code
    assert caught.value.headers is not None and caught.value.headers["Stripe-Should-Retry"] == "true"


def test_5xx_burst_then_recovery(fault_proxy: FaultProxy, proxied_client: stripe.StripeClient) -> None:
    fault_proxy.burst_5xx(2, status=503)
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.APIError) as caught:
            proxied_client.v1.customers.list()
        errors.append(caught.value)
    assert outcome(proxied_client.v1.customers.list) == "ok"
    assert [e.http_status for e in errors] == [503, 503]
    assert all(e.error is not None and e.error.type == "api_error" for e in errors)
    assert all(e.headers is not None and e.headers["Stripe-Should-Retry"] == "true" for e in errors)


def test_scheduled_fault_can_target_one_endpoint(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient
) -> None:
    fault_proxy.burst_5xx(1, status=500, endpoint="POST /v1/customers")
    assert outcome(proxied_client.v1.customers.list) == "ok"
    assert (
        outcome(lambda: proxied_client.v1.customers.create(params={"email": "x@example.com"})) == "APIError"
    )
    assert outcome(lambda: proxied_client.v1.customers.create(params={"email": "x@example.com"})) == "ok"


# -- dropped connections ---------------------------------------------------------------------------


def test_drop_before_forwarding_writes_nothing(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient, stripe_client: stripe.StripeClient
) -> None:
    fault_proxy.fail_next(1, "drop_before")
    with pytest.raises(stripe.APIConnectionError) as caught:
        proxied_client.v1.customers.create(params={"email": "lost@example.com"})
    assert caught.value.should_retry  # requests' ConnectionError: the SDK would retry it
    assert upstream_emails(stripe_client) == []


def test_drop_after_forwarding_writes_but_the_client_never_hears(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient, stripe_client: stripe.StripeClient
) -> None:
    fault_proxy.configure(drop_rate=1.0, drop_when="after")
    with pytest.raises(stripe.APIConnectionError):
        proxied_client.v1.customers.create(
            params={"email": "ghost@example.com"}, options={"idempotency_key": "k-ghost"}
        )
    assert upstream_emails(stripe_client) == ["ghost@example.com"]

    fault_proxy.configure(drop_rate=0.0)
    retried = proxied_client.v1.customers.create(
        params={"email": "ghost@example.com"}, options={"idempotency_key": "k-ghost"}
    )
    assert (
        retried.last_response is not None and retried.last_response.headers["Idempotent-Replayed"] == "true"
    )
    assert upstream_emails(stripe_client) == ["ghost@example.com"]


def test_random_faults_are_reproducible_with_a_seed(stripe_url: str) -> None:
    def pattern() -> list[str]:
        config = FaultConfig(drop_rate=0.3, error_rate_429=0.2)
        with FaultProxy(stripe_url, seed=7, config=config) as proxy:
            client = client_for(proxy)
            return [outcome(client.v1.customers.list) for _ in range(20)]

    first = pattern()
    assert first == pattern()
    assert {"ok", "APIConnectionError", "RateLimitError"} == set(first)


# -- idempotency -----------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_first_response(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient, stripe_client: stripe.StripeClient
) -> None:
    def create() -> Any:
        return proxied_client.v1.customers.create(
            params={"email": "once@example.com"}, options={"idempotency_key": "k-once"}
        )

    first, second = create(), create()
    assert first.id == second.id
    assert second.last_response is not None and second.last_response.headers["Idempotent-Replayed"] == "true"
    assert upstream_emails(stripe_client) == ["once@example.com"]
    stats = fault_proxy.stats()
    assert (stats["forwarded"], stats["replayed"]) == ({"POST /v1/customers": 1}, {"POST /v1/customers": 1})


def test_same_key_with_other_parameters_is_an_idempotency_error(proxied_client: stripe.StripeClient) -> None:
    proxied_client.v1.customers.create(
        params={"email": "one@example.com"}, options={"idempotency_key": "k-reused"}
    )
    with pytest.raises(stripe.IdempotencyError) as caught:
        proxied_client.v1.customers.create(
            params={"email": "two@example.com"}, options={"idempotency_key": "k-reused"}
        )
    assert caught.value.http_status == 400
    assert "same parameters" in str(caught.value)


def test_same_key_while_the_first_request_runs_is_a_409(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient, stripe_client: stripe.StripeClient
) -> None:
    fault_proxy.configure(latency=Latency(write=0.4))

    def create() -> Any:
        return proxied_client.v1.customers.create(
            params={"email": "twice@example.com"}, options={"idempotency_key": "k-2x"}
        )

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(create)
        wait_until_received(fault_proxy, 1)
        second = pool.submit(create)
        with pytest.raises(stripe.APIError) as caught:
            second.result()
        assert first.result().email == "twice@example.com"
    assert caught.value.http_status == 409
    assert caught.value.error is not None and caught.value.error.code == "idempotency_key_in_use"
    assert upstream_emails(stripe_client) == ["twice@example.com"]


# -- stats and configuration -----------------------------------------------------------------------


def test_stats_count_by_endpoint_and_reset(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient
) -> None:
    customer = proxied_client.v1.customers.create(
        params={"email": "s@example.com"}, options={"idempotency_key": "k-s"}
    )
    proxied_client.v1.customers.create(params={"email": "s@example.com"}, options={"idempotency_key": "k-s"})
    fault_proxy.fail_next(1, "lock_timeout")
    outcome(lambda: proxied_client.v1.customers.update(customer.id, params={"name": "S"}))
    proxied_client.v1.customers.update(customer.id, params={"name": "S"})

    assert fault_proxy.stats() == {
        "received": {"POST /v1/customers": 2, "POST /v1/customers/{id}": 2},
        "forwarded": {"POST /v1/customers": 1, "POST /v1/customers/{id}": 1},
        "replayed": {"POST /v1/customers": 1},
        "faulted": {"lock_timeout": {"POST /v1/customers/{id}": 1}},
        "totals": {"received": 4, "forwarded": 2, "replayed": 1, "faulted": 1},
    }
    fault_proxy.reset_stats()
    assert fault_proxy.stats()["totals"] == {"received": 0, "forwarded": 0, "replayed": 0, "faulted": 0}


def test_concurrent_clients_are_all_accounted_for(fault_proxy: FaultProxy) -> None:
    fault_proxy.configure(error_rate_429=0.2, error_rate_5xx=0.1)
    barrier = threading.Barrier(4)

    def worker() -> None:
        client = client_for(fault_proxy)
        barrier.wait()
        for _ in range(25):
            outcome(client.v1.customers.list)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(worker) for _ in range(4)]:
            future.result()
    totals = fault_proxy.stats()["totals"]
    assert totals["received"] == 100 == totals["forwarded"] + totals["faulted"]
    assert totals["faulted"] > 0


def test_stats_are_served_over_http_for_other_processes(
    fault_proxy: FaultProxy, proxied_client: stripe.StripeClient
) -> None:
    proxied_client.v1.customers.list()
    with urllib.request.urlopen(f"{fault_proxy.url}{STATS_PATH}", timeout=5) as response:
        assert json.load(response) == fault_proxy.stats()
    assert fault_proxy.stats()["totals"]["received"] == 1  # asking for stats is not a Stripe call


def test_configuration_is_validated(fault_proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="probability"):
        fault_proxy.configure(error_rate_429=1.5)
    with pytest.raises(ValueError, match="drop_when"):
        fault_proxy.configure(drop_when="sometimes")
    assert fault_proxy.config == FaultConfig()
    assert FaultConfig.stripe_like().rate_limits == RateLimits(global_rps=100, endpoint_rps=25)


# -- what stripe 16.x retries by itself (max_network_retries > 0) ----------------------------------


@pytest.fixture
def fast_sdk_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's backoff starts at 0.5 s; shrink it (the retry decisions are untouched)."""
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.02)


@pytest.mark.usefixtures("fast_sdk_backoff")
@pytest.mark.parametrize(
    ("kind", "options", "retried", "error"),
    [
        ("rate_limit", {}, False, "RateLimitError"),  # plain 429: never retried
        ("lock_timeout", {}, True, None),  # 429 + Stripe-Should-Retry: true
        ("server_error", {"status": 500, "should_retry": True}, True, None),
        ("server_error", {"status": 503, "should_retry": None}, True, None),  # any 5xx without the header
        ("server_error", {"status": 500, "should_retry": False}, False, "APIError"),  # the header wins
        ("drop_before", {}, True, None),  # requests ConnectionError -> should_retry
    ],
)
def test_sdk_retries(
    fault_proxy: FaultProxy, kind: FaultKind, options: dict[str, Any], retried: bool, error: str | None
) -> None:
    fault_proxy.fail_next(1, kind, **options)
    result = outcome(
        lambda: client_for(fault_proxy, retries=2).v1.customers.create(params={"email": "r@example.com"})
    )
    assert result == (error or "ok")
    assert fault_proxy.stats()["totals"]["received"] == (2 if retried else 1)


@pytest.mark.usefixtures("fast_sdk_backoff")
def test_sdk_retry_after_a_dropped_write_is_replayed_not_repeated(
    fault_proxy: FaultProxy, stripe_client: stripe.StripeClient
) -> None:
    """The SDK sends an Idempotency-Key on every POST (its own UUID if none) and keeps it across retries."""
    fault_proxy.fail_next(1, "drop_after")
    created = client_for(fault_proxy, retries=2).v1.customers.create(params={"email": "d@example.com"})
    assert (
        created.last_response is not None and created.last_response.headers["Idempotent-Replayed"] == "true"
    )
    assert upstream_emails(stripe_client) == ["d@example.com"]


@pytest.mark.usefixtures("fast_sdk_backoff")
def test_sdk_ignores_retry_after(fault_proxy: FaultProxy) -> None:
    fault_proxy.configure(retry_after=30)
    fault_proxy.fail_next(1, "lock_timeout")
    started = time.monotonic()
    client_for(fault_proxy, retries=1).v1.customers.create(params={"email": "ra@example.com"})
    assert time.monotonic() - started < 5


def test_sdk_retries_a_409_in_progress_until_the_replay(
    fault_proxy: FaultProxy, stripe_client: stripe.StripeClient
) -> None:
    """Real backoff (0.5-1 s) outlasts the 0.3 s write, so the retry finds the stored response."""
    fault_proxy.configure(latency=Latency(write=0.3))

    def create() -> Any:
        client = client_for(fault_proxy, retries=2)
        return client.v1.customers.create(
            params={"email": "c@example.com"}, options={"idempotency_key": "k-c"}
        )

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(create)
        wait_until_received(fault_proxy, 1)
        second = pool.submit(create)
        assert first.result().id == second.result().id
    stats = fault_proxy.stats()
    assert stats["faulted"] == {"idempotency_in_progress": {"POST /v1/customers": 1}}
    assert stats["replayed"] == {"POST /v1/customers": 1}
    assert upstream_emails(stripe_client) == ["c@example.com"]


def test_a_client_without_max_network_retries_retries_nothing(fault_proxy: FaultProxy) -> None:
    fault_proxy.burst_5xx(1, status=503, should_retry=True)
    default_client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": fault_proxy.url})
    assert outcome(default_client.v1.customers.list) == "APIError"
    assert fault_proxy.stats()["totals"]["received"] == 1
