"""Spec → plan: the steps, schedule, tags and documentation of a pipeline DAG, and the placeholder
plan of a spec that does not load."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from krenalis_airflow.core.conditions import Group
from krenalis_airflow.core.plan import (
    STEPS,
    BrokenPlan,
    PipelinePlan,
    describe_filter,
    disabled_message,
    plan_broken,
    plan_pipeline,
)
from krenalis_airflow.core.spec import LoadedSpec, load_spec, parse_spec
from krenalis_airflow.exceptions import SpecError, SpecProblem
from tests.specs import spec_text

SPEC = """\
id: eu_customers
description: Paying EU customers
enabled: true
schedule: 1h
tags: [crm, eu, krenalis]
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
filter:
  logical: and
  conditions:
    - {property: country, operator: is one of, values: [IT, FR]}
    - {property: plan, operator: is not, values: [free]}
    - logical: or
      conditions:
        - {property: lifetime_value, operator: is greater than or equal to, values: [100]}
        - {property: vip, operator: is true}
destination: {conn_id: stripe_live}
export:
  mode: create_only
  matching: {property: email_address, stripe: email}
  duplicate_profiles: keep_first
  order_by: updated_at desc
  duplicate_customers: update_all
transformation:
  mapping:
    name: first_name ~ ' ' ~ last_name
    address.country: country|upper
    metadata.plan: plan
"""

MINIMAL = spec_text("valid/minimal")


def loaded(text: str = SPEC, path: str = "x.yaml") -> LoadedSpec:
    return LoadedSpec(Path(path), parse_spec(text))


def with_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.fixture
def plan() -> PipelinePlan:
    return plan_pipeline(loaded())


# --------------------------------------------------------------------------------------------
# plan_pipeline


def test_steps_run_extract_transform_dedupe_upsert_in_a_chain(plan: PipelinePlan) -> None:
    assert [(s.task_id, s.step, s.upstream) for s in plan.steps] == [
        ("extract", "extract", None),
        ("transform", "transform", "extract"),
        ("dedupe", "dedupe", "transform"),
        ("upsert", "upsert", "dedupe"),
    ]
    assert STEPS == ("extract", "transform", "dedupe", "upsert")
    docs = [s.doc for s in plan.steps]
    assert all(docs)
    assert len(set(docs)) == 4
    assert "warehouse" in plan.steps[0].doc
    assert "ledger" in plan.steps[3].doc


def test_plan_carries_the_spec_identity(plan: PipelinePlan) -> None:
    assert plan.dag_id == "eu_customers"
    assert plan.spec.id == "eu_customers"
    assert plan.spec_file == "x.yaml"
    assert plan.description == "Paying EU customers"


def test_description_defaults_to_the_source() -> None:
    assert plan_pipeline(loaded(MINIMAL)).description == "Sync customer_profiles → Stripe customers"
    query = with_line(MINIMAL, "table: customer_profiles", "query: SELECT * FROM p")
    assert plan_pipeline(loaded(query)).description == "Sync query → Stripe customers"


def test_enabled_spec_is_scheduled_and_unpaused(plan: PipelinePlan) -> None:
    assert plan.paused is False
    assert plan.schedule == timedelta(hours=1)
    assert isinstance(plan.schedule, timedelta)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("5m", timedelta(minutes=5)),
        ("24h", timedelta(days=1)),
        ("'@daily'", "@daily"),
        ("'0 6 * * 1-5'", "0 6 * * 1-5"),
        ("null", None),
    ],
)
def test_schedule_values(schedule: str, expected: timedelta | str | None) -> None:
    result = plan_pipeline(loaded(with_line(SPEC, "schedule: 1h", f"schedule: {schedule}")))
    assert result.schedule == expected
    assert result.paused is False


def test_disabled_spec_is_unscheduled_but_never_paused() -> None:
    """``enabled`` lives in the schedule alone: a DAG created paused would stay paused when the
    spec is enabled again (Airflow applies ``is_paused_upon_creation`` once)."""
    result = plan_pipeline(loaded(with_line(SPEC, "enabled: true", "enabled: false"), "p/eu.yaml"))
    assert result.paused is False
    assert result.schedule is None
    assert "- **Schedule**: 1h (disabled)" in result.doc_md


def test_disabled_spec_shows_at_a_glance() -> None:
    result = plan_pipeline(loaded(with_line(SPEC, "enabled: true", "enabled: false"), "p/eu.yaml"))
    assert result.description == "Disabled in spec — Paying EU customers"
    assert result.tags == ("krenalis", "stripe", "disabled", "crm", "eu")
    assert (
        "\n**Disabled in spec**: pipeline eu_customers is disabled by its spec (enabled: false in "
        "p/eu.yaml); set enabled: true to run it.\n"
    ) in result.doc_md
    minimal = plan_pipeline(loaded(MINIMAL + "enabled: false\ntags: [disabled]\n"))
    assert minimal.description == "Disabled in spec — Sync customer_profiles → Stripe customers"
    assert minimal.tags == ("krenalis", "stripe", "disabled")  # once


def test_disabled_message_names_the_pipeline_the_file_and_the_fix() -> None:
    spec = parse_spec(with_line(SPEC, "enabled: true", "enabled: false"))
    assert disabled_message(spec, "dags/pipelines/eu_customers.yaml") == (
        "pipeline eu_customers is disabled by its spec (enabled: false in "
        "dags/pipelines/eu_customers.yaml); set enabled: true to run it"
    )


def test_spec_without_schedule_runs_manually() -> None:
    result = plan_pipeline(loaded(MINIMAL))
    assert result.schedule is None
    assert result.paused is False
    assert "- **Schedule**: manual only" in result.doc_md
    assert "(disabled)" not in result.doc_md and "Disabled" not in result.doc_md + result.description
    assert "disabled" not in result.tags


def test_tags_include_krenalis_and_the_spec_tags_once(plan: PipelinePlan) -> None:
    assert plan.tags == ("krenalis", "stripe", "crm", "eu")
    assert plan_pipeline(loaded(MINIMAL)).tags == ("krenalis", "stripe")


# --------------------------------------------------------------------------------------------
# doc_md


def test_doc_md_describes_source_filter_mode_and_matching(plan: PipelinePlan) -> None:
    doc = plan.doc_md
    assert doc.startswith("## Paying EU customers\n")
    assert "Spec file: `x.yaml`" in doc
    assert "- **Source**: connection `warehouse`, table `customer_profiles`, key `profile_id`" in doc
    assert (
        "- **Filter**: country is one of 'IT', 'FR' and plan is not 'free'"
        " and (lifetime_value is greater than or equal to '100' or vip is true)"
    ) in doc
    assert "- **Destination**: Stripe connection `stripe_live`" in doc
    assert "- **Mode**: `create_only`" in doc
    assert "- **Matching**: profile `email_address` ↔ Stripe `email`" in doc
    assert "- **Duplicate profiles**: `keep_first` (order by `updated_at desc`)" in doc
    assert "- **Duplicate customers**: `update_all`" in doc
    assert "- **Schedule**: 1h\n" in doc


def test_doc_md_lists_each_mapping_row_in_a_table(plan: PipelinePlan) -> None:
    lines = plan.doc_md.splitlines()
    start = lines.index("| Stripe field | expression |")
    assert lines[start + 1] == "|---|---|"
    assert lines[start + 2 : start + 5] == [
        "| `name` | `first_name ~ ' ' ~ last_name` |",
        r"| `address.country` | `country\|upper` |",  # a pipe would end the table cell
        "| `metadata.plan` | `plan` |",
    ]


def test_doc_md_for_a_minimal_query_spec() -> None:
    text = with_line(MINIMAL, "table: customer_profiles", "query: 'SELECT * FROM p WHERE plan = ''pro'''")
    doc = plan_pipeline(loaded(text, "dags/pipelines/minimal.yaml")).doc_md
    assert doc.startswith("## minimal\n")
    assert "Spec file: `dags/pipelines/minimal.yaml`" in doc
    assert "```sql\nSELECT * FROM p WHERE plan = 'pro'\n```" in doc
    assert "table `" not in doc
    assert "- **Filter**: every profile" in doc
    assert "- **Mode**: `create_and_update`" in doc
    assert "- **Duplicate profiles**: `reject`\n" in doc
    assert "- **Destination**: Stripe connection `stripe_default`" in doc
    assert "| `name` | `first_name` |" in doc


# --------------------------------------------------------------------------------------------
# describe_filter


def group(data: dict) -> Group:
    return Group.model_validate(data)


def test_describe_filter_single_condition_has_no_parentheses() -> None:
    assert describe_filter(group({"conditions": [{"property": "plan", "operator": "is null"}]})) == (
        "plan is null"
    )


def test_describe_filter_renders_nested_groups_with_parentheses() -> None:
    data = {
        "logical": "or",
        "conditions": [
            {"property": "vip", "operator": "is true"},
            {
                "logical": "and",
                "conditions": [
                    {"property": "country", "operator": "is", "values": ["IT"]},
                    {
                        "logical": "or",
                        "conditions": [
                            {"property": "orders", "operator": "is greater than", "values": ["3"]},
                            {"property": "plan", "operator": "is not one of", "values": ["free", "trial"]},
                        ],
                    },
                ],
            },
            {"property": "email", "operator": "is not null"},
        ],
    }
    assert describe_filter(group(data)) == (
        "vip is true or (country is 'IT' and (orders is greater than '3' or plan is not one of 'free', 'trial'))"
        " or email is not null"
    )


def test_describe_filter_defaults_to_and() -> None:
    data = {
        "conditions": [
            {"property": "a", "operator": "is", "values": ["1"]},
            {"property": "b", "operator": "is false"},
        ]
    }
    assert describe_filter(group(data)) == "a is '1' and b is false"


# --------------------------------------------------------------------------------------------
# plan_broken

BROKEN = spec_text("invalid/my_pipeline")  # schedule: every now and then (line 2)


def spec_error(path: Path, text: str) -> SpecError:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value


def test_plan_broken_is_named_after_its_file(tmp_path: Path) -> None:
    """The file name is the pipeline id: a broken pipeline's own DAG shows the error."""
    error = spec_error(tmp_path / "my_pipeline.yaml", BROKEN)
    broken = plan_broken(error, {"other_pipeline"})
    assert isinstance(broken, BrokenPlan)
    assert broken.dag_id == "my_pipeline"
    assert broken.spec_file == str(tmp_path / "my_pipeline.yaml")
    assert broken.description == "BROKEN SPEC my_pipeline.yaml: fix it (see docs)"
    assert broken.tags == ("krenalis", "stripe", "broken-spec")


def test_plan_broken_never_takes_the_id_a_broken_copy_declares(tmp_path: Path) -> None:
    """``a_copy.yaml`` saying ``id: my_pipeline`` is a placeholder of its own, whatever else breaks."""
    error = spec_error(tmp_path / "a_copy.yaml", BROKEN)
    assert plan_broken(error, set()).dag_id == "a_copy"


def test_plan_broken_falls_back_when_the_file_name_is_taken(tmp_path: Path) -> None:
    """``x.yaml`` and ``x.yml``: the first placeholder is ``x``, the second gets a name of its own."""
    error = spec_error(tmp_path / "my_pipeline.yml", BROKEN)
    assert plan_broken(error, {"my_pipeline"}).dag_id == "krenalis_broken_my_pipeline"
    taken = {"my_pipeline", "krenalis_broken_my_pipeline"}
    assert plan_broken(error, taken).dag_id == "krenalis_broken_my_pipeline_"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Some-File.v2.yaml", BROKEN),  # a file name that is not a pipeline id
        ("Some-File.v2.yaml", "id: [my_pipeline\nsource: {\n"),  # YAML that does not parse
        ("Some-File.v2.yaml", ""),  # an empty file
    ],
)
def test_plan_broken_falls_back_when_the_file_name_is_no_id(tmp_path: Path, name: str, text: str) -> None:
    error = spec_error(tmp_path / name, text)
    assert plan_broken(error, set()).dag_id == "krenalis_broken_some_file_v2"


def test_plan_broken_for_a_missing_or_undecodable_file(tmp_path: Path) -> None:
    missing = SpecError(str(tmp_path / "gone.yaml"), [SpecProblem("", "cannot read the file: gone")])
    assert plan_broken(missing, set()).dag_id == "gone"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"id: abc\n\xff\xfe\x00")
    undecodable = SpecError(str(binary), [SpecProblem("", "not UTF-8")])
    assert plan_broken(undecodable, set()).dag_id == "binary"


def test_plan_broken_doc_md_contains_the_error_text(tmp_path: Path) -> None:
    path = tmp_path / "my_pipeline.yaml"
    error = spec_error(path, BROKEN)
    broken = plan_broken(error, set())
    assert broken.error == str(error)
    assert "'every now and then' is not a schedule" in broken.error
    assert broken.doc_md.startswith("## Broken pipeline spec\n")
    assert f"`{path}` does not load" in broken.doc_md
    assert f"```\n{error}\n```" in broken.doc_md
    assert f"{path}:2: schedule:" in broken.doc_md
