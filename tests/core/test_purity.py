"""``krenalis_airflow.core`` never imports Airflow, checked in a clean interpreter.

Every module under the package is found with ``pkgutil``, so a new module is covered without
touching this test. The check runs in a subprocess because this test session may already have
imported Airflow (the operator and DAG tests do).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    def airflow_modules():
        return sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))

    package = importlib.import_module("krenalis_airflow.core")
    names = ["krenalis_airflow.core"] + [
        info.name for info in pkgutil.walk_packages(package.__path__, prefix="krenalis_airflow.core.")
    ] + sys.argv[1:]
    culprits = {}
    for name in names:
        before = set(airflow_modules())
        importlib.import_module(name)
        new = sorted(set(airflow_modules()) - before)
        if new:
            culprits[name] = new[:5]
    print(json.dumps({"modules": names, "culprits": culprits, "airflow": airflow_modules()[:20]}))
    """
)


def probe(*extra_modules: str, pythonpath: Path | None = None) -> dict[str, Any]:
    """Import every core module (then ``extra_modules``) in a fresh interpreter; report what it saw."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *extra_modules],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"importing the core failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_core_never_imports_airflow() -> None:
    result = probe()
    assert {"krenalis_airflow.core.spec", "krenalis_airflow.core.fields"} <= set(result["modules"])
    assert result["culprits"] == {}, f"these core modules import Airflow: {result['culprits']}"
    assert result["airflow"] == []


def test_every_core_module_is_probed() -> None:
    root = Path(__file__).resolve().parents[2] / "krenalis_airflow" / "core"
    on_disk = {
        "krenalis_airflow."
        + ".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in root.rglob("*.py")
    }
    assert on_disk <= set(probe()["modules"])


def test_the_probe_catches_an_airflow_import(tmp_path: Path) -> None:
    # A stand-in module that registers a fake "airflow.models" keeps this fast and Airflow-free.
    (tmp_path / "sneaky_core_module.py").write_text(
        "import sys, types\nsys.modules['airflow.models'] = types.ModuleType('airflow.models')\n",
        encoding="utf-8",
    )
    result = probe("sneaky_core_module", pythonpath=tmp_path)
    assert result["culprits"] == {"sneaky_core_module": ["airflow.models"]}
    assert result["airflow"] == ["airflow.models"]
