"""The pipeline lifecycle through the Airflow CLI (``airflow dags test``): a spec-disabled pipeline
run anyway touches nothing, and a second file claiming a pipeline's id changes nothing for it."""

from __future__ import annotations

import json
import re
import sqlite3

import stripe

from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from support.fault_proxy import FaultProxy
from tests.dags.conftest import ROOT, AirflowEnv

SAMPLE = (ROOT / "dags" / "pipelines" / "sample_customers.yaml").read_text()


def test_a_disabled_pipeline_run_anyway_reads_and_writes_nothing(
    airflow_env: AirflowEnv, fault_proxy: FaultProxy, stripe_client: stripe.StripeClient, write_spec
) -> None:
    """``airflow dags test`` starts a run whatever the schedule: every step skips, saying why.

    Stripe is reached only through the proxy, which counts every request; the warehouse file does
    not exist, and would if anything had opened it."""
    assert "\nenabled: true\n" in SAMPLE
    path = write_spec("sample_customers.yaml", SAMPLE.replace("\nenabled: true\n", "\nenabled: false\n"))
    airflow_env.env["AIRFLOW_CONN_STRIPE_DEFAULT"] = json.dumps(
        {"conn_type": "stripe", "password": "sk_test_lifecycle", "host": fault_proxy.url}
    )

    result = airflow_env.airflow("dags", "test", "sample_customers")  # a skipped run is no failure

    output = result.stdout + result.stderr
    reason = (
        f"pipeline sample_customers is disabled by its spec (enabled: false in {path}); "
        "set enabled: true to run it"
    )
    assert "Skipping task." in output and reason in output  # extract's; the later steps follow it
    assert re.search(r"DagRun Finished: dag_id=sample_customers, .*, state=success,", output)
    assert fault_proxy.stats()["totals"]["received"] == 0
    assert stripe_client.v1.customers.list().data == []
    assert not airflow_env.warehouse.exists()
    assert not (airflow_env.storage / "sample_customers").exists()  # no run folder either


def test_a_second_file_with_the_pipelines_id_changes_nothing_for_it(
    airflow_env: AirflowEnv, stripe_client: stripe.StripeClient, write_spec
) -> None:
    """The bug: ``a_copy.yaml`` (sorted first) said ``id: sample_customers`` and took the running
    pipeline over, ledger included. Now the file name is the id: the copy is reported on a
    placeholder of its own and the pipeline runs its own spec."""
    write_sqlite_warehouse(airflow_env.warehouse, profiles=120)
    write_spec("sample_customers.yaml", SAMPLE)
    copy = SAMPLE.replace("# id: sample_customers\n", "id: sample_customers\n", 1)
    assert copy != SAMPLE
    copy = copy.replace("name: first_name ~ ' ' ~ last_name", "name: upper(last_name)")
    write_spec("a_copy.yaml", copy)

    summary = airflow_env.run_dag("sample_customers")

    assert summary["created"] > 0 and summary["failed"] == 0
    with sqlite3.connect(airflow_env.warehouse) as db:
        names = dict(db.execute("SELECT profile_id, first_name || ' ' || last_name FROM customer_profiles"))
    customers = [
        c.to_dict() for c in stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
    ]
    assert len(customers) == summary["created"]
    assert all(c["name"] == names[c["metadata"]["profile_id"]] for c in customers)  # not the copy's

    failed = airflow_env.airflow("dags", "test", "a_copy", check=False)
    assert failed.returncode != 0
    assert (
        "a_copy.yaml:14: id: id 'sample_customers' differs from the file name 'a_copy.yaml', which is "
        "the pipeline id: remove the id line (the pipeline is then 'a_copy')"
    ) in failed.stdout + failed.stderr
