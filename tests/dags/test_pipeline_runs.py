"""Whole DAG runs through the Airflow CLI (``airflow dags test``) against real localstripe."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import psycopg2
import pytest
import stripe

from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from tests.dags.conftest import ROOT, AirflowEnv
from tests.support.localstripe_process import STRIPE_TEST_KEY

pytestmark = pytest.mark.slow
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
BROKEN = """\
id: broken_pipeline
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
export:
  matching: {property: email, stripe: email}
transformation:
  mapping:
    name: first_name
    adress.city: city
"""


def stripe_customers(client: stripe.StripeClient) -> dict[str, dict]:
    found = [c.to_dict() for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()]
    return {c["metadata"]["profile_id"]: c for c in found}


def synced_keys(warehouse: Path, count: int) -> list[str]:
    with sqlite3.connect(warehouse) as db:
        rows = db.execute("SELECT profile_key FROM krenalis_ledger ORDER BY profile_key LIMIT ?", (count,))
        return [key for (key,) in rows]


def test_sample_pipeline_first_sync_rerun_and_k_changes(
    airflow_env: AirflowEnv, stripe_client, write_spec
) -> None:
    write_sqlite_warehouse(airflow_env.warehouse, profiles=400)
    write_spec("sample_customers.yaml", SAMPLE.read_text())
    write_spec("broken.yaml", BROKEN)

    first = airflow_env.run_dag("sample_customers")
    assert "Sync summary" in airflow_env.last_output and STRIPE_TEST_KEY not in airflow_env.last_output
    in_stripe = stripe_customers(stripe_client)
    assert first["created"] > 50 and first["failed"] == 0
    assert len(in_stripe) == first["created"]
    assert first["extracted"] == first["transformed"] + first["rejected"].get("empty matching value", 0)
    with sqlite3.connect(airflow_env.warehouse) as db:
        key, first_name, last_name, plan = db.execute(
            "SELECT profile_id, first_name, last_name, plan FROM customer_profiles WHERE profile_id = ?",
            (next(iter(in_stripe)),),
        ).fetchone()
    assert in_stripe[key]["name"] == f"{first_name} {last_name}"
    assert in_stripe[key]["metadata"]["plan"] == plan

    with sqlite3.connect(airflow_env.warehouse) as db:  # the records a person can query
        runs = db.execute("SELECT outcome, extracted, created, rejected_total FROM krenalis_runs").fetchall()
        rejected = db.execute("SELECT profile_key, step, kind FROM krenalis_rejections").fetchall()
    assert runs == [("success", first["extracted"], first["created"], first["rejected_total"])]
    assert len(rejected) == first["rejected_total"] and {r[2] for r in rejected} <= set(first["rejected"])

    second = airflow_env.run_dag("sample_customers")
    assert (second["created"], second["updated"], second["unchanged"]) == (0, 0, first["created"])
    assert second["api_calls"] == {}

    changed = synced_keys(airflow_env.warehouse, 3)
    with sqlite3.connect(airflow_env.warehouse) as db:
        db.executemany(
            "UPDATE customer_profiles SET last_name = 'Changed' WHERE profile_id = ?", [(k,) for k in changed]
        )
    third = airflow_env.run_dag("sample_customers")
    assert (third["created"], third["updated"]) == (0, 3)
    assert third["api_calls"] == {"customers.update": 3}
    in_stripe = stripe_customers(stripe_client)
    assert {k for k, c in in_stripe.items() if c["name"].endswith(" Changed")} == set(changed)

    # dry_run reports what would change and writes nothing; the next real run writes it.
    cleared = changed[0]
    with sqlite3.connect(airflow_env.warehouse) as db:
        db.execute("UPDATE customer_profiles SET phone = NULL WHERE profile_id = ?", (cleared,))
    dry = airflow_env.run_dag("sample_customers", {"dry_run": True})
    assert dry["dry_run"] is True and dry["updated"] == 1 and dry["api_calls"] == {}
    assert stripe_customers(stripe_client)[cleared]["phone"] not in (None, "")
    real = airflow_env.run_dag("sample_customers")
    assert real["updated"] == 1
    assert stripe_customers(stripe_client)[cleared]["phone"] in (None, "")  # null clears the field


def test_broken_spec_is_visible_and_hides_nothing(airflow_env: AirflowEnv, write_spec) -> None:
    write_sqlite_warehouse(airflow_env.warehouse, profiles=50)
    write_spec("sample_customers.yaml", SAMPLE.read_text())
    write_spec("broken.yaml", BROKEN)
    airflow_env.airflow("dags", "reserialize")
    listed = json.loads(airflow_env.airflow("dags", "list", "-o", "json").stdout.strip().splitlines()[-1])
    by_id = {d["dag_id"]: d for d in listed}
    assert {"sample_customers", "broken_pipeline"} <= set(by_id)
    assert str(by_id["broken_pipeline"]["is_paused"]).lower() == "true"
    errors = airflow_env.airflow("dags", "list-import-errors", "-o", "json", check=False).stdout
    assert "krenalis_pipelines.py" not in errors  # the pipelines' file stays healthy …
    assert "krenalis_spec_check.py" in errors and "adress.city" in errors  # … the check file reports it

    failed = airflow_env.airflow("dags", "test", "broken_pipeline", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "broken.yaml:8: transformation.mapping.adress.city: unknown Stripe customer field" in output


def test_postgres_source_and_ledger(airflow_env: AirflowEnv, stripe_client, write_spec) -> None:
    suffix = uuid.uuid4().hex[:8]
    table, prefix = f"kt_profiles_{suffix}", f"kt_{suffix}_"
    pg = psycopg2.connect(host="127.0.0.1", dbname="test", user="postgres")
    pg.autocommit = True
    try:
        with pg.cursor() as cur:
            cur.execute(
                f"CREATE TABLE {table} (id integer PRIMARY KEY, email text, full_name text,"
                " spend numeric(10, 2), active boolean, seen_at timestamptz)"
            )
            cur.executemany(
                f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, now())",
                [(i, f"PG{i}@Example.com", f"Pg User {i}", 10 * i, i % 3 != 0) for i in range(1, 31)],
            )
        airflow_env.env["AIRFLOW_CONN_PG_WAREHOUSE"] = json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "schema": "test", "login": "postgres"}
        )
        write_spec(
            "pg.yaml",
            f"""\
id: pg_customers
source: {{conn_id: pg_warehouse, table: {table}, key: id}}
filter:
  logical: and
  conditions:
    - {{property: active, operator: is true}}
    - {{property: spend, operator: is greater than or equal to, values: ["50"]}}
state: {{table_prefix: {prefix}}}
export:
  matching: {{property: email, stripe: email}}
transformation:
  mapping:
    name: full_name
    metadata.spend: spend
""",
        )
        expected = {i for i in range(5, 31) if i % 3 != 0}
        first = airflow_env.run_dag("pg_customers")
        assert first["created"] == len(expected)
        emails = {c.email for c in stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter()}
        assert emails == {f"PG{i}@Example.com" for i in expected}
        second = airflow_env.run_dag("pg_customers")
        assert (second["created"], second["updated"], second["unchanged"]) == (0, 0, len(expected))
        with pg.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {prefix}ledger WHERE pipeline_id = 'pg_customers'")
            assert cur.fetchone()[0] == len(expected)
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"DROP TABLE IF EXISTS {prefix}ledger")
        pg.close()


def test_too_many_rejections_turn_the_run_red(airflow_env: AirflowEnv, stripe_client, write_spec) -> None:
    write_sqlite_warehouse(airflow_env.warehouse, profiles=200)
    strict = SAMPLE.read_text().replace(
        "duplicate_customers: reject", "duplicate_customers: reject\n  max_rejected: 0"
    )
    write_spec("sample_customers.yaml", strict)
    failed = airflow_env.airflow("dags", "test", "sample_customers", check=False)
    assert failed.returncode != 0
    assert "exceed export.max_rejected (0 for" in failed.stdout + failed.stderr
    with sqlite3.connect(airflow_env.warehouse) as db:
        [(outcome, created)] = db.execute("SELECT outcome, created FROM krenalis_runs").fetchall()
        keys = {k for (k,) in db.execute("SELECT profile_key FROM krenalis_rejections")}
    assert outcome.startswith("failed: ") and created > 0  # what was valid was still synced
    summary = json.loads(next(airflow_env.storage.glob("sample_customers/*/summary.json")).read_text())
    assert len(keys) == summary["rejected_total"] > 0
