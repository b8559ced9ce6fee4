"""The few Stripe customer calls the sync needs, with errors sorted by what can be done about them.

* ``RecordRejected`` — Stripe refused this one payload (400: invalid email, bad param): reject the
  profile with Stripe's message; resending the same payload cannot help.
* ``TerminalSyncError`` — the key is wrong or lacks a permission (401/403): stop the whole run.
  Its words (``key_rejected``, ``permission_missing``) are the hook's ``test_connection``'s too.
* ``RetryableSyncError`` — 429 (rate limit, lock timeout), 409, 5xx and network errors, once the
  retries with backoff are spent (the SDK itself never retries a plain 429).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import stripe
from stripe import RequestOptions

from krenalis_airflow.core.ratelimit import RateLimiter
from krenalis_airflow.core.redact import redact, redact_stripe_logs
from krenalis_airflow.exceptions import (
    CustomerMissing,
    RecordRejected,
    RetryableSyncError,
    TerminalSyncError,
)

T = TypeVar("T")
NO_SDK_RETRIES: RequestOptions = {"max_network_retries": 0}  # retries happen in StripeCustomers._call
LIST_FIELDS = (
    "id",
    "email",
    "name",
    "phone",
    "description",
    "preferred_locales",
    "address",
    "shipping",
    "tax_exempt",
    "metadata",
)  # every field a pipeline can write (fields.SCALAR_FIELDS' units and metadata): compared on lookup
CUSTOMER_EVENTS = ("customer.created", "customer.updated", "customer.deleted")


KEY_FIX = "set the connection's password to a secret or restricted key with Customers: write"


def key_rejected(said: str, where: str = "Stripe") -> str:
    """What a 401 means (the sync's error and the hook's ``test_connection`` say the same)."""
    return f"{where} rejected the API key (401): it is invalid, revoked or mistyped; {KEY_FIX}. Stripe said: {said}"


def permission_missing(said: str) -> str:
    """What a 403 means: the key works but may not touch customers."""
    return (
        "the API key lacks a permission (403): give the restricted key Customers: read and "
        f"Customers: write, or use a secret key. Stripe said: {said}"
    )


class StripeCustomers:
    """Create, update and list customers through a ``stripe.StripeClient``.

    Every request first takes a token from ``limiter`` and is retried here, ``retries`` times at
    most, when it failed for a transient reason: the SDK's own retries are switched off per
    request so the two never multiply. ``Retry-After`` is honoured, ``Stripe-Should-Retry: false``
    is obeyed, and the wait otherwise doubles from ``backoff`` with jitter up to ``max_backoff``.
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        limiter: RateLimiter | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        redact_stripe_logs()
        self._client = client
        self._limiter = limiter
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # requests sent, by endpoint
        self.retried: Counter[str] = Counter()  # transient failures retried, by kind

    def list_all(self) -> Iterator[dict[str, Any]]:
        """Every customer, 100 per request (the search API lags up to an hour: never used here)."""
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = self._call(
                "customers.list",
                lambda: self._client.v1.customers.list(params=params, options=NO_SDK_RETRIES),  # type: ignore[arg-type]  # noqa: B023
            )
            for customer in page.data:
                yield _fields(customer)
            if not page.has_more or not page.data:
                return
            params = {"limit": 100, "starting_after": page.data[-1].id}

    def customer_events(self, since: int) -> Iterator[tuple[list[dict[str, Any]], bool]] | None:
        """The customer events created after ``since`` (Unix seconds), newest first, one page per
        request as (events, whether more pages follow) so that a caller can stop within a budget;
        each event is ``{"type", "created", "object"}``, the object being the customer's fields
        then. None when events cannot be read: a restricted key without Events: read (403), or an
        API without the endpoint (404, localstripe). The first page is read at once, to know."""
        params: dict[str, Any] = {"types": list(CUSTOMER_EVENTS), "created": {"gt": since}, "limit": 100}

        def read() -> Any:
            try:
                return self._client.v1.events.list(params=params, options=NO_SDK_RETRIES)  # type: ignore[arg-type]
            except (stripe.PermissionError, stripe.InvalidRequestError):
                return None  # 403: not allowed; 404: no such endpoint; 400: not these params here

        first = self._call("events.list", read)
        if first is None:
            return None

        def pages(page: Any) -> Iterator[tuple[list[dict[str, Any]], bool]]:
            while True:
                events = [
                    {"type": e.type, "created": e.created, "object": _fields(e.data.object)}
                    for e in page.data
                ]
                more = bool(page.has_more and page.data)
                yield events, more
                if not more:
                    return
                params["starting_after"] = page.data[-1].id
                page = self._call("events.list", read)
                if page is None:  # refused mid-way (a key edited meanwhile): the next run decides again
                    raise RetryableSyncError(
                        "events.list was refused while paging; the run stopped before writing"
                    )

        return pages(first)

    def account_id(self) -> str | None:
        """The Stripe account the key belongs to (``GET /v1/account``), or None when the key may
        not read it (restricted keys with only Customers permissions usually may not)."""

        def read() -> str | None:
            try:
                return str(self._client.v1.accounts.retrieve_current(options=NO_SDK_RETRIES).id)
            except (stripe.PermissionError, stripe.InvalidRequestError):
                return None  # 403: not allowed; 404: an API without the endpoint (stock localstripe)

        return self._call("account.retrieve", read)

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        """The customer's fields; raises if it does not exist."""
        customer = self._call(
            "customers.retrieve",
            lambda: self._client.v1.customers.retrieve(customer_id, options=NO_SDK_RETRIES),
        )
        return _fields(customer)

    def find(self, customer_id: str) -> dict[str, Any] | None:
        """The customer with this id, or None when Stripe has none (or it was deleted): one call."""
        try:
            customer = self.retrieve(customer_id)
        except CustomerMissing:
            return None
        return None if customer.get("deleted") else customer

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        """Create a customer (idempotently) and return its id."""
        options: RequestOptions = {**NO_SDK_RETRIES, "idempotency_key": idempotency_key}
        customer = self._call(
            "customers.create",
            lambda: self._client.v1.customers.create(params=params, options=options),  # type: ignore[arg-type]
        )
        return str(customer.id)

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        """Update a customer's fields and return its id."""
        customer = self._call(
            "customers.update",
            lambda: self._client.v1.customers.update(customer_id, params=params, options=NO_SDK_RETRIES),  # type: ignore[arg-type]
        )
        return str(customer.id)

    def delete(self, customer_id: str) -> None:
        """Delete a customer (``DELETE /v1/customers/{id}``); ``CustomerMissing`` when it is gone."""
        self._call(
            "customers.delete",
            lambda: self._client.v1.customers.delete(customer_id, options=NO_SDK_RETRIES),
        )

    def _call(self, endpoint: str, request: Callable[[], T]) -> T:
        for attempt in range(self._retries + 1):
            if self._limiter:
                self._limiter.acquire(endpoint)
            with self._lock:
                self.calls[endpoint] += 1
            try:
                result = request()
            except stripe.StripeError as exc:
                kind = _classify(exc)  # raises for what no retry can fix
                if kind == "rate limited" and self._limiter:
                    self._limiter.slow_down()
                if attempt == self._retries or _header(exc, "stripe-should-retry") == "false":
                    raise RetryableSyncError(
                        f"{endpoint} failed {attempt + 1} time(s) ({kind}: {_message(exc)})"
                    ) from None
                with self._lock:
                    self.retried[kind] += 1
                self._sleep(self._delay(exc, attempt))
                continue
            if self._limiter:
                self._limiter.speed_up()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, exc: stripe.StripeError, attempt: int) -> float:
        after = _header(exc, "retry-after")
        if after is not None:
            try:
                return min(self._max_backoff, max(0.0, float(after)))
            except ValueError:
                pass
        return min(self._max_backoff, self._backoff * 2**attempt) * (0.5 + random.random() / 2)


def _classify(exc: stripe.StripeError) -> str:
    """The kind of a transient failure; raise at once for failures no retry can fix."""
    if isinstance(exc, stripe.AuthenticationError):
        raise TerminalSyncError(key_rejected(_message(exc))) from None
    if isinstance(exc, stripe.PermissionError):
        raise TerminalSyncError(permission_missing(_message(exc))) from None
    if isinstance(exc, stripe.APIConnectionError):
        return "network error"
    status = exc.http_status or 0
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return "lock timeout" if _code(exc) == "lock_timeout" else "rate limited"
    if status >= 500 or status == 409 or isinstance(exc, stripe.APIError):
        return f"HTTP {status or 'error'}"
    if status == 404:
        raise CustomerMissing(
            f"{_message(exc)}: the customer was deleted in Stripe; run once with full_resync to recreate it",
            getattr(exc, "param", None),
        ) from None
    raise RecordRejected(_message(exc), getattr(exc, "param", None)) from None


def _code(exc: stripe.StripeError) -> str | None:
    """The body's error code: the SDK leaves ``exc.code`` empty for some errors (429 among them)."""
    return exc.code or (getattr(exc.error, "code", None) if exc.error else None)


def _header(exc: stripe.StripeError, name: str) -> str | None:
    headers = exc.headers or {}
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return None


def _fields(customer: Any) -> dict[str, Any]:
    data = customer.to_dict()
    if data.get("deleted"):  # what retrieving a deleted customer returns
        return {"id": data.get("id"), "deleted": True}
    return {name: data.get(name) for name in LIST_FIELDS}


def _message(exc: stripe.StripeError) -> str:
    return redact(str(exc.user_message or exc._message or type(exc).__name__))
