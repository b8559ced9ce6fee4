"""A fault-injecting HTTP proxy in front of localstripe: a Stripe-like front for tests and benchmarks.

localstripe answers every request at once and never fails on its own, so the retry, rate-limit and
idempotency paths of the sync engine would go untested against it. This proxy sits between the
``stripe`` SDK and localstripe and adds what the real API does::

    with LocalStripe() as upstream, FaultProxy(upstream.url) as proxy:
        client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": proxy.url})
        proxy.configure(rate_limits=RateLimits(global_rps=100, endpoint_rps=25))
        proxy.burst_5xx(2, status=503)          # the next two requests fail
        ...
        proxy.stats()["received"]               # API calls by endpoint, e.g. {"POST /v1/customers": 3}

What it injects, in the order a request meets it (the first that applies wins):

1. **Rate limits** (token buckets, global and per endpoint; for the whole proxy, or per API key
   and ``Stripe-Account`` as Stripe counts them with ``RateLimits(per_key=True)``) → 429 ``rate_limit``.
2. **Scheduled faults** (``fail_next``, ``burst_5xx``): the next *n* requests (optionally of one
   endpoint) get a given fault.
3. **Random faults** drawn from a seeded ``random.Random``: ``error_rate_429`` (429 ``rate_limit``),
   ``lock_timeout_rate`` (429 ``lock_timeout``, writes only: object locks are taken by writes),
   ``error_rate_5xx``, ``drop_rate``.
4. A **dropped connection** ``before`` (``drop_when``, or scheduled ``drop_before``) closes the
   connection without a response and forwards nothing.
5. **Idempotency**: a POST whose ``Idempotency-Key`` was seen before is answered from the replay
   cache (``Idempotent-Replayed: true``) or refused (400 ``idempotency_error`` if the endpoint or
   parameters differ, 409 while the first request with that key is still running), never forwarded.
6. **Latency** (reads and writes separately, optional jitter), then the request is forwarded.
7. A **dropped connection** ``after`` closes the connection once the request was served: the
   write happened but the client never heard, the crash window that idempotency keys exist for.

Responses imitate Stripe, and in particular what ``stripe`` 16.x reads to decide a retry
(``stripe/_http_client.py`` ``HTTPClient._should_retry``): the ``Stripe-Should-Retry`` header
first (``"true"``/``"false"``), then status 409, then any status >= 500; a connection error is
retried when the underlying ``requests`` error is a connection error or timeout. A plain 429 is
never retried by the SDK, and ``Retry-After`` is not read by it (the sync engine reads it).

Injected faults model failures before the endpoint runs, so they are not stored in the replay cache
(Stripe saves a result only once execution has begun); a response that was forwarded and then
dropped *is* stored, so a retry with the same key is replayed, as Stripe would. Only 2xx upstream
answers are stored: localstripe's 4xx are validation errors, which Stripe does not store either.
The cache lives as long as the proxy (Stripe keeps keys 24 hours), per API key and account.

Stripe's limits for the benchmark: ``FaultConfig.stripe_like()``. In another process (the stats
are then at ``GET /_fault_proxy/stats``)::

    python -m support.fault_proxy --upstream http://127.0.0.1:8420 --port 8421 --stripe-like
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOST = "127.0.0.1"
READY_PREFIX = "fault proxy listening on "
STATS_PATH = "/_fault_proxy/stats"  # GET: stats() as JSON, for a proxy in another process

FaultKind = Literal["rate_limit", "lock_timeout", "server_error", "drop_before", "drop_after"]
DropWhen = Literal["before", "after"]

RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. You can learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)
LOCK_TIMEOUT_MESSAGE = (
    "This object cannot be accessed right now because another API request or Stripe process is "
    "currently accessing it. If you see this error intermittently, retry the request. If you see "
    "this error frequently and are making multiple concurrent requests to a single object, make "
    "your requests serially or at a lower rate. See https://stripe.com/docs/rate-limits for more "
    "details."
)
SERVER_ERROR_MESSAGE = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need "
    "any help, you can reach out to support: https://support.stripe.com/contact"
)

# Headers that belong to one hop, not to the request or response (RFC 9110 §7.6.1), plus the ones
# aiohttp computes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

# A Stripe object id: a lowercase prefix, "_", then a random part. The random part of a real or
# localstripe id (14+ characters of [A-Za-z0-9]) practically always holds a digit or an uppercase
# letter, which is what tells ``cus_NffrFeUfNV2Hib`` from a path word like ``payment_methods``.
_ID_SEGMENT = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*_(?=[a-z]*[A-Z0-9])[A-Za-z0-9]{6,}$")


def endpoint_of(method: str, path: str) -> str:
    """``"POST /v1/customers/{id}"`` for ``POST /v1/customers/cus_123abc``: Stripe's unit of limits.

    Stripe counts each named API operation as one endpoint, whatever object id it is called on.
    """
    segments = ["{id}" if _ID_SEGMENT.match(s) else s for s in path.split("/")]
    return f"{method.upper()} {'/'.join(segments)}"


def stripe_error(error_type: str, message: str, code: str | None = None, **extra: Any) -> bytes:
    """A Stripe v1 error body: ``{"error": {"type", "message", "code"?, ...}}``."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if code is not None:
        error["code"] = code
    error.update(extra)
    return json.dumps({"error": error}).encode()


@dataclass(frozen=True)
class Latency:
    """Delay before forwarding, in seconds: ``read`` for GET/HEAD, ``write`` for everything else.

    ``jitter`` adds a uniform draw from ``[-jitter, +jitter]`` (never below zero), from its own
    seeded generator so that changing latency does not change which requests fault.
    """

    read: float = 0.0
    write: float = 0.0
    jitter: float = 0.0


@dataclass(frozen=True)
class RateLimits:
    """Token buckets in requests per second; ``None`` means no limit.

    ``global_rps`` covers all requests, ``endpoint_rps`` each endpoint (see ``endpoint_of``), and
    ``per_endpoint`` overrides it for named endpoints. A bucket holds ``burst`` seconds' worth of
    tokens (1 s: a client may send ``rate`` requests at once, then ``rate`` per second). A refused
    request takes no token. ``per_key``: every account (API key and ``Stripe-Account`` header)
    has buckets of its own, as on Stripe; otherwise one set of buckets serves every request.
    """

    global_rps: float | None = None
    endpoint_rps: float | None = None
    per_endpoint: Mapping[str, float] = field(default_factory=dict)
    burst: float = 1.0
    per_key: bool = False

    def endpoint_rate(self, endpoint: str) -> float | None:
        return self.per_endpoint.get(endpoint, self.endpoint_rps)


@dataclass(frozen=True)
class FaultConfig:
    """Everything the proxy injects; change it at runtime with ``FaultProxy.configure``.

    Rates are probabilities per request, drawn from the proxy's seeded generator.
    ``retry_after`` (seconds) adds a ``Retry-After`` header to every 429 the proxy makes.
    ``server_error_status`` and ``server_error_should_retry`` shape the random 5xx
    (``Stripe-Should-Retry`` omitted when ``None``).
    """

    latency: Latency = Latency()
    rate_limits: RateLimits | None = None
    error_rate_429: float = 0.0
    lock_timeout_rate: float = 0.0
    error_rate_5xx: float = 0.0
    server_error_status: int = 500
    server_error_should_retry: bool | None = True
    drop_rate: float = 0.0
    drop_when: DropWhen = "before"
    retry_after: float | None = None

    @classmethod
    def stripe_like(cls, *, global_rps: float = 100, endpoint_rps: float = 25) -> FaultConfig:
        """Stripe's live-mode limits and typical latencies, for benchmarks."""
        return cls(
            latency=Latency(read=0.15, write=0.3, jitter=0.05),
            rate_limits=RateLimits(global_rps=global_rps, endpoint_rps=endpoint_rps),
        )

    def validated(self) -> FaultConfig:
        for name in ("error_rate_429", "lock_timeout_rate", "error_rate_5xx", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1")
        if self.drop_when not in ("before", "after"):
            raise ValueError("drop_when must be 'before' or 'after'")
        if not 500 <= self.server_error_status <= 599:
            raise ValueError("server_error_status must be a 5xx status")
        return self


@dataclass(frozen=True)
class _Drop:
    """Decision: close the connection without a response, before or after serving the request."""

    when: DropWhen


@dataclass
class _Scheduled:
    """``remaining`` more requests (of ``endpoint``, or any) get ``kind``."""

    remaining: int
    kind: FaultKind
    endpoint: str | None
    status: int = 500
    should_retry: bool | None = True


@dataclass(frozen=True)
class _Stored:
    """A response kept for idempotent replay, with what identifies the request it answered."""

    endpoint_path: str
    fingerprint: tuple[str, ...]
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * burst)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def has_token(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


class _Limiter:
    """The token buckets of one ``RateLimits``; rebuilt (full) whenever the limits change."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.global_bucket = _Bucket(limits.global_rps, limits.burst) if limits.global_rps else None
        self.endpoint_buckets: dict[str, _Bucket] = {}

    def _endpoint_bucket(self, endpoint: str) -> _Bucket | None:
        rate = self.limits.endpoint_rate(endpoint)
        if not rate:
            return None
        if endpoint not in self.endpoint_buckets:
            self.endpoint_buckets[endpoint] = _Bucket(rate, self.limits.burst)
        return self.endpoint_buckets[endpoint]

    def admit(self, endpoint: str) -> str | None:
        """Take a token from both buckets, or name the limit that refused: ``global``/``endpoint``."""
        now = time.monotonic()
        endpoint_bucket = self._endpoint_bucket(endpoint)
        if self.global_bucket is not None and not self.global_bucket.has_token(now):
            return "global"
        if endpoint_bucket is not None and not endpoint_bucket.has_token(now):
            return "endpoint"
        for bucket in (self.global_bucket, endpoint_bucket):
            if bucket is not None:
                bucket.take()
        return None


@dataclass
class _Stats:
    received: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)
    replayed: Counter[str] = field(default_factory=Counter)
    faulted: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def as_dict(self) -> dict[str, Any]:
        faulted = {kind: dict(counts) for kind, counts in sorted(self.faulted.items())}
        return {
            "received": dict(self.received),
            "forwarded": dict(self.forwarded),
            "replayed": dict(self.replayed),
            "faulted": faulted,
            "totals": {
                "received": self.received.total(),
                "forwarded": self.forwarded.total(),
                "replayed": self.replayed.total(),
                "faulted": sum(c.total() for c in self.faulted.values()),
            },
        }


class FaultProxy:
    """An aiohttp proxy on 127.0.0.1 in a background thread (own event loop) in front of ``upstream_url``.

    Thread-safe: tests and benchmarks configure it from their own threads while it serves. One lock
    guards the configuration, the buckets, the random generators, the replay cache and the stats;
    it is never held across an ``await``.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        port: int = 0,
        seed: int = 0,
        config: FaultConfig | None = None,
        upstream_timeout: float = 60.0,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.port = port
        self.seed = seed
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._config = (config or FaultConfig()).validated()
        self._limiter = _Limiter(self._config.rate_limits) if self._config.rate_limits else None
        self._key_limiters: dict[tuple[str, str], _Limiter] = {}  # rate_limits.per_key: by account
        self._rng = random.Random(seed)
        self._jitter_rng = random.Random(seed + 1)
        self._scheduled: list[_Scheduled] = []
        self._stats = _Stats()
        self._replay_cache: dict[tuple[str, str, str], _Stored] = {}
        self._in_flight: set[tuple[str, str, str]] = set()
        self._request_ids = itertools.count(1)
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to give the SDK, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the fault proxy is not running: call start() first")
        return self._url

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        self._url = f"http://{HOST}:{port}"
        return self

    def stop(self) -> None:
        """Close the server and the upstream session, then end the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None
        self._url = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self) -> int:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get(STATS_PATH, self._handle_stats)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A request still sleeping out its latency must not hold stop() for aiohttp's default 60 s.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, self.port))
        await web.SockSite(self._runner, sock).start()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=self.upstream_timeout),
            connector=aiohttp.TCPConnector(limit=0),
        )
        return int(sock.getsockname()[1])

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- configuration (any thread) ----------------------------------------------------------------

    @property
    def config(self) -> FaultConfig:
        return self._config

    def configure(self, config: FaultConfig | None = None, /, **changes: Any) -> FaultConfig:
        """Replace the configuration, or change some fields: ``configure(error_rate_429=0.1)``.

        Changing ``rate_limits`` refills the buckets. Returns the new configuration.
        """
        with self._lock:
            new = dataclasses.replace(config or self._config, **changes).validated()
            if new.rate_limits != self._config.rate_limits or self._limiter is None:
                self._limiter = _Limiter(new.rate_limits) if new.rate_limits else None
                self._key_limiters.clear()
            self._config = new
            return new

    def reset(self, *, seed: int | None = None) -> None:
        """No faults, no scheduled faults, fresh generators; keeps the stats and the replay cache."""
        with self._lock:
            self._config = FaultConfig()
            self._limiter = None
            self._key_limiters.clear()
            self._scheduled.clear()
            self.seed = self.seed if seed is None else seed
            self._rng = random.Random(self.seed)
            self._jitter_rng = random.Random(self.seed + 1)

    def fail_next(
        self,
        n: int,
        kind: FaultKind,
        *,
        endpoint: str | None = None,
        status: int = 500,
        should_retry: bool | None = True,
    ) -> None:
        """The next ``n`` requests (of ``endpoint`` such as ``"POST /v1/customers"``, or any) get ``kind``.

        ``status`` and ``should_retry`` apply to ``server_error``. Schedules queue up in order.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        if kind == "server_error" and not 500 <= status <= 599:
            raise ValueError("status must be a 5xx status")
        if n == 0:
            return
        with self._lock:
            self._scheduled.append(_Scheduled(n, kind, endpoint, status, should_retry))

    def burst_5xx(
        self, n: int, status: int = 500, *, should_retry: bool | None = True, endpoint: str | None = None
    ) -> None:
        """The next ``n`` requests get ``status`` (500, 503, …) with Stripe's ``api_error`` body."""
        self.fail_next(n, "server_error", endpoint=endpoint, status=status, should_retry=should_retry)

    def clear_replay_cache(self) -> None:
        with self._lock:
            self._replay_cache.clear()

    # -- stats -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts by endpoint: ``received``, ``forwarded``, ``replayed``, ``faulted[kind]``, ``totals``.

        Fault kinds: ``rate_limit`` (random or scheduled 429), ``rate_limit_global`` and
        ``rate_limit_endpoint`` (token buckets), ``lock_timeout``, ``server_error_<status>``,
        ``drop_before``, ``drop_after``, ``idempotency_mismatch`` (400), ``idempotency_in_progress``
        (409), ``upstream_error`` (502: upstream unreachable).
        """
        with self._lock:
            return self._stats.as_dict()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = _Stats()

    # -- request handling (event loop thread) ------------------------------------------------------

    async def _handle_stats(self, request: web.Request) -> web.Response:
        """``GET /_fault_proxy/stats``: not forwarded, not counted."""
        return web.json_response(self.stats())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = endpoint_of(request.method, request.path)
        body = await request.read()
        with self._lock:
            self._stats.received[endpoint] += 1
            config = self._config
            fault = self._front_fault(endpoint, config, request.method, _account(request))
        if isinstance(fault, web.Response):
            return fault
        if fault is not None and fault.when == "before":
            return self._drop(request, endpoint, "drop_before")
        response = await self._answer(request, body, endpoint, config)
        if fault is not None:  # the request was served (forwarded or replayed); the client never hears
            return self._drop(request, endpoint, "drop_after")
        return response

    async def _answer(
        self, request: web.Request, body: bytes, endpoint: str, config: FaultConfig
    ) -> web.Response:
        """Replay or refuse by idempotency key without forwarding; otherwise wait out the latency and forward."""
        idem = self._idempotency_scope(request)
        fingerprint = _fingerprint(request, body)
        if idem is not None:
            answer = self._claim_key(idem, endpoint, request.path, fingerprint)
            if answer is not None:
                return answer
        try:
            await asyncio.sleep(self._delay(request.method, config.latency))
            return await self._forward(request, body, endpoint, idem, fingerprint)
        finally:
            if idem is not None:
                with self._lock:
                    self._in_flight.discard(idem)

    def _front_fault(
        self, endpoint: str, config: FaultConfig, method: str, account: tuple[str, str]
    ) -> web.Response | _Drop | None:
        """Rate limits, scheduled faults, random faults (caller holds the lock)."""
        limiter = self._limiter_for(account)
        if limiter is not None:
            refused_by = limiter.admit(endpoint)
            if refused_by is not None:
                return self._fault(f"rate_limit_{refused_by}", endpoint, self._rate_limited(config))
        scheduled = self._take_scheduled(endpoint)
        if scheduled is not None:
            return self._scheduled_fault(scheduled, endpoint, config)
        return self._random_fault(endpoint, config, method)

    def _limiter_for(self, account: tuple[str, str]) -> _Limiter | None:
        """The buckets that count this account's request (caller holds the lock)."""
        if self._limiter is None or not self._limiter.limits.per_key:
            return self._limiter
        if account not in self._key_limiters:
            self._key_limiters[account] = _Limiter(self._limiter.limits)
        return self._key_limiters[account]

    def _take_scheduled(self, endpoint: str) -> _Scheduled | None:
        for entry in self._scheduled:
            if entry.endpoint is None or entry.endpoint == endpoint:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._scheduled.remove(entry)
                return entry
        return None

    def _scheduled_fault(self, entry: _Scheduled, endpoint: str, config: FaultConfig) -> web.Response | _Drop:
        if entry.kind == "rate_limit":
            return self._fault("rate_limit", endpoint, self._rate_limited(config))
        if entry.kind == "lock_timeout":
            return self._fault("lock_timeout", endpoint, self._lock_timeout(config))
        if entry.kind == "server_error":
            response = self._server_error(entry.status, entry.should_retry)
            return self._fault(f"server_error_{entry.status}", endpoint, response)
        return _Drop("before" if entry.kind == "drop_before" else "after")

    def _random_fault(self, endpoint: str, config: FaultConfig, method: str) -> web.Response | _Drop | None:
        def hit(rate: float) -> bool:
            return rate > 0 and self._rng.random() < rate

        if hit(config.error_rate_429):
            return self._fault("rate_limit", endpoint, self._rate_limited(config))
        if method not in ("GET", "HEAD") and hit(config.lock_timeout_rate):
            return self._fault("lock_timeout", endpoint, self._lock_timeout(config))
        if hit(config.error_rate_5xx):
            status = config.server_error_status
            response = self._server_error(status, config.server_error_should_retry)
            return self._fault(f"server_error_{status}", endpoint, response)
        if hit(config.drop_rate):
            return _Drop(config.drop_when)
        return None

    def _fault(self, kind: str, endpoint: str, response: web.Response) -> web.Response:
        self._stats.faulted[kind][endpoint] += 1
        return response

    # Stripe's error responses --------------------------------------------------------------------

    def _error(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> web.Response:
        all_headers = {"Request-Id": self._request_id(), **(headers or {})}
        return web.Response(status=status, body=body, content_type="application/json", headers=all_headers)

    def _rate_limited(self, config: FaultConfig) -> web.Response:
        body = stripe_error("invalid_request_error", RATE_LIMIT_MESSAGE, "rate_limit")
        return self._error(429, body, _retry_after(config))

    def _lock_timeout(self, config: FaultConfig) -> web.Response:
        """Stripe asks for a retry of a lock timeout: ``Stripe-Should-Retry: true`` (the SDK obeys)."""
        body = stripe_error("invalid_request_error", LOCK_TIMEOUT_MESSAGE, "lock_timeout")
        return self._error(429, body, {"Stripe-Should-Retry": "true", **_retry_after(config)})

    def _server_error(self, status: int, should_retry: bool | None) -> web.Response:
        headers = {} if should_retry is None else {"Stripe-Should-Retry": str(should_retry).lower()}
        return self._error(status, stripe_error("api_error", SERVER_ERROR_MESSAGE), headers)

    def _request_id(self) -> str:
        return f"req_faultproxy{next(self._request_ids):010d}"

    # Idempotency ---------------------------------------------------------------------------------

    @staticmethod
    def _idempotency_scope(request: web.Request) -> tuple[str, str, str] | None:
        """Keys are per account (API key and ``Stripe-Account``); only POSTs are idempotent here."""
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key:
            return None
        return (request.headers.get("Authorization", ""), request.headers.get("Stripe-Account", ""), key)

    def _claim_key(
        self, idem: tuple[str, str, str], endpoint: str, path: str, fingerprint: tuple[str, ...]
    ) -> web.Response | None:
        """Replay, refuse, or mark the key in flight (and return ``None``: go on and forward)."""
        key = idem[2]
        with self._lock:
            stored = self._replay_cache.get(idem)
            if stored is not None:
                return self._replay_or_mismatch(stored, key, endpoint, path, fingerprint)
            if idem in self._in_flight:
                message = (
                    "There is currently another in-progress request using this Idempotent Key (that "
                    "probably means you submitted twice, and the other request is still going "
                    f"through): {key}. Please try again later."
                )
                body = stripe_error("invalid_request_error", message, "idempotency_key_in_use")
                return self._fault("idempotency_in_progress", endpoint, self._error(409, body))
            self._in_flight.add(idem)
            return None

    def _replay_or_mismatch(
        self, stored: _Stored, key: str, endpoint: str, path: str, fingerprint: tuple[str, ...]
    ) -> web.Response:
        if stored.endpoint_path != path:
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they were first "
                f"used for ('{stored.endpoint_path}' vs '{path}'). Try using a key other than "
                f"'{key}' if you meant to execute a different request."
            )
        elif stored.fingerprint != fingerprint:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were "
                f"first used with. Try using a key other than '{key}' if you meant to execute a "
                "different request."
            )
        else:
            self._stats.replayed[endpoint] += 1
            headers = CIMultiDict(stored.headers)
            headers["Idempotent-Replayed"] = "true"
            return web.Response(status=stored.status, body=stored.body, headers=headers)
        body = stripe_error("idempotency_error", message)
        return self._fault("idempotency_mismatch", endpoint, self._error(400, body))

    # Forwarding ----------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        endpoint: str,
        idem: tuple[str, str, str] | None,
        fingerprint: tuple[str, ...],
    ) -> web.Response:
        """Send the request upstream; keep a successful keyed POST's response for replays."""
        try:
            status, headers, payload = await self._upstream(request, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = stripe_error("api_error", f"fault proxy: upstream unreachable ({exc!r})")
            with self._lock:
                return self._fault("upstream_error", endpoint, self._error(502, error))
        with self._lock:
            self._stats.forwarded[endpoint] += 1
            if idem is not None and 200 <= status < 300:
                kept = tuple(headers.items())
                self._replay_cache[idem] = _Stored(request.path, fingerprint, status, kept, payload)
        if idem is not None:
            headers["Idempotency-Key"] = idem[2]
        return web.Response(status=status, body=payload, headers=headers)

    async def _upstream(self, request: web.Request, body: bytes) -> tuple[int, CIMultiDict[str], bytes]:
        assert self._session is not None
        url = f"{self.upstream_url}{request.rel_url}"
        async with self._session.request(
            request.method, url, headers=_end_to_end(request.headers), data=body, allow_redirects=False
        ) as response:
            payload = await response.read()
            return response.status, _end_to_end(response.headers), payload

    def _delay(self, method: str, latency: Latency) -> float:
        base = latency.read if method in ("GET", "HEAD") else latency.write
        if latency.jitter > 0:
            with self._lock:
                base += self._jitter_rng.uniform(-latency.jitter, latency.jitter)
        return max(0.0, base)

    def _drop(self, request: web.Request, endpoint: str, kind: str) -> web.StreamResponse:
        """Close the connection without a response; aiohttp then quietly skips writing one."""
        with self._lock:
            self._stats.faulted[kind][endpoint] += 1
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)


def _account(request: web.Request) -> tuple[str, str]:
    """What Stripe limits a request by: the API key (``Authorization``) and ``Stripe-Account``."""
    return (request.headers.get("Authorization", ""), request.headers.get("Stripe-Account", ""))


def _end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP)


def _retry_after(config: FaultConfig) -> dict[str, str]:
    if config.retry_after is None:
        return {}
    return {"Retry-After": f"{config.retry_after:g}"}


def _fingerprint(request: web.Request, body: bytes) -> tuple[str, ...]:
    """The request's parameters, order-insensitive (form body and query string)."""
    params: Iterable[tuple[str, str]] = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    query = parse_qsl(request.query_string, keep_blank_values=True)
    return (request.method, *sorted(f"{k}={v}" for k, v in [*params, *query]))


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM; print one ready line (``READY_PREFIX`` + URL) to stdout."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="localstripe's base URL")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stripe-like", action="store_true", help="Stripe's rate limits and latencies")
    args = parser.parse_args(argv)

    config = FaultConfig.stripe_like() if args.stripe_like else None
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with FaultProxy(args.upstream, port=args.port, seed=args.seed, config=config) as proxy:
        print(f"{READY_PREFIX}{proxy.url}", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
