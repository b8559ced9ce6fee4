"""Fixtures for the end-to-end tests: a pipelines folder, a DAGs folder, a warehouse, a localstripe
and a running Airflow deployment, torn down (and its logs saved on failure) by ``deployed``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stripe

from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe
from tests.e2e.deployment import (
    ARTIFACTS,
    ROOT,
    AirflowDeployment,
    create_metadata_database,
    drop_database,
)

SPEC_CHECK = "krenalis_spec_check.py"


def require(*modules: str) -> None:
    """Skip locally when an e2e dependency is missing; in CI (which installs them) fail instead."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        message = f"{', '.join(missing)} not installed: make e2e-deps (pip install -e '.[e2e]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Site:
    """What a deployment works on: its folders, warehouse and Stripe."""

    root: Path
    stripe: LocalStripe
    dags: Path = field(init=False)
    pipelines: Path = field(init=False)
    warehouse: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dags = self.root / "dags"
        self.pipelines = self.root / "pipelines"
        self.warehouse = self.root / "warehouse.sqlite"
        self.dags.mkdir()
        self.pipelines.mkdir()
        # The product's DAG files, as a deployment would ship them (not its sample pipelines).
        for dag_file in sorted((ROOT / "dags").glob("*.py")):
            shutil.copy(dag_file, self.dags / dag_file.name)
        assert (self.dags / SPEC_CHECK).exists(), "dags/krenalis_spec_check.py reports broken specs"

    def write_specs(self, specs: Mapping[str, str]) -> None:
        for name, text in specs.items():
            (self.pipelines / name).write_text(text)

    def stripe_client(self) -> stripe.StripeClient:
        return stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": self.stripe.url})

    def customers(self, pipeline: str) -> dict[str, dict]:
        """Stripe customers written by ``pipeline`` (``metadata.pipeline``), by profile id."""
        listing = self.stripe_client().v1.customers.list(params={"limit": 100})
        found = [c.to_dict() for c in listing.auto_paging_iter()]
        return {
            c["metadata"]["profile_id"]: c for c in found if c.get("metadata", {}).get("pipeline") == pipeline
        }

    def connections(self) -> dict[str, str]:
        return {
            "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(self.warehouse)}),
            "AIRFLOW_CONN_STRIPE_DEFAULT": json.dumps(
                {"conn_type": "stripe", "password": STRIPE_TEST_KEY, "host": self.stripe.url}
            ),
            "KRENALIS_PIPELINES_DIR": str(self.pipelines),
        }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Folders, a 600-profile SQLite warehouse and a localstripe of this module's own."""
    root = tmp_path_factory.mktemp("e2e")
    with LocalStripe(quiet=True) as server:
        created = Site(root, server)
        write_sqlite_warehouse(created.warehouse, profiles=600)
        yield created


@contextmanager
def deployed(
    request: pytest.FixtureRequest,
    site: Site,
    *,
    name: str,
    env: Mapping[str, str],
    executor: str = "LocalExecutor",
    prepare: Callable[[AirflowDeployment], None] | None = None,
) -> Iterator[AirflowDeployment]:
    """Start a deployment on a fresh metadata database; stop it and drop the database afterwards.

    When a test of the module failed (or the start did), the components' output and every task
    log are copied to ``test-artifacts/e2e/<name>/``.
    """
    failed_before = request.session.testsfailed
    database = create_metadata_database()
    deployment = AirflowDeployment(
        site.root / name,
        name=name,
        database=database,
        dags_folder=site.dags,
        env={**site.connections(), **env},
        executor=executor,
    )
    ok = False
    try:
        if prepare is not None:
            prepare(deployment)
        deployment.start()
        ok = True
        yield deployment
    finally:
        try:
            deployment.stop()
        finally:
            if not ok or request.session.testsfailed > failed_before:
                saved = deployment.save_logs(ARTIFACTS / name)
                print(f"\n[e2e] {name}: logs saved to {saved}")
            drop_database(database)
