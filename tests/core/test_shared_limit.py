"""The shared rate limit (``core/shared_limit.py``) on real state stores: a SQLite file several
processes open, and PostgreSQL. Lease arithmetic runs on fake clocks; the processes' test counts
requests against a generous bound, never timing."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.ratelimit import Limits, RateLimiter
from krenalis_airflow.core.shared_limit import Holders, LeaseTable, SharedLimit, sharing
from tests.core.warehouses import PG_DSN

DESTINATION = "key:0123456789abcdef0123"


class Store:
    """A state store: how to connect, its placeholder, and a lease table name of its own."""

    def __init__(self, name: str, connect: Callable[[], Any], placeholder: str, table: str) -> None:
        self.name = name
        self.connect = connect
        self.placeholder = placeholder
        self.table = table

    def leases(self, connection: Any | None = None) -> LeaseTable:
        return LeaseTable(connection or self.connect(), self.placeholder, self.table)


def _pg_connect() -> Any:
    import psycopg2

    return psycopg2.connect(PG_DSN)


def _sqlite_connect(path: str) -> Callable[[], Any]:
    return functools.partial(sqlite3.connect, path, timeout=30)  # picklable, for spawned processes


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    table = f"lease_test_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield Store("sqlite", _sqlite_connect(str(tmp_path / "state.sqlite")), "?", table)
        return
    pytest.importorskip("psycopg2")
    try:
        _pg_connect().close()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at {PG_DSN} is not reachable: {exc}")
    yield Store("postgres", _pg_connect, "%s", table)
    conn = _pg_connect()
    conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
    conn.commit()
    conn.close()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- the lease table ---------------------------------------------------------------------------------


def test_leases_count_live_holders_and_the_strictest_limits(store: Store) -> None:
    table = store.leases()
    table.ensure()
    table.ensure()  # idempotent
    now = 1000.0
    assert table.renew(DESTINATION, "a", Limits(100, 25), now) == Holders(1, Limits(100, 25))
    assert table.renew(DESTINATION, "b", Limits(40, 30), now + 1) == Holders(2, Limits(40, 25))
    assert table.renew("key:another", "c", Limits(100, 25), now + 1).count == 1  # another account
    assert table.renew(DESTINATION, "a", Limits(100, 25), now + 2).count == 2  # a renewal, not a third
    table.release(DESTINATION, "b")
    assert table.renew(DESTINATION, "a", Limits(100, 25), now + 3) == Holders(1, Limits(100, 25))


def test_a_lease_not_renewed_lapses_after_its_ttl(store: Store) -> None:
    table = store.leases()
    table.ensure()
    table.renew(DESTINATION, "crashed", Limits(100, 25), 1000.0, ttl=5)
    assert table.renew(DESTINATION, "alive", Limits(100, 25), 1004.0, ttl=5).count == 2
    assert table.renew(DESTINATION, "alive", Limits(100, 25), 1005.5, ttl=5).count == 1
    # long-expired rows are deleted by whoever renews next, so the table stays small
    table.renew(DESTINATION, "alive", Limits(100, 25), 1100.0, ttl=5)
    conn = store.connect()
    cursor = conn.cursor()
    cursor.execute(f"SELECT holder FROM {store.table}")
    assert [row[0] for row in cursor.fetchall()] == ["alive"]
    conn.close()


def test_two_workers_creating_the_table_at_once_both_go_on(store: Store) -> None:
    first, second = store.leases(), store.leases()
    first.ensure()
    second.ensure()
    assert second.renew(DESTINATION, "x", Limits(10, 10), 1.0).count == 1


def test_holders_share_the_limits_evenly() -> None:
    assert Holders(4, Limits(100, 25)).share() == Limits(25, 6.25)
    assert Holders(0, Limits(20, 20)).share() == Limits(20, 20)


# -- the limiter's share --------------------------------------------------------------------------


def test_a_share_spaces_requests_at_its_rate_and_never_exceeds_the_limits() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(Limits(20, 20), sleep=clock.sleep, clock=clock)
    limiter.set_share(Limits(5, 5))
    for _ in range(11):
        limiter.acquire("customers.create")
    assert clock.now == pytest.approx(2.0, abs=0.01)  # burst 1, then 5/s
    limiter.set_share(Limits(500, 500))
    assert limiter.share == Limits(20, 20)  # never above the account's limits


def test_a_new_share_keeps_the_429_back_off_as_a_fraction() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(Limits(20, 20), sleep=clock.sleep, clock=clock)
    limiter.acquire("customers.create")
    limiter.slow_down()  # 10/s: half of its share
    limiter.set_share(Limits(10, 10))  # a second holder came
    assert limiter._global.rate == 5 and limiter._endpoints["customers.create"].rate == 5
    for _ in range(400):
        limiter.speed_up()
    assert limiter._global.rate == 10  # climbs back to the share, not to the account's limit
    limiter.set_share(Limits(0.5, 0.5))  # 40 holders
    clock.now += 2
    limiter.slow_down()
    assert limiter._global.rate == 0.5  # the 1/s floor never lifts a limiter above its share


# -- SharedLimit, one round at a time (fake clock) ------------------------------------------------


def test_holders_coming_and_going_resize_every_share(store: Store) -> None:
    clock = Clock()
    limits = Limits(20, 20)
    a, b, c = (
        SharedLimit(
            RateLimiter(limits), store.connect, store.placeholder, DESTINATION, clock=clock, table=store.table
        )
        for _ in range(3)
    )
    a.renew()
    assert a.limiter.share == Limits(20, 20)
    b.renew()
    c.renew()
    assert b.limiter.share == Limits(10, 10)  # until its next renewal
    a.renew()
    b.renew()
    assert [x.limiter.share for x in (a, b, c)] == [Limits(20 / 3, 20 / 3)] * 3
    c.release()  # a clean exit
    clock.now += 1
    a.renew()
    b.renew()
    assert a.limiter.share == b.limiter.share == Limits(10, 10)
    clock.now += 6  # b crashed: never renews again, never releases
    a.renew()
    assert a.limiter.share == Limits(20, 20) and a.most_holders == 3
    a.release()
    b._close()


def test_a_holder_configured_lower_lowers_the_ceiling_for_all(store: Store) -> None:
    clock = Clock()
    fast = SharedLimit(
        RateLimiter(Limits(100, 25)),
        store.connect,
        store.placeholder,
        DESTINATION,
        clock=clock,
        table=store.table,
    )
    slow = SharedLimit(
        RateLimiter(Limits(10, 10)),
        store.connect,
        store.placeholder,
        DESTINATION,
        clock=clock,
        table=store.table,
    )
    slow.renew()
    fast.renew()
    slow.renew()
    assert fast.limiter.share == slow.limiter.share == Limits(5, 5)
    fast.release()
    slow.release()


def test_an_unreachable_store_falls_back_to_the_local_limit_and_recovers(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    reachable = False

    def connect() -> Any:
        if not reachable:
            raise OSError("connection refused")
        return store.connect()

    other = SharedLimit(
        RateLimiter(Limits(20, 20)), store.connect, store.placeholder, DESTINATION, table=store.table
    )
    other.renew()
    shared = SharedLimit(
        RateLimiter(Limits(20, 20)), connect, store.placeholder, DESTINATION, table=store.table
    )
    with caplog.at_level(logging.INFO, logger="krenalis_airflow.core.shared_limit"):
        assert shared.renew() is None
        assert shared.renew() is None
        assert shared.limiter.share == Limits(20, 20)  # its own limit, as if alone
        reachable = True
        assert shared.renew() == Holders(2, Limits(20, 20))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not once a second
    assert "runs at its own limit" in warnings[0] and "nothing is lost" in warnings[0]
    assert shared.limiter.share == Limits(10, 10)
    shared.release()
    other.release()


def test_the_thread_takes_renews_and_deletes_the_lease(store: Store) -> None:
    limiter = RateLimiter(Limits(20, 20))
    with SharedLimit(
        limiter, store.connect, store.placeholder, DESTINATION, every=0.05, table=store.table
    ) as lease:
        assert lease.holders == Holders(1, Limits(20, 20))
        time.sleep(0.3)
    leases = store.leases()
    assert leases.renew(DESTINATION, "after", Limits(20, 20), time.time()).count == 1  # ours is gone


def test_a_dry_run_takes_no_lease(store: Store) -> None:
    def connect() -> Any:
        raise AssertionError("a dry run must not touch the state store")

    with sharing(RateLimiter(Limits(20, 20)), connect, store.placeholder, DESTINATION, enabled=False):
        pass


# -- several processes, one account ---------------------------------------------------------------

RATE = 20.0
PROCESSES = 3
SECONDS = 3.0


def _hammer(store: Store, ready: Any, go: Any, results: Any) -> None:
    """One 'upsert': take the lease, then take tokens as fast as the limiter gives them."""
    limiter = RateLimiter(Limits(RATE, RATE))
    with SharedLimit(limiter, store.connect, store.placeholder, DESTINATION, table=store.table) as lease:
        ready.put(1)
        go.wait()
        start = time.time()
        stamps = []
        while time.time() < start + SECONDS:
            limiter.acquire("customers.create")
            stamps.append(time.time())
        results.put((stamps, lease.most_holders))


def test_processes_on_one_destination_stay_under_the_limit_together(store: Store) -> None:
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [context.Process(target=_hammer, args=(store, ready, go, results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            ready.get(timeout=60)
        time.sleep(1.5)  # every holder has renewed since the last one came
        started = time.time()
        go.set()
        outcomes = [results.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
    assert [most for _, most in outcomes] == [PROCESSES] * PROCESSES
    sent = sum(1 for stamps, _ in outcomes for stamp in stamps if stamp < started + SECONDS)
    # Unshared, each would send RATE/s: PROCESSES * RATE * SECONDS = 180. Shared, all of them
    # together send RATE/s plus one saved-up token each (and slower, never faster, when the box
    # is loaded).
    assert sent <= RATE * SECONDS * 1.15 + PROCESSES
    assert sent >= RATE * SECONDS * 0.3
