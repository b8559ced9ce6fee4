"""Real Airflow for DAG tests: a metadata DB migrated once per session and copied per test,
the repo's ``dags/`` folder, env-var connections, and ``airflow dags test`` in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.localstripe_process import STRIPE_TEST_KEY

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KRENALIS"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow metadata DB migrated once; tests copy it."""
    home = tmp_path_factory.mktemp("airflow-template")
    subprocess.run([AIRFLOW, "db", "migrate"], env=_base_env(home), check=True, capture_output=True)
    return home / "airflow.db"


class AirflowEnv:
    def __init__(self, root: Path, db: Path, stripe_url: str) -> None:
        self.home = root / "airflow"
        self.home.mkdir()
        shutil.copy(db, self.home / "airflow.db")
        self.pipelines = root / "pipelines"
        self.pipelines.mkdir()
        self.storage = root / "storage"
        self.warehouse = root / "warehouse.sqlite"
        self.last_output = ""
        self.env = _base_env(self.home)
        self.env.update(
            {
                "KRENALIS_PIPELINES_DIR": str(self.pipelines),
                "KRENALIS_STORAGE_BASE": f"file://{self.storage}",
                "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(self.warehouse)}),
                "AIRFLOW_CONN_STRIPE_DEFAULT": json.dumps(
                    {"conn_type": "stripe", "password": STRIPE_TEST_KEY, "host": stripe_url}
                ),
            }
        )

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=300)
        if check and result.returncode:
            raise AssertionError(
                f"airflow {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
            )
        return result

    def run_dag(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the DAG once with ``airflow dags test``; return the upsert step's summary."""
        before = set(self.storage.glob(f"{dag_id}/*/summary.json"))
        args = ["dags", "test", dag_id] + (["-c", json.dumps(conf)] if conf else [])
        result = self.airflow(*args)
        self.last_output = result.stdout + result.stderr
        new = set(self.storage.glob(f"{dag_id}/*/summary.json")) - before
        assert len(new) == 1, f"expected one new summary, found {new}"
        return json.loads(new.pop().read_text())


@pytest.fixture
def airflow_env(tmp_path: Path, airflow_db: Path, stripe_url: str) -> AirflowEnv:
    return AirflowEnv(tmp_path, airflow_db, stripe_url)


@pytest.fixture
def write_spec(airflow_env: AirflowEnv) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        path = airflow_env.pipelines / name
        path.write_text(text)
        return path

    return write
