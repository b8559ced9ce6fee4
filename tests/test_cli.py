"""The command line: ``validate``, ``sample-warehouse`` and ``init``."""

from __future__ import annotations

import json
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
    spec = tmp_path / "good_one.yaml"
    spec.write_text(good(), encoding="utf-8")
    assert run(capsys, "validate", spec) == (0, [f"OK {spec} (good_one)"])


def test_validate_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad_one.yaml"
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
    (tmp_path / "first.yaml").write_text(good("first"), encoding="utf-8")
    (tmp_path / "bad_one.yml").write_text(BAD, encoding="utf-8")
    (tmp_path / "c.yaml").write_text(good("first"), encoding="utf-8")  # a copy still saying id: first
    (tmp_path / "second.yaml").write_text(good("second"), encoding="utf-8")
    (tmp_path / "README.md").write_text("not a spec", encoding="utf-8")
    status, lines = run(capsys, "validate", tmp_path)
    assert status == 1
    assert lines == [
        f"{tmp_path / 'bad_one.yml'}:2: source: give exactly one of 'table' (a table name) or 'query' (a SELECT)",
        f"{tmp_path / 'c.yaml'}:1: id: id 'first' differs from the file name 'c.yaml', which is the pipeline "
        "id: remove the id line (the pipeline is then 'c') or rename the file to first.yaml",
        f"OK {tmp_path / 'first.yaml'} (first)",
        f"OK {tmp_path / 'second.yaml'} (second)",
    ]


def test_validate_good_folder_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "first.yaml").write_text(good("first"), encoding="utf-8")
    (tmp_path / "second.yaml").write_text(good("second"), encoding="utf-8")
    status, lines = run(capsys, "validate", tmp_path)
    assert status == 0
    assert lines == [f"OK {tmp_path / 'first.yaml'} (first)", f"OK {tmp_path / 'second.yaml'} (second)"]


def test_validate_several_paths_checks_ids_across_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = tmp_path / "a" / "same.yaml", tmp_path / "b" / "same.yaml"
    one.write_text(good("same"), encoding="utf-8")
    two.write_text(good("same"), encoding="utf-8")
    status, lines = run(capsys, "validate", one, two, one)  # a path given twice is checked once
    assert status == 1
    clash = "no spec with that id runs until only one is left: rename or remove all but one of these files"
    assert lines == [
        f"{one}:1: id: pipeline id 'same' (the file name) is also the id of {two}; {clash}",
        f"{two}:1: id: pipeline id 'same' (the file name) is also the id of {one}; {clash}",
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
    spec = tmp_path / "good_one.yaml"
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


# --------------------------------------------------------------------------------------------
# init: the DAGs folder of a deployment from the installed package alone

DAG_FILE_NAMES = ["krenalis_pipelines.py", "krenalis_spec_check.py"]


def test_repo_dag_files_are_what_init_writes() -> None:
    from krenalis_airflow.dag_files import DAG_FILES

    repo = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "dags").glob("*.py")}
    assert repo == DAG_FILES, "dags/*.py must be exactly krenalis_airflow.dag_files.DAG_FILES"
    for text in DAG_FILES.values():  # Airflow's DAG discovery safe mode skips files without both words
        assert "airflow" in text.lower() and "dag" in text.lower()
        imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
        assert len(imports) == 1 and imports[0].startswith("from krenalis_airflow.dag_factory import ")


def test_init_writes_the_dag_files_and_a_disabled_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KRENALIS_PIPELINES_DIR", raising=False)
    status, lines = run(capsys, "init", tmp_path)
    assert status == 0
    sample = tmp_path / "pipelines" / "sample_customers.yaml"
    assert lines[:3] == [
        f"Wrote {tmp_path / 'krenalis_pipelines.py'}",
        f"Wrote {tmp_path / 'krenalis_spec_check.py'}",
        f"Wrote {sample} (a sample pipeline, disabled)",
    ]
    assert "Next steps:" in lines and any(
        f"krenalis-airflow validate {tmp_path / 'pipelines'}/" in x for x in lines
    )
    assert "KRENALIS_PIPELINES_DIR" in "\n".join(lines)
    for name in DAG_FILE_NAMES:
        assert (tmp_path / name).read_text(encoding="utf-8") == (ROOT / "dags" / name).read_text(
            encoding="utf-8"
        )
    # The sample as shipped, but disabled: a new deployment has no `warehouse` connection yet.
    original = (PIPELINES / "sample_customers.yaml").read_text(encoding="utf-8").splitlines()
    written = sample.read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(original, written, strict=True) if a != b]
    assert (
        len(changed) == 1 and changed[0][0] == "enabled: true" and changed[0][1].startswith("enabled: false")
    )
    assert load_spec(sample).enabled is False


def test_init_twice_leaves_everything_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", tmp_path)[0] == 0
    (tmp_path / "pipelines" / "sample_customers.yaml").write_text("# mine\n", encoding="utf-8")
    status, lines = run(capsys, "init", tmp_path)
    assert status == 0
    assert lines[:3] == [
        f"Unchanged {tmp_path / 'krenalis_pipelines.py'} (already up to date)",
        f"Unchanged {tmp_path / 'krenalis_spec_check.py'} (already up to date)",
        f"Kept {tmp_path / 'pipelines'}/ (existing pipeline specs are never touched)",
    ]
    assert (tmp_path / "pipelines" / "sample_customers.yaml").read_text(encoding="utf-8") == "# mine\n"


def test_init_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "krenalis_spec_check.py"
    mine.write_text("# my own DAG file\n", encoding="utf-8")
    status = main(["init", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err == (
        f"krenalis-airflow init: {mine}: already exists and differs from what init writes; nothing was "
        "written. Rerun with --force to replace the DAG files (pipeline specs are never touched).\n"
    )
    assert mine.read_text(encoding="utf-8") == "# my own DAG file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["krenalis_spec_check.py"]  # nothing written


def test_init_force_replaces_dag_files_but_never_specs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in DAG_FILE_NAMES:
        (tmp_path / name).write_text("# stale\n", encoding="utf-8")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "mine.yaml").write_text(good(), encoding="utf-8")
    status, lines = run(capsys, "init", tmp_path, "--force")
    assert status == 0
    assert lines[:3] == [
        f"Wrote {tmp_path / 'krenalis_pipelines.py'}",
        f"Wrote {tmp_path / 'krenalis_spec_check.py'}",
        f"Kept {tmp_path / 'pipelines'}/ (existing pipeline specs are never touched)",
    ]
    for name in DAG_FILE_NAMES:
        assert (tmp_path / name).read_text(encoding="utf-8") == (ROOT / "dags" / name).read_text(
            encoding="utf-8"
        )
    assert [p.name for p in (tmp_path / "pipelines").iterdir()] == ["mine.yaml"]


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("missing", "{dags}: no such folder. Create it, or give Airflow's DAGs folder"),
        ("file", "{dags}: not a folder; give Airflow's DAGs folder."),
        ("pipelines-file", "{dags}/pipelines: exists and is not a folder; nothing was written."),
        ("dag-file-dir", "{dags}/krenalis_pipelines.py: a folder is in the way of the DAG file"),
        ("not-writable", "{dags}: not writable by this user; nothing was written."),
    ],
)
def test_init_expected_failures_are_one_message_and_exit_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    setup: str,
    expected: str,
) -> None:
    dags = tmp_path / "dags"
    if setup == "file":
        dags.write_text("", encoding="utf-8")
    elif setup != "missing":
        dags.mkdir()
    if setup == "pipelines-file":
        (dags / "pipelines").write_text("", encoding="utf-8")
    if setup == "dag-file-dir":
        (dags / "krenalis_pipelines.py").mkdir()
    if setup == "not-writable":  # chmod does not stop root, who may run the tests
        monkeypatch.setattr("krenalis_airflow.dag_files.os.access", lambda *_: False)
    status = main(["init", str(dags)])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.startswith("krenalis-airflow init: " + expected.format(dags=dags)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert setup != "missing" or not dags.exists()
    if dags.is_dir():
        assert not (dags / "krenalis_spec_check.py").exists()


def test_init_reports_a_failed_write_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    status = main(["init", str(tmp_path)])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert (
        err
        == f"krenalis-airflow init: {tmp_path / 'krenalis_pipelines.py'}: cannot write: Permission denied\n"
    )


def test_written_dag_files_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Airflow sees in the folder init wrote: the sample's DAG (paused), then a broken spec."""
    import runpy

    from krenalis_airflow.exceptions import BrokenPipelineSpecs

    monkeypatch.delenv("KRENALIS_PIPELINES_DIR", raising=False)
    assert main(["init", str(tmp_path)]) == 0
    namespace = runpy.run_path(str(tmp_path / "krenalis_pipelines.py"))
    dag = namespace["sample_customers"]
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "transform", "dedupe", "upsert"]
    assert dag.schedule is None and "disabled" in dag.tags  # written disabled …
    assert dag.is_paused_upon_creation is False  # … but not paused: `enabled: true` is all it takes
    runpy.run_path(str(tmp_path / "krenalis_spec_check.py"))  # no broken spec: no import error

    (tmp_path / "pipelines" / "broken.yaml").write_text(BAD, encoding="utf-8")
    namespace = runpy.run_path(str(tmp_path / "krenalis_pipelines.py"))  # never raises
    assert "sample_customers" in namespace and "broken" in namespace  # the file name is the id
    with pytest.raises(BrokenPipelineSpecs, match=r"1 pipeline spec in .*pipelines cannot run"):
        runpy.run_path(str(tmp_path / "krenalis_spec_check.py"))


def test_init_runs_without_airflow(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from krenalis_airflow.__main__ import main\n"
        f"status = main(['init', {str(tmp_path)!r}])\n"
        "assert not [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')], 'airflow imported'\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pipelines" / "sample_customers.yaml").is_file()


# --------------------------------------------------------------------------------------------
# validate --connect: the columns each spec names, against its source (connections from Airflow)


def test_validate_connect_checks_each_spec_against_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = tmp_path / "warehouse.sqlite"
    assert run(capsys, "sample-warehouse", warehouse, "--profiles", "10")[0] == 0
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "first.yaml").write_text(good("first"), encoding="utf-8")
    (folder / "second.yaml").write_text(
        good("second").replace("property: email", "property: lifetime_value").replace("first_name", "fname"),
        encoding="utf-8",
    )
    assert run(capsys, "validate", folder) == (
        0,
        [f"OK {folder / 'first.yaml'} (first)", f"OK {folder / 'second.yaml'} (second)"],
    )
    status, lines = run(capsys, "validate", "--connect", folder)
    assert status == 1
    second = folder / "second.yaml"
    assert lines == [
        f"OK {folder / 'first.yaml'} (first)",
        f"{second}:4: export.matching.property: column lifetime_value is numeric; the matching property must "
        "be a text, integer or UUID column: decimal and floating-point values have several spellings "
        "(1, 1.0, 1.00) and do not compare exactly; match on an integer or text column, or CAST it to "
        "one in source.query",
        f"{second}:7: transformation.mapping.name: no column 'fname' in the source; did you mean "
        "'first_name'?; available columns: profile_id, email, first_name, last_name, phone, country, "
        "city, postal_code, plan, lifetime_value, vip, updated_at",
    ]


def test_validate_connect_without_the_connection_says_which_env_var_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    spec = tmp_path / "first.yaml"
    spec.write_text(good("first"), encoding="utf-8")
    status = main(["validate", "--connect", str(spec)])
    out, err = capsys.readouterr()
    assert (status, err) == (1, "")
    assert out.startswith(
        f"{spec}:2: source.conn_id: Airflow has no connection 'warehouse'; define it (airflow connections "
        "add warehouse …), or for this shell: export AIRFLOW_CONN_WAREHOUSE="
    )
    assert out.count("\n") == 1
