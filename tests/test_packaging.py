"""The wheel alone: what ``pip install krenalis-airflow`` gives a real deployment.

Builds a wheel from the sources, installs it into a clean virtualenv with a stock Airflow from the
package index (no extras, so no SQLite provider), writes a DAGs folder with ``krenalis-airflow
init`` and parses it with Airflow's ``DagBag``, as a dag-processor would: no import error, the
sample pipeline's DAG, a broken spec reported by ``krenalis_spec_check.py``, and the provider's
config section and registration.

The clean install is constrained to the versions of the environment running the tests (the tested
ones), which keeps it reproducible and lets pip serve them from its cache (~1 min when warm).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import pytest

from krenalis_airflow import __version__

ROOT = Path(__file__).resolve().parents[1]
# What building the wheel reads; copied so that the build leaves no build/ or egg-info in the tree.
BUILD_INPUTS = ["pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE"]
PACKAGE = "krenalis_airflow"

pytestmark = pytest.mark.slow

# Runs in the clean virtualenv: parse the DAGs folder, then again with a broken spec added.
PARSE = """\
import importlib.util, json, sys
from pathlib import Path

import krenalis_airflow
from airflow.dag_processing.dagbag import DagBag

dags = Path(sys.argv[1])

def parse():
    bag = DagBag(dag_folder=str(dags))
    return {
        "dags": {i: bag.dags[i].is_paused_upon_creation for i in bag.dag_ids},
        "errors": {Path(f).name: e for f, e in bag.import_errors.items()},
    }

clean = parse()
(dags / "pipelines" / "broken.yaml").write_text("id: broken\\nschedule: 7m\\n", encoding="utf-8")
print(json.dumps({
    "package": krenalis_airflow.__file__,
    "sqlite_provider": importlib.util.find_spec("airflow.providers.sqlite") is not None,
    "clean": clean,
    "broken": parse(),
}))
"""


def run(*args: str | Path, env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


def pinned_versions(path: Path) -> Path:
    """A pip constraints file pinning every distribution of the running environment but ours."""
    pins = {
        (dist.metadata["Name"] or "").lower(): dist.version for dist in importlib.metadata.distributions()
    }
    skip = {"", "krenalis-airflow", "pip", "setuptools", "wheel"}
    path.write_text(
        "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()) if name not in skip)
    )
    return path


def test_the_wheel_installed_alone_gives_a_working_dags_folder(tmp_path: Path) -> None:
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KRENALIS")) and k not in drop}
    env.update({"AIRFLOW_HOME": str(tmp_path / "home"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    sh = partial(run, env=env, cwd=tmp_path)  # never the repository: the package must come from the wheel

    source, wheels, venv = tmp_path / "source", tmp_path / "wheels", tmp_path / "venv"
    shutil.copytree(ROOT / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in BUILD_INPUTS:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, source)
    (wheel,) = wheels.glob("krenalis_airflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{PACKAGE}/sample_customers.yaml" in names and f"{PACKAGE}/spec.schema.json" in names
    assert f"{PACKAGE}/plugins/templates/list.html" in names  # the Stripe pipelines page
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)

    sh(sys.executable, "-m", "venv", venv)
    bin_ = venv / "bin"
    sh(bin_ / "pip", "install", "-q", "-c", pinned_versions(tmp_path / "constraints.txt"), wheel, timeout=900)

    dags = tmp_path / "dags"
    dags.mkdir()
    out = sh(bin_ / "krenalis-airflow", "init", dags)
    assert f"Wrote {dags / 'krenalis_pipelines.py'}" in out and "Next steps:" in out
    for name in ("krenalis_pipelines.py", "krenalis_spec_check.py"):  # what the repo's dags/ holds
        assert (dags / name).read_text(encoding="utf-8") == (ROOT / "dags" / name).read_text(encoding="utf-8")

    parsed = json.loads(sh(bin_ / "python", "-c", PARSE, dags).splitlines()[-1])
    assert Path(parsed["package"]).is_relative_to(venv), parsed["package"]
    assert parsed["sqlite_provider"] is False  # the sqlite extra is not needed to run the provider
    # the sample, written disabled: unscheduled, never paused by the spec (see plan_pipeline)
    assert parsed["clean"] == {"dags": {"sample_customers": False}, "errors": {}}
    broken = parsed["broken"]
    assert set(broken["dags"]) == {"sample_customers", "broken"}  # the broken spec hides nothing
    assert list(broken["errors"]) == ["krenalis_spec_check.py"]
    assert "broken.yaml" in broken["errors"]["krenalis_spec_check.py"]

    config = sh(bin_ / "airflow", "config", "list", "--section", "krenalis", "-d")
    assert "[krenalis]" in config and "storage_base" in config and "keep_files" in config
    assert "KRENALIS_STORAGE_BASE" in config  # the description is there
    # The "Stripe pipelines" page: registered by the wheel's entry point, no plugin file copied.
    plugins = {p["name"]: p for p in json.loads(sh(bin_ / "airflow", "plugins", "-o", "json"))}
    plugin = plugins["krenalis_stripe_pipelines"]
    assert (
        plugin["source"].startswith("krenalis-airflow==")
        and plugin["external_views"][0]["name"] == "Stripe pipelines"
    )
    providers = json.loads(sh(bin_ / "airflow", "providers", "list", "-o", "json"))
    assert {"package_name": "krenalis-airflow", "version": __version__} in [
        {key: p[key] for key in ("package_name", "version")} for p in providers
    ]
