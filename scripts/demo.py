"""The quick start: a real sync on the embedded default, run twice through Airflow.

Builds a sample SQLite warehouse (~1,000 profiles), starts localstripe on loopback (no
persistence), migrates a throwaway Airflow metadata DB, runs the sample pipeline with
``airflow dags test`` twice and prints both summaries — the second one writes nothing.
Everything lives under ``.demo/`` and what it started is stopped at the end. ``.demo/env`` keeps
the demo's Airflow home and connections for the command line (``preview``, ``plan``)::

    set -a; . .demo/env; set +a; .venv/bin/krenalis-airflow plan dags/pipelines/sample_customers.yaml
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe  # noqa: E402

DEMO = ROOT / ".demo"
PIPELINE = "sample_customers"
BIN = Path(sys.executable).parent
ENV_FILE = DEMO / "env"  # the demo's Airflow home and connections, for the command line
PLAN_COMMAND = (
    "set -a; . .demo/env; set +a; .venv/bin/krenalis-airflow preview dags/pipelines/sample_customers.yaml "
    "--limit 3 && .venv/bin/krenalis-airflow plan dags/pipelines/sample_customers.yaml"
)


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    warehouse = DEMO / "warehouse.sqlite"
    run([BIN / "python", "-m", "krenalis_airflow", "sample-warehouse", str(warehouse), "--profiles", "1000"])
    env = airflow_env(warehouse)
    print("Migrating a throwaway Airflow metadata DB in .demo/airflow …", flush=True)
    run([BIN / "airflow", "db", "migrate"], env=env, quiet=True)
    with LocalStripe(quiet=True) as stripe_server:
        env["AIRFLOW_CONN_STRIPE_DEFAULT"] = json.dumps(
            {"conn_type": "stripe", "password": STRIPE_TEST_KEY, "host": stripe_server.url}
        )
        print(f"localstripe listening on {stripe_server.url}", flush=True)
        write_env_file(env, stripe_server.url)
        summaries = []
        for attempt in (1, 2):
            print(f"\n=== Run {attempt}: airflow dags test {PIPELINE} ===", flush=True)
            run(
                [BIN / "airflow", "dags", "test", PIPELINE],
                env=env,
                quiet=True,
                log=DEMO / f"run{attempt}.log",
            )
            summaries.append(latest_summary())
            print_summary(summaries[-1])
    second = summaries[1]
    writes = second["created"] + second["updated"]
    print(f"\nSecond run wrote {writes} customers ({second['unchanged']} unchanged).")
    print(f"Task logs: {DEMO}/run1.log, {DEMO}/run2.log")
    print(f"\nPreview and plan it yourself (connections in {ENV_FILE.relative_to(ROOT)}):\n  {PLAN_COMMAND}")
    return 0 if writes == 0 and summaries[0]["created"] > 0 else 1


def write_env_file(env: dict[str, str], stripe_url: str) -> None:
    """The demo's Airflow home and connections, as ``NAME='value'`` lines a shell can source.

    localstripe stops with the demo and keeps nothing, so the Stripe connection fails fast
    (no retries) when a command needs Stripe; ``plan`` answers from the ledger without it.
    """
    stripe = json.loads(env["AIRFLOW_CONN_STRIPE_DEFAULT"])
    stripe["extra"] = {"max_network_retries": 0, "timeout": 5}
    values = {
        "AIRFLOW_HOME": env["AIRFLOW_HOME"],
        "AIRFLOW_CONN_WAREHOUSE": env["AIRFLOW_CONN_WAREHOUSE"],
        "AIRFLOW_CONN_STRIPE_DEFAULT": json.dumps(stripe),
    }
    lines = [
        "# Written by `make demo`: its Airflow home and connections, for the command line:",
        f"#   {PLAN_COMMAND}",
        f"# localstripe ({stripe_url}) stopped with the demo and kept nothing: a plan reads the",
        "# ledger the demo's runs wrote; only a profile new to the ledger (or --full-resync) needs Stripe.",
        *(f"{name}={shlex.quote(value)}" for name, value in values.items()),
    ]
    ENV_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")


def airflow_env(warehouse: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(DEMO / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "KRENALIS_STORAGE_BASE": f"file://{DEMO}/storage",
            "AIRFLOW_CONN_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def run(
    cmd: list[str | Path], *, env: dict[str, str] | None = None, quiet: bool = False, log: Path | None = None
) -> None:
    target = open(log, "w") if log else (subprocess.DEVNULL if quiet else None)  # noqa: SIM115
    try:
        result = subprocess.run(
            [str(c) for c in cmd], env=env, stdout=target, stderr=subprocess.STDOUT, check=False
        )
    finally:
        if log:
            target.close()  # type: ignore[union-attr]
    if result.returncode:
        where = f"; see {log}" if log else ""
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(map(str, cmd))}{where}")


def latest_summary() -> dict:
    summaries = sorted((DEMO / "storage" / PIPELINE).glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not summaries:
        raise SystemExit("the run left no summary.json; see the run log")
    return json.loads(summaries[-1].read_text())


def print_summary(s: dict) -> None:
    rows = [
        ("extracted", f"{s['extracted']} (filtered out {s['filtered_out']})"),
        ("transformed", s["transformed"]),
        ("rejected", f"{s['rejected_total']} {s['rejected'] or ''}"),
        ("duplicates", s["duplicates"]),
        ("skipped", f"{s.get('skipped_total', 0)} {s.get('skipped') or ''}"),
        ("created", s["created"]),
        ("updated", s["updated"]),
        ("unchanged", s["unchanged"]),
        ("failed", s["failed"]),
        ("Stripe API calls", f"{sum(s['api_calls'].values())} {s['api_calls']}"),
    ]
    for name, value in rows:
        print(f"  {name:<17} {value}")


if __name__ == "__main__":
    sys.exit(main())
