"""A big Stripe account: 1,000 new profiles against 1,000,000 existing customers.

    .venv/bin/python -m benchmarks.big_account                     # prints the table (~30 min)
    .venv/bin/python -m benchmarks.big_account --customers 100000  # a smaller account

localstripe cannot hold a million customers, so the account is ``support/stripe_double.py``: it
computes customer ``i`` from ``i`` with Stripe's paging and counts the requests where Stripe
would. Each scenario runs the upsert's core (``core.run.sync_records``: ``Destinations`` + a SQLite
``Ledger`` + ``Syncer``, on ``StripeCustomers``) in **a process of its own**, whose peak RSS
(``VmHWM``) is the sync's. Scenarios, in order, on one account (what one creates, the next sees):

a. matching by ``metadata.profile_id``, a first run: Stripe cannot look metadata up (its search
   lags), so the engine lists the account once, recording every customer's profile id in the
   state store's value index as it goes (``Destinations``);
b. matching by ``id`` (``update_only``), 1,000 existing ids, the account's size known from (a):
   1,000 retrieves beat 10,000 pages;
c. matching by ``email``, a first run (no listing recorded in its state store): one listing, the
   only safe way, recording every customer's normalised email;
d. a second batch of 1,000 new emails on (c)'s state store: no listing and no email lookup (Stripe's
   ``email=`` filter is exact and case-sensitive: it would miss ``Ann@X.com`` for ``ann@x.com``).
   The misses are looked up in (c)'s value index, Stripe's customer events since (c) tell what
   changed, and only the candidates are retrieved: reads = event pages + a few retrieves. Some
   existing customers' emails differ in case from the warehouse's: one not found is a duplicate;
e. a second batch of 1,000 new profile ids on (a)'s state store (after (b)'s updates): the same,
   for a metadata field.

Target per scenario: peak RSS < 300 MB; reads (list pages, retrieves, events pages) ≤ min(misses,
pages) when the field can be found without listing (an id by retrieve; an email or metadata value
once a listing recorded the value index), else ≤ pages; no duplicate customer (checked at the double).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.child import RESULT_PREFIX, spawn

HERE = Path(__file__).resolve().parent
KEY = "sk_test_big_account"
NEW = 1000  # new profiles per scenario
TARGET_RSS_MB = 300
PAGE = 100  # customers per listing page
TEST_MODE_READS = 25  # reads/s Stripe allows in test mode (100 in live mode)
READS = ("customers.list", "customers.retrieve", "events.")  # endpoints (prefixes) that read
MARKERS = ("<!-- big-account:begin -->", "<!-- big-account:end -->")  # its section in REPORT.md


@dataclass(frozen=True)
class Plan:
    """One scenario: how the pipeline matches, and what its records are."""

    key: str
    title: str
    stripe_field: str
    mode: str
    state: str  # which state store (ledger, destinations): scenarios sharing one see each other's
    lookups: bool  # whether the field can be found without listing (retrieve, or the value index)
    records: str = ""  # the JSONL file, written by the parent


@dataclass
class BigResult:
    """What one scenario did, counted at the double and measured in its process."""

    key: str
    title: str
    customers: int  # live customers in the account before the run
    misses: int  # records the ledger did not settle
    calls: dict[str, int]  # at the double, by endpoint
    engine_calls: dict[str, int]  # what StripeCustomers counted
    created: int
    updated: int
    unchanged: int
    skipped: int
    failed: int
    rejected: int
    duplicates: int  # customers sharing a normalised email or profile id (cumulative, at the double)
    duplicate_samples: list[str]
    rss_start_mb: float
    rss_peak_mb: float
    wall: float
    lookups_possible: bool
    listed: int | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def pages(self) -> int:
        """What one listing of the account costs."""
        return max(1, math.ceil(self.customers / PAGE))

    @property
    def reads(self) -> int:
        """Reads at the double: list pages, retrieves, and events read."""
        return sum(n for endpoint, n in self.calls.items() if endpoint.startswith(READS))

    @property
    def read_target(self) -> int:
        """The cheaper of one lookup per miss (when Stripe has one) and a full listing."""
        return min(self.misses, self.pages) if self.lookups_possible else self.pages

    @property
    def met(self) -> bool:
        """Every target of the scenario."""
        return (
            not self.error
            and self.rss_peak_mb < TARGET_RSS_MB
            and self.reads <= self.read_target
            and self.duplicates == 0
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, and the derived ones, for the report."""
        return {
            **asdict(self),
            "pages": self.pages,
            "reads": self.reads,
            "read_target": self.read_target,
            "met": self.met,
        }


PLANS = (
    Plan("a", "metadata.profile_id, first run", "metadata.profile_id", "create_and_update", "ab", False),
    Plan("b", "id (update_only), size known", "id", "update_only", "ab", True),
    Plan("c", "email, first run (no listing recorded)", "email", "create_and_update", "cd", False),
    Plan("d", "email, second batch (value index recorded)", "email", "create_and_update", "cd", True),
    Plan(
        "e",
        "metadata.profile_id, second batch (value index recorded)",
        "metadata.profile_id",
        "create_and_update",
        "ab",
        True,
    ),
)


# -- the records (parent) -----------------------------------------------------------------------------


def _spread(customers: int, count: int, offset: int) -> list[int]:
    """``count`` indices spread over the account."""
    return [min(customers - 1, (k * customers) // count + offset) for k in range(count)]


def make_records(plan: Plan, customers: int, odd_case: Sequence[int]) -> list[Any]:
    """1,000 new profiles (or, matching by id, 1,000 existing ids) and a few existing ones."""
    from krenalis_airflow.core.matching import normalise_match
    from krenalis_airflow.core.records import Record
    from support.stripe_double import base_email, base_id

    def record(key: str, value: str, payload: dict[str, Any]) -> Record:
        return Record(key, normalise_match(plan.stripe_field, value), value, payload)

    if plan.key in ("a", "e"):
        first = customers + (NEW if plan.key == "e" else 0)  # (e)'s new ids follow (a)'s
        new = [
            record(
                f"{plan.key}-new-{j}",
                str(first + j),
                {"email": f"{plan.key}-new-{j}@example.net", "name": f"{plan.key.upper()} {j}"},
            )
            for j in range(NEW)
        ]
        offset = 11 if plan.key == "a" else 29
        same = [
            record(str(i), str(i), {"email": base_email(i), "name": f"Person {i}"})
            for i in _spread(customers, 5, offset)
            if i not in odd_case
        ]
        edited = [record(str(i), str(i), {"name": f"Renamed {i}"}) for i in _spread(customers, 5, offset + 2)]
        return [*new, *same, *edited]
    if plan.key == "b":
        return [record(f"b-{i}", base_id(i), {"metadata.plan": "gold"}) for i in _spread(customers, NEW, 17)]
    # email: the warehouse holds lowercase emails; a few customers hold them in another case
    odd = list(odd_case)[:4] if plan.key == "c" else list(odd_case)[4:8]
    plain = _spread(customers, 2, 19 if plan.key == "c" else 23)
    existing = [record(f"{plan.key}-{i}", base_email(i), {"name": f"Renamed {i}"}) for i in [*odd, *plain]]
    new = [
        record(f"{plan.key}-new-{j}", f"{plan.key}-new-{j}@example.org", {"name": f"{plan.key.upper()} {j}"})
        for j in range(NEW)
    ]
    return [*new, *existing]


# -- one scenario (child) -----------------------------------------------------------------------------


def _status(name: str) -> float:
    """``VmHWM`` / ``VmRSS`` of this process in MB (``ru_maxrss`` carries the parent's over ``exec``)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    found = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else 0.0


def run_child(args: dict[str, Any]) -> dict[str, Any]:
    """Sync one scenario's records as the upsert task does; what it did and cost."""
    import stripe

    from krenalis_airflow.core.destination import key_fingerprint
    from krenalis_airflow.core.ratelimit import Limits, concurrency_for
    from krenalis_airflow.core.records import Record, read_records
    from krenalis_airflow.core.run import UpsertRun, sync_options, sync_records
    from krenalis_airflow.core.spec import Matching
    from krenalis_airflow.core.stripe_api import StripeCustomers

    from .stages import bench_spec

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("stripe").setLevel(logging.WARNING)
    base = bench_spec()
    export = base.export.model_copy(
        update={
            "mode": args["mode"],
            "matching": Matching(property="match", stripe=args["field"]),
            "reconcile": "off",  # a reconciliation lists (and keeps) every customer: not this benchmark
        }
    )
    spec = base.model_copy(update={"id": f"big_{args['key']}", "export": export})
    client = stripe.StripeClient(
        KEY,
        base_addresses={"api": args["url"]},
        http_client=stripe.new_default_http_client(timeout=80.0),
    )
    api = StripeCustomers(client, retries=4)
    options = sync_options(
        spec, dry_run=False, full_resync=False, concurrency=concurrency_for(Limits(100.0, 25.0))
    )

    def records() -> Iterator[Record]:
        with open(args["records"]) as stream:
            yield from read_records(stream)

    connection = sqlite3.connect(args["state"])
    try:
        state = UpsertRun(
            connection,
            "?",
            options,
            run_id=f"big-{args['key']}",
            fingerprint=key_fingerprint(KEY, args["url"]),
        )
        rss_start = _status("VmRSS")
        started = time.perf_counter()
        result = sync_records(api, spec, state, records).result
        wall = time.perf_counter() - started
    finally:
        connection.close()
    return {
        "created": result.created,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "skipped": result.skipped.total(),
        "failed": result.failed,
        "rejected": len(result.rejections),
        "rejections": [f"{r.key}: {r.reason}" for r in result.rejections[:3]],
        "listed": result.listed,
        "engine_calls": dict(api.calls),
        "rss_start_mb": rss_start,
        "rss_peak_mb": _status("VmHWM"),
        "wall": wall,
    }


# -- the scenarios (parent) ---------------------------------------------------------------------------


def run(
    customers: int = 1_000_000,
    work: Path | None = None,
    log: Callable[[str], None] = print,
    only: Sequence[str] = (),
) -> list[BigResult]:
    """Every scenario (or ``only`` these keys), in order, against one double of ``customers``."""
    from krenalis_airflow.core.records import write_jsonl
    from support.stripe_double import StripeDouble

    results: list[BigResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="krenalis-big-", dir=work) as tmp,
        StripeDouble(customers, odd_case_every=max(1, customers // 10)) as double,
    ):
        folder = Path(tmp)
        odd = sorted(double.odd_case)
        log(f"Big account: a Stripe double of {customers:,} customers at {double.url}")
        for plan in PLANS:
            if only and plan.key not in only:
                continue
            records = make_records(plan, customers, odd)
            path = folder / f"records-{plan.key}.jsonl"
            with path.open("w") as out:
                write_jsonl(out, records)
            before = double.state()
            live = before["customers"] + before["created"] - before["deleted"]
            double.reset()
            log(f"  ({plan.key}) {plan.title}: {len(records):,} records …")
            args = {
                "key": plan.key,
                "url": double.url,
                "field": plan.stripe_field,
                "mode": plan.mode,
                "records": str(path),
                "state": str(folder / f"state-{plan.state}.sqlite"),
            }
            data, error = spawn("benchmarks.big_account", ["--child", json.dumps(args)])
            calls = dict(double.calls())
            found = double.duplicates()
            groups = [*found["by_email"], *found["by_profile_id"]]
            result = BigResult(
                key=plan.key,
                title=plan.title,
                customers=live,
                misses=len(records),  # every record is new to its pipeline's ledger
                calls=calls,
                engine_calls=data.get("engine_calls", {}),
                created=data.get("created", 0),
                updated=data.get("updated", 0),
                unchanged=data.get("unchanged", 0),
                skipped=data.get("skipped", 0),
                failed=data.get("failed", 0),
                rejected=data.get("rejected", 0),
                duplicates=sum(len(g["ids"]) - 1 for g in groups),
                duplicate_samples=[f"{g['value']}: {', '.join(g['ids'])}" for g in groups[:3]],
                rss_start_mb=data.get("rss_start_mb", 0.0),
                rss_peak_mb=data.get("rss_peak_mb", 0.0),
                wall=data.get("wall", 0.0),
                lookups_possible=plan.lookups,
                listed=data.get("listed"),
                error=error,
                notes=data.get("rejections", []),
            )
            log(f"    {line(result)}")
            results.append(result)
    return results


def _calls(calls: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(calls.items())) or "none"


def line(r: BigResult) -> str:
    """One scenario on one line, for the log."""
    if r.error:
        return f"failed: {r.error}"
    return (
        f"{r.wall:.1f} s, peak RSS {r.rss_peak_mb:.0f} MB; calls at the double: {_calls(r.calls)}; "
        f"reads {r.reads:,} (target ≤ {r.read_target:,}); created {r.created:,}, updated {r.updated:,}, "
        f"unchanged {r.unchanged:,}, skipped {r.skipped:,}, failed {r.failed:,}, rejected {r.rejected:,}; "
        f"duplicates {r.duplicates}"
    )


def section(results: Sequence[BigResult], customers: int | None = None) -> list[str]:
    """The report's section, as Markdown lines."""
    if not results:
        return []
    size = customers if customers is not None else results[0].customers
    lines = [
        f"## Big Stripe account: {size:,} customers",
        "",
        f"The account is `support/stripe_double.py`: {size:,} customers computed on request with Stripe's "
        "paging (100 a page, newest first), its exact and case-sensitive `email` filter, 404s and idempotent "
        "creates; requests are counted there. Each scenario runs `core.run.sync_records` (`Destinations`, a "
        "SQLite ledger, `Syncer` on `StripeCustomers`) in a process of its own on "
        f"{NEW:,} records: new profiles plus a few existing customers, some of them holding their email in "
        "another case than the warehouse. No latency and no rate limit: the wall time is the engine's own "
        f"cost (at Stripe's {TEST_MODE_READS} reads/s in test mode the reads alone take at least the last "
        "column). Targets: peak RSS (`VmHWM` of the scenario's process) "
        f"< {TARGET_RSS_MB} MB; reads (list pages, retrieves and events pages) ≤ min(misses, "
        "pages) when the field can be found without listing (id: one retrieve each; email or metadata: "
        "the value index the last whole listing recorded in the state store, Stripe's customer events "
        "since it, and a retrieve per candidate; never `customers.list?email=`, exact and case-sensitive, "
        "nor the search API, which lags up to an hour), else ≤ the pages of one listing (a first run by "
        "email or metadata); no two customers with one normalised email or profile id.",
        "",
        "| scenario | calls at the double | reads (target) | created | updated | unchanged / skipped | "
        "duplicates | peak RSS | wall | reads at 25/s | |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        if r.error:
            lines.append(
                f"| ({r.key}) {r.title} | failed: {r.error.splitlines()[-1]} | | | | | | | | | **missed** |"
            )
            continue
        lines.append(
            f"| ({r.key}) {r.title} | {_calls(r.calls)} | {r.reads:,} (≤ {r.read_target:,}: "
            f"{'min(' + format(r.misses, ',') + ' misses, ' if r.lookups_possible else ''}"
            f"{r.pages:,} pages{')' if r.lookups_possible else ''}) | {r.created:,} | {r.updated:,} | "
            f"{r.unchanged:,} / {r.skipped:,} | {r.duplicates} | {r.rss_peak_mb:,.0f} MB | {r.wall:,.1f} s | "
            f"{r.reads / TEST_MODE_READS:,.0f} s | {'met' if r.met else '**missed**'} |"
        )
    for r in results:
        if r.duplicate_samples:
            lines += ["", f"({r.key}) duplicates at the double, e.g.: " + "; ".join(r.duplicate_samples)]
    lines.append("")
    return lines


def targets(results: Sequence[BigResult]) -> list[tuple[str, str, bool]]:
    """The report's target rows: RSS, reads and duplicates over every scenario."""
    if not results:
        return []
    ok = [r for r in results if not r.error]
    top = max(ok, key=lambda r: r.rss_peak_mb, default=None)
    size = f"{results[0].customers:,}"
    reads = "; ".join(f"({r.key}) {r.reads:,} of ≤ {r.read_target:,}" for r in ok)
    return [
        (
            f"Big account ({size} customers): peak RSS < {TARGET_RSS_MB} MB",
            f"{top.rss_peak_mb:,.0f} MB ({top.key})" if top else "failed",
            top is not None and len(ok) == len(results) and top.rss_peak_mb < TARGET_RSS_MB,
        ),
        (
            "Big account: reads ≤ min(misses, pages) (pages where a listing is the only safe way)",
            reads or "failed",
            len(ok) == len(results) and all(r.reads <= r.read_target for r in ok),
        ),
        (
            "Big account: no duplicate customer",
            ", ".join(f"({r.key}) {r.duplicates}" for r in results),
            all(not r.error and r.duplicates == 0 for r in results),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """The command line above (``--child``: one scenario, for ``_spawn``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.big_account", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--customers", type=int, default=1_000_000, help="customers in the account (1,000,000)"
    )
    parser.add_argument(
        "--only", nargs="+", default=[], choices=[p.key for p in PLANS], help="these scenarios"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--update-report", action="store_true", help="put the section into REPORT.md")
    parser.add_argument(
        "--work-dir", type=Path, help="where the records and state stores go (a temporary folder)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    results = run(args.customers, args.work_dir, log, args.only)
    print("\n".join(section(results, args.customers)))
    for name, value, met in targets(results):
        print(f"{'met' if met else 'MISSED'}: {name}: {value}")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2))
    if args.update_report:
        from benchmarks.sections import put_section

        command = "python -m benchmarks.big_account --update-report"
        put_section(HERE / "REPORT.md", section(results, args.customers), targets(results), MARKERS, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
