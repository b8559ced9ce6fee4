"""How StripeCustomers sorts and retries failures. The failures are built as the stripe SDK builds
them from a response (status, body code, headers); the real-HTTP versions run through the fault
proxy in test_sync_faults.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from krenalis_airflow.core.ratelimit import Limits, RateLimiter
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.exceptions import RecordRejected, RetryableSyncError, TerminalSyncError


def rate_limited(code: str = "rate_limit", **headers: str) -> stripe.RateLimitError:
    """As the SDK builds it: the code only in the JSON body, never in ``.code``."""
    body = {"error": {"type": "invalid_request_error", "code": code, "message": "Too many requests"}}
    return stripe.RateLimitError("Too many requests", http_status=429, json_body=body, headers=headers)


def server_error(**headers: str) -> stripe.APIError:
    return stripe.APIError("boom", http_status=500, headers=headers)


def api(retries: int = 3) -> tuple[StripeCustomers, list[float]]:
    slept: list[float] = []
    customers = StripeCustomers(
        stripe.StripeClient("sk_test_x"),
        limiter=RateLimiter(Limits(1000, 1000), sleep=lambda s: None),
        retries=retries,
        sleep=slept.append,
    )
    return customers, slept


def failing(*errors: Exception, then: Any = "ok") -> Callable[[], Any]:
    queue = list(errors)

    def request() -> Any:
        if queue:
            raise queue.pop(0)
        return then

    return request


def test_transient_failures_are_retried_with_growing_waits() -> None:
    customers, slept = api()
    assert customers._call("customers.create", failing(rate_limited(), server_error())) == "ok"
    assert customers.calls["customers.create"] == 3
    assert customers.retried == {"rate limited": 1, "HTTP 500": 1}
    assert 0.25 <= slept[0] <= 0.5 and 0.5 <= slept[1] <= 1.0


def test_lock_timeouts_are_told_apart_from_rate_limits() -> None:
    customers, _ = api()
    customers._call("customers.update", failing(rate_limited("lock_timeout"), rate_limited()))
    assert customers.retried == {"lock timeout": 1, "rate limited": 1}


def test_retry_after_is_honoured_and_429_slows_the_limiter() -> None:
    customers, slept = api()
    customers._call("customers.update", failing(rate_limited(**{"Retry-After": "7"})))
    assert slept == [7.0]
    assert (
        customers._limiter is not None and customers._limiter._global.rate == 500 * 1.01
    )  # halved, then one success


def test_retries_are_capped() -> None:
    customers, _ = api(retries=2)
    with pytest.raises(RetryableSyncError, match="failed 3 time"):
        customers._call("customers.create", failing(*[server_error() for _ in range(5)]))
    assert customers.calls["customers.create"] == 3


def test_stripe_should_retry_false_is_obeyed() -> None:
    customers, slept = api()
    with pytest.raises(RetryableSyncError):
        customers._call("customers.create", failing(server_error(**{"Stripe-Should-Retry": "false"})))
    assert customers.calls["customers.create"] == 1 and slept == []


def test_bad_key_and_missing_permission_are_terminal_at_once() -> None:
    customers, _ = api()
    with pytest.raises(TerminalSyncError, match="401"):
        customers._call(
            "customers.list",
            failing(
                stripe.AuthenticationError("Invalid API Key provided: sk_test_****abcd", http_status=401)
            ),
        )
    with pytest.raises(TerminalSyncError, match="Customers: write") as raised:
        customers._call("customers.list", failing(stripe.PermissionError("no", http_status=403)))
    assert "sk_test_" not in str(raised.value)
    assert customers.calls["customers.list"] == 2


def test_a_bad_payload_rejects_the_record_with_stripes_message_and_param() -> None:
    customers, _ = api()
    invalid = stripe.InvalidRequestError("Invalid email address: nope", param="email", http_status=400)
    with pytest.raises(RecordRejected, match=r"Invalid email address: nope \(param: email\)"):
        customers._call("customers.create", failing(invalid))
    gone = stripe.InvalidRequestError("No such customer: 'cus_1'", param="id", http_status=404)
    with pytest.raises(RecordRejected, match="full_resync"):
        customers._call("customers.update", failing(gone))
    assert customers.retried == {}


def test_the_sdks_own_log_lines_never_carry_a_key(caplog: pytest.LogCaptureFixture) -> None:
    """Stripe echoes a masked key in 401 bodies, which the SDK logs at debug level; the CLI's
    preview and plan print logs without Airflow's secret masking."""
    from stripe._util import log_debug, log_info

    api()  # a StripeCustomers: what the sync, the CLI and the hook all build
    with caplog.at_level(logging.DEBUG, logger="stripe"):
        log_debug(
            "API response body", body='{"error": {"message": "Invalid API Key provided: sk_test_****abcd"}}'
        )
        live_shaped = "rk_" + "live_" + "secret42"  # built here: no key-shaped literal in the source
        log_info("Request to Stripe api", method="get", url=f"http://{live_shaped}@127.0.0.1/v1/customers")
    assert len(caplog.records) == 2
    assert "sk_test_" not in caplog.text and "secret42" not in caplog.text
    assert caplog.text.count("<api key>") == 2
