"""Profiles that leave, through the real steps: an SQLite warehouse (integer keys) → extract →
transform → dedupe → the sync against localstripe → the leave step reading the extract's file.

Two profiles leave between runs, one because it stops matching the filter (its plan becomes
``free``), one because its row is deleted; then the source table is emptied and the guard stops the
run before anything changes. Stripe calls are counted by the API's ``calls`` Counter.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import stripe

from krenalis_airflow.core.leave import (
    LEFT,
    LeaveResult,
)
from krenalis_airflow.core.ledger import Ledger
from krenalis_airflow.core.run import (
    UpsertRun,
    audience_reader,
    records_reader,
    run_dedupe,
    run_extract,
    run_transform,
    sync_options,
    sync_records,
)
from krenalis_airflow.core.spec import PipelineSpec, load_spec
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.exceptions import TooManyLeaving

log = logging.getLogger("tests.core.test_leave_run")
SPEC = """\
source: {{conn_id: warehouse, table: profiles, key: id}}
filter:
  logical: and
  conditions:
    - {{property: plan, operator: is not, values: [free]}}
export:
  matching: {{property: email, stripe: email}}
  on_leave: {on_leave}
  max_leave: 70%
transformation:
  mapping:
    name: name
    metadata.plan: plan
"""
ROWS = [
    (1, "a@example.com", "Ada", "gold"),
    (2, "b@example.com", "Bob", "gold"),
    (3, "c@example.com", "Cy", "silver"),
]


def warehouse(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE profiles (id INTEGER PRIMARY KEY, email TEXT, name TEXT, plan TEXT)")
    conn.executemany("INSERT INTO profiles VALUES (?, ?, ?, ?)", ROWS)
    conn.commit()
    conn.close()
    return path


def run(
    spec: PipelineSpec,
    spec_file: Path,
    source: Path,
    state: sqlite3.Connection,
    client: stripe.StripeClient,
    folder: Path,
) -> tuple[LeaveResult, StripeCustomers]:
    """One run: the steps, then the upsert's sync as ``run_upsert`` calls it (the guard before the
    sync, the leave step after it)."""
    folder.mkdir()
    name = {f: str(folder / f) for f in ("profiles", "records", "r1", "deduped", "r2")}
    conn = sqlite3.connect(source)
    try:
        extracted = run_extract(
            conn, spec, str(spec_file), name["profiles"], open, dialect="sqlite", placeholder="?", log=log
        )
    finally:
        conn.close()
    run_transform(
        spec,
        str(spec_file),
        extracted.columns,
        (name["profiles"], name["records"], name["r1"]),
        open,
        log=log,
    )
    run_dedupe(spec, (name["records"], name["deduped"], name["r2"]), open, log=log)

    api = StripeCustomers(client)
    options = sync_options(spec, dry_run=False, full_resync=False, concurrency=2)
    synced = sync_records(
        api,
        spec,
        UpsertRun(state, "?", options, fingerprint="key:leave-run-test"),
        records_reader(open, name["deduped"]),
        audience_reader(open, extracted.xcom(name["profiles"], ""), spec.source.key),
    )
    assert synced.left is not None
    return synced.left, api


@pytest.mark.parametrize("on_leave", ["clear", "delete"])
def test_profiles_that_leave_the_filter_or_the_warehouse(
    tmp_path: Path, stripe_client: stripe.StripeClient, on_leave: str
) -> None:
    spec_file = tmp_path / "leavers.yaml"
    spec_file.write_text(SPEC.format(on_leave=on_leave))
    spec = load_spec(spec_file)
    source = warehouse(tmp_path / "warehouse.sqlite")
    state = sqlite3.connect(tmp_path / "state.sqlite", check_same_thread=False)

    def step(folder: str) -> tuple[LeaveResult, StripeCustomers]:
        return run(spec, spec_file, source, state, stripe_client, tmp_path / folder)

    first, api = step("run1")
    assert first.leaving == 0 and api.calls["customers.create"] == 3
    api.calls.clear()
    customers = {c.email: c.id for c in stripe_client.v1.customers.list(params={"limit": 100}).data}

    db = sqlite3.connect(source)
    db.execute("UPDATE profiles SET plan = 'free' WHERE id = 1")  # leaves the filter
    db.execute("DELETE FROM profiles WHERE id = 2")  # deleted from the warehouse
    db.commit()
    second, api = step("run2")

    assert second.leaving == 2 and second.in_ledger == 3
    if on_leave == "clear":
        assert (second.cleared, dict(api.calls)) == (2, {"customers.update": 2})
        for email in ("a@example.com", "b@example.com"):
            after: dict[str, Any] = stripe_client.v1.customers.retrieve(customers[email]).to_dict()
            assert after["name"] in (None, "") and (after["metadata"] or {}).get("plan") in (None, "")
            assert after["email"] == email
    else:
        assert (second.deleted, dict(api.calls)) == (2, {"customers.delete": 2})
        left = {c.email for c in stripe_client.v1.customers.list(params={"limit": 100}).data}
        assert left == {"c@example.com"}
    rows = Ledger(state, "?", spec.id).entries(["1", "2", "3"])  # keys as the transform wrote them
    assert (rows["1"].status, rows["2"].status, rows["3"].status) == (LEFT, LEFT, "synced")

    third, api = step("run3")  # nothing changed since: nothing to do, no call
    assert (third.leaving, sum(api.calls.values())) == (0, 0)

    db.execute("DELETE FROM profiles")  # the source table is emptied
    db.commit()
    db.close()
    before = state.execute("SELECT * FROM krenalis_ledger ORDER BY profile_key").fetchall()
    with pytest.raises(TooManyLeaving, match="1 of the 1 profiles"):
        step("run4")  # 1 of 1 left is more than 70%
    assert state.execute("SELECT * FROM krenalis_ledger ORDER BY profile_key").fetchall() == before
    assert stripe_client.v1.customers.retrieve(customers["c@example.com"]).name == "Cy"
