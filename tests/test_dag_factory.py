"""The DAG factory in-process: what Airflow will see for good, disabled, broken and clashing specs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from krenalis_airflow.dag_factory import build_dags
from krenalis_airflow.operators.profile_export import ProfileExportOperator

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (ROOT / "dags" / "pipelines" / "sample_customers.yaml").read_text()
MINIMAL = """\
id: {id}
enabled: {enabled}
schedule: {schedule}
source: {{conn_id: warehouse, table: customer_profiles, key: profile_id}}
export:
  matching: {{property: email, stripe: email}}
transformation:
  mapping: {{name: first_name}}
"""


def spec(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


def test_one_dag_per_spec_with_steps_params_and_docs(tmp_path: Path) -> None:
    spec(tmp_path, "sample_customers.yaml", SAMPLE)
    dags = build_dags(tmp_path)
    dag = dags["sample_customers"]
    assert [t.task_id for t in dag.topological_sort()] == ["extract", "transform", "dedupe", "upsert"]
    assert all(isinstance(t, ProfileExportOperator) for t in dag.tasks)
    assert dag.get_task("upsert").upstream_task_ids == {"dedupe"}
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert {"krenalis", "stripe"} <= set(dag.tags)
    assert dag.schedule == timedelta(hours=1)
    assert dag.is_paused_upon_creation is False
    assert set(dag.params) == {"dry_run", "full_resync"}
    assert dag.params["dry_run"] is False
    assert "customer_profiles" in dag.doc_md and "`email`" in dag.doc_md and "first_name" in dag.doc_md


def test_disabled_spec_is_listed_paused_without_schedule(tmp_path: Path) -> None:
    spec(tmp_path, "off.yaml", MINIMAL.format(id="off_pipeline", enabled="false", schedule="15m"))
    dag = build_dags(tmp_path)["off_pipeline"]
    assert dag.is_paused_upon_creation is True
    assert dag.schedule is None


@pytest.mark.parametrize(
    "schedule, expected", [("'0 6 * * 1-5'", "0 6 * * 1-5"), ("'@daily'", "@daily"), ("null", None)]
)
def test_schedules(tmp_path: Path, schedule: str, expected: object) -> None:
    spec(tmp_path, "s.yaml", MINIMAL.format(id="scheduled", enabled="true", schedule=schedule))
    dag = build_dags(tmp_path)["scheduled"]
    assert dag.schedule == expected


def test_broken_and_clashing_specs_become_placeholders_and_hide_nothing(tmp_path: Path) -> None:
    spec(tmp_path, "a_good.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    spec(tmp_path, "b_broken.yaml", MINIMAL.format(id="broken", enabled="true", schedule="7m"))
    spec(tmp_path, "c_clash.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    spec(tmp_path, "d_garbage.yaml", "id: [unclosed\n")
    dags = build_dags(tmp_path)
    assert set(dags) == {"good", "broken", "krenalis_broken_c_clash", "krenalis_broken_d_garbage"}
    broken = dags["broken"]
    assert broken.is_paused_upon_creation is True and "broken-spec" in broken.tags
    assert "b_broken.yaml:3: schedule:" in broken.doc_md and "'7m' is not a schedule" in broken.doc_md
    assert [t.task_id for t in broken.tasks] == ["report_spec_error"]
    assert "already used by a_good.yaml" in dags["krenalis_broken_c_clash"].doc_md
    assert dags["good"].tasks[0].task_id == "extract"


def test_the_dag_file_uses_the_pipelines_dir_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    spec(tmp_path, "x.yaml", MINIMAL.format(id="from_env", enabled="true", schedule="null"))
    monkeypatch.setenv("KRENALIS_PIPELINES_DIR", str(tmp_path))
    namespace = runpy.run_path(str(ROOT / "dags" / "krenalis_pipelines.py"))
    assert "from_env" in namespace and "sample_customers" not in namespace


def test_check_specs_raises_for_broken_specs_only(tmp_path: Path) -> None:
    from krenalis_airflow.dag_factory import BrokenPipelineSpecs, check_specs

    spec(tmp_path, "a_good.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    check_specs(tmp_path)  # nothing to report
    spec(tmp_path, "b_broken.yaml", MINIMAL.format(id="broken", enabled="true", schedule="7m"))
    with pytest.raises(BrokenPipelineSpecs, match=r"1 pipeline spec in .* cannot run") as raised:
        check_specs(tmp_path)
    assert "b_broken.yaml:3: schedule:" in str(raised.value) and "a_good" not in str(raised.value)
