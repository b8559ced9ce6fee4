"""API economy and rate-limit use: our upsert engine against a hand-written loop, on a Stripe-like front.

The front is localstripe (in memory, loopback) behind the fault proxy with Stripe's limits
(``FaultConfig.stripe_like``: token buckets per endpoint and global, ~300 ms per write and ~150 ms
per read). ``MeteredProxy`` also notes, for every request, when it arrived, what it answered, the
latency it injected and how long localstripe took, so that calls are counted where Stripe would
count them and localstripe's own slowness can be told apart from the latency we asked for.

Ours is driven exactly as the upsert task drives it (``operators/steps.py``): ``StripeCustomers``
with a ``RateLimiter`` of the limits, ``SyncOptions`` with ``concurrency_for(limits)``, a SQLite
``Ledger``, and the records read from a JSONL file (twice, as ``Syncer.run`` does).

The baseline is the loop a data engineer writes in a ``PythonOperator``: for each profile,
``customers.list(email=…)``, then ``customers.update`` (the first match) or ``customers.create``,
one profile after the other, with the full payload. It is sequential, so its cost is linear in the
number of profiles: it runs on a random sample and is extrapolated per kind of profile.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe
from aiohttp import web

from krenalis_airflow.core.dedupe import dedupe
from krenalis_airflow.core.fields import to_params
from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.ratelimit import Limits, RateLimiter, concurrency_for
from krenalis_airflow.core.records import Record, read_records, write_jsonl
from krenalis_airflow.core.sample_data import generate_profiles
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions, SyncResult
from krenalis_airflow.core.transform.build import build_transformer
from krenalis_airflow.core.transform.run import TransformSettings, transform_profiles
from support.fault_proxy import FaultConfig, FaultProxy, Latency, endpoint_of
from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe

from .stages import bench_spec

PIPELINE = "bench_api"
CREATE = "POST /v1/customers"
UPDATE = "POST /v1/customers/{id}"
LIST = "GET /v1/customers"
WRITES = (CREATE, UPDATE)
OUTDATED_PLAN = "legacy"  # the plan of the seeded customers that are out of date
CHANGED_PLAN = "changed-plan"  # what the "k changed" rerun writes

_slot: contextvars.ContextVar[dict[str, float]] = contextvars.ContextVar("bench_request")


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw it."""

    endpoint: str
    arrived: float  # time.monotonic() when it reached the proxy
    status: int
    injected: float  # latency the proxy added (seconds)
    upstream: float  # time localstripe took to answer (seconds), 0 when not forwarded
    total: float  # from arrival to response


class MeteredProxy(FaultProxy):
    """The fault proxy, noting every request (see ``Request``); ``mark``/``since`` cut the log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[Request] = []
        self._log_lock = threading.Lock()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        slot: dict[str, float] = {}
        _slot.set(slot)  # each request runs in its own task: the slot is this request's
        response = await super()._handle(request)
        entry = Request(
            endpoint_of(request.method, request.path),
            arrived,
            response.status,
            slot.get("injected", 0.0),
            slot.get("upstream", 0.0),
            time.monotonic() - arrived,
        )
        with self._log_lock:
            self.requests.append(entry)
        return response

    def _delay(self, method: str, latency: Latency) -> float:
        delay = super()._delay(method, latency)
        if (slot := _slot.get(None)) is not None:
            slot["injected"] = delay
        return delay

    async def _upstream(self, request: web.Request, body: bytes) -> Any:
        started = time.monotonic()
        try:
            return await super()._upstream(request, body)
        finally:
            if (slot := _slot.get(None)) is not None:
                slot["upstream"] = time.monotonic() - started

    def mark(self) -> int:
        with self._log_lock:
            return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        with self._log_lock:
            return self.requests[mark:]


@dataclass
class Front:
    """localstripe behind a metered proxy, and the limits both sides use."""

    localstripe: LocalStripe
    proxy: MeteredProxy
    limits: Limits

    def reset(self) -> None:
        """An empty account: flush localstripe and forget the idempotency keys the proxy replays."""
        self.localstripe.flush()
        self.proxy.clear_replay_cache()

    def client(self, *, direct: bool = False, retries: int = 4) -> stripe.StripeClient:
        url = self.localstripe.url if direct else self.proxy.url
        return stripe.StripeClient(
            STRIPE_TEST_KEY,
            base_addresses={"api": url},
            max_network_retries=retries,
            http_client=stripe.new_default_http_client(timeout=80.0),
        )


@contextlib.contextmanager
def stripe_front(limits: Limits, latency: Latency, seed: int = 0) -> Iterator[Front]:
    """localstripe (in memory, loopback) behind a ``MeteredProxy`` with Stripe's limits and latencies."""
    stripe_like = FaultConfig.stripe_like(global_rps=limits.global_rate, endpoint_rps=limits.endpoint_rate)
    config = dataclasses.replace(stripe_like, latency=latency)
    with LocalStripe(quiet=True) as upstream:
        proxy = MeteredProxy(upstream.url, seed=seed, config=config)
        with proxy:
            yield Front(upstream, proxy, limits)


# -- the data ---------------------------------------------------------------------------------------


def make_records(count: int) -> list[Record]:
    """``count`` records as the sample pipeline's transform and dedupe steps make them.

    Sample profiles go through the sample spec's mapping and ``keep_first`` dedupe; profiles the
    pipeline rejects (no email, a duplicate email) are skipped until ``count`` records are made.
    """
    spec = bench_spec()
    transformer = build_transformer(spec.transformation)
    wanted = count + count // 10 + 50
    while True:
        profiles = [p._asdict() for p in generate_profiles(wanted)]
        transformed = [
            r
            for r in transform_profiles(profiles, transformer, TransformSettings.of(spec))
            if isinstance(r, Record)
        ]
        kept = [
            r
            for r in dedupe(functools.partial(iter, transformed), "keep_first", spec.export.matching.stripe)
            if isinstance(r, Record)
        ]
        if len(kept) >= count:
            return kept[:count]
        wanted *= 2


def write_records(path: Path, records: Sequence[Record]) -> Path:
    with path.open("w") as out:
        write_jsonl(out, records)
    return path


def changed(record: Record) -> Record:
    return Record(
        record.key, record.match, record.match_value, {**record.payload, "metadata.plan": CHANGED_PLAN}
    )


def outdated(record: Record) -> Record:
    return Record(
        record.key, record.match, record.match_value, {**record.payload, "metadata.plan": OUTDATED_PLAN}
    )


def create_params(record: Record) -> dict[str, Any]:
    return to_params({**record.payload, "email": record.match_value}, creating=True)


def drift(front: Front, records: Sequence[Record], deleted: int) -> None:
    """Edit ``records``' customers behind the pipeline's back (a name in the dashboard), and delete
    the first ``deleted`` of them, straight in localstripe (not through the proxy: not counted)."""
    client = front.client(direct=True)
    wanted = {record.match_value for record in records}
    listed = client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
    found = [c for c in listed if c.email in wanted]
    for number, customer in enumerate(found):
        if number < deleted:
            client.v1.customers.delete(customer.id)
        else:
            client.v1.customers.update(customer.id, params={"name": "Edited in the dashboard"})


def seed_customers(front: Front, records: Sequence[Record], threads: int = 8) -> float:
    """Create customers straight in localstripe (not through the proxy: not counted). Seconds taken."""
    client = front.client(direct=True)
    started = time.perf_counter()

    def create(record: Record) -> None:
        client.v1.customers.create(params=create_params(record))  # type: ignore[arg-type]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, records))
    return time.perf_counter() - started


# -- ours ---------------------------------------------------------------------------------------------


@dataclass
class Ours:
    wall: float
    result: SyncResult
    requests: list[Request]
    client_calls: Counter[str]  # what StripeCustomers counted (the run summary's "Stripe API calls")
    retried: Counter[str]
    limiter_waited: float


def sync_ours(front: Front, records_path: Path, ledger_path: Path, *, reconcile: bool = False) -> Ours:
    """One upsert, wired as ``operators/steps.py`` wires it (``reconcile``: as a run that reconciles)."""
    api = StripeCustomers(front.client(), limiter=RateLimiter(front.limits), retries=4)
    options = SyncOptions(
        pipeline_id=PIPELINE,
        mode="create_and_update",
        stripe_field="email",
        duplicate_customers="reject",
        concurrency=concurrency_for(front.limits),
        reconcile=reconcile,
    )

    def records() -> Iterator[Record]:
        with records_path.open() as stream:
            yield from read_records(stream)

    connection = sqlite3.connect(ledger_path)
    try:
        ledger = Ledger(connection, "?", PIPELINE)
        ledger.ensure_table()
        mark = front.proxy.mark()
        started = time.perf_counter()
        result = Syncer(api, ledger, options).run(records)
        wall = time.perf_counter() - started
    finally:
        connection.close()
    limiter = api._limiter
    return Ours(
        wall,
        result,
        front.proxy.since(mark),
        Counter(api.calls),
        Counter(api.retried),
        limiter.waited if limiter else 0.0,
    )


# -- the baseline ---------------------------------------------------------------------------------


@dataclass
class ProfileRun:
    kind: str  # "create" or "update": what the loop did for this profile
    seconds: float  # lookup and write
    lookup_seconds: float
    requests: list[Request]


def baseline_loop(front: Front, sample: Sequence[Record]) -> list[ProfileRun]:
    """The hand-written PythonOperator loop, one profile after the other, on ``sample``."""
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": front.proxy.url})
    runs = []
    for record in sample:
        mark = front.proxy.mark()
        started = time.perf_counter()
        found = client.v1.customers.list(params={"email": record.match_value})
        looked_up = time.perf_counter()
        if found.data:
            params = to_params(record.payload, creating=False)
            client.v1.customers.update(found.data[0].id, params=params)  # type: ignore[arg-type]
            kind = "update"
        else:
            client.v1.customers.create(params=create_params(record))  # type: ignore[arg-type]
            kind = "create"
        ended = time.perf_counter()
        runs.append(ProfileRun(kind, ended - started, looked_up - started, front.proxy.since(mark)))
    return runs


@dataclass
class Baseline:
    runs: list[ProfileRun]  # the sample
    mix: dict[str, int]  # what the loop would do for the whole scenario: kind → profiles

    @property
    def profiles(self) -> int:
        return sum(self.mix.values())

    def _by_kind(self, kind: str) -> list[ProfileRun]:
        return [r for r in self.runs if r.kind == kind] or self.runs

    @property
    def wall(self) -> float:
        """Extrapolated: per kind, the sample's mean seconds per profile times the scenario's profiles."""
        return sum(n * _mean(r.seconds for r in self._by_kind(kind)) for kind, n in self.mix.items())

    @property
    def calls(self) -> Counter[str]:
        """Extrapolated the same way (exact by construction: one lookup and one write per profile)."""
        calls: Counter[str] = Counter()
        for kind, n in self.mix.items():
            runs = self._by_kind(kind)
            sent = Counter(q.endpoint for r in runs for q in r.requests)
            for endpoint, count in sent.items():
                calls[endpoint] += round(n * count / len(runs))
        return calls

    @property
    def sample_wall(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def lookup_seconds(self) -> float:
        return _mean(r.lookup_seconds for r in self.runs)

    @property
    def requests(self) -> list[Request]:
        return [q for r in self.runs for q in r.requests]


def _mean(values: Iterator[float] | Sequence[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


# -- the scenarios -------------------------------------------------------------------------------


@dataclass
class Scenario:
    key: str
    title: str
    profiles: int
    expected_writes: int
    ours: Ours
    baseline: Baseline
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ApiOptions:
    profiles: int = 5000
    sample: int = 200
    changed_share: float = 0.01
    limits: Limits = field(default_factory=lambda: Limits(100.0, 25.0))
    latency: Latency = field(default_factory=lambda: Latency(read=0.15, write=0.3, jitter=0.05))
    seed: int = 42


def run_api(options: ApiOptions, folder: Path, log: Callable[[str], None]) -> list[Scenario]:
    """The four scenarios, ours in full and the baseline on samples of the same Stripe state."""
    logging.getLogger("stripe").setLevel(logging.WARNING)  # as the upsert task does
    n = options.profiles
    records = make_records(n)
    rng = random.Random(options.seed)
    seeded = set(rng.sample(range(n), n // 2))
    unseeded = [i for i in range(n) if i not in seeded]
    # Half of the customers already in Stripe are up to date, half carry an older plan.
    stale = set(sorted(seeded)[::2])
    seed_records = [outdated(records[i]) if i in stale else records[i] for i in sorted(seeded)]
    k = round(n * options.changed_share)
    changed_keys = set(rng.sample(range(n), k))
    rerun = [changed(r) if i in changed_keys else r for i, r in enumerate(records)]
    s = min(options.sample, n // 2)
    sample_b = rng.sample(sorted(seeded), s // 2) + rng.sample(unseeded, s - s // 2)
    sample_a = rng.sample(sorted(set(unseeded) - set(sample_b)), min(s, len(unseeded) - (s - s // 2)))
    sample_c = rng.sample(range(n), s)
    sample_d = rng.sample(range(n), s)

    plain = write_records(folder / "records.jsonl", records)
    edited = write_records(folder / "records-changed.jsonl", rerun)
    log(f"  {n:,} records; Stripe-like front: {options.limits.describe()}, latency {options.latency}")

    with stripe_front(options.limits, options.latency, options.seed) as front:
        front.reset()
        took = seed_customers(front, seed_records)
        log(f"  seeded {len(seed_records):,} customers straight into localstripe in {took:.0f} s")
        log(f"  baseline, {len(sample_b)} profiles (first sync, half already in Stripe) …")
        base_b = baseline_loop(front, [records[i] for i in sample_b])
        log(f"  baseline, {len(sample_a)} profiles (first sync, new customers) …")
        base_a = baseline_loop(front, [records[i] for i in sample_a])

        front.reset()
        seed_customers(front, seed_records)
        log("  ours: first sync, half already in Stripe …")
        ours_b = sync_ours(front, plain, folder / "ledger-b.sqlite")
        log(f"    {_summary(ours_b)}")

        front.reset()
        log("  ours: first sync into an empty Stripe …")
        ours_a = sync_ours(front, plain, folder / "ledger-a.sqlite")
        log(f"    {_summary(ours_a)}")
        log("  ours: rerun, nothing changed …")
        ours_c = sync_ours(front, plain, folder / "ledger-a.sqlite")
        log(f"    {_summary(ours_c)}")
        log(f"  baseline, {len(sample_c)} profiles (rerun, nothing changed) …")
        base_c = baseline_loop(front, [records[i] for i in sample_c])
        log(f"  ours: rerun, {k} changed …")
        ours_d = sync_ours(front, edited, folder / "ledger-a.sqlite")
        log(f"    {_summary(ours_d)}")
        log(f"  baseline, {len(sample_d)} profiles (rerun, {k} changed) …")
        base_d = baseline_loop(front, [rerun[i] for i in sample_d])
        drifted = [rerun[i] for i in rng.sample(range(n), k)]
        drift(front, drifted, deleted=max(1, k // 10))
        log(f"  ours: reconcile, {k} customers edited or deleted in Stripe …")
        ours_e = sync_ours(front, edited, folder / "ledger-a.sqlite", reconcile=True)
        log(f"    {_summary(ours_e)}")

    half, rest = len(seeded), n - len(seeded)
    share = f"{options.changed_share:.0%}" if k else "0"
    return [
        Scenario(
            "first_empty", "First sync into an empty Stripe", n, n, ours_a, Baseline(base_a, {"create": n})
        ),
        Scenario(
            "first_half",
            f"First sync, {half:,} already in Stripe ({len(stale):,} of them outdated)",
            n,
            rest + len(stale),
            ours_b,
            Baseline(base_b, {"update": half, "create": rest}),
        ),
        Scenario("rerun_unchanged", "Rerun, nothing changed", n, 0, ours_c, Baseline(base_c, {"update": n})),
        Scenario(
            "rerun_changed",
            f"Rerun, {share} changed ({k:,} profiles)",
            n,
            k,
            ours_d,
            Baseline(base_d, {"update": n}),
        ),
        Scenario(
            "reconcile",
            f"Reconcile, {k:,} customers edited or deleted in Stripe",
            n,
            k,
            ours_e,
            Baseline(base_d, {"update": n}),  # the baseline resends everything, which also repairs
        ),
    ]


def _summary(ours: Ours) -> str:
    r = ours.result
    sent = Counter(q.endpoint for q in ours.requests)
    return (
        f"{ours.wall:.1f} s: created {r.created}, updated {r.updated}, unchanged {r.unchanged}, "
        f"failed {r.failed}, rejected {len(r.rejections)}, repaired {r.repaired}; calls {dict(sent)}"
    )
