"""The upsert step takes a rate-limit lease in the pipeline's state store for its Stripe destination
(``core/shared_limit.py``), releases it at the end, and a dry run takes none."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest

from krenalis_airflow.core.destination import key_fingerprint
from krenalis_airflow.core.shared_limit import LEASE_TABLE
from krenalis_airflow.operators import steps
from support.localstripe_process import STRIPE_TEST_KEY
from tests.operators.test_steps import run_steps  # noqa: F401  (the fixture)


def lease_table(run: steps.StepRun) -> list[tuple[str, ...]] | None:
    """The lease rows in the state store (the sample's warehouse), None without the table."""
    warehouse = Path(run.folder.path).parents[1] / "warehouse.sqlite"
    conn = sqlite3.connect(warehouse)
    try:
        return conn.execute(f"SELECT destination, holder FROM {LEASE_TABLE}").fetchall()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def test_the_upsert_holds_a_lease_for_its_destination_while_it_runs(
    run_steps,  # noqa: F811
    stripe_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run, _ = run_steps()
    with caplog.at_level(logging.INFO, logger="test_steps"):
        summary = steps.upsert(run)
    assert summary["outcome"] == "success"
    destination = key_fingerprint(STRIPE_TEST_KEY, stripe_url)
    assert f"Stripe destination {destination}: 1 upsert(s) running on it" in caplog.text
    assert STRIPE_TEST_KEY not in caplog.text
    assert lease_table(run) == []  # taken, then released


def test_a_dry_run_takes_no_lease(run_steps) -> None:  # noqa: F811
    run, _ = run_steps()
    steps.upsert(dataclasses.replace(run, dry_run=True))
    assert lease_table(run) is None
