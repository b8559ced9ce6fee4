"""Four pipelines, one Stripe account: the rate limit shared through the state store, or not.

    .venv/bin/python -m benchmarks.shared_limit                 # prints the report's section
    .venv/bin/python -m benchmarks.shared_limit --update-report # and puts it into REPORT.md

Each pipeline is a process of its own running the upsert path (``support/pipeline_process.py``):
``StripeCustomers`` + ``RateLimiter`` + ``Syncer``, a ledger in one SQLite state store, and the
lease of ``core/shared_limit.py`` (or none: "alone"). They write new customers to one account of
localstripe behind the fault proxy, which limits the key as Stripe limits an account (token
buckets per key, Stripe-like latencies); every pipeline is configured with the account's whole
limit. ``benchmarks.run`` runs this too (``--skip-shared`` to leave it out).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import stripe

from benchmarks.sections import measured_on, update_report
from support.fault_proxy import FaultConfig, FaultProxy, Latency, RateLimits
from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe
from support.pipeline_process import run_pipelines

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- shared-limit:begin -->"
END = "<!-- shared-limit:end -->"
RATE_KINDS = ("rate_limit_global", "rate_limit_endpoint")
TARGET_429_SHARE = 0.01
STRIPE_LATENCY = Latency(read=0.15, write=0.3, jitter=0.05)


@dataclass(frozen=True)
class SharedOptions:
    """The scenario: how many pipelines, profiles each, the account's limit, the front's latency."""

    pipelines: int = 4
    profiles: int = 250
    rate: float = 25.0  # requests/s for the key, global and per endpoint (Stripe's test mode)
    latency: Latency = STRIPE_LATENCY


@dataclass(frozen=True)
class SharedRun:
    """One run of the scenario, with or without the lease."""

    shared: bool
    options: SharedOptions
    calls: int  # received by the front
    rejected_429: int  # answered 429 by the front's buckets
    created: int  # what the pipelines counted
    failed: int
    in_stripe: int  # expected customers found in Stripe afterwards
    duplicates: int
    span: float  # seconds from the first pipeline's start to the last one's end
    most_holders: int

    @property
    def expected(self) -> int:
        """Profiles the pipelines had to create."""
        return self.options.pipelines * self.options.profiles

    @property
    def lost(self) -> int:
        """Profiles not in Stripe once every pipeline ended."""
        return self.expected - self.in_stripe

    @property
    def share_429(self) -> float:
        """429s as a share of every call the front received."""
        return self.rejected_429 / self.calls if self.calls else 0.0

    @property
    def accepted_rate(self) -> float:
        """Calls the front let through per second, all pipelines together."""
        return (self.calls - self.rejected_429) / self.span if self.span else 0.0


def run(options: SharedOptions, work: Path, log: Callable[[str], None] = print) -> list[SharedRun]:
    """The scenario with the lease, then without; a fresh account and front for each."""
    runs = []
    with LocalStripe(quiet=True) as upstream:
        for shared in (True, False):
            upstream.flush()
            log(f"{options.pipelines} pipelines on one account, {'shared' if shared else 'alone'}")
            runs.append(_run_once(options, upstream.url, work / f"state-{shared}.sqlite", shared))
    return runs


def _run_once(options: SharedOptions, upstream: str, state: Path, shared: bool) -> SharedRun:
    limits = RateLimits(global_rps=options.rate, endpoint_rps=options.rate, per_key=True)
    config = dataclasses.replace(FaultConfig(), latency=options.latency, rate_limits=limits)
    with FaultProxy(upstream, config=config) as proxy:
        results = run_pipelines(
            proxy.url,
            state,
            pipelines=options.pipelines,
            count=options.profiles,
            rate=options.rate,
            shared=shared,
        )
        stats = proxy.stats()
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": upstream})
    emails = Counter(c.email for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter())
    wanted = {f"p{n}-{i:04}@example.com" for n in range(options.pipelines) for i in range(options.profiles)}
    return SharedRun(
        shared=shared,
        options=options,
        calls=stats["totals"]["received"],
        rejected_429=sum(sum(stats["faulted"].get(kind, {}).values()) for kind in RATE_KINDS),
        created=sum(r["created"] for r in results),
        failed=sum(r["failed"] for r in results),
        in_stripe=len(wanted & set(emails)),
        duplicates=sum(count - 1 for email, count in emails.items() if email in wanted),
        span=max(r["ended"] for r in results) - min(r["started"] for r in results),
        most_holders=max(r["most_holders"] for r in results),
    )


def section(runs: Sequence[SharedRun]) -> list[str]:
    """The report's section, as Markdown lines."""
    if not runs:
        return []
    o = runs[0].options
    lines = [
        f"## {o.pipelines} pipelines, one Stripe account",
        "",
        f"{o.pipelines} pipelines in {o.pipelines} processes (as on {o.pipelines} Celery workers) write "
        f"{o.profiles:,} new customers each to one account; the front limits the key to {o.rate:g} "
        f"requests/s (global and per endpoint, 429 above; {o.latency.write * 1000:.0f} ms per write, "
        f"{o.latency.read * 1000:.0f} ms per read), and every pipeline is configured with that whole "
        "limit. *Shared*: each upsert holds a lease in the state store and runs at 1/N of the limit "
        "(`core/shared_limit.py`); *alone*: each runs at the full limit, as before. Calls and 429s are "
        "counted by the front; the rate is the calls it let through per second, from the first "
        "pipeline's start to the last one's end.",
        "",
        "| | calls | 429s | 429 share | created (expected) | failed | lost | duplicates | wall | "
        "accepted calls/s vs limit | most holders seen |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        lines.append(
            f"| {'shared' if r.shared else 'alone'} | {r.calls:,} | {r.rejected_429:,} | "
            f"{r.share_429:.1%} | {r.created:,} ({r.expected:,}) | {r.failed:,} | {r.lost:,} | "
            f"{r.duplicates:,} | {r.span:.1f} s | {r.accepted_rate:.1f}/s of {o.rate:g} "
            f"({r.accepted_rate / o.rate:.0%}) | {r.most_holders} |"
        )
    for r in runs:
        if r.shared:
            met = r.lost == 0 and r.duplicates == 0 and r.share_429 < TARGET_429_SHARE
            lines += [
                "",
                f"Target, shared: 0 lost and 429s under {TARGET_429_SHARE:.0%} of the calls: "
                f"{r.lost} lost, {r.share_429:.1%} → **{'met' if met else 'not met'}**.",
            ]
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """The command line above."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.shared_limit", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pipelines", type=int, default=SharedOptions.pipelines)
    parser.add_argument(
        "--profiles", type=int, default=SharedOptions.profiles, help="new customers per pipeline"
    )
    parser.add_argument("--rate", type=float, default=SharedOptions.rate, help="the account's requests/s")
    parser.add_argument("--update-report", action="store_true", help="put the section into REPORT.md")
    parser.add_argument("--report", type=Path, default=HERE / "REPORT.md")
    args = parser.parse_args(argv)
    options = SharedOptions(pipelines=args.pipelines, profiles=args.profiles, rate=args.rate)
    with tempfile.TemporaryDirectory(prefix="krenalis-shared-") as tmp:
        lines = section(run(options, Path(tmp)))
    print("\n".join(lines))
    if args.update_report:
        command = " ".join(["python -m benchmarks.shared_limit", *(argv or sys.argv[1:])])
        update_report(args.report, [*lines[:-1], "", measured_on(command), ""], (BEGIN, END))
        print(f"updated {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
