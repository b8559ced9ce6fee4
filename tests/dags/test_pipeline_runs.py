"""Whole DAG runs through the Airflow CLI (``airflow dags test``) against real localstripe."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import stripe

from krenalis_airflow.core.dedupe import KEPT_FIRST
from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from krenalis_airflow.core.transform.run import NO_MATCH
from support.localstripe_process import STRIPE_TEST_KEY
from support.postgres import PG_DSN, drop_prefixed_tables
from tests.dags.conftest import ROOT, AirflowEnv
from tests.specs import spec_text

pytestmark = pytest.mark.slow
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
BROKEN = spec_text("invalid/broken_pipeline")


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
    write_spec("broken_pipeline.yaml", BROKEN)

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
    write_spec("broken_pipeline.yaml", BROKEN)
    airflow_env.airflow("dags", "reserialize")
    listed = json.loads(airflow_env.airflow("dags", "list", "-o", "json").stdout.strip().splitlines()[-1])
    by_id = {d["dag_id"]: d for d in listed}
    assert {"sample_customers", "broken_pipeline"} <= set(by_id)
    assert str(by_id["broken_pipeline"]["is_paused"]).lower() == "false"  # unscheduled, not paused
    errors = airflow_env.airflow("dags", "list-import-errors", "-o", "json", check=False).stdout
    assert "krenalis_pipelines.py" not in errors  # the pipelines' file stays healthy …
    assert "krenalis_spec_check.py" in errors and "adress.city" in errors  # … the check file reports it

    failed = airflow_env.airflow("dags", "test", "broken_pipeline", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    expected = "broken_pipeline.yaml:8: transformation.mapping.adress.city: unknown Stripe customer field"
    assert expected in output


def test_postgres_source_and_ledger(airflow_env: AirflowEnv, stripe_client, write_spec) -> None:
    suffix = uuid.uuid4().hex[:8]
    table, prefix = f"kt_profiles_{suffix}", f"kt_{suffix}_"
    pg = psycopg2.connect(PG_DSN)
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
            "pg_customers.yaml",
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
            drop_prefixed_tables(cur, prefix)  # the ledger and every other state table
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


# --------------------------------------------------------------------------------------------
# What turns a run red: only problems (rejected, failed) count against export.max_rejected; the
# spec's own rules at work (keep_first, update_only, create_only) are skipped, counted by reason.

SMALL_SPEC = """\
id: {id}
source: {{conn_id: warehouse, table: people, key: profile_id}}
export:
{export}
transformation:
  mapping:
    name: name
"""


def small_warehouse(path: Path, rows: list[tuple[str, str | None, str | None, str]]) -> None:
    """``people``: (profile_id, email, stripe_id, updated_at), the name derived from the key."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE people (profile_id TEXT PRIMARY KEY, email TEXT, stripe_id TEXT, name TEXT,"
            " updated_at TEXT)"
        )
        db.executemany(
            "INSERT INTO people VALUES (?, ?, ?, 'Person ' || ?, ?)",
            [(key, email, stripe_id, key, updated) for key, email, stripe_id, updated in rows],
        )


def recorded_run(warehouse: Path) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The only krenalis_runs row (outcome, rejected_total, skipped_total, summary's skipped), and
    every krenalis_rejections row (profile_key, step, kind)."""
    with sqlite3.connect(warehouse) as db:
        [(outcome, rejected, skipped, summary)] = db.execute(
            "SELECT outcome, rejected_total, skipped_total, summary FROM krenalis_runs"
        ).fetchall()
        rejections = db.execute("SELECT profile_key, step, kind FROM krenalis_rejections").fetchall()
    return (outcome, rejected, skipped, json.loads(summary)["skipped"]), sorted(rejections)


def test_keep_first_drops_are_skipped_and_the_run_succeeds(
    airflow_env: AirflowEnv, stripe_client, write_spec
) -> None:
    # Two profiles, one email: the default max_rejected (10% of 2) tolerates no rejection at all.
    small_warehouse(
        airflow_env.warehouse,
        [("p1", "ada@example.com", None, "2026-01-01"), ("p2", " ADA@example.com", None, "2026-02-01")],
    )
    export = "  matching: {property: email, stripe: email}\n  duplicate_profiles: keep_first\n"
    write_spec(
        "keep_first_people.yaml",
        SMALL_SPEC.format(id="keep_first_people", export=export + "  order_by: updated_at desc"),
    )
    summary = airflow_env.run_dag("keep_first_people")
    assert summary["created"] == 1  # the run succeeded: run_dag checks
    assert (summary["rejected"], summary["rejected_total"], summary["duplicates"]) == ({}, 0, 1)
    assert summary["skipped"] == {KEPT_FIRST: 1} and summary["skipped_total"] == 1
    assert summary["samples"]["skipped"] == ["p1: email 'ada@example.com' is also on profile p2, kept first"]
    assert KEPT_FIRST in airflow_env.last_output  # the log report
    [customer] = stripe_client.v1.customers.list(params={"limit": 10}).data
    assert (customer.email, customer.name) == ("ADA@example.com", "Person p2")
    assert recorded_run(airflow_env.warehouse) == (("success", 0, 1, {KEPT_FIRST: 1}), [])


def test_update_only_by_id_skips_profiles_without_a_customer_and_the_run_succeeds(
    airflow_env: AirflowEnv, stripe_client, write_spec
) -> None:
    ids = [stripe_client.v1.customers.create(params={"name": f"old {i}"}).id for i in range(2)]
    small_warehouse(
        airflow_env.warehouse,
        [
            ("p1", None, ids[0], ""),
            ("p2", None, None, ""),  # not in Stripe yet: nothing to update
            ("p3", None, ids[1], ""),
            ("p4", None, " ", ""),
            ("p5", None, "cus_gone", ""),  # no such customer
        ],
    )
    export = "  mode: update_only\n  matching: {property: stripe_id, stripe: id}"
    write_spec("update_by_id.yaml", SMALL_SPEC.format(id="update_by_id", export=export))
    summary = airflow_env.run_dag("update_by_id")
    skipped = {NO_MATCH: 2, "no Stripe customer has this id": 1}
    # run_dag checks that the run succeeded: 3 of 5 left alone, far above max_rejected (10%)
    assert (summary["created"], summary["updated"], summary["rejected_total"]) == (0, 2, 0)
    assert summary["skipped"] == skipped and summary["skipped_total"] == 3
    names = {c.id: c.name for c in stripe_client.v1.customers.list(params={"limit": 10}).data}
    assert names == {ids[0]: "Person p1", ids[1]: "Person p3"}
    assert recorded_run(airflow_env.warehouse) == (("success", 0, 3, skipped), [])


def test_real_rejections_above_max_rejected_still_fail_the_run(
    airflow_env: AirflowEnv, stripe_client, write_spec
) -> None:
    small_warehouse(
        airflow_env.warehouse,
        [
            ("p1", "a@example.com", None, "2026-01-01"),
            ("p2", "a@example.com", None, "2026-02-01"),  # kept first: p1 is skipped, not rejected
            ("p3", None, None, "2026-01-01"),  # empty matching value, and this mode creates: rejected
            ("p4", "", None, "2026-01-01"),
            ("p5", "e@example.com", None, "2026-01-01"),
        ],
    )
    export = "  matching: {property: email, stripe: email}\n  duplicate_profiles: keep_first\n"
    write_spec(
        "mixed_people.yaml",
        SMALL_SPEC.format(id="mixed_people", export=export + "  order_by: updated_at desc"),
    )
    failed = airflow_env.airflow("dags", "test", "mixed_people", check=False)
    assert failed.returncode != 0
    message = (
        "failed: 2 rejected + 0 failed profiles exceed export.max_rejected (0 for 5 extracted); "
        "skipped profiles (1) do not count"
    )
    assert message in failed.stdout + failed.stderr
    assert recorded_run(airflow_env.warehouse) == (
        (message, 2, 1, {KEPT_FIRST: 1}),
        [("p3", "transform", "empty matching value"), ("p4", "transform", "empty matching value")],
    )
    assert len(stripe_client.v1.customers.list(params={"limit": 10}).data) == 2  # what was valid was synced
