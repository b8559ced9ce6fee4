"""Alerts and lineage through whole DAG runs (``airflow dags test``) against real localstripe: a
recording notifier (``recording_notifier.py``, referenced from the spec like Slack's would be)
gets exactly the alerts each run calls for, and the destination's asset event is in Airflow's
metadata DB after each run that wrote to Stripe, and only then."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from tests.dags.conftest import ROOT, AirflowEnv
from tests.dags.recording_notifier import read_alerts

pytestmark = pytest.mark.slow
SAMPLE = (ROOT / "dags" / "pipelines" / "sample_customers.yaml").read_text()
DESTINATION = "x-stripe://stripe_default/customers"


def with_alerts(text: str, path: Path, **conditions: str) -> str:
    written = "\n".join(f"  {name}: {value}" for name, value in conditions.items())
    return (
        f"{text.rstrip()}\n\nalerts:\n"
        "  notifier: tests.dags.recording_notifier.RecordingNotifier\n"
        f'  args: {{path: "{path}", subject: "{{{{ krenalis_alert.title }}}}"}}\n'
        f"{written}\n"
    )


def asset_events(env: AirflowEnv) -> list[tuple[str, dict[str, Any]]]:
    """Every asset event in the Airflow metadata DB: (asset URI, extra)."""
    with sqlite3.connect(env.home / "airflow.db") as db:
        rows = db.execute(
            "SELECT asset.uri, asset_event.extra FROM asset_event JOIN asset ON asset.id = asset_event.asset_id"
            " ORDER BY asset_event.id"
        ).fetchall()
    return [(uri, json.loads(extra) if isinstance(extra, str) else extra) for uri, extra in rows]


def inlets(env: AirflowEnv) -> set[str]:
    """The assets a task of the metadata DB declares as inlets."""
    with sqlite3.connect(env.home / "airflow.db") as db:
        rows = db.execute(
            "SELECT asset.uri FROM task_inlet_asset_reference AS ref JOIN asset ON asset.id = ref.asset_id"
        ).fetchall()
    return {uri for (uri,) in rows}


def test_healthy_runs_stay_quiet_drift_and_a_swing_alert_and_writes_emit_asset_events(
    airflow_env: AirflowEnv, stripe_client, write_spec
) -> None:
    sent = airflow_env.home.parent / "alerts.jsonl"
    write_sqlite_warehouse(airflow_env.warehouse, profiles=400)
    spec = with_alerts(SAMPLE, sent, rejected_share="50%", extracted_swing="30%", on_drift="true")
    write_spec("sample_customers.yaml", spec)

    first = airflow_env.run_dag("sample_customers")  # healthy: created, reconciled (first run), quiet
    assert first["created"] > 50 and first["reconcile"]["drifted"] == 0
    assert read_alerts(sent) == []
    [(uri, extra)] = asset_events(airflow_env)
    assert uri == DESTINATION
    assert (
        extra["pipeline"] == "sample_customers" and extra["created"] == extra["written"] == first["created"]
    )
    assert "x-sql://warehouse/customer_profiles" in inlets(airflow_env)

    second = airflow_env.run_dag("sample_customers")  # wrote nothing: no event, no alert
    assert (second["created"], second["updated"]) == (0, 0)
    assert len(asset_events(airflow_env)) == 1 and read_alerts(sent) == []

    customer = next(iter(stripe_client.v1.customers.list(params={"limit": 1}).auto_paging_iter()))
    stripe_client.v1.customers.update(customer.id, params={"name": "Edited In Dashboard"})
    drift = airflow_env.run_dag("sample_customers", {"reconcile": True})
    assert drift["reconcile"]["drifted"] == drift["reconcile"]["repaired"] == 1
    [alert] = read_alerts(sent)
    assert alert["kind"] == "drift" and alert["dag_id"] == "sample_customers"
    assert (
        alert["subject"]
        == alert["title"]
        == ("Pipeline sample_customers: 1 Stripe customers drifted from what this pipeline wrote")
    )
    assert "1 set back" in alert["text"] and "/dags/sample_customers/runs/" in alert["text"]
    assert alert["figures"] == {"drifted": 1, "repaired": 1, "contested": 0}
    events = asset_events(airflow_env)
    assert len(events) == 2 and events[1][1]["written"] == 1  # the repair was a write

    with sqlite3.connect(airflow_env.warehouse) as db:  # half the source disappears upstream
        db.execute("DELETE FROM customer_profiles WHERE rowid % 2 = 0")
    dropped = airflow_env.run_dag("sample_customers")
    assert dropped["extracted"] < first["extracted"] * 0.7
    alerts = read_alerts(sent)
    assert [a["kind"] for a in alerts] == ["drift", "extracted_swing"]
    swing = alerts[1]
    assert f"from {first['extracted']} to {dropped['extracted']}" in swing["title"]
    assert swing["figures"]["previous"] == first["extracted"]
    assert len(asset_events(airflow_env)) == 2  # profiles left (on_leave: keep): nothing written


def test_a_failed_run_alerts_its_failure_and_its_rejected_share(
    airflow_env: AirflowEnv, stripe_client, write_spec
) -> None:
    sent = airflow_env.home.parent / "alerts.jsonl"
    write_sqlite_warehouse(airflow_env.warehouse, profiles=200)
    strict = SAMPLE.replace("duplicate_customers: reject", "duplicate_customers: reject\n  max_rejected: 0")
    write_spec("sample_customers.yaml", with_alerts(strict, sent, rejected_share="1%"))
    failed = airflow_env.airflow("dags", "test", "sample_customers", check=False)
    assert failed.returncode != 0
    alerts = read_alerts(sent)
    assert [a["kind"] for a in alerts] == ["rejected_share", "failure"]
    share, failure = alerts
    summary = json.loads(next(airflow_env.storage.glob("sample_customers/*/summary.json")).read_text())
    assert share["figures"]["rejected"] == summary["rejected_total"] > 0
    assert (
        f"{summary['rejected_total']} of {summary['extracted']} profiles rejected or failed" in share["title"]
    )
    assert failure["title"] == "Pipeline sample_customers: the run failed at task upsert"
    assert "exceed export.max_rejected (0 for" in failure["text"]
    assert failure["run_id"] == share["run_id"] is not None
    # What was valid was still synced, but a failed task emits no asset event.
    assert summary["created"] > 0 and asset_events(airflow_env) == []
