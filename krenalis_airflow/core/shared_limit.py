"""One Stripe account, several pipelines running at once: its rate limit shared through the state store.

Every upsert has its own ``RateLimiter``. Alone, it keeps its run under the account's limits; four
pipelines on the same key running at once (four Celery workers) would send four times the limit
and meet a storm of 429s. So each upsert takes a **lease** in the state store, the DB-API database
every worker of the pipeline already reaches (its ledger lives there):

    krenalis_rate_leases(destination, holder, global_rate, endpoint_rate, expires_at)

* On start, the upsert inserts its row (``destination``: a name for the Stripe account, e.g.
  ``core/destination.key_fingerprint(key, base)`` or an ``acct_…`` id, never the key itself;
  ``holder``: host, pid and a random part) and counts the live rows of its destination: *H*.
  Its buckets then run at 1/*H* of the account's limits (global and per endpoint). The limits
  are the strictest any live holder was configured with, so a pipeline configured lower lowers
  the account's ceiling for everyone, never raises it.
* A background thread renews the row every second (``expires_at`` = now + 5 s), counts again and
  adjusts the share as holders come and go: two short transactions (the renewal, then the count)
  per second per running upsert, nothing per request. The thread has **its own connection** from the state store's connection
  factory (DB-API connections are not thread-safe).
* A newcomer that finds others running waits one renewal period before its first request, so
  they have all seen it and made room (otherwise both would run at full speed for up to a second).
* On exit the row is deleted and the others speed up within a second. A worker that crashed stops
  counting once its lease lapses (5 s); until then the others run slower, never faster.
* The per-process back-off on 429 (``RateLimiter.slow_down``/``speed_up``) stays as the safety net:
  for other clients of the account, a pipeline on another state store, clocks that disagree.

Why a lease table and not the alternatives:

* A token-bucket row updated per request would be exact, but costs a write transaction (and a
  row lock every process contends for) per Stripe call, hundreds per second on a live account,
  on the store that also holds the ledger; the lease costs one per second per upsert and no
  request ever waits on the database.
* Airflow pools (one per destination) limit how many tasks run at once, not how fast they send:
  a pool of 1 serialises pipelines that could share the rate, and a pool of 4 still lets each
  task send at the full rate. The core must not import Airflow anyway.

The state store failing must not lose records or stop the sync: when the lease cannot be taken,
the upsert runs at its own (local) limit with a warning; when a renewal fails, it keeps the last
share it knew and tries again a second later with a fresh connection. Either way the 429 back-off
keeps it safe, and nothing is recorded before Stripe confirms it.

Expiry uses each worker's wall clock (``time.time``): workers whose clocks disagree by more than
the lease's 5 s would count each other wrongly (keep them on NTP). The SQL is the subset of
SQLite (≥ 3.24) and PostgreSQL the ledger uses. The table name is fixed, not ``state.table_prefix``:
every pipeline on the same state store must meet in the same table, whatever its prefix.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from krenalis_airflow.core.ratelimit import Limits, RateLimiter

LEASE_TABLE = "krenalis_rate_leases"
RENEW_EVERY = 1.0  # seconds between renewals
LEASE_TTL = 5.0  # seconds a lease lives without renewal
FORGET_AFTER = 60.0  # rows expired this long ago are deleted by whoever renews next
START_TIMEOUT = 10.0  # seconds start() waits for the first renewal before running at the local limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holders:
    """The live leases of one destination: how many, and the strictest limits among them."""

    count: int
    limits: Limits

    def share(self) -> Limits:
        """One holder's part of the account's limits."""
        count = max(1, self.count)
        return Limits(self.limits.global_rate / count, self.limits.endpoint_rate / count)


def holder_id() -> str:
    """A name for this upsert's lease that an operator can trace: host, pid and a random part."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseTable:
    """The lease rows, over one DB-API connection (``placeholder``: ``?`` or ``%s``)."""

    def __init__(self, connection: Any, placeholder: str, table: str = LEASE_TABLE) -> None:
        self._conn = connection
        self._ph = placeholder
        self.table = table

    def ensure(self) -> None:
        """Create the table if it is missing (two workers creating it at once is fine)."""
        try:
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " destination VARCHAR(100) NOT NULL,"
                " holder VARCHAR(100) NOT NULL,"
                " global_rate DOUBLE PRECISION NOT NULL,"
                " endpoint_rate DOUBLE PRECISION NOT NULL,"
                " expires_at DOUBLE PRECISION NOT NULL,"
                " PRIMARY KEY (destination, holder))"
            )
            self._conn.commit()
        except Exception:
            # PostgreSQL's CREATE TABLE IF NOT EXISTS can fail with a unique violation when another
            # worker creates the table at the same moment: fine if the table is there now.
            self._conn.rollback()
            self._execute(f"SELECT 1 FROM {self.table} WHERE 1 = 0")
            self._conn.rollback()

    def renew(
        self, destination: str, holder: str, limits: Limits, now: float, ttl: float = LEASE_TTL
    ) -> Holders:
        """Insert or extend ``holder``'s lease until ``now + ttl``; count the live leases of ``destination``."""
        ph = self._ph
        try:
            self._execute(
                f"INSERT INTO {self.table} (destination, holder, global_rate, endpoint_rate, expires_at)"
                f" VALUES ({ph}, {ph}, {ph}, {ph}, {ph})"
                " ON CONFLICT (destination, holder) DO UPDATE SET expires_at = excluded.expires_at,"
                " global_rate = excluded.global_rate, endpoint_rate = excluded.endpoint_rate",
                (destination, holder, limits.global_rate, limits.endpoint_rate, now + ttl),
            )
            # Committed before counting: of two holders joining at once, the later one to count
            # sees both, and waits for the other to make room (see SharedLimit.start).
            self._conn.commit()
            self._execute(f"DELETE FROM {self.table} WHERE expires_at < {ph}", (now - FORGET_AFTER,))
            row = self._fetchone(
                f"SELECT COUNT(*), MIN(global_rate), MIN(endpoint_rate) FROM {self.table}"
                f" WHERE destination = {ph} AND expires_at > {ph}",
                (destination, now),
            )
            self._conn.commit()
        except Exception:
            self._conn.rollback()
            raise
        count, global_rate, endpoint_rate = row
        if not count:  # cannot happen (our own row is live), but never divide by zero
            return Holders(1, limits)
        return Holders(int(count), Limits(float(global_rate), float(endpoint_rate)))

    def release(self, destination: str, holder: str) -> None:
        """Delete ``holder``'s lease: the others get its part within a renewal period."""
        try:
            self._execute(
                f"DELETE FROM {self.table} WHERE destination = {self._ph} AND holder = {self._ph}",
                (destination, holder),
            )
            self._conn.commit()
        except Exception:
            self._conn.rollback()
            raise

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()

    def _fetchone(self, sql: str, params: tuple[Any, ...]) -> Any:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchone()
        finally:
            cursor.close()


class SharedLimit:
    """Keep ``limiter`` at its part of ``destination``'s limits while the ``with`` block runs.

    ``connect`` opens a new DB-API connection to the state store (``DbApiHook.get_conn``,
    ``lambda: sqlite3.connect(path)``); the lease thread owns the one it opens. ``clock`` (wall
    time, comparable between workers) is injectable for tests, and ``renew()`` runs one round in
    the calling thread (then that thread owns the connection: do not also ``start()``).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        connect: Callable[[], Any],
        placeholder: str,
        destination: str,
        *,
        every: float = RENEW_EVERY,
        ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.time,
        table: str = LEASE_TABLE,
        holder: str | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.limiter = limiter
        self.destination = destination
        self.holder = holder or holder_id()
        self.holders: Holders | None = None  # the last count (None until a renewal succeeded)
        self.most_holders = 0  # the most holders seen at once during the run
        self._connect = connect
        self._placeholder = placeholder
        self._every = every
        self._ttl = ttl
        self._clock = clock
        self._table_name = table
        self._log = logger or log
        self._table: LeaseTable | None = None
        self._conn: Any = None
        self._failing = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round, in whichever thread owns the connection ----------------------------------------

    def renew(self) -> Holders | None:
        """Renew the lease (taking it the first time), adjust the limiter; None when the store failed."""
        try:
            table = self._lease_table()
            holders = table.renew(
                self.destination, self.holder, self.limiter.limits, self._clock(), self._ttl
            )
        except Exception as exc:  # every driver has its own errors; none of them may stop the sync
            self._failed(exc)
            return None
        self._apply(holders)
        return holders

    def release(self) -> None:
        """Delete the lease and close the connection (a failure only logs: the lease lapses anyway)."""
        try:
            if self._table is not None:
                self._table.release(self.destination, self.holder)
        except Exception as exc:
            self._log.warning(
                "Could not delete this upsert's rate-limit lease (%s); it lapses by itself within %g s",
                _describe(exc),
                self._ttl,
            )
        finally:
            self._close()

    def _lease_table(self) -> LeaseTable:
        if self._table is None:
            self._conn = self._connect()
            table = LeaseTable(self._conn, self._placeholder, self._table_name)
            table.ensure()
            self._table = table
        return self._table

    def _apply(self, holders: Holders) -> None:
        before, self.holders = self.holders, holders
        self.most_holders = max(self.most_holders, holders.count)
        self.limiter.set_share(holders.share())
        if self._failing:
            self._failing = False
            self._log.info("The state store answers again: the rate limit is shared again")
        if before is None or before.count != holders.count:
            share = self.limiter.share
            self._log.info(
                "Stripe destination %s: %d upsert(s) running on it (this one included); this one "
                "sends at most %s",
                self.destination,
                holders.count,
                share.describe(),
            )

    def _failed(self, exc: Exception) -> None:
        self._close()
        if self._failing:
            return
        self._failing = True
        if self.holders is None:
            fallback = f"its own limit ({self.limiter.share.describe()}), as if it were alone"
        else:
            fallback = f"the last share it knew ({self.limiter.share.describe()})"
        self._log.warning(
            "Cannot share the Stripe rate limit through the state store's table %s (%s): this upsert "
            "runs at %s and retries every %g s; if other pipelines use the same Stripe account now, "
            "expect 429s (retried: nothing is lost). Check that the state store is reachable and "
            "writable.",
            self._table_name,
            _describe(exc),
            fallback,
            self._every,
        )

    def _close(self) -> None:
        conn, self._conn, self._table = self._conn, None, None
        if conn is not None:
            with suppress(Exception):  # a connection that failed may fail to close too
                conn.close()

    # -- the background thread ---------------------------------------------------------------------

    def start(self) -> SharedLimit:
        """Take the lease and start renewing it; return once the first round is done.

        When other holders were already running, wait one renewal period more so that they have
        made room before this upsert sends anything.
        """
        self._thread = threading.Thread(target=self._run, name="krenalis-rate-lease", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self._log.warning(
                "The state store did not answer within %g s: the upsert starts at its own rate limit "
                "and shares it once the store answers",
                START_TIMEOUT,
            )
        elif self.holders is not None and self.holders.count > 1:
            self._stop.wait(self._every * 1.2)
        return self

    def stop(self) -> None:
        """Stop renewing and delete the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT + self._every)
            self._thread = None

    def _run(self) -> None:
        try:
            while True:
                self.renew()
                self._ready.set()
                if self._stop.wait(self._every):
                    break
        finally:
            self._ready.set()
            self.release()

    def __enter__(self) -> SharedLimit:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def sharing(
    limiter: RateLimiter,
    connect: Callable[[], Any],
    placeholder: str,
    destination: str,
    *,
    enabled: bool = True,
    logger: logging.Logger | None = None,
) -> AbstractContextManager[object]:
    """``SharedLimit`` as a ``with`` block, or nothing when ``enabled`` is false (a dry run writes
    nothing to the state store, so it takes no lease: it only lists, at its own limit)."""
    if not enabled:
        return nullcontext()
    return SharedLimit(limiter, connect, placeholder, destination, logger=logger)


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
