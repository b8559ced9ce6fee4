"""The spec loader: the example spec loads with the right values, and every mistake is reported
with its file, line, key path and what is allowed instead."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from krenalis_airflow.core.conditions import OPERATORS, Condition, Group
from krenalis_airflow.core.spec import (
    INTERVALS,
    PRESETS,
    LoadedSpec,
    PipelineSpec,
    discover,
    load_spec,
    parse_spec,
    spec_schema,
    unique_ids,
)
from krenalis_airflow.exceptions import SpecError, SpecProblem
from tests.specs import spec_text

EXAMPLE = """\
id: eu_paying_customers
description: Paying EU customers
enabled: true
schedule: 1h
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
filter:
  logical: and
  conditions:
    - {property: country, operator: is one of, values: [IT, FR, DE]}
    - {property: plan, operator: is not, values: [free]}
    - logical: or
      conditions:
        - {property: lifetime_value, operator: is greater than or equal to, values: ["100"]}
        - {property: vip, operator: is true}
destination: {conn_id: stripe_default}
export:
  mode: create_and_update
  matching: {property: email, stripe: email}
  duplicate_profiles: reject
  order_by: updated_at desc
  duplicate_customers: reject
transformation:
  mapping:
    name: first_name ~ ' ' ~ last_name
    phone: phone
    address.country: country
    metadata.plan: plan
"""

MINIMAL = spec_text("valid/minimal")


# --------------------------------------------------------------------------------------------
# Helpers


def edit(old: str, new: str, text: str = EXAMPLE) -> str:
    """``text`` with ``old`` (which must occur exactly once) replaced by ``new``."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the spec"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of ``text`` containing ``needle``."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


def write(tmp_path: Path, text: str, name: str | None = None) -> Path:
    """``text`` in ``tmp_path``, by default in the file its ``id`` names (the id is the file name)."""
    written = re.search(r"^id: ([a-z][a-z0-9_]*)$", text, re.M)
    path = tmp_path / (name or f"{written.group(1) if written else 'eu_paying_customers'}.yaml")
    path.write_text(text, encoding="utf-8")
    return path


def errors(tmp_path: Path, text: str) -> tuple[Path, SpecError]:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.source == str(path)
    return path, caught.value


def only_problem(tmp_path: Path, text: str) -> tuple[Path, SpecProblem]:
    path, error = errors(tmp_path, text)
    assert len(error.problems) == 1, error.problems
    return path, error.problems[0]


def assert_problem(tmp_path: Path, text: str, *, line: int, key: str, says: tuple[str, ...]) -> SpecProblem:
    """Exactly one problem, at ``line`` and ``key``, whose message contains every ``says``."""
    path, problem = only_problem(tmp_path, text)
    assert (problem.line, problem.path) == (line, key), problem
    for words in says:
        assert words in problem.message, problem.message
    rendered = problem.render(str(path))
    assert rendered.startswith(f"{path}:{line}: {key}: "), rendered
    assert f"{path}:{line}: {key}: " in str(errors(tmp_path, text)[1])
    return problem


# --------------------------------------------------------------------------------------------
# The example loads


def test_example_loads_with_its_values(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, EXAMPLE))
    assert spec.id == "eu_paying_customers"
    assert spec.description == "Paying EU customers"
    assert spec.enabled is True
    assert spec.schedule == "1h"
    assert (spec.source.conn_id, spec.source.table, spec.source.query, spec.source.key) == (
        "warehouse",
        "customer_profiles",
        None,
        "profile_id",
    )
    assert spec.destination.conn_id == "stripe_default"
    assert spec.export.mode == "create_and_update"
    assert (spec.export.matching.property, spec.export.matching.stripe) == ("email", "email")
    assert spec.export.matching.metadata_key is None
    assert spec.export.duplicate_profiles == "reject"
    assert spec.export.duplicate_customers == "reject"
    assert spec.export.order_by == "updated_at desc"
    assert spec.export.order == ("updated_at", True)
    assert spec.transformation.mapping == {
        "name": "first_name ~ ' ' ~ last_name",
        "phone": "phone",
        "address.country": "country",
        "metadata.plan": "plan",
    }
    assert list(spec.transformation.mapping) == ["name", "phone", "address.country", "metadata.plan"]


def test_example_filter_tree(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, EXAMPLE))
    assert spec.filter == Group(
        logical="and",
        conditions=(
            Condition(property="country", operator="is one of", values=("IT", "FR", "DE")),
            Condition(property="plan", operator="is not", values=("free",)),
            Group(
                logical="or",
                conditions=(
                    Condition(
                        property="lifetime_value", operator="is greater than or equal to", values=("100",)
                    ),
                    Condition(property="vip", operator="is true"),
                ),
            ),
        ),
    )
    assert list(spec.filter.properties()) == ["country", "plan", "lifetime_value", "vip"]


def test_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.enabled is True
    assert spec.schedule is None and spec.schedule_value is None
    assert spec.description is None
    assert spec.filter is None
    assert spec.tags == ()
    assert spec.destination.conn_id == "stripe_default"
    assert spec.export.mode == "create_and_update"
    assert spec.export.duplicate_profiles == "reject"
    assert spec.export.duplicate_customers == "reject"
    assert spec.export.order_by is None and spec.export.order is None
    assert spec.state.conn_id is None and spec.state.table_prefix == "krenalis_"


def test_state_conn_id_defaults_to_the_source_connection(tmp_path: Path) -> None:
    assert load_spec(write(tmp_path, MINIMAL)).state_conn_id == "warehouse"
    explicit = MINIMAL + "state: {conn_id: ledger_db}\n"
    assert load_spec(write(tmp_path, explicit)).state_conn_id == "ledger_db"


def test_parse_spec_and_load_spec_agree(tmp_path: Path) -> None:
    assert parse_spec(EXAMPLE) == load_spec(write(tmp_path, EXAMPLE))


def test_spec_is_immutable(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, EXAMPLE))
    with pytest.raises(Exception, match="frozen"):
        spec.id = "other"


def test_metadata_matching_and_query_source(tmp_path: Path) -> None:
    text = edit("stripe: email}", "stripe: metadata.crm_id}")
    text = edit("table: customer_profiles,", "query: 'WITH x AS (SELECT 1) SELECT * FROM x',", text)
    spec = load_spec(write(tmp_path, text))
    assert spec.export.matching.metadata_key == "crm_id"
    assert spec.source.table is None and spec.source.query == "WITH x AS (SELECT 1) SELECT * FROM x"


def test_id_matching_with_update_only(tmp_path: Path) -> None:
    text = edit("stripe: email}", "stripe: id}", edit("mode: create_and_update", "mode: update_only"))
    assert load_spec(write(tmp_path, text)).export.matching.stripe == "id"


def test_non_string_values_become_text(tmp_path: Path) -> None:
    text = edit("values: [IT, FR, DE]", "values: [100, 2.5, true]")
    spec = load_spec(write(tmp_path, text))
    assert spec.filter is not None
    first = spec.filter.conditions[0]
    assert isinstance(first, Condition) and first.values == ("100", "2.5", "true")


def test_null_value_is_rejected(tmp_path: Path) -> None:
    text = edit("values: [free]", "values: [null]")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "property: plan"),
        key="filter.conditions[1].values",
        says=("is null",),
    )


# --------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_every_interval_is_a_timedelta(tmp_path: Path, interval: str) -> None:
    spec = load_spec(write(tmp_path, edit("schedule: 1h", f"schedule: {interval}")))
    assert spec.schedule == interval
    assert isinstance(spec.schedule_value, timedelta)


def test_interval_values() -> None:
    assert parse_spec(EXAMPLE).schedule_value == timedelta(hours=1)
    assert parse_spec(edit("schedule: 1h", "schedule: 5m")).schedule_value == timedelta(minutes=5)
    assert parse_spec(edit("schedule: 1h", "schedule: 24h")).schedule_value == timedelta(days=1)
    assert list(INTERVALS) == ["5m", "15m", "30m", "1h", "2h", "3h", "6h", "8h", "12h", "24h"]


@pytest.mark.parametrize("schedule", [*PRESETS, "0 * * * *", "*/15 6-22 * * 1-5", "30 2 1 * *"])
def test_presets_and_cron_pass_through_as_strings(tmp_path: Path, schedule: str) -> None:
    spec = load_spec(write(tmp_path, edit("schedule: 1h", f"schedule: '{schedule}'")))
    assert spec.schedule_value == schedule


@pytest.mark.parametrize("written", ["null", "~", ""])
def test_null_schedule_means_manual_runs(tmp_path: Path, written: str) -> None:
    spec = load_spec(write(tmp_path, edit("schedule: 1h", f"schedule: {written}")))
    assert spec.schedule is None and spec.schedule_value is None


@pytest.mark.parametrize("schedule", ["7m", "1d", "hourly", "@every", "61 * * * *", "* * * *", "* * * * * *"])
def test_bad_schedule(tmp_path: Path, schedule: str) -> None:
    assert_problem(
        tmp_path,
        edit("schedule: 1h", f"schedule: '{schedule}'"),
        line=4,
        key="schedule",
        says=(f"'{schedule}' is not a schedule", "5m", "24h", "@daily", "cron", "null"),
    )


def test_non_string_schedule_says_what_is_allowed(tmp_path: Path) -> None:
    assert_problem(
        tmp_path, edit("schedule: 1h", "schedule: 60"), line=4, key="schedule", says=("5m", "cron")
    )


# --------------------------------------------------------------------------------------------
# Unknown and missing keys


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = edit("description: Paying EU customers", "descripton: Paying EU customers")
    assert_problem(tmp_path, text, line=2, key="descripton", says=("unknown key", "spelling"))


def test_unknown_nested_key(tmp_path: Path) -> None:
    text = edit("duplicate_customers: reject", "duplicate_customer: reject")
    line = line_of(text, "duplicate_customer:")
    assert_problem(tmp_path, text, line=line, key="export.duplicate_customer", says=("unknown key",))


def test_unknown_key_in_a_nested_filter_condition(tmp_path: Path) -> None:
    text = edit("{property: vip, operator: is true}", "{property: vip, operator: is true, value: [x]}")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "property: vip"),
        key="filter.conditions[2].conditions[1].value",
        says=("unknown key",),
    )


def test_unknown_key_in_a_flow_mapping_source(tmp_path: Path) -> None:
    text = edit("key: profile_id}", "key: profile_id, schema: public}")
    assert_problem(tmp_path, text, line=5, key="source.schema", says=("unknown key",))


def test_missing_top_level_key(tmp_path: Path) -> None:
    text = edit("destination: {conn_id: stripe_default}\n", "")
    text = text[: text.index("export:")] + text[text.index("transformation:") :]
    assert_problem(tmp_path, text, line=1, key="export", says=("required key is missing",))


def test_missing_nested_key(tmp_path: Path) -> None:
    text = edit(", key: profile_id}", "}")
    assert_problem(tmp_path, text, line=5, key="source.key", says=("required key is missing",))


def test_missing_key_in_filter_condition(tmp_path: Path) -> None:
    text = edit("{property: plan, operator: is not, values: [free]}", "{property: plan, values: [free]}")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "property: plan"),
        key="filter.conditions[1].operator",
        says=("required key is missing",),
    )


# --------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("bad", ["EU_customers", "1st", "eu-customers", "_eu", "eu customers"])
def test_bad_id_without_a_file(bad: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(edit("id: eu_paying_customers", f"id: '{bad}'"))
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("id", 1) and "[a-z]" in problem.message


def test_parse_spec_without_a_file_needs_an_id() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(edit("id: eu_paying_customers\n", ""))
    assert [(p.path, p.message) for p in caught.value.problems] == [("id", "required key is missing")]


# --------------------------------------------------------------------------------------------
# The file name is the pipeline id


def test_id_defaults_to_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, edit("id: eu_paying_customers\n", ""), "people_all.yaml")
    assert load_spec(path).id == "people_all"
    assert load_spec(write(tmp_path, edit("id: eu_paying_customers\n", ""), "eu_2.yml")).id == "eu_2"


def test_a_written_id_equal_to_the_file_name_is_fine(tmp_path: Path) -> None:
    assert load_spec(write(tmp_path, EXAMPLE, "eu_paying_customers.yml")).id == "eu_paying_customers"


def test_a_written_id_must_equal_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, edit("id: eu_paying_customers", "id: people_all"), "a_copy.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    [problem] = caught.value.problems
    assert problem.render(str(path)) == (
        f"{path}:1: id: id 'people_all' differs from the file name 'a_copy.yaml', which is the "
        "pipeline id: remove the id line (the pipeline is then 'a_copy') or rename the file to "
        "people_all.yaml"
    )


def test_a_written_id_that_is_no_id_is_only_to_be_removed(tmp_path: Path) -> None:
    text = "# a pipeline\n" + edit("id: eu_paying_customers", "id: [people_all]")
    path = write(tmp_path, text, "people_all.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    [problem] = caught.value.problems  # not also "Input should be a valid string"
    assert (problem.path, problem.line) == ("id", 2)
    assert "remove the id line (the pipeline is then 'people_all')" in problem.message
    assert "rename" not in problem.message


@pytest.mark.parametrize(
    ("file", "text", "key", "suggested"),
    [
        ("EU-Customers.yaml", edit("id: eu_paying_customers\n", ""), "", "eu_customers.yaml"),
        ("eu customers.yml", edit("id: eu_paying_customers\n", ""), "", "eu_customers.yaml"),
        ("1st.yaml", edit("id: eu_paying_customers\n", ""), "", "pipeline_1st.yaml"),
        ("eu-paying-customers.yaml", EXAMPLE, "id", "eu_paying_customers.yaml"),
    ],
)
def test_a_file_name_that_is_no_pipeline_id(
    tmp_path: Path, file: str, text: str, key: str, suggested: str
) -> None:
    path = write(tmp_path, text, file)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    [problem] = caught.value.problems  # not also the model's own complaint about the id
    assert (problem.path, problem.line) == (key, 1)
    assert f"the file name {file!r} is the pipeline id" in problem.message
    assert problem.message.endswith(f"rename the file, e.g. to {suggested}")


def test_an_id_problem_comes_with_the_others(tmp_path: Path) -> None:
    text = edit("mode: create_and_update", "mode: upsert", edit("id: eu_paying_customers", "id: other"))
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, text, "eu_paying_customers.yaml"))
    assert [p.path for p in caught.value.problems] == ["id", "export.mode"]


def test_the_schema_does_not_require_an_id() -> None:
    schema = spec_schema()
    assert "id" not in schema["required"] and "file name" in schema["properties"]["id"]["description"]


def test_bad_operator(tmp_path: Path) -> None:
    text = edit("operator: is not,", "operator: is not equal to,")
    problem = assert_problem(
        tmp_path,
        text,
        line=line_of(text, "property: plan"),
        key="filter.conditions[1].operator",
        says=("unknown operator 'is not equal to'", "allowed:"),
    )
    for operator in OPERATORS:
        assert f"'{operator}'" in problem.message


@pytest.mark.parametrize(
    ("operator", "values", "says"),
    [
        ("is", "[]", "takes exactly one value, got 0"),
        ("is", "[a, b]", "takes exactly one value, got 2"),
        ("is less than", "[1, 2]", "takes exactly one value, got 2"),
        ("is one of", "[]", "takes one or more values"),
        ("is not one of", "[]", "takes one or more values"),
        ("is null", "[x]", "takes no values, got 1"),
        ("is false", "[x, y]", "takes no values, got 2"),
    ],
)
def test_wrong_value_count(tmp_path: Path, operator: str, values: str, says: str) -> None:
    text = edit(
        "{property: plan, operator: is not, values: [free]}",
        f"{{property: plan, operator: {operator}, values: {values}}}",
    )
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "property: plan"),
        key="filter.conditions[1]",
        says=(f"'{operator}' {says}",),
    )


def test_missing_values_for_an_operator_that_needs_one(tmp_path: Path) -> None:
    text = edit("{property: plan, operator: is not, values: [free]}", "{property: plan, operator: is not}")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "property: plan"),
        key="filter.conditions[1]",
        says=("takes exactly one value, got 0",),
    )


@pytest.mark.parametrize("operator", [op for op, arity in OPERATORS.items() if arity == 0])
def test_operators_without_values(tmp_path: Path, operator: str) -> None:
    text = edit("{property: vip, operator: is true}", f"{{property: vip, operator: {operator}}}")
    assert load_spec(write(tmp_path, text)).filter is not None


def test_property_must_be_a_column_name(tmp_path: Path) -> None:
    text = edit("{property: country,", "{property: 'country; drop table x',")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "drop table"),
        key="filter.conditions[0].property",
        says=("is not a column name",),
    )


def test_bad_logical(tmp_path: Path) -> None:
    text = edit("logical: or", "logical: xor")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "logical: xor"),
        key="filter.conditions[2].logical",
        says=("'and'", "'or'"),
    )


def test_table_and_query_both(tmp_path: Path) -> None:
    text = edit("table: customer_profiles,", "table: customer_profiles, query: SELECT 1,")
    assert_problem(tmp_path, text, line=5, key="source", says=("exactly one of 'table'", "'query'"))


def test_table_and_query_neither(tmp_path: Path) -> None:
    text = edit("table: customer_profiles, ", "")
    assert_problem(tmp_path, text, line=5, key="source", says=("exactly one of 'table'", "'query'"))


@pytest.mark.parametrize("query", ["DELETE FROM customer_profiles", "UPDATE t SET x = 1", "selection"])
def test_query_must_be_a_select(tmp_path: Path, query: str) -> None:
    text = edit("table: customer_profiles,", f"query: '{query}',")
    assert_problem(tmp_path, text, line=5, key="source", says=("SELECT",))


def test_bad_table_name(tmp_path: Path) -> None:
    text = edit("table: customer_profiles,", "table: 'customer profiles',")
    assert_problem(tmp_path, text, line=5, key="source", says=("not a table name", "schema.name"))


def test_bad_mode(tmp_path: Path) -> None:
    text = edit("mode: create_and_update", "mode: upsert")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "mode: upsert"),
        key="export.mode",
        says=("create_only", "update_only", "create_and_update"),
    )


def test_bad_order_by(tmp_path: Path) -> None:
    text = edit("order_by: updated_at desc", "order_by: updated_at descending")
    assert_problem(
        tmp_path, text, line=line_of(text, "order_by:"), key="export.order_by", says=("'<column> asc|desc'",)
    )


def test_stripe_id_needs_update_only(tmp_path: Path) -> None:
    text = edit("stripe: email}", "stripe: id}")
    assert_problem(
        tmp_path, text, line=line_of(text, "stripe: id}"), key="export.matching.stripe", says=("update_only",)
    )


def test_cannot_match_on_an_unmatchable_field(tmp_path: Path) -> None:
    text = edit("stripe: email}", "stripe: phone}")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "matching:"),
        key="export.matching.stripe",
        says=("cannot match on 'phone'", "email, id, metadata.<key>"),
    )


def test_mapping_writing_the_matched_field_is_rejected(tmp_path: Path) -> None:
    _, error = errors(tmp_path, edit("phone: phone", "email: email"))
    assert len(error.problems) == 1
    assert "writes 'email', the matched Stripe field" in error.problems[0].message
    assert "remove it from the mapping" in error.problems[0].message


def test_mapping_may_write_a_metadata_field_matched_on_id(tmp_path: Path) -> None:
    text = edit("mode: create_and_update", "mode: update_only")
    text = edit("stripe: email}", "stripe: id}", text)
    assert load_spec(write(tmp_path, text)).transformation.mapping is not None


def test_mapping_writing_the_matched_field_names_its_line(tmp_path: Path) -> None:
    text = edit("phone: phone", "email: email")
    _, problem = only_problem(tmp_path, text)
    assert problem.path.startswith("transformation")
    assert problem.line in (
        line_of(text, "transformation:"),
        line_of(text, "mapping:"),
        line_of(text, "email: email"),
    )


def test_unknown_stripe_field(tmp_path: Path) -> None:
    text = edit("phone: phone", "phone_number: phone")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "phone_number:"),
        key="transformation.mapping.phone_number",
        says=("unknown Stripe customer field 'phone_number'", "allowed:", "address.city", "metadata.<key>"),
    )


def test_each_bad_mapping_field_gets_its_own_line(tmp_path: Path) -> None:
    text = edit("phone: phone", "phone_number: phone")
    text = edit("metadata.plan: plan", "metadata.plan: plan ~\n    adress.city: city", text)
    _, error = errors(tmp_path, text)
    assert [(p.line, p.path) for p in error.problems] == [  # in file order
        (line_of(text, "phone_number:"), "transformation.mapping.phone_number"),
        (line_of(text, "metadata.plan:"), "transformation.mapping.metadata.plan"),
        (line_of(text, "adress.city:"), "transformation.mapping.adress.city"),
    ]
    assert "invalid Jinja2 expression" in error.problems[1].message


@pytest.mark.parametrize("key", ["x" * 41, "a[b", "tier]", ""])
def test_bad_metadata_key(tmp_path: Path, key: str) -> None:
    text = edit("metadata.plan: plan", f"'metadata.{key}': plan")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, f"'metadata.{key}'"),
        key=f"transformation.mapping.metadata.{key}",
        says=("1 to 40 characters", "no '[' or ']'"),
    )


def test_metadata_key_of_40_characters_is_fine(tmp_path: Path) -> None:
    text = edit("metadata.plan: plan", f"metadata.{'x' * 40}: plan")
    assert load_spec(write(tmp_path, text)).transformation.mapping is not None


def test_empty_mapping(tmp_path: Path) -> None:
    text = EXAMPLE[: EXAMPLE.index("  mapping:")] + "  mapping: {}\n"
    assert_problem(
        tmp_path, text, line=line_of(text, "mapping:"), key="transformation.mapping", says=("empty",)
    )


def test_inline_python_is_checked_without_running_it(tmp_path: Path) -> None:
    base = EXAMPLE[: EXAMPLE.index("  mapping:")]
    good = base + "  python: |\n    def transform(profile):\n        return {'name': profile['first_name']}\n"
    assert load_spec(write(tmp_path, good)).transformation.language == "python"
    bad = base + "  python: |\n    def transform(profile):\n        return {'name': profile[}\n"
    problem = assert_problem(
        tmp_path, bad, line=line_of(bad, "python: |"), key="transformation.python", says=("line 2",)
    )
    assert "syntax error" in problem.message


def test_a_python_reference_is_imported_from_the_spec_folder_or_its_parent(tmp_path: Path) -> None:
    (tmp_path / "my_transforms.py").write_text("def to_customer(profile):\n    return {'name': 'x'}\n")
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    base = EXAMPLE[: EXAMPLE.index("  mapping:")]
    spec = pipelines / "eu_paying_customers.yaml"
    spec.write_text(base + "  python: my_transforms:to_customer\n")
    assert load_spec(spec).transformation.python == "my_transforms:to_customer"
    spec.write_text(base + "  python: my_transforms:missing\n")
    with pytest.raises(SpecError, match=r"transformation\.python"):
        load_spec(spec)


def test_inputs_and_limits_belong_to_code_transformations(tmp_path: Path) -> None:
    text = edit("  mapping:", "  inputs: [first_name]\n  mapping:")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "inputs:"),
        key="transformation.inputs",
        says=("javascript and python",),
    )


# --------------------------------------------------------------------------------------------
# YAML-level problems


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = edit("duplicate_customers: reject", "duplicate_customers: reject\n  mode: update_only")
    assert_problem(
        tmp_path, text, line=line_of(text, "mode: update_only"), key="export.mode", says=("key given twice",)
    )


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    text = EXAMPLE + "enabled: false\n"
    assert_problem(tmp_path, text, line=line_of(text, "enabled: false"), key="enabled", says=("given twice",))


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    text = edit("  matching: {property: email, stripe: email}", "  matching: {property: email, stripe: email")
    path, problem = only_problem(tmp_path, text)
    assert problem.path == ""
    assert problem.message.startswith("not valid YAML")
    # The parser notices the unclosed brace on the line of the broken flow mapping or just after it.
    assert problem.line in (line_of(text, "matching:"), line_of(text, "matching:") + 1)
    assert problem.render(str(path)).startswith(f"{path}:{problem.line}: not valid YAML")


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    text = edit("  mode: create_and_update", "\tmode: create_and_update")
    _, problem = only_problem(tmp_path, text)
    assert problem.message.startswith("not valid YAML") and problem.line == line_of(text, "\tmode")


@pytest.mark.timeout(60)  # without the node budget, walking this spec takes hours
def test_nested_aliases_are_refused_before_they_are_walked(tmp_path: Path) -> None:
    bomb = "x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
        f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]\n" for i in range(1, 9)
    )  # 10^9 nodes once every alias is expanded, 90 as written
    _, problem = only_problem(tmp_path, EXAMPLE + bomb)
    assert (problem.line, problem.path) == (1, "")
    assert "more than 100,000 YAML nodes" in problem.message and "aliases" in problem.message


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = edit("description: Paying EU customers", "description: &mode create_and_update")
    spec = tmp_path / "eu_paying_customers.yaml"
    spec.write_text(edit("  mode: create_and_update", "  mode: *mode", text))
    loaded = load_spec(spec)
    assert (loaded.description, loaded.export.mode) == ("create_and_update", "create_and_update")


@pytest.mark.parametrize(
    "text", ["", "# only a comment\n", "- a list\n- of things\n", "just a string\n", "42\n"]
)
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    path, problem = only_problem(tmp_path, text)
    assert (problem.line, problem.path) == (1, "")
    assert "a spec is a YAML mapping" in problem.message
    assert problem.render(str(path)) == f"{path}:1: {problem.message}"


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(missing)
    assert caught.value.source == str(missing)
    assert "cannot read the file" in caught.value.problems[0].message


# --------------------------------------------------------------------------------------------
# Several problems at once


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit("id: eu_paying_customers", "id: EU")
    text = edit("operator: is not,", "operator: isnt,", text)
    text = edit("mode: create_and_update", "mode: upsert", text)
    text = edit("phone: phone", "phone_number: phone", text)
    text = edit("description: Paying EU customers", "descripton: x", text)
    path, error = errors(tmp_path, text)
    found = sorted((p.line or 0, p.path) for p in error.problems)
    assert found == [
        (1, "id"),
        (2, "descripton"),
        (line_of(text, "isnt"), "filter.conditions[1].operator"),
        (line_of(text, "upsert"), "export.mode"),
        (line_of(text, "phone_number:"), "transformation.mapping.phone_number"),
    ]
    message = str(error)
    assert message.startswith("invalid pipeline spec\n")
    for problem in error.problems:
        assert f"  {problem.render(str(path))}" in message.splitlines()


def test_several_missing_keys(tmp_path: Path) -> None:
    _, error = errors(tmp_path, "id: x\nenabled: true\n")
    assert sorted(p.path for p in error.problems) == ["export", "source", "transformation"]
    assert all(p.message == "required key is missing" and p.line == 1 for p in error.problems)


# --------------------------------------------------------------------------------------------
# discover()


def test_discover_reports_each_file_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, EXAMPLE, "eu_paying_customers.yaml")
    write(tmp_path, BROKEN_NO_ID, "broken.yaml")
    write(tmp_path, MINIMAL_NO_ID, "minimal.yml")
    write(tmp_path, "not: a spec", "notes.txt")
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", MINIMAL_NO_ID, "in_a_sub_folder.yaml")  # sub-folders are not read

    results = discover(tmp_path)

    assert [type(r) for r in results] == [SpecError, LoadedSpec, LoadedSpec]
    broken, good, minimal = results
    assert isinstance(good, LoadedSpec) and good.path == tmp_path / "eu_paying_customers.yaml"
    assert isinstance(good.spec, PipelineSpec) and good.spec.id == "eu_paying_customers"
    assert isinstance(broken, SpecError) and broken.source == str(tmp_path / "broken.yaml")
    assert [p.path for p in broken.problems] == ["source"]
    assert isinstance(minimal, LoadedSpec) and minimal.spec.id == "minimal"


MINIMAL_NO_ID = MINIMAL.replace("id: minimal\n", "")
BROKEN_NO_ID = MINIMAL_NO_ID.replace(
    "table: customer_profiles,", "table: customer_profiles, query: SELECT 1,"
)


def test_a_copy_with_the_same_id_takes_nothing_over(tmp_path: Path) -> None:
    """The bug: ``a_copy.yaml`` with ``id: people_all`` sorted first and took the pipeline over."""
    people_all = write(tmp_path, MINIMAL.replace("id: minimal", "id: people_all"), "people_all.yaml")
    write(tmp_path, MINIMAL.replace("id: minimal", "id: people_all"), "a_copy.yaml")
    copy, live = discover(tmp_path)
    assert isinstance(live, LoadedSpec) and (live.path, live.spec.id) == (people_all, "people_all")
    assert isinstance(copy, SpecError) and copy.source == str(tmp_path / "a_copy.yaml")
    assert "differs from the file name 'a_copy.yaml'" in copy.problems[0].message


def test_same_file_name_twice_all_are_reported_none_wins(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL_NO_ID, "people_all.yaml")
    write(tmp_path, MINIMAL_NO_ID, "people_all.yml")
    write(tmp_path, MINIMAL_NO_ID, "other.yaml")
    other, yaml_file, yml_file = discover(tmp_path)
    assert isinstance(other, LoadedSpec)
    for error, twin in ((yaml_file, "people_all.yml"), (yml_file, "people_all.yaml")):
        assert isinstance(error, SpecError)
        [problem] = error.problems
        assert problem.render(error.source) == (
            f"{error.source}:1: id: pipeline id 'people_all' (the file name) is also the id of "
            f"{tmp_path / twin}; no spec with that id runs until only one is left: rename or remove "
            "all but one of these files"
        )


def test_a_broken_file_still_holds_its_id(tmp_path: Path) -> None:
    """Were it not so, a live pipeline whose file breaks would be taken over by a twin."""
    write(tmp_path, BROKEN_NO_ID, "people_all.yaml")
    write(tmp_path, MINIMAL_NO_ID, "people_all.yml")
    broken, twin = discover(tmp_path)
    assert isinstance(broken, SpecError) and isinstance(twin, SpecError)
    assert [p.path for p in broken.problems] == ["id", "source"]  # the clash, then its own
    assert [p.path for p in twin.problems] == ["id"]


def test_unique_ids_across_paths_is_the_same_rule(tmp_path: Path) -> None:
    one, two = tmp_path / "a", tmp_path / "b"
    one.mkdir()
    two.mkdir()
    first = write(one, MINIMAL_NO_ID, "people_all.yaml")
    second = write(two, MINIMAL_NO_ID, "people_all.yaml")
    results = [LoadedSpec(first, load_spec(first)), LoadedSpec(second, load_spec(second))]
    checked = unique_ids(results)
    assert [type(r) for r in checked] == [SpecError, SpecError]
    assert str(second) in checked[0].problems[0].message and str(first) in checked[1].problems[0].message
    assert [str(r) for r in unique_ids(checked)] == [str(r) for r in checked]  # checking again adds nothing
    again = [results[0], LoadedSpec(one / ".." / "a" / "people_all.yaml", results[0].spec)]
    assert unique_ids(again) == again  # one file reached twice is no clash


def test_discover_empty_folder(tmp_path: Path) -> None:
    assert discover(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Reconciliation and profiles that leave


def test_reconcile_and_leave_defaults(tmp_path: Path) -> None:
    export = load_spec(write(tmp_path, MINIMAL)).export
    assert (export.reconcile, export.reconcile_every) == ("24h", timedelta(hours=24))
    assert (export.on_leave, export.max_leave) == ("keep", "10%")
    assert export.leave_limit(1000) == 100


@pytest.mark.parametrize(
    ("written", "every"),
    [
        ("'off'", None),
        ("off", None),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("7d", timedelta(days=7)),
    ],
)
def test_reconcile_cadence(tmp_path: Path, written: str, every: timedelta | None) -> None:
    text = edit("  duplicate_customers: reject\n", f"  duplicate_customers: reject\n  reconcile: {written}\n")
    assert load_spec(write(tmp_path, text)).export.reconcile_every == every


@pytest.mark.parametrize("written", ["0h", "daily", "24", "1w", "-1h"])
def test_a_bad_reconcile_cadence_says_what_is_allowed(tmp_path: Path, written: str) -> None:
    text = edit("  duplicate_customers: reject\n", f"  duplicate_customers: reject\n  reconcile: {written}\n")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "reconcile:"),
        key="export.reconcile",
        says=(f"{written}", "is not 'off' or an interval such as 30m, 6h, 24h or 7d"),
    )


@pytest.mark.parametrize(("written", "limit"), [("0", 0), ("25", 25), ("'5%'", 50), ("'100%'", 1000)])
def test_max_leave_is_a_count_or_a_share_of_the_ledger(tmp_path: Path, written: str, limit: int) -> None:
    text = edit("  duplicate_customers: reject\n", f"  duplicate_customers: reject\n  max_leave: {written}\n")
    assert load_spec(write(tmp_path, text)).export.leave_limit(1000) == limit


def test_a_bad_max_leave_says_what_is_allowed(tmp_path: Path) -> None:
    text = edit("  duplicate_customers: reject\n", "  duplicate_customers: reject\n  max_leave: lots\n")
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "max_leave:"),
        key="export.max_leave",
        says=("'lots' is not a count (e.g. 50) or a percentage of the profiles in the ledger (e.g. 5%)",),
    )


# --------------------------------------------------------------------------------------------
# Alerts

ALERTS = """\
alerts:
  notifier: tests.core.fake_notifiers.ChannelNotifier
  args: {channel: "#ops"}
  rejected_share: 5%
  extracted_swing: 50%
  on_drift: true
"""


def with_alerts(block: str = ALERTS) -> str:
    return EXAMPLE + block


def test_alerts_are_optional_and_load_with_their_values(tmp_path: Path) -> None:
    assert load_spec(write(tmp_path, EXAMPLE)).alerts is None
    alerts = load_spec(write(tmp_path, with_alerts())).alerts
    assert alerts is not None
    assert (alerts.notifier, alerts.args, alerts.message_arg) == (
        "tests.core.fake_notifiers.ChannelNotifier",
        {"channel": "#ops"},
        "text",
    )
    assert alerts.on_failure is True and alerts.on_drift is True
    assert (alerts.share("rejected_share"), alerts.share("extracted_swing")) == (0.05, 0.5)


def test_a_function_notifier_with_its_message_argument(tmp_path: Path) -> None:
    block = "alerts:\n  notifier: tests.core.fake_notifiers:page\n  message_arg: message\n"
    alerts = load_spec(write(tmp_path, with_alerts(block))).alerts
    assert alerts is not None and alerts.on_failure and alerts.rejected_share is None


def test_an_unknown_alerts_key(tmp_path: Path) -> None:
    text = with_alerts(ALERTS.replace("on_drift: true", "on_drfit: true"))
    assert_problem(
        tmp_path, text, line=line_of(text, "on_drfit"), key="alerts.on_drfit", says=("unknown key",)
    )


@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        (
            "rejected_share: 5%",
            "rejected_share: 5",
            "alerts.rejected_share",
            "5 is not a percentage up to 100%",
        ),
        ("rejected_share: 5%", "rejected_share: 150%", "alerts.rejected_share", "up to 100% (e.g. 5%)"),
        ("extracted_swing: 50%", "extracted_swing: half", "alerts.extracted_swing", "up to 1000% (e.g. 50%)"),
        (
            "notifier: tests.core.fake_notifiers.ChannelNotifier",
            "notifier: slack",
            "alerts.notifier",
            "'slack' is not an import reference",
        ),
        ('args: {channel: "#ops"}', 'args: {channel: "#ops", text: hi}', "alerts.args.text", "message_arg"),
    ],
)
def test_bad_alert_settings_say_what_is_allowed(
    tmp_path: Path, old: str, new: str, key: str, says: str
) -> None:
    text = with_alerts(edit(old, new, ALERTS))
    line = line_of(text, new.split(":")[0] + ":")
    assert_problem(tmp_path, text, line=line, key=key, says=(says,))


def test_alerts_without_a_condition(tmp_path: Path) -> None:
    block = (
        "alerts:\n  notifier: tests.core.fake_notifiers:page\n  message_arg: message\n  on_failure: false\n"
    )
    text = with_alerts(block)
    assert_problem(tmp_path, text, line=line_of(text, "alerts:"), key="alerts", says=("no condition is on",))


def test_the_notifier_is_imported_by_validate_and_not_when_dags_are_parsed(tmp_path: Path) -> None:
    text = with_alerts(ALERTS.replace("ChannelNotifier", "SlackNotifer"))
    assert_problem(
        tmp_path,
        text,
        line=line_of(text, "notifier:"),
        key="alerts.notifier",
        says=("module 'tests.core.fake_notifiers' has no class or function 'SlackNotifer'",),
    )
    assert load_spec(write(tmp_path, text), import_references=False).alerts is not None
    wrong_args = with_alerts(ALERTS.replace('{channel: "#ops"}', '{room: "#ops"}'))
    assert_problem(
        tmp_path,
        wrong_args,
        line=line_of(wrong_args, "notifier:"),
        key="alerts.notifier",
        says=("cannot be called with room, text", "it takes channel, text, conn_id"),
    )
