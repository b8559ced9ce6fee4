"""Several pipelines on one Stripe account at once, each in a process of its own (as on several
Celery workers): the shared rate limit's end-to-end test and its benchmark both run this.

Each process runs the upsert path as ``operators/steps.py`` wires it: ``StripeCustomers`` with a
``RateLimiter`` of the configured limits and the product's retries, the ``Syncer`` with
``concurrency_for(limits)``, a ledger in the state store, and (unless ``--alone``) a
``SharedLimit`` lease in that same store for the destination ``key_fingerprint(key, url)``::

    python -m support.pipeline_process URL STATE_SQLITE PIPELINE COUNT RATE [--alone]

prints one JSON line: what the sync did, the calls it sent, and the most holders it saw.
``run_pipelines`` starts several at once and returns their lines.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import stripe

from krenalis_airflow.core.destination import key_fingerprint
from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.ratelimit import Limits, RateLimiter, concurrency_for
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.shared_limit import SharedLimit
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import Syncer, SyncOptions
from support.localstripe_process import STRIPE_TEST_KEY

ROOT = Path(__file__).resolve().parent.parent
RETRIES = 4  # the Stripe hook's default max_network_retries, which the upsert step passes on


def records(pipeline: str, count: int) -> Iterator[Record]:
    """``count`` new profiles of one pipeline (emails no other pipeline uses)."""
    for i in range(count):
        email = f"{pipeline}-{i:04}@example.com"
        yield Record(f"{pipeline}-{i:04}", email, email, {"name": f"{pipeline} {i}"})


def run_one(
    url: str, state: str, pipeline: str, count: int, rate: float, *, shared: bool = True
) -> dict[str, Any]:
    """One pipeline's upsert of ``count`` new profiles; what it did, as a dict."""
    limits = Limits(rate, rate)
    limiter = RateLimiter(limits)
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url}, max_network_retries=0)
    api = StripeCustomers(client, limiter=limiter, retries=RETRIES)
    connect = functools.partial(sqlite3.connect, state, timeout=60)
    lease = (
        SharedLimit(limiter, connect, "?", key_fingerprint(STRIPE_TEST_KEY, url)) if shared else nullcontext()
    )
    options = SyncOptions(
        pipeline_id=pipeline,
        mode="create_and_update",
        stripe_field="email",
        concurrency=concurrency_for(limits),
    )
    connection = connect()
    try:
        ledger = Ledger(connection, "?", pipeline)
        ledger.ensure_table()
        with lease:
            started = time.time()
            result = Syncer(api, ledger, options).run(lambda: records(pipeline, count))
            ended = time.time()
    finally:
        connection.close()
    return {
        "pipeline": pipeline,
        "created": result.created,
        "failed": result.failed,
        "calls": sum(api.calls.values()),
        "retried": dict(api.retried),
        "started": started,  # wall clock, comparable between the processes
        "ended": ended,
        "most_holders": lease.most_holders if isinstance(lease, SharedLimit) else 1,
    }


def run_pipelines(
    url: str, state: Path, *, pipelines: int = 4, count: int = 100, rate: float = 20.0, shared: bool = True
) -> list[dict[str, Any]]:
    """Start ``pipelines`` processes at once on the same key and state store; their results."""
    command = [sys.executable, "-m", "support.pipeline_process", url, str(state)]
    flags = [] if shared else ["--alone"]
    children = [
        subprocess.Popen(
            [*command, f"p{n}", str(count), str(rate), *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(pipelines)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"a pipeline process failed (exit {child.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> None:
    """The command line above."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("state", help="the state store: a SQLite file every pipeline opens")
    parser.add_argument("pipeline")
    parser.add_argument("count", type=int)
    parser.add_argument("rate", type=float, help="the account's limit each pipeline is configured with")
    parser.add_argument("--alone", action="store_true", help="no lease: every pipeline runs at the full rate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = run_one(args.url, args.state, args.pipeline, args.count, args.rate, shared=not args.alone)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
