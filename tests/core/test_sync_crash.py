"""SIGKILL the sync mid-batch, run it again: exactly one customer per profile, none missing."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import stripe

from support.fault_proxy import FaultProxy, Latency

ROOT = Path(__file__).resolve().parents[2]
COUNT = 120


def start(url: str, ledger: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.sync_process", url, str(ledger), str(COUNT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def forwarded_creates(proxy: FaultProxy) -> int:
    return int(proxy.stats()["forwarded"].get("POST /v1/customers", 0))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_mid_batch_then_rerun(
    seed: int, fault_proxy, stripe_client: stripe.StripeClient, tmp_path
) -> None:
    fault_proxy.configure(latency=Latency(write=0.05, jitter=0.03), error_rate_429=0.05)
    ledger = tmp_path / "ledger.sqlite"
    victim = start(fault_proxy.url, ledger)
    target = random.Random(seed).randint(10, COUNT - 20)  # kill after this many creates reached Stripe
    deadline = time.monotonic() + 60
    while forwarded_creates(fault_proxy) < target and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    created_before = sum(1 for _ in stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter())
    assert 0 < created_before < COUNT, "the kill should land mid-run; adjust the timing"

    rerun = start(fault_proxy.url, ledger)
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, output
    emails = Counter(
        c.email for c in stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
    )
    assert emails == Counter({f"k{i}@example.com": 1 for i in range(COUNT)})
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT count(*) FROM krenalis_ledger WHERE status = 'synced'").fetchone() == (
            COUNT,
        )
    # Writes confirmed before the kill were not sent again: the rerun created only the rest.
    created_after = int(output.split("created=")[1].split()[0])
    assert created_after <= COUNT - created_before + 8  # at most the in-flight window is redone
