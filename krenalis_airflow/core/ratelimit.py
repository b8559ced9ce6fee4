"""Client-side rate limiting: stay under Stripe's limits instead of bouncing off them.

Stripe allows 100 requests/s in live mode and 25 in test mode, and by default 25/s per endpoint
("POST /v1/customers" and "POST /v1/customers/{id}" are different endpoints). A ``RateLimiter``
holds one token bucket for the account and one per endpoint; every request takes a token from
both, waiting as long as needed. A 429 from Stripe halves the rates for a while (the account may
be shared with other clients), and they climb back as requests succeed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LIVE_RATE = 100.0
TEST_RATE = 25.0
ENDPOINT_RATE = 25.0


@dataclass(frozen=True)
class Limits:
    """Request rates the sync keeps under, for the account and per endpoint."""

    global_rate: float  # requests per second for the whole account
    endpoint_rate: float  # requests per second per endpoint

    @classmethod
    def for_mode(
        cls, mode: str, global_rate: float | None = None, endpoint_rate: float | None = None
    ) -> Limits:
        """Stripe's documented rates for live or test mode, unless overridden."""
        default = LIVE_RATE if mode == "live" else TEST_RATE
        return cls(global_rate or default, endpoint_rate or min(ENDPOINT_RATE, global_rate or default))

    def describe(self) -> str:
        """The limits as a log line."""
        return f"{self.global_rate:g} requests/s in all, {self.endpoint_rate:g}/s per endpoint"


def concurrency_for(limits: Limits, latency: float = 0.4) -> int:
    """Requests in flight needed to use the whole rate when a write takes ``latency`` seconds.

    Stripe answers a customer write in about 0.3 s, so a serial client gets ~3 writes/s; keeping
    rate * latency requests in flight (plus some slack) saturates the limit instead.
    """
    return max(2, min(64, round(limits.global_rate * latency * 1.25)))


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. Thread-safe."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 5)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; return how long to wait before using it (0 when one was available)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """A global bucket and one bucket per endpoint, with back-off when Stripe says 429."""

    def __init__(
        self,
        limits: Limits,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._sleep = sleep
        self._clock = clock
        self._global = TokenBucket(limits.global_rate, clock=clock)
        self._endpoints: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()
        self._slowed_at = -1e9
        self.waited = 0.0  # seconds spent waiting for tokens, summed over threads (benchmarks read it)

    def acquire(self, endpoint: str) -> None:
        """Block until a request to ``endpoint`` fits both the global and the endpoint rate."""
        with self._lock:
            if (bucket := self._endpoints.get(endpoint)) is None:
                bucket = self._endpoints[endpoint] = TokenBucket(self._endpoint_rate(), clock=self._clock)
        delay = max(self._global.reserve(), bucket.reserve())
        if delay > 0:
            self.waited += delay
            self._sleep(delay)

    def slow_down(self) -> None:
        """Stripe said 429: halve every rate (never below 1/s), at most once a second.

        Requests in flight when the limit was hit come back with 429s together; they are one
        signal, not many, or the rate would collapse to the floor.
        """
        with self._lock:
            now = self._clock()
            if now - self._slowed_at < 1.0:
                return
            self._slowed_at = now
            for bucket in (self._global, *self._endpoints.values()):
                bucket.rate = max(1.0, bucket.rate / 2)

    def speed_up(self) -> None:
        """A request succeeded: win back a little of the rate lost to 429s."""
        with self._lock:
            self._global.rate = min(self.limits.global_rate, self._global.rate * 1.01)
            for bucket in self._endpoints.values():
                bucket.rate = min(self._endpoint_rate(), bucket.rate * 1.01)

    def _endpoint_rate(self) -> float:
        return min(self.limits.endpoint_rate, self._global.rate)
