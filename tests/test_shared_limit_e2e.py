"""Four pipelines, one Stripe account: four processes each running the real upsert path
(``support/pipeline_process.py``) against localstripe behind the fault proxy, which limits the
key to 20 requests/s as Stripe limits an account. Each pipeline is configured for the whole 20/s.

Sharing the limit through the state store (``core/shared_limit.py``) keeps their sum under it:
no profile lost, 429s under 1 % of the calls. Without it (``alone``) the four send four times
the limit and meet a storm of 429s, which the back-off survives but at a cost in calls and time.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import stripe

from benchmarks.shared_limit import BEGIN, END, SharedOptions, SharedRun, section, update_report
from support.fault_proxy import FaultProxy, RateLimits
from support.pipeline_process import run_pipelines

PIPELINES = 4
PROFILES = 100  # per pipeline: ~410 calls at 20/s, about 20 s
RATE = 20.0


def limited_429s(proxy: FaultProxy) -> int:
    faulted = proxy.stats()["faulted"]
    return sum(sum(faulted.get(kind, {}).values()) for kind in ("rate_limit_global", "rate_limit_endpoint"))


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "alone"])
def test_four_pipelines_on_one_account_share_its_rate_limit(
    shared: bool, fault_proxy: FaultProxy, stripe_client: stripe.StripeClient, tmp_path: Path
) -> None:
    fault_proxy.configure(rate_limits=RateLimits(global_rps=RATE, endpoint_rps=RATE, per_key=True))
    state = tmp_path / "state.sqlite"
    results = run_pipelines(
        fault_proxy.url, state, pipelines=PIPELINES, count=PROFILES, rate=RATE, shared=shared
    )
    calls = fault_proxy.stats()["totals"]["received"]
    share_429 = limited_429s(fault_proxy) / calls
    if not shared:
        # The storm the lease prevents (a typical run: a quarter to a half of the calls are 429s).
        assert share_429 > 0.05, f"{share_429:.1%} of {calls} calls were 429s"
        assert all(r["most_holders"] == 1 for r in results)
        return

    assert [r["created"] for r in results] == [PROFILES] * PIPELINES
    assert sum(r["failed"] for r in results) == 0
    assert all(r["most_holders"] == PIPELINES for r in results)  # all four overlapped
    assert share_429 < 0.01, f"{share_429:.1%} of {calls} calls were 429s"
    # every profile is in Stripe exactly once, and in its pipeline's ledger as synced
    emails = Counter(
        c.email for c in stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
    )
    assert emails == Counter(
        {f"p{n}-{i:04}@example.com": 1 for n in range(PIPELINES) for i in range(PROFILES)}
    )
    ledger = sqlite3.connect(state)
    synced = ledger.execute(
        "SELECT pipeline_id, COUNT(*) FROM krenalis_ledger WHERE status = 'synced' GROUP BY pipeline_id"
    ).fetchall()
    assert sorted(synced) == [(f"p{n}", PROFILES) for n in range(PIPELINES)]
    assert ledger.execute("SELECT COUNT(*) FROM krenalis_rate_leases").fetchone() == (0,)  # all released
    ledger.close()


def test_the_benchmark_section_reads_its_runs_and_replaces_itself(tmp_path: Path) -> None:
    options = SharedOptions(pipelines=4, profiles=100, rate=20)
    shared = SharedRun(True, options, 404, 0, 400, 0, 400, 0, 20.0, 4)
    alone = SharedRun(False, options, 480, 80, 400, 0, 399, 0, 25.0, 1)
    lines = section([shared, alone])
    assert "| shared | 404 | 0 | 0.0% | 400 (400) | 0 | 0 | 0 | 20.0 s | 20.2/s of 20 (101%) | 4 |" in lines
    assert "| alone | 480 | 80 | 16.7% | 400 (400) | 0 | 1 | 0 | 25.0 s | 16.0/s of 20 (80%) | 1 |" in lines
    assert any("→ **met**" in line for line in lines)
    report = tmp_path / "REPORT.md"
    report.write_text("# Benchmarks\n\n## Local stages\n\n## Machine, versions, options\n\n| | |\n")
    update_report(report, lines, (BEGIN, END))
    update_report(report, lines, (BEGIN, END))  # a second run replaces the first
    text = report.read_text()
    assert text.count("## 4 pipelines, one Stripe account") == 1
    assert text.index("## Local stages") < text.index(END) < text.index("## Machine")
