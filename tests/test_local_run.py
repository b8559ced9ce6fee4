"""``preview`` and ``plan`` from the command line, on a real SQLite warehouse and localstripe."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from krenalis_airflow.__main__ import main
from krenalis_airflow.core.sample_data import write_sqlite_warehouse

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "warehouse.sqlite"
    write_sqlite_warehouse(path, profiles=120)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def test_preview_shows_the_sql_and_profiles_beside_their_output(warehouse, capsys) -> None:
    assert main(["preview", str(SAMPLE), "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('SQL: SELECT * FROM "customer_profiles" AS src WHERE')
    assert "5 profile(s) shown" in out
    assert sum(line.startswith("profile_id: 'p") for line in out.splitlines()) == 5
    assert "→ name: '" in out or "→ REJECTED" in out


def test_plan_reports_without_writing_anything(warehouse, stripe_conn_env, stripe_client, capsys) -> None:
    stripe_client.v1.customers.create(params={"email": "someone.else@example.com"})
    assert main(["plan", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    would_create = int(next(line.split()[2] for line in out.splitlines() if "would create" in line))
    assert would_create > 10
    assert "e.g. create:" in out
    assert [c.email for c in stripe_client.v1.customers.list(params={"limit": 100}).data] == [
        "someone.else@example.com"
    ]
    with sqlite3.connect(warehouse) as db:  # a dry run does not even create the ledger table
        assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'krenalis_ledger'").fetchall()


def test_plan_with_a_broken_spec_says_what_is_wrong(tmp_path, capsys) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(SAMPLE.read_text().replace("mode: create_and_update", "mode: upsert"))
    assert main(["plan", str(spec)]) == 1
    assert "export.mode" in capsys.readouterr().err


def test_preview_runs_a_python_transformation(warehouse, tmp_path, capsys) -> None:
    text = SAMPLE.read_text()
    spec = tmp_path / "py.yaml"
    spec.write_text(
        text[: text.index("transformation:")]
        + "transformation:\n"
        + "  inputs: [first_name, last_name, plan]\n"
        + "  python: |\n"
        + "    def transform(profile):\n"
        + "        if profile['plan'] == 'enterprise':\n"
        + "            raise ValueError('no enterprise here')\n"
        + "        return {'name': profile['first_name'].upper(), 'metadata.plan': profile['plan']}\n"
    )
    assert main(["preview", str(spec), "--limit", "30"]) == 0
    out = capsys.readouterr().out
    names = re.findall(r"→ name: '([^']*)'", out)
    assert names and all(name == name.upper() for name in names)
    assert re.search(r"metadata\.plan: '(starter|pro)'", out)
    read = {line.split(":")[0] for line in out.splitlines() if re.match(r"^[a-z_]+: ", line)}
    assert read == {"profile_id", "email", "updated_at", "first_name", "last_name", "plan"}  # inputs only
    assert "REJECTED (transformation error): ValueError: no enterprise here (line 3)" in out


def test_preview_runs_a_javascript_transformation_and_contains_a_runaway(warehouse, tmp_path, capsys) -> None:
    text = SAMPLE.read_text()
    spec = tmp_path / "js.yaml"
    spec.write_text(
        text[: text.index("transformation:")]
        + "transformation:\n"
        + "  timeout: 0.5\n"
        + "  javascript: |\n"
        + "    function transform(profile) {\n"
        + "      if (profile.plan === 'enterprise') { while (true) {} }\n"
        + "      return {name: profile.first_name + ' ' + profile.last_name, 'metadata.plan': profile.plan};\n"
        + "    }\n"
    )
    assert main(["preview", str(spec), "--limit", "25"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"→ name: '[^']+ [^']+'", out)
    assert "REJECTED (transformation error): timed out after 0.5 s" in out


def test_es6_javascript_is_a_spec_error(tmp_path, capsys) -> None:
    text = SAMPLE.read_text()
    spec = tmp_path / "es6.yaml"
    spec.write_text(
        text[: text.index("transformation:")]
        + "transformation:\n  javascript: |\n    const transform = (p) => ({name: `${p.first_name}`});\n"
    )
    assert main(["validate", str(spec)]) == 1
    out = capsys.readouterr().out
    assert "transformation.javascript" in out and "ES6" in out
