"""The command line: ``validate`` and ``sample-warehouse``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from krenalis_airflow.__main__ import main
from krenalis_airflow.core.filters import compile_filter
from krenalis_airflow.core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "dags" / "pipelines"

GOOD = """\
id: {id}
source: {{conn_id: warehouse, table: customer_profiles, key: profile_id}}
export:
  matching: {{property: email, stripe: email}}
transformation:
  mapping:
    name: first_name
"""


def good(pipeline_id: str = "good_one") -> str:
    return GOOD.format(id=pipeline_id)


BAD = good("bad_one").replace("table: customer_profiles", "table: customer_profiles, query: SELECT 1")


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, list[str]]:
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().out.splitlines()


# --------------------------------------------------------------------------------------------
# validate


def test_validate_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "good.yaml"
    spec.write_text(good(), encoding="utf-8")
    assert run(capsys, "validate", spec) == (0, [f"OK {spec} (good_one)"])


def test_validate_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD, encoding="utf-8")
    status, lines = run(capsys, "validate", spec)
    assert status == 1
    assert lines == [f"{spec}:2: source: give exactly one of 'table' (a table name) or 'query' (a SELECT)"]


def test_validate_lists_every_problem_of_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(BAD.replace("id: bad_one", "id: Bad-One").replace("name:", "nome:"), encoding="utf-8")
    status, lines = run(capsys, "validate", spec)
    assert status == 1
    assert sorted(line.split(": ")[0] for line in lines) == [f"{spec}:1", f"{spec}:2", f"{spec}:7"]
    assert any(line.startswith(f"{spec}:7: transformation.mapping.nome: unknown Stripe") for line in lines)


def test_validate_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(good("first"), encoding="utf-8")
    (tmp_path / "b.yml").write_text(BAD, encoding="utf-8")
    (tmp_path / "c.yaml").write_text(good("first"), encoding="utf-8")
    (tmp_path / "d.yaml").write_text(good("second"), encoding="utf-8")
    (tmp_path / "README.md").write_text("not a spec", encoding="utf-8")
    status, lines = run(capsys, "validate", tmp_path)
    assert status == 1
    assert lines == [
        f"OK {tmp_path / 'a.yaml'} (first)",
        f"{tmp_path / 'b.yml'}:2: source: give exactly one of 'table' (a table name) or 'query' (a SELECT)",
        f"{tmp_path / 'c.yaml'}:1: id: pipeline id 'first' is already used by a.yaml; ids must be unique",
        f"OK {tmp_path / 'd.yaml'} (second)",
    ]


def test_validate_good_folder_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(good("first"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(good("second"), encoding="utf-8")
    status, lines = run(capsys, "validate", tmp_path)
    assert status == 0
    assert lines == [f"OK {tmp_path / 'a.yaml'} (first)", f"OK {tmp_path / 'b.yaml'} (second)"]


def test_validate_several_paths_checks_ids_across_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(good("same"), encoding="utf-8")
    two.write_text(good("same"), encoding="utf-8")
    status, lines = run(capsys, "validate", one, two, one)  # a path given twice is checked once
    assert status == 1
    assert lines == [
        f"OK {one} (same)",
        f"{two}:1: id: pipeline id 'same' is already used by {one}; ids must be unique",
    ]


def test_validate_empty_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run(capsys, "validate", tmp_path)
    assert status == 1
    assert lines == [f"{tmp_path}: no *.yaml or *.yml pipeline specs in this folder"]


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    status, lines = run(capsys, "validate", missing)
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith(f"{missing}: cannot read the file")


def test_validate_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("id: x\nsource: {conn_id: w\n", encoding="utf-8")
    status, lines = run(capsys, "validate", spec)
    assert status == 1
    assert lines[0].startswith(f"{spec}:") and "not valid YAML" in lines[0]


def test_validate_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate"])
    assert exited.value.code == 2
    assert "PATH" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2


def test_validate_runs_as_a_module_without_airflow(tmp_path: Path) -> None:
    spec = tmp_path / "good.yaml"
    spec.write_text(good(), encoding="utf-8")
    probe = (
        "import sys\n"
        "from krenalis_airflow.__main__ import main\n"
        f"status = main(['validate', {str(spec)!r}])\n"
        "assert not [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')], 'airflow imported'\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"OK {spec} (good_one)\n", "")
    module = subprocess.run(
        [sys.executable, "-m", "krenalis_airflow", "validate", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (module.returncode, module.stdout) == (0, f"OK {spec} (good_one)\n")


# --------------------------------------------------------------------------------------------
# The shipped sample pipeline


def test_shipped_pipelines_validate(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run(capsys, "validate", PIPELINES)
    assert status == 0, lines
    assert f"OK {PIPELINES / 'sample_customers.yaml'} (sample_customers)" in lines


def test_sample_pipeline_selects_a_few_hundred_sample_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warehouse = tmp_path / "warehouse.sqlite"
    assert run(capsys, "sample-warehouse", warehouse)[0] == 0
    spec = load_spec(PIPELINES / "sample_customers.yaml")
    assert (spec.source.conn_id, spec.source.table, spec.source.key) == (
        "warehouse",
        "customer_profiles",
        "profile_id",
    )
    with closing(sqlite3.connect(warehouse)) as conn:
        columns = [d[0] for d in conn.execute("SELECT * FROM customer_profiles LIMIT 0").description]
        assert set(spec.transformation.mapping or {}).issuperset({"name", "phone", "address.country"})
        where, params = compile_filter(spec.filter, columns, "?")
        (selected,) = conn.execute(f"SELECT count(*) FROM customer_profiles WHERE {where}", params).fetchone()
    assert 150 <= selected <= 450, selected


# --------------------------------------------------------------------------------------------
# sample-warehouse


def test_sample_warehouse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.sqlite"
    status, lines = run(capsys, "sample-warehouse", path, "--profiles", "25", "--seed", "3")
    assert status == 0
    assert lines == [f"Wrote 25 customer profiles to {path} (table customer_profiles, seed 3)"]
    with closing(sqlite3.connect(path)) as conn:
        first = conn.execute("SELECT profile_id FROM customer_profiles ORDER BY profile_id").fetchall()
        assert len(first) == 25 and first[0] == ("p00001",)
        rows_seed_3 = conn.execute("SELECT * FROM customer_profiles ORDER BY profile_id").fetchall()
    run(capsys, "sample-warehouse", path, "--profiles", "25", "--seed", "4")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT * FROM customer_profiles ORDER BY profile_id").fetchall() != rows_seed_3


def test_sample_warehouse_default_is_1000_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = run(capsys, "sample-warehouse", tmp_path / "w.sqlite")
    assert status == 0 and lines[0].startswith("Wrote 1000 customer profiles")


@pytest.mark.parametrize("profiles", ["-5", "many"])
def test_sample_warehouse_rejects_bad_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profiles: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sample-warehouse", str(tmp_path / "w.sqlite"), "--profiles", profiles])
    assert exited.value.code == 2
    assert "--profiles" in capsys.readouterr().err
    assert not (tmp_path / "w.sqlite").exists()
