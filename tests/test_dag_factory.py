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
    assert set(dag.params) == {"dry_run", "full_resync", "reconcile"}
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


# --------------------------------------------------------------------------------------------
# Trigger params: Airflow's validation, without jsonschema for the booleans' own values


def test_the_trigger_params_validate_and_serialise_as_airflow_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    import jsonschema
    from airflow.sdk import Param
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    spec(tmp_path, "flags.yaml", MINIMAL.format(id="flags", enabled="true", schedule="1h"))
    dag = build_dags(tmp_path)["flags"]
    serialized = dict(DagSerialization.to_dict(dag)["dag"]["params"])
    assert set(serialized) == set(dag.params)
    assert {p["__class"] for p in serialized.values()} == {"airflow.sdk.definitions.param.Param"}
    assert all(type(dag.params.get_param(name)) is Param for name in dag.params)

    trigger = copy.deepcopy(dag.tasks[0].params)  # what a run resolves: a task's copy
    with pytest.raises(ParamValidationError, match="'yes' is not of type 'boolean'"):
        trigger["dry_run"] = "yes"
    monkeypatch.setattr(jsonschema, "validate", lambda *a, **k: pytest.fail("jsonschema ran"))
    trigger["dry_run"] = True
    assert trigger["dry_run"] is True and dag.params["dry_run"] is False


def test_parsing_imports_no_task_dependencies(tmp_path: Path) -> None:
    """stripe, requests and the steps' wiring are imported when a task runs, not at each parse."""
    import subprocess

    spec(tmp_path, "lean.yaml", MINIMAL.format(id="lean", enabled="true", schedule="1h"))
    probe = (
        "import sys\n"
        "from krenalis_airflow.dag_factory import build_dags\n"
        f"assert 'lean' in build_dags({str(tmp_path)!r})\n"
        "names = ('stripe', 'requests', 'krenalis_airflow.operators.steps', 'krenalis_airflow.hooks.stripe')\n"
        "print(sorted(n for n in names if n in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------
# Shards: one pair of DAG files per sub-folder of the pipelines folder


def shards(root: Path, layout: dict[str, list[str]]) -> Path:
    """``pipelines/`` beside a DAG file in ``root``: shard ("" for the folder's own files) → ids."""
    pipelines = root / "pipelines"
    for shard, ids in layout.items():
        (pipelines / shard).mkdir(parents=True, exist_ok=True)
        for pid in ids:
            spec(pipelines / shard, f"{pid}.yaml", MINIMAL.format(id=pid, enabled="true", schedule="1h"))
    return root / "krenalis_pipelines.py"


def test_a_shard_serves_its_sub_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from krenalis_airflow.dag_factory import check_pipeline_specs, pipeline_dags

    monkeypatch.delenv("KRENALIS_PIPELINES_DIR", raising=False)
    dag_file = shards(tmp_path, {"": ["top"], "eu": ["eu_people", "eu_leads"], "us": ["us_people"]})
    (tmp_path / "pipelines" / "Archive").mkdir()  # not named like a shard: never read
    spec(tmp_path / "pipelines" / "Archive", "eu_people.yaml", "whatever")

    assert set(pipeline_dags(dag_file)) == {"top"}
    assert set(pipeline_dags(dag_file, shard="eu")) == {"eu_people", "eu_leads"}
    assert set(pipeline_dags(dag_file, shard="us")) == {"us_people"}
    for shard in (None, "eu", "us"):
        check_pipeline_specs(dag_file, shard=shard)  # nothing broken: no import error
    with pytest.raises(ValueError, match=r"shard 'EU' is not a shard name: .* rename it"):
        pipeline_dags(dag_file, shard="EU")


def test_a_pipeline_id_in_two_shards_runs_in_neither_and_is_reported_in_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two DAG files must never define one dag_id: Airflow would keep whichever it parsed last."""
    from krenalis_airflow.dag_factory import check_pipeline_specs, pipeline_dags
    from krenalis_airflow.exceptions import BrokenPipelineSpecs

    monkeypatch.delenv("KRENALIS_PIPELINES_DIR", raising=False)
    dag_file = shards(tmp_path, {"": ["people"], "eu": ["people", "eu_only"], "us": ["people"]})
    pipelines = tmp_path / "pipelines"

    top, eu, us = (pipeline_dags(dag_file, shard=s) for s in (None, "eu", "us"))
    assert set(top) == {"krenalis_broken_people"}
    assert set(eu) == {"krenalis_broken_eu_people", "eu_only"}
    assert set(us) == {"krenalis_broken_us_people"}
    all_ids = [*top, *eu, *us]
    assert len(all_ids) == len(set(all_ids))  # no dag_id from two DAG files
    doc = eu["krenalis_broken_eu_people"].doc_md or ""
    assert f"pipeline id 'people' (the file name) is also the id of {pipelines / 'people.yaml'}" in doc
    assert str(pipelines / "us" / "people.yaml") in doc and "rename or remove all but one" in doc
    with pytest.raises(BrokenPipelineSpecs, match=r"1 pipeline spec in .*pipelines/us cannot run"):
        check_pipeline_specs(dag_file, shard="us")


def test_specs_sharing_a_broken_mapping_expression_each_report_it_at_their_own_line(
    tmp_path: Path,
) -> None:
    """The mapping check is remembered per expression: a repeat must still be reported, in place."""
    good = MINIMAL.format(id="x", enabled="true", schedule="1h").replace("id: x\n", "")
    bad = good.replace(
        "mapping: {name: first_name}", "mapping:\n    phone: phone\n    name: nope(first_name)"
    )
    spec(tmp_path, "first.yaml", bad)
    spec(tmp_path, "second.yaml", "description: one line more\n" + bad)
    dags = build_dags(tmp_path)
    for name, line in (("first", 9), ("second", 10)):
        doc = dags[name].doc_md or ""
        assert f"{name}.yaml:{line}: transformation.mapping.name: unknown function 'nope'" in doc, doc


def test_init_shard_writes_the_dag_files_of_one_sub_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    from krenalis_airflow.__main__ import main

    monkeypatch.delenv("KRENALIS_PIPELINES_DIR", raising=False)
    assert main(["init", str(tmp_path), "--shard", "eu"]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {tmp_path / 'krenalis_pipelines_eu.py'}\n" in out
    assert f"Wrote {tmp_path / 'pipelines' / 'eu'}/ (the shard, empty)\n" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "krenalis_pipelines_eu.py",
        "krenalis_spec_check_eu.py",
        "pipelines",
    ]
    spec(
        tmp_path / "pipelines" / "eu",
        "eu_people.yaml",
        MINIMAL.format(id="eu_people", enabled="true", schedule="1h"),
    )
    spec(tmp_path / "pipelines", "top.yaml", MINIMAL.format(id="top", enabled="true", schedule="1h"))
    namespace = runpy.run_path(str(tmp_path / "krenalis_pipelines_eu.py"))
    assert "eu_people" in namespace and "top" not in namespace
    runpy.run_path(str(tmp_path / "krenalis_spec_check_eu.py"))  # nothing broken: no import error

    assert main(["init", str(tmp_path), "--shard", "EU"]) == 1
    assert "--shard 'EU': a shard is a sub-folder of the pipelines folder named like a pipeline id" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------------------------
# Alerts and lineage

ALERTING = (
    MINIMAL
    + """\
alerts:
  notifier: {notifier}
  args: {{path: {path}}}
  on_failure: {on_failure}
  rejected_share: 5%
"""
)
RECORDING = "tests.dags.recording_notifier.RecordingNotifier"


def alerting(folder: Path, pid: str, notifier: str = RECORDING, on_failure: str = "true") -> None:
    path = folder / "alerts.jsonl"
    text = ALERTING.format(
        id=pid, enabled="true", schedule="1h", notifier=notifier, on_failure=on_failure, path=path
    )
    spec(folder, f"{pid}.yaml", text)


def test_the_source_is_the_extracts_inlet_and_the_upsert_writes_through_an_alias(tmp_path: Path) -> None:
    from airflow.sdk import Asset, AssetAlias
    from airflow.serialization.serialized_objects import DagSerialization

    spec(tmp_path, "lineage.yaml", MINIMAL.format(id="lineage", enabled="true", schedule="1h"))
    dag = build_dags(tmp_path)["lineage"]
    assets = {t.task_id: (t.inlets, t.outlets) for t in dag.tasks}
    assert assets == {
        "extract": ([Asset("x-sql://warehouse/customer_profiles")], []),
        "transform": ([], []),
        "dedupe": ([], []),
        "upsert": ([], [AssetAlias("krenalis/lineage/stripe-writes")]),
    }
    tasks = {t["__var"]["task_id"]: t["__var"] for t in DagSerialization.to_dict(dag)["dag"]["tasks"]}
    assert "x-sql://warehouse/customer_profiles" in str(tasks["extract"]["inlets"])
    assert "krenalis/lineage/stripe-writes" in str(tasks["upsert"]["outlets"])


def test_failure_alerts_are_a_callback_of_every_task(tmp_path: Path) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    from krenalis_airflow.operators.alerts import FailureAlert

    alerting(tmp_path, "loud")
    alerting(tmp_path, "figures_only", on_failure="false")
    spec(tmp_path, "quiet.yaml", MINIMAL.format(id="quiet", enabled="true", schedule="1h"))
    dags = build_dags(tmp_path)
    loud = dags["loud"]
    callbacks = {id(cb) for t in loud.tasks for cb in t.on_failure_callback}
    assert len(callbacks) == 1 and all(isinstance(t.on_failure_callback[0], FailureAlert) for t in loud.tasks)
    assert loud.on_failure_callback is None  # a task callback: it runs in the failed task's process
    tasks = DagSerialization.to_dict(loud)["dag"]["tasks"]
    assert all(t["__var"].get("has_on_failure_callback") for t in tasks)
    for quiet in (dags["figures_only"], dags["quiet"]):
        assert all(not t.on_failure_callback for t in quiet.tasks)


def test_the_failure_callback_sends_through_the_notifier_and_never_raises(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tests.dags.recording_notifier import read_alerts

    alerting(tmp_path, "loud")
    alerting(tmp_path, "down", notifier="tests.dags.recording_notifier.FailingNotifier")
    dags = build_dags(tmp_path)
    ti = SimpleNamespace(
        task_id="upsert",
        dag_id="loud",
        run_id="manual__1",
        log_url="http://af/dags/loud/runs/manual__1/tasks/upsert",
    )
    context = {"ti": ti, "run_id": "manual__1", "exception": RuntimeError("Stripe said no {{ x }}")}
    dags["loud"].get_task("upsert").on_failure_callback[0](context)
    [sent] = read_alerts(tmp_path / "alerts.jsonl")
    assert sent["kind"] == "failure" and sent["title"] == "Pipeline loud: the run failed at task upsert"
    assert "RuntimeError: Stripe said no {{ x }}" in sent["text"]  # the text is not rendered again
    assert "/dags/loud/runs/manual__1" in sent["text"] and "task log http://af/dags/loud" in sent["text"]
    dags["down"].get_task("extract").on_failure_callback[0]({**context, "ti": ti})  # logged, not raised


def test_parsing_imports_no_notifier(tmp_path: Path) -> None:
    """The notifier's module (Slack's, SMTP's, …) is imported when an alert fires, not at each parse."""
    import subprocess

    alerting(tmp_path, "smtp_alerts", notifier="airflow.providers.smtp.notifications.smtp.SmtpNotifier")
    alerting(tmp_path, "own_alerts")
    probe = (
        "import sys\n"
        "from krenalis_airflow.dag_factory import build_dags\n"
        f"assert {{'smtp_alerts', 'own_alerts'}} <= set(build_dags({str(tmp_path)!r}))\n"
        "names = ('airflow.providers.smtp.notifications.smtp', 'tests.dags.recording_notifier',\n"
        "         'krenalis_airflow.core.history')\n"
        "print(sorted(n for n in names if n in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=str(ROOT)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
