"""Shards through Airflow's own parsing: a DagBag over a DAGs folder holding two shards' DAG files,
as ``krenalis-airflow init --shard`` writes them, with a small ``dagbag_import_timeout``.

One shard holds more specs than its DAG files can parse within the timeout; Airflow then drops
every DAG of that file, and only of that file: the other shard's DAGs are all there, and a
pipeline id in both shards is reported in each under a DAG id of its own, never defined by two
files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from krenalis_airflow.dag_files import init_dags_folder

pytestmark = pytest.mark.slow  # two Airflow imports in a subprocess, and a 3 s timeout

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 3  # seconds: [core] dagbag_import_timeout for every file

SPEC = """\
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
export:
  matching: {property: email, stripe: email}
transformation:
  mapping: {name: first_name}
"""
# Specs in the slow shard, each with a mapping expression of its own (the check of an expression
# is cached, so identical specs would parse several times faster): ~0.5 ms each for the check file
# here, so ~10 s for either file, well past the timeout even on a machine three times faster (the
# parse stops at the timeout, so the test does not wait for it).
TOO_MANY = 20_000

PROBE = """\
import json, sys
from airflow.dag_processing.dagbag import BundleDagBag
folder = sys.argv[1]
bag = BundleDagBag(dag_folder=folder, bundle_path=folder, bundle_name="shards", load_op_links=False)
print(json.dumps({
    "dags": {dag_id: dag.fileloc.rsplit("/", 1)[-1] for dag_id, dag in bag.dags.items()},
    "errors": {path.rsplit("/", 1)[-1]: text for path, text in bag.import_errors.items()},
}))
"""


def parse(dags: Path, home: Path) -> dict[str, dict[str, str]]:
    """Every DAG file of ``dags``, as one DagBag: dag_id → file, and file → import error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KRENALIS"))}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": str(TIMEOUT),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(dags)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_shard_past_the_import_timeout_takes_no_other_shards_dags_with_it(tmp_path: Path) -> None:
    dags, home = tmp_path / "dags", tmp_path / "home"
    dags.mkdir()
    home.mkdir()
    for shard in ("eu", "us"):
        init_dags_folder(dags, shard=shard)
    eu, us = dags / "pipelines" / "eu", dags / "pipelines" / "us"
    for name in ("eu_people", "eu_leads", "everywhere"):
        (eu / f"{name}.yaml").write_text(SPEC)
    (eu / "eu_typo.yaml").write_text(SPEC.replace("key:", "kee:"))
    (us / "everywhere.yaml").write_text(SPEC)

    fine = parse(dags, home)
    assert fine["dags"] == {
        "eu_people": "krenalis_pipelines_eu.py",
        "eu_leads": "krenalis_pipelines_eu.py",
        "eu_typo": "krenalis_pipelines_eu.py",  # a broken spec's placeholder
        "krenalis_broken_eu_everywhere": "krenalis_pipelines_eu.py",  # one id, two shards:
        "krenalis_broken_us_everywhere": "krenalis_pipelines_us.py",  # reported in each
    }
    assert set(fine["errors"]) == {"krenalis_spec_check_eu.py", "krenalis_spec_check_us.py"}
    assert "eu_typo.yaml:1: source.kee: unknown key" in fine["errors"]["krenalis_spec_check_eu.py"]
    assert f"is also the id of {eu / 'everywhere.yaml'}" in fine["errors"]["krenalis_spec_check_us.py"]

    (us / "everywhere.yaml").unlink()
    (us / "us_people.yaml").write_text(SPEC)
    for number in range(TOO_MANY):
        mapping = f"{{name: first_name ~ ' {number}'}}"
        (us / f"us_bulk_{number}.yaml").write_text(SPEC.replace("{name: first_name}", mapping))

    slow = parse(dags, home)
    assert slow["dags"] == {
        "eu_people": "krenalis_pipelines_eu.py",
        "eu_leads": "krenalis_pipelines_eu.py",
        "eu_typo": "krenalis_pipelines_eu.py",
        "everywhere": "krenalis_pipelines_eu.py",  # in one shard only now: it runs
    }
    assert set(slow["errors"]) == {
        "krenalis_spec_check_eu.py",
        "krenalis_pipelines_us.py",
        "krenalis_spec_check_us.py",
    }
    for name in ("krenalis_pipelines_us.py", "krenalis_spec_check_us.py"):
        assert f"DagBag import timeout for {dags / name} after {TIMEOUT}" in slow["errors"][name]
