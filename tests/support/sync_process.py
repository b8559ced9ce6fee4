"""Run the sync engine alone in a process of its own, so a test can SIGKILL it mid-batch.

python -m tests.support.sync_process STRIPE_URL LEDGER_PATH COUNT
"""

from __future__ import annotations

import sqlite3
import sys

import stripe

from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.ratelimit import Limits, RateLimiter
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions
from support.localstripe_process import STRIPE_TEST_KEY


def records(count: int) -> list[Record]:
    return [
        Record(f"p{i:04}", f"k{i}@example.com", f"k{i}@example.com", {"name": f"K {i}"}) for i in range(count)
    ]


def main(url: str, ledger_path: str, count: int) -> None:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url}, max_network_retries=0)
    api = StripeCustomers(client, limiter=RateLimiter(Limits(500, 500)), retries=8, backoff=0.02)
    ledger = Ledger(sqlite3.connect(ledger_path), "?", "crash")
    ledger.ensure_table()
    options = SyncOptions(
        pipeline_id="crash",
        mode="create_and_update",
        stripe_field="email",
        concurrency=8,
        checkpoint_every=10,
    )
    result = Syncer(api, ledger, options).run(lambda: iter(records(count)))
    print(
        f"created={result.created} updated={result.updated} unchanged={result.unchanged} failed={result.failed}"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
