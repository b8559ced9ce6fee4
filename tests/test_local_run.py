"""``preview`` and ``plan`` from the command line, on a real SQLite warehouse and localstripe."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from krenalis_airflow.__main__ import main
from krenalis_airflow.core.sample_data import write_sqlite_warehouse

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"


def line(fragment: str, path: Path = SAMPLE) -> int:
    """The number of the first line of ``path`` holding ``fragment``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, text in enumerate(lines, 1) if fragment in text)


COLUMNS = (
    "profile_id, email, first_name, last_name, phone, country, city, postal_code, plan, "
    "lifetime_value, vip, updated_at"
)


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


# --------------------------------------------------------------------------------------------
# Expected failures: one message and exit status 1, never a traceback; the plan's summary always


def failed(command: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run the command, which must fail with one message on stderr; its (stdout, message)."""
    assert main(command) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1, err
    return out, err.rstrip("\n")


def test_a_connection_that_is_not_defined_names_the_env_var(monkeypatch, capsys) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    _, message = failed(["preview", str(SAMPLE)], capsys)
    assert message.startswith(
        f"krenalis-airflow preview: {SAMPLE}:{line('conn_id: warehouse')}: source.conn_id: Airflow has no connection 'warehouse'; "
        "define it (airflow connections add warehouse …), or for this shell: export AIRFLOW_CONN_WAREHOUSE="
        '\'{"conn_type": "sqlite", "host": "/path/to/warehouse.sqlite"}\''
    )


def test_plan_names_the_missing_stripe_connection(warehouse, monkeypatch, capsys) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_STRIPE_DEFAULT", raising=False)
    out, message = failed(["plan", str(SAMPLE)], capsys)
    assert out == ""  # checked before anything runs
    assert message.startswith(
        f"krenalis-airflow plan: {SAMPLE}:{line('conn_id: stripe_default')}: destination.conn_id: Airflow has no connection "
        "'stripe_default'; define it (airflow connections add stripe_default …), or for this shell: "
        'export AIRFLOW_CONN_STRIPE_DEFAULT=\'{"conn_type": "stripe", "password": "sk_test_…"}\''
    )


def cli(*args: str | Path, unset: str = "") -> tuple[int, str, str]:
    """The command in a process of its own, as a person runs it: (status, stdout, stderr).
    (In this process, loggers an earlier test configured may write to a stream pytest closed.)"""
    env = {name: value for name, value in os.environ.items() if not (unset and name.startswith(unset))}
    done = subprocess.run(
        [sys.executable, "-m", "krenalis_airflow", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_a_missing_connection_from_a_real_process_has_no_traceback() -> None:
    status, _, err = cli("plan", SAMPLE, unset="AIRFLOW_CONN_")
    assert status == 1 and "Traceback" not in err
    assert "source.conn_id: Airflow has no connection 'warehouse'" in err
    assert "export AIRFLOW_CONN_WAREHOUSE=" in err


@pytest.mark.parametrize(
    ("connection", "says"),
    [
        ({"conn_type": "sqlite", "host": "/no/such/folder/w.sqlite"}, "OperationalError: unable to open"),
        (
            {"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "schema": "test", "login": "postgres"},
            "OperationalError: connection",
        ),
    ],
    ids=["sqlite", "postgres"],
)
def test_a_warehouse_out_of_reach_is_one_message(connection, says, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(connection))
    for command in (["preview", str(SAMPLE)], ["validate", "--connect", str(SAMPLE)]):
        _, message = failed(command, capsys) if command[0] == "preview" else validated(command, capsys)
        assert (
            f"{SAMPLE}:{line('conn_id: warehouse')}: source.conn_id: cannot read through connection 'warehouse': {says}"
            in message
        )
        assert "check that the connection reaches the right database" in message


def validated(command: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """``validate`` reports on stdout, one line per problem."""
    assert main(command) == 1
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 1, out
    return "", out.rstrip("\n")


def test_a_missing_table_is_one_message(warehouse, tmp_path, capsys) -> None:
    spec = tmp_path / "sample_customers.yaml"
    spec.write_text(SAMPLE.read_text().replace("table: customer_profiles", "table: customers"))
    _, message = failed(["preview", str(spec)], capsys)
    assert (
        "source.conn_id: cannot read through connection 'warehouse': OperationalError: no such table"
        in message
    )


def test_a_broken_spec_is_one_message_with_its_line(tmp_path, capsys) -> None:
    spec = tmp_path / "sample_customers.yaml"
    spec.write_text(SAMPLE.read_text().replace("mode: create_and_update", "mode: upsert"))
    assert main(["plan", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("krenalis-airflow plan: invalid pipeline spec\n")
    assert f"{spec}:{line('mode: upsert', spec)}: export.mode: " in err


def test_a_column_the_source_lacks_fails_before_a_row_is_read(warehouse, tmp_path, capsys) -> None:
    spec = tmp_path / "sample_customers.yaml"
    spec.write_text(SAMPLE.read_text().replace("property: email", "property: lifetime_value"))
    assert main(["preview", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert (
        f"{spec}:{line('  property: lifetime_value', spec)}: export.matching.property: column lifetime_value is numeric;"
        in err
    )


def test_a_key_stripe_rejects_is_one_message(warehouse, stripe_url, monkeypatch) -> None:
    conn = {"conn_type": "stripe", "password": "rk_test_revoked", "host": stripe_url}
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(conn))
    status, out, err = cli("plan", SAMPLE)
    assert status == 1 and "Traceback" not in err and "SQL:" not in out
    assert err.startswith("krenalis-airflow plan: Stripe rejected the API key (401)")
    assert err.count("\n") == 1


def test_plan_past_max_rejected_prints_the_summary_then_why(warehouse, stripe_conn_env, tmp_path) -> None:
    with sqlite3.connect(warehouse) as db:  # Italian profiles without an email: rejected
        db.execute("UPDATE customer_profiles SET email = NULL WHERE country = 'IT'")
    spec = tmp_path / "sample_customers.yaml"
    spec.write_text(
        SAMPLE.read_text().replace(
            "duplicate_customers: reject", "duplicate_customers: reject\n  max_rejected: 2"
        )
    )
    status, out, err = cli("plan", spec)
    assert status == 1 and "Traceback" not in err and err.count("\n") == 1, err
    message = err.rstrip("\n")
    rejected = int(next(line.split()[1] for line in out.splitlines() if line.lstrip().startswith("rejected")))
    assert rejected > 2
    assert "would create" in out and "e.g. rejected" in out and "'email' is empty" in out
    assert re.fullmatch(
        rf"krenalis-airflow plan: {re.escape(str(spec))}:{line('max_rejected: 2', spec)}: export.max_rejected: a sync would fail: "
        rf"{rejected} rejected \+ 0 failed profiles exceed export.max_rejected \(2 for \d+ extracted\)"
        r"(; skipped profiles \(\d+\) do not count)?"
        r"; fix the rejected profiles' data \(samples above\) or raise export.max_rejected",
        message,
    )
    assert "krenalis-sample_customers-" not in err  # names no temporary file (gone by now)


def test_validate_connect_checks_the_columns(warehouse, tmp_path, capsys) -> None:
    assert main(["validate", "--connect", str(SAMPLE)]) == 0
    assert capsys.readouterr().out == f"OK {SAMPLE} (sample_customers)\n"
    spec = tmp_path / "sample_customers.yaml"
    spec.write_text(
        SAMPLE.read_text()
        .replace("property: email", "property: traits.email")
        .replace("- {property: plan", "- {property: tier")
    )
    assert main(["validate", "--connect", str(spec)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{spec}:{line('property: tier', spec)}", "filter.conditions[1].property"],
        [f"{spec}:{line('property: traits.email', spec)}", "export.matching.property"],
    ]
    assert lines[0].endswith("no column 'tier' in the source; available columns: " + COLUMNS)
    assert "'traits.email' is a JSON path" in lines[1] and "json_extract(traits, '$.email')" in lines[1]
