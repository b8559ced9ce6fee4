"""When the ledger may be trusted, through real upsert steps on an SQLite warehouse and localstripe:
a new Stripe, a new key of the same account, drift repaired by reconciliation, its cadence, and
two pipelines writing the same field. Stripe calls are counted by the engine."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe
from airflow.sdk import ObjectStoragePath

from krenalis_airflow.__main__ import main
from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.exceptions import TooManyLeaving
from krenalis_airflow.operators import steps
from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe
from support.localstripe_server import CUSTOMERS_ONLY

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (ROOT / "dags" / "pipelines" / "sample_customers.yaml").read_text()
RESTRICTED_KEY = f"sk_test_{CUSTOMERS_ONLY}_1"  # may not read the account (localstripe_server.py)


@dataclasses.dataclass
class Pipelines:
    """Runs pipelines of the sample warehouse end to end (extract → upsert), in one state store."""

    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    warehouse: Path

    def point_at(self, url: str, key: str = STRIPE_TEST_KEY) -> None:
        conn = {"conn_type": "stripe", "password": key, "host": url}
        self.monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(conn))

    def run(self, name: str = "sample_customers", text: str = SAMPLE, **flags: Any) -> dict[str, Any]:
        spec_file = self.tmp_path / "pipelines" / f"{name}.yaml"
        spec_file.parent.mkdir(exist_ok=True)
        spec_file.write_text(text)
        folder = self.tmp_path / "storage" / name / str(len(list(self.tmp_path.glob(f"storage/{name}/*"))))
        folder.mkdir(parents=True)
        run = steps.StepRun(
            spec=load_spec(spec_file),
            spec_file=str(spec_file),
            folder=ObjectStoragePath(f"file://{folder}"),
            upstream={},
            dry_run=flags.pop("dry_run", False),
            full_resync=False,
            log=logging.getLogger("test_ledger_trust"),
            **flags,
        )
        upstream: dict[str, Any] = {}
        for step in (steps.extract, steps.transform, steps.dedupe, steps.upsert):
            upstream = step(dataclasses.replace(run, upstream=upstream))
        return upstream

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.warehouse) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stripe_url: str) -> Pipelines:
    warehouse = tmp_path / "warehouse.sqlite"
    write_sqlite_warehouse(warehouse, profiles=150)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    monkeypatch.delenv("KRENALIS_KEEP_FILES", raising=False)
    found = Pipelines(tmp_path, monkeypatch, warehouse)
    found.point_at(stripe_url)
    return found


@pytest.fixture
def other_stripe() -> Iterator[LocalStripe]:
    """A second, empty localstripe: another Stripe account."""
    server = LocalStripe(quiet=True).start()
    try:
        yield server
    finally:
        server.stop()


def client(url: str) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": url})


def customers(url: str) -> list[dict[str, Any]]:
    listed = client(url).v1.customers.list(params={"limit": 100}).auto_paging_iter()
    return [c.to_dict() for c in listed]


def writes(summary: dict[str, Any]) -> int:
    calls = summary["api_calls"]
    return sum(calls.get(name, 0) for name in ("customers.create", "customers.update"))


# -- destination identity --------------------------------------------------------------------


def test_a_new_stripe_gets_every_customer_created(pipelines: Pipelines, other_stripe: LocalStripe) -> None:
    first = pipelines.run()
    assert first["created"] > 10 and first["destination"].startswith("acct_")

    pipelines.point_at(other_stripe.url)  # what moving from a test key to a live key looks like
    moved = pipelines.run()
    assert moved["created"] == first["created"], "the ledger of the first Stripe must not be trusted"
    assert moved["unchanged"] == 0
    assert moved["destination"] not in (first["destination"], "")
    assert len(customers(other_stripe.url)) == first["created"]
    assert any("synced to another Stripe" in warning for warning in moved["warnings"])

    again = pipelines.run()  # now the ledger is about this Stripe: trusted again
    assert (again["created"], again["updated"], again["api_calls"]) == (0, 0, {})


def test_a_new_key_of_the_same_account_creates_nothing(pipelines: Pipelines, stripe_url: str) -> None:
    first = pipelines.run()
    pipelines.point_at(stripe_url, "sk_test_" + "rotated")
    rotated = pipelines.run()
    # The account is read once for the new key, and it is the same: the ledger is trusted.
    assert rotated["api_calls"] == {"account.retrieve": 1}
    assert rotated["destination"] == first["destination"]
    assert (rotated["created"], rotated["updated"], rotated["unchanged"]) == (0, 0, first["created"])


def test_a_restricted_key_of_the_same_account_reverifies_and_creates_nothing(
    pipelines: Pipelines, stripe_url: str
) -> None:
    first = pipelines.run()
    pipelines.point_at(stripe_url, RESTRICTED_KEY)
    restricted = pipelines.run()
    # The key may not read the account: its fingerprint is a new destination, so the customers
    # are found again (one listing) by the ids the ledger knows: no create, no duplicate.
    assert restricted["destination"].startswith("key:")
    pages = -(-first["created"] // 100)
    assert restricted["api_calls"] == {"account.retrieve": 1, "customers.list": pages}
    assert (restricted["created"], restricted["updated"]) == (0, 0)
    assert len(customers(stripe_url)) == first["created"]
    rerun = pipelines.run()
    assert rerun["api_calls"] == {}, "the account check is not repeated for a key already seen"


# -- reconciliation --------------------------------------------------------------------------


def test_reconcile_repairs_an_edited_field_and_a_deleted_customer(
    pipelines: Pipelines, stripe_url: str
) -> None:
    first = pipelines.run()
    assert first["reconcile"]["reason"] == "first run on this destination"
    stored = customers(stripe_url)
    edited, deleted = stored[0], stored[1]
    api = client(stripe_url).v1.customers
    api.update(edited["id"], params={"name": "Edited in the dashboard", "metadata": {"plan": "hacked"}})
    api.delete(deleted["id"])

    normal = pipelines.run()  # the ledger is trusted between reconciliations: nothing seen
    assert normal["api_calls"] == {} and normal["reconcile"] is None

    preview = pipelines.run(dry_run=True, reconcile=True)
    assert preview["reconcile"]["drifted"] == 2 and preview["reconcile"]["repaired"] == 0
    assert writes(preview) == 0

    fixed = pipelines.run(reconcile=True)
    pages = -(-len(stored) // 100)
    assert fixed["reconcile"] == {
        "reason": "asked for (reconcile: true)",
        "reads": pages,
        "drifted": 2,
        "repaired": 2,
        "contested": 0,
    }
    assert fixed["api_calls"] == {"customers.list": pages, "customers.update": 1, "customers.create": 1}
    assert (fixed["created"], fixed["updated"]) == (0, 0), "repairs are not profile changes"
    now = {c["email"]: c for c in customers(stripe_url)}
    assert now[edited["email"]]["name"] == edited["name"]
    assert now[edited["email"]]["metadata"] == edited["metadata"]
    assert now[deleted["email"]]["id"] != deleted["id"], "re-created"

    second = pipelines.run(reconcile=True)
    assert second["api_calls"] == {"customers.list": pages}
    assert second["reconcile"]["drifted"] == 0


def test_reconcile_runs_on_the_spec_cadence(pipelines: Pipelines) -> None:
    pipelines.run()
    assert pipelines.run()["reconcile"] is None  # within 24h of the first run
    day_ago = (datetime.now(UTC) - timedelta(hours=25)).isoformat(timespec="seconds")
    pipelines.query("UPDATE krenalis_reconciled SET reconciled_at = ?", day_ago)
    due = pipelines.run()
    assert "export.reconcile is every 24h" in due["reconcile"]["reason"]
    assert due["api_calls"]["customers.list"] >= 1

    off = SAMPLE.replace(
        "  duplicate_customers: reject\n", "  duplicate_customers: reject\n  reconcile: 'off'\n"
    )
    pipelines.query("UPDATE krenalis_reconciled SET reconciled_at = ?", day_ago)
    assert pipelines.run(text=off)["reconcile"] is None


# -- two pipelines, one field ------------------------------------------------------------------

SHOUTING = SAMPLE.replace(
    "name: first_name ~ ' ' ~ last_name", "name: (first_name ~ ' ' ~ last_name) | upper"
)


def test_overlapping_pipelines_are_named_and_reconciling_both_converges(
    pipelines: Pipelines, stripe_url: str
) -> None:
    pipelines.run("customers_a")
    b = pipelines.run("customers_b", SHOUTING)
    assert b["updated"] > 0  # b rewrote the names a wrote
    warning = next(w for w in b["warnings"] if "also writes name" in w)
    assert warning.startswith("pipeline customers_a also writes name to ")
    assert "pipeline customers_b also writes name" in " ".join(pipelines.run("customers_a")["warnings"])

    for _ in range(2):  # two rounds of reconciling both: no ping-pong, nothing written
        a = pipelines.run("customers_a", reconcile=True)
        b = pipelines.run("customers_b", SHOUTING, reconcile=True)
        assert writes(a) == writes(b) == 0
        assert a["reconcile"]["contested"] > 0 and b["reconcile"]["contested"] == 0
    names = {c["name"] for c in customers(stripe_url)}
    assert all(name == name.upper() for name in names), "the last writer's value stands"


# -- profiles that leave, through the upsert step ------------------------------------------------

CLEARING = SAMPLE.replace(
    "  duplicate_customers: reject\n", "  duplicate_customers: reject\n  on_leave: clear\n  max_leave: 20%\n"
)


def test_leavers_are_cleared_by_the_upsert_and_an_emptied_table_changes_nothing(
    pipelines: Pipelines, stripe_url: str
) -> None:
    first = pipelines.run(text=CLEARING)
    assert first["left"]["left_audience"] == 0
    synced = pipelines.query(
        "SELECT profile_key, match_value FROM krenalis_ledger WHERE status = 'synced' LIMIT 2"
    )
    gone = list(synced)
    pipelines.query("DELETE FROM customer_profiles WHERE profile_id = ?", gone[0][0])  # deleted
    pipelines.query(
        "UPDATE customer_profiles SET plan = 'free' WHERE profile_id = ?", gone[1][0]
    )  # filtered out
    plan = pipelines.run(text=CLEARING, dry_run=True)
    assert (plan["left"]["left_audience"], plan["left"]["cleared"], writes(plan)) == (2, 2, 0)

    second = pipelines.run(text=CLEARING)
    assert (second["left"]["left_audience"], second["left"]["cleared"]) == (2, 2)
    assert second["api_calls"] == {"customers.update": 2}
    now = {c["email"]: c for c in customers(stripe_url)}
    for _, email in gone:
        assert now[email]["name"] in (None, "") and not (now[email]["metadata"] or {}).get("plan")
    assert pipelines.run(text=CLEARING)["api_calls"] == {}  # cleared once, not again

    pipelines.query("DELETE FROM customer_profiles")  # an emptied source table
    before = pipelines.query("SELECT * FROM krenalis_ledger ORDER BY profile_key")
    with pytest.raises(TooManyLeaving, match=r"would leave its audience .* export\.max_leave"):
        pipelines.run(text=CLEARING)
    assert pipelines.query("SELECT * FROM krenalis_ledger ORDER BY profile_key") == before
    assert len(customers(stripe_url)) == first["created"]


def test_plan_reconcile_lists_the_drift_and_who_would_leave(
    pipelines: Pipelines, stripe_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = pipelines.run(text=CLEARING)
    edited = customers(stripe_url)[0]
    edited_key = edited["metadata"]["profile_id"]
    client(stripe_url).v1.customers.update(edited["id"], params={"name": "Edited in the dashboard"})
    synced = pipelines.query("SELECT profile_key FROM krenalis_ledger WHERE status = 'synced'")
    key = next(found for (found,) in synced if found != edited_key)  # leaves the warehouse
    pipelines.query("DELETE FROM customer_profiles WHERE profile_id = ?", key)
    spec_file = pipelines.tmp_path / "pipelines" / "sample_customers.yaml"
    capsys.readouterr()

    assert main(["plan", str(spec_file), "--reconcile"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  drifted\s+1  would be set back \(reconcile: asked for", out, re.M), out
    assert re.search(r"^  left the audience\s+1  on_leave: clear", out, re.M), out
    assert re.search(r"^    would be cleared\s+1$", out, re.M), out
    assert f"destination: Stripe {first['destination']}" in out
    assert f"e.g. drift: {edited_key} → {edited['id']}: name" in out
    assert f"e.g. left the audience, cleared: {key} → " in out
    assert customers(stripe_url)[0]["name"] == "Edited in the dashboard", "a plan writes nothing"
