"""Token buckets and the limiter, on a fake clock: what waits how long, never wall time."""

from __future__ import annotations

import pytest

from krenalis_airflow.core.ratelimit import Limits, RateLimiter, TokenBucket, concurrency_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_bucket_spends_its_burst_then_spaces_requests_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.2, 0.3])  # reservations queue up behind each other
    clock.now = 10.0
    assert bucket.reserve() == 0.0  # refilled (up to the burst)


def test_limits_follow_the_key_mode_and_overrides() -> None:
    assert Limits.for_mode("test") == Limits(25, 25)
    assert Limits.for_mode("live") == Limits(100, 25)
    assert Limits.for_mode("live", 40, 10) == Limits(40, 10)
    assert Limits.for_mode("test", 5) == Limits(5, 5)  # an endpoint never gets more than the account
    assert concurrency_for(Limits(25, 25)) == 12 and concurrency_for(Limits(100, 25)) == 50


def test_limiter_waits_for_the_stricter_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(Limits(global_rate=100, endpoint_rate=10), sleep=clock.sleep, clock=clock)
    for _ in range(20):
        limiter.acquire("customers.create")
    # 20 requests on one endpoint at 10/s: the endpoint bucket (burst 2) dominates.
    assert clock.now == pytest.approx(1.8, abs=0.05)
    start = clock.now
    for _ in range(5):
        limiter.acquire("customers.update")  # another endpoint has its own bucket
    assert clock.now - start < 0.35


def test_429_halves_the_rates_and_successes_win_them_back() -> None:
    clock = Clock()
    limiter = RateLimiter(Limits(global_rate=20, endpoint_rate=20), sleep=clock.sleep, clock=clock)
    limiter.acquire("customers.create")
    limiter.slow_down()
    limiter.slow_down()  # the same burst of 429s: one signal
    assert limiter._global.rate == 10
    clock.now += 1.5
    limiter.slow_down()
    assert limiter._global.rate == 5
    clock.now += 1.5
    for _ in range(400):
        limiter.speed_up()
    assert limiter._global.rate == 20  # back to the limit, never above it
