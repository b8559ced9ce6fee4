"""The DAG factory in-process: what Airflow will see for good, disabled, broken and clashing specs."""

from __future__ import annotations

import sys
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


def test_disabled_spec_is_listed_unscheduled_flagged_and_not_paused(tmp_path: Path) -> None:
    spec(tmp_path, "off_pipeline.yaml", MINIMAL.format(id="off_pipeline", enabled="false", schedule="15m"))
    dag = build_dags(tmp_path)["off_pipeline"]
    assert dag.schedule is None
    # Not paused by the spec: enabling it again must be all it takes (Airflow applies
    # is_paused_upon_creation only when it first sees the DAG). The UI's toggle is Airflow's.
    assert dag.is_paused_upon_creation is False
    assert "disabled" in dag.tags
    assert dag.description == "Disabled in spec — Sync customer_profiles → Stripe customers"
    assert "**Disabled in spec**: pipeline off_pipeline is disabled by its spec" in dag.doc_md


def test_enabling_a_disabled_spec_brings_its_schedule_back(tmp_path: Path) -> None:
    path = tmp_path / "flip.yaml"
    path.write_text(MINIMAL.format(id="flip", enabled="false", schedule="15m"))
    off = build_dags(tmp_path)["flip"]
    path.write_text(MINIMAL.format(id="flip", enabled="true", schedule="15m"))
    on = build_dags(tmp_path)["flip"]
    assert (off.schedule, on.schedule) == (None, timedelta(minutes=15))
    assert off.is_paused_upon_creation is on.is_paused_upon_creation is False
    assert "disabled" not in on.tags and not on.description.startswith("Disabled")


def test_a_disabled_pipeline_skips_every_step_before_reading_anything(tmp_path: Path) -> None:
    """A run started anyway (UI, REST API, ``airflow dags test``) skips: no warehouse, no Stripe.

    ``execute`` gets an empty context: reading the upstream XCom, the run id or a connection
    would fail the test with a KeyError instead of the skip."""
    from airflow.sdk.exceptions import AirflowSkipException

    spec(tmp_path, "off_pipeline.yaml", MINIMAL.format(id="off_pipeline", enabled="false", schedule="1h"))
    dag = build_dags(tmp_path)["off_pipeline"]
    for task in dag.tasks:
        with pytest.raises(AirflowSkipException) as skipped:
            task.execute({})
        assert str(skipped.value) == (
            f"pipeline off_pipeline is disabled by its spec (enabled: false in "
            f"{tmp_path / 'off_pipeline.yaml'}); set enabled: true to run it"
        )


@pytest.mark.parametrize(
    "schedule, expected", [("'0 6 * * 1-5'", "0 6 * * 1-5"), ("'@daily'", "@daily"), ("null", None)]
)
def test_schedules(tmp_path: Path, schedule: str, expected: object) -> None:
    spec(tmp_path, "scheduled.yaml", MINIMAL.format(id="scheduled", enabled="true", schedule=schedule))
    dag = build_dags(tmp_path)["scheduled"]
    assert dag.schedule == expected


def test_broken_and_clashing_specs_become_placeholders_and_hide_nothing(tmp_path: Path) -> None:
    spec(tmp_path, "good.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    spec(tmp_path, "broken.yaml", MINIMAL.format(id="broken", enabled="true", schedule="7m"))
    spec(tmp_path, "a_clash.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    spec(tmp_path, "garbage.yaml", "id: [unclosed\n")
    spec(tmp_path, "Not-An-Id.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    dags = build_dags(tmp_path)
    assert set(dags) == {"good", "broken", "a_clash", "garbage", "krenalis_broken_not_an_id"}
    broken = dags["broken"]
    assert broken.is_paused_upon_creation is False and "broken-spec" in broken.tags
    assert "broken.yaml:3: schedule:" in broken.doc_md and "'7m' is not a schedule" in broken.doc_md
    assert [t.task_id for t in broken.tasks] == ["report_spec_error"]
    assert "id 'good' differs from the file name 'a_clash.yaml'" in dags["a_clash"].doc_md
    assert "'Not-An-Id' is not one" in dags["krenalis_broken_not_an_id"].doc_md
    assert dags["good"].tasks[0].task_id == "extract"


def test_a_file_repeating_an_id_changes_nothing_for_the_live_pipeline(tmp_path: Path) -> None:
    """The bug: ``a_copy.yaml`` sorted first and took over the running ``people_all`` DAG."""
    live = MINIMAL.format(id="people_all", enabled="true", schedule="1h")
    spec(tmp_path, "people_all.yaml", live)
    before = build_dags(tmp_path)["people_all"]
    spec(tmp_path, "a_copy.yaml", live.replace("table: customer_profiles", "table: other_profiles"))
    dags = build_dags(tmp_path)
    after = dags["people_all"]
    assert (after.tasks[0].spec, after.tasks[0].spec_file) == (
        before.tasks[0].spec,
        str(tmp_path / "people_all.yaml"),
    )
    assert after.tasks[0].spec.source.table == "customer_profiles"
    copy = dags["a_copy"]  # the copy is reported on a placeholder of its own
    assert "broken-spec" in copy.tags and "remove the id line" in copy.doc_md


def test_two_files_with_one_name_are_both_reported_and_neither_runs(tmp_path: Path) -> None:
    spec(tmp_path, "twin.yaml", MINIMAL.format(id="twin", enabled="true", schedule="1h"))
    spec(tmp_path, "twin.yml", MINIMAL.format(id="twin", enabled="true", schedule="1h"))
    dags = build_dags(tmp_path)
    assert set(dags) == {"twin", "krenalis_broken_twin"}
    for dag, other in ((dags["twin"], "twin.yml"), (dags["krenalis_broken_twin"], "twin.yaml")):
        assert [t.task_id for t in dag.tasks] == ["report_spec_error"]
        assert f"is also the id of {tmp_path / other}" in dag.doc_md


def test_the_dag_file_uses_the_pipelines_dir_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    spec(tmp_path, "from_env.yaml", MINIMAL.format(id="from_env", enabled="true", schedule="null"))
    monkeypatch.setenv("KRENALIS_PIPELINES_DIR", str(tmp_path))
    namespace = runpy.run_path(str(ROOT / "dags" / "krenalis_pipelines.py"))
    assert "from_env" in namespace and "sample_customers" not in namespace


def test_check_specs_raises_for_broken_specs_only(tmp_path: Path) -> None:
    from krenalis_airflow.dag_factory import check_specs
    from krenalis_airflow.exceptions import BrokenPipelineSpecs

    spec(tmp_path, "good.yaml", MINIMAL.format(id="good", enabled="true", schedule="1h"))
    check_specs(tmp_path)  # nothing to report
    spec(tmp_path, "broken.yaml", MINIMAL.format(id="broken", enabled="true", schedule="7m"))
    with pytest.raises(BrokenPipelineSpecs, match=r"1 pipeline spec in .* cannot run") as raised:
        check_specs(tmp_path)
    assert "broken.yaml:3: schedule:" in str(raised.value) and "good.yaml" not in str(raised.value)


PYTHON_REFERENCE = """\
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
export:
  matching: {property: email, stripe: email}
transformation:
  python: side_effect_transform:transform
"""


def test_parsing_dags_never_imports_a_python_transformation(tmp_path: Path, monkeypatch) -> None:
    """The dag-processor parses DAG files every 30 s: user code must run only when a task does
    (and in ``krenalis-airflow validate``, which must still say whether it imports)."""
    dags, pipelines = tmp_path, tmp_path / "pipelines"
    pipelines.mkdir()
    marker = tmp_path / "imported"
    (dags / "side_effect_transform.py").write_text(
        f"open({str(marker)!r}, 'a').write('x')\ndef transform(profile):\n    return {{}}\n"
    )
    (pipelines / "people.yaml").write_text(PYTHON_REFERENCE)
    monkeypatch.delitem(sys.modules, "side_effect_transform", raising=False)
    built = build_dags(pipelines)
    assert "people" in built and "broken-spec" not in built["people"].tags
    assert not marker.exists()

    from krenalis_airflow.__main__ import main

    assert main(["validate", str(pipelines)]) == 0
    assert marker.exists()  # validate imports it, as it must to say it imports
    sys.modules.pop("side_effect_transform", None)
