"""The few Stripe customer calls the sync needs, with errors sorted by what can be done about them.

* ``RecordRejected`` — Stripe refused this one payload (400: invalid email, bad param): reject the
  profile with Stripe's message; resending the same payload cannot help.
* ``TerminalSyncError`` — the key is wrong or lacks a permission (401/403): stop the whole run.
* ``RetryableSyncError`` — 429, 409 lock timeouts, 5xx, network errors, after a few local retries
  with backoff (the SDK itself never retries a plain 429).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import stripe

from krenalis_airflow.core.redact import redact
from krenalis_airflow.exceptions import KrenalisError, RetryableSyncError, TerminalSyncError

T = TypeVar("T")
LIST_FIELDS = (
    "id",
    "email",
    "name",
    "phone",
    "description",
    "preferred_locales",
    "address",
    "shipping",
    "metadata",
)


class RecordRejected(KrenalisError):
    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(f"{message} (param: {param})" if param else message)


class StripeCustomers:
    """Create, update and list customers through a ``stripe.StripeClient``."""

    def __init__(self, client: stripe.StripeClient, *, attempts: int = 4, backoff: float = 0.5) -> None:
        self._client = client
        self._attempts = attempts
        self._backoff = backoff
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # requests sent, by endpoint

    def list_all(self) -> Iterator[dict[str, Any]]:
        """Every customer, 100 per request (the search API lags up to an hour: never used here)."""
        page = self._call("customers.list", lambda: self._client.v1.customers.list(params={"limit": 100}))
        while True:
            for customer in page.data:
                data = customer.to_dict()
                yield {name: data.get(name) for name in LIST_FIELDS}
            if not page.has_more or not page.data:
                return
            after: dict[str, Any] = {"limit": 100, "starting_after": page.data[-1].id}
            page = self._call("customers.list", lambda: self._client.v1.customers.list(params=after))  # type: ignore[arg-type]  # noqa: B023

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        customer = self._call("customers.retrieve", lambda: self._client.v1.customers.retrieve(customer_id))
        data = customer.to_dict()
        return {name: data.get(name) for name in LIST_FIELDS}

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        customer = self._call(
            "customers.create",
            lambda: self._client.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(customer.id)

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        customer = self._call(
            "customers.update",
            lambda: self._client.v1.customers.update(customer_id, params=params),  # type: ignore[arg-type]
        )
        return str(customer.id)

    def _call(self, endpoint: str, request: Callable[[], T]) -> T:
        for attempt in range(1, self._attempts + 1):
            with self._lock:
                self.calls[endpoint] += 1
            try:
                return request()
            except stripe.AuthenticationError as exc:
                raise TerminalSyncError(
                    "Stripe rejected the API key (401): set the stripe connection's password to a valid "
                    f"secret key or a restricted key with Customers: write. Stripe said: {_message(exc)}"
                ) from None
            except stripe.PermissionError as exc:
                raise TerminalSyncError(
                    "the API key lacks a permission (403): give the restricted key Customers: write "
                    f"(it needs to read and write customers). Stripe said: {_message(exc)}"
                ) from None
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404:
                    raise RecordRejected(
                        f"{_message(exc)}: the customer was deleted in Stripe; run once with full_resync "
                        "to recreate it",
                        exc.param,
                    ) from None
                raise RecordRejected(_message(exc), exc.param) from None
            except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError) as exc:
                if attempt == self._attempts:
                    raise RetryableSyncError(
                        f"Stripe failed {attempt} times ({type(exc).__name__}: {_message(exc)})"
                    ) from None
                time.sleep(self._backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            except stripe.StripeError as exc:
                status = exc.http_status or 0
                if status >= 500 or status in (409, 429):
                    if attempt == self._attempts:
                        raise RetryableSyncError(f"Stripe failed {attempt} times: {_message(exc)}") from None
                    time.sleep(self._backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
                    continue
                raise RecordRejected(_message(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover


def _message(exc: stripe.StripeError) -> str:
    return redact(str(exc.user_message or exc._message or type(exc).__name__))
