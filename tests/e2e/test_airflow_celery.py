"""A distributed run: the sample pipeline on CeleryExecutor (the running Redis as broker, results
in PostgreSQL) with two workers that share no disk, and the run's files on S3 (moto's server on
loopback, reached through an ``aws`` connection and ``ObjectStoragePath``).

A cluster policy routes ``extract``/``dedupe`` to one worker's queue and ``transform``/``upsert``
to the other's, so every step runs on another worker than the step before it: the run can only
succeed if nothing a step needs stays behind on the worker that ran the previous one.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import specs
from tests.e2e.conftest import Site, deployed, require
from tests.e2e.deployment import BIN, AirflowDeployment, Component, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

SAMPLE = "sample_customers"
STEPS = ("extract", "transform", "dedupe", "upsert")
WORKERS = {"worker-a": "krenalis_a", "worker-b": "krenalis_b"}  # Celery hostname → its only queue
ROUTES = {"extract": "krenalis_a", "transform": "krenalis_b", "dedupe": "krenalis_a", "upsert": "krenalis_b"}
BUCKET = "krenalis-e2e"
REDIS_DB = int(os.environ.get("KRENALIS_E2E_REDIS_DB", "5"))  # flushed before and after: ours alone
POLICY = f'''"""Route each pipeline step to a queue (a cluster policy, applied when DAGs are parsed)."""

ROUTES = {ROUTES!r}


def task_policy(task):
    if task.task_id in ROUTES and "krenalis" in task.dag.tags:
        task.queue = ROUTES[task.task_id]
'''


@dataclass
class S3:
    url: str
    server: Component

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


@pytest.fixture(scope="module")
def s3(site: Site) -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1 with an empty bucket."""
    require("moto", "boto3", "s3fs", "airflow.providers.amazon", "airflow.providers.celery", "redis")
    port = free_port()
    log = site.root / "moto.log"
    server = Component(
        "moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], os.environ, log, site.root
    )
    try:

        def listening() -> bool:
            if not server.alive():
                raise AssertionError(f"moto_server exited:\n{server.tail()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for("moto's S3 server", listening, timeout=60, interval=0.5)
        store = S3(f"http://127.0.0.1:{port}", server)
        store.client().create_bucket(Bucket=BUCKET)
        yield store
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_db() -> Iterator[str]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=10)
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    finally:
        client.flushdb()
        client.close()


def _ready(log: Path) -> bool:
    return " ready." in log.read_text(errors="replace")  # Celery's "celery@worker-a ready."


@dataclass
class Cluster:
    airflow: AirflowDeployment
    site: Site
    s3: S3
    worker_homes: dict[str, Path]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, site: Site, s3: S3, redis_db: str) -> Iterator[Cluster]:
    site.write_specs({"sample_customers.yaml": specs.sample(enabled=True, schedule="null")})
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3.url, "region_name": "us-east-1"},
    }
    env = {
        "KRENALIS_STORAGE_BASE": f"s3://aws_e2e@{BUCKET}/runs",
        "AIRFLOW_CONN_AWS_E2E": json.dumps(aws),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AIRFLOW__CELERY__BROKER_URL": redis_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
    }

    def prepare(airflow: AirflowDeployment) -> None:
        airflow.env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + airflow.env[
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
        ].replace("postgresql+psycopg2", "postgresql")
        config = airflow.home / "config"
        config.mkdir()
        (config / "airflow_local_settings.py").write_text(POLICY)  # read by the dag-processor

    with deployed(
        request, site, name="celery-executor", env=env, executor="CeleryExecutor", prepare=prepare
    ) as airflow:
        homes = {}
        for name, queue in WORKERS.items():
            homes[name] = airflow.root / f"{name}-home"  # its own AIRFLOW_HOME: no shared local disk
            airflow.add_component(
                name,
                [
                    "celery",
                    "worker",
                    "--celery-hostname",
                    name,
                    "--queues",
                    queue,
                    "--concurrency",
                    "1",
                    "--skip-serve-logs",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env={
                    "E2E_WORKER_NAME": name,
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_identity.hostname",
                },
                home=homes[name],
            )
        for component in airflow.components[-len(WORKERS) :]:
            log = component.log
            airflow.wait(f"{component.name} ready", partial(_ready, log), timeout=120)
        yield Cluster(airflow, site, s3, homes)


def test_each_step_runs_on_another_worker_with_files_on_s3(cluster: Cluster) -> None:
    airflow, api = cluster.airflow, cluster.airflow.api
    dag = airflow.wait_for_dags([SAMPLE])[SAMPLE]
    assert dag["is_paused"] is False and dag["timetable_summary"] is None  # enabled, manual runs only

    run_id = api.trigger(SAMPLE)
    run = airflow.wait_for_run(SAMPLE, run_id, timeout=360)
    assert run["state"] == "success", airflow.describe_run(SAMPLE, run_id)

    tis = api.task_instances(SAMPLE, run_id)
    ran_on = {step: tis[step]["hostname"] for step in STEPS}
    assert ran_on == {
        "extract": "worker-a",
        "transform": "worker-b",
        "dedupe": "worker-a",
        "upsert": "worker-b",
    }
    assert all(ran_on[a] != ran_on[b] for a, b in pairwise(STEPS))  # never the previous step's worker
    assert {step: tis[step]["queue"] for step in STEPS} == ROUTES
    # no retry hid a failure
    assert {step: tis[step]["try_number"] for step in STEPS} == dict.fromkeys(STEPS, 1)
    for name, home in cluster.worker_homes.items():  # each worker's own task logs say the same
        logged = {p.parent.name.removeprefix("task_id=") for p in home.glob("logs/**/attempt=*.log")}
        assert logged == {step for step, host in ran_on.items() if host == name}

    # The steps handed each other S3 paths, and the files are in the bucket.
    extracted = api.xcom(SAMPLE, run_id, "extract")
    assert extracted["profiles"].startswith(f"s3://aws_e2e@{BUCKET}/runs/{SAMPLE}/")
    folder = f"runs/{SAMPLE}/{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}/"
    listed = cluster.s3.client().list_objects_v2(Bucket=BUCKET, Prefix=folder)
    names = {obj["Key"].removeprefix(folder) for obj in listed.get("Contents", [])}
    # the rejections and the summary stay; whole profiles go once the upsert has succeeded
    assert {
        "rejected-transform.jsonl",
        "rejected-dedupe.jsonl",
        "rejected-upsert.jsonl",
        "summary.json",
    } <= names
    assert not names & {"profiles.jsonl", "records.jsonl", "deduped.jsonl"}, names
    summary = api.xcom(SAMPLE, run_id, "upsert")
    body = cluster.s3.client().get_object(Bucket=BUCKET, Key=folder + "summary.json")["Body"].read()
    assert json.loads(body)["created"] == summary["created"] > 50
    assert all(path.startswith("s3://") for path in summary["rejection_files"])
    for home in (airflow.home, *cluster.worker_homes.values()):
        assert not (home / "krenalis").exists()  # nothing fell back to a local folder

    customers = cluster.site.customers(SAMPLE)
    assert len(customers) == summary["created"] and summary["failed"] == 0
