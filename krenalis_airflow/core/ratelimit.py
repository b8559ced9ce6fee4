"""Client-side rate limiting: stay under Stripe's limits instead of bouncing off them.

Stripe allows 100 requests/s in live mode and 25 in test mode, and by default 25/s per endpoint
("POST /v1/customers" and "POST /v1/customers/{id}" are different endpoints). A ``RateLimiter``
holds one token bucket for the account and one per endpoint; every request takes a token from
both, waiting as long as needed. A 429 from Stripe halves the rates for a while (the account may
be shared with other clients), and they climb back as requests succeed.

Several pipelines writing to one account at once share its limits: ``core/shared_limit.py``
counts them through the state store and gives each ``RateLimiter`` its part (``set_share``).
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
        self._auto_burst = burst is None
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

    def retune(self, rate: float) -> None:
        """Change the rate from now on (tokens saved so far were earned at the old one).

        A bucket built without an explicit ``burst`` keeps a fifth of a second's worth, so a
        smaller share also saves up less.
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self.rate = rate
            if self._auto_burst:
                self.burst = max(1.0, rate / 5)
                self._tokens = min(self._tokens, self.burst)


class RateLimiter:
    """A global bucket and one bucket per endpoint, with back-off when Stripe says 429.

    ``limits`` are the account's; ``share`` (``set_share``) is this limiter's part of them when
    other processes use the same account: 4 holders of 100/s get 25/s each. The back-off works
    within the share.
    """

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
        self._share = Limits(limits.global_rate, min(limits.endpoint_rate, limits.global_rate))
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
        """Stripe said 429: halve every rate (never below 1/s, or the share if less), at most once a second.

        Requests in flight when the limit was hit come back with 429s together; they are one
        signal, not many, or the rate would collapse to the floor.
        """
        with self._lock:
            now = self._clock()
            if now - self._slowed_at < 1.0:
                return
            self._slowed_at = now
            floor = min(1.0, self._share.global_rate)
            for bucket in (self._global, *self._endpoints.values()):
                bucket.rate = max(floor, bucket.rate / 2)

    def speed_up(self) -> None:
        """A request succeeded: win back a little of the rate lost to 429s."""
        with self._lock:
            self._global.rate = min(self._share.global_rate, self._global.rate * 1.01)
            for bucket in self._endpoints.values():
                bucket.rate = min(self._endpoint_rate(), bucket.rate * 1.01)

    @property
    def share(self) -> Limits:
        """The rates this limiter runs at when Stripe has not said 429: its part of ``limits``."""
        return self._share

    def set_share(self, share: Limits) -> None:
        """Run at ``share`` from now on (never above ``limits``), keeping any 429 back-off.

        A limiter slowed to half its old share runs at half the new one: the back-off is a
        fraction, the share its ceiling.
        """
        global_rate = min(self.limits.global_rate, share.global_rate)
        new = Limits(global_rate, min(self.limits.endpoint_rate, share.endpoint_rate, global_rate))
        with self._lock:
            old, self._share = self._share, new
            if new == old:
                return
            self._global.retune(min(new.global_rate, self._global.rate * new.global_rate / old.global_rate))
            scale = new.endpoint_rate / old.endpoint_rate
            for bucket in self._endpoints.values():
                bucket.retune(min(self._endpoint_rate(), bucket.rate * scale))

    def _endpoint_rate(self) -> float:
        return min(self._share.endpoint_rate, self._global.rate)
