"""The transform step: Jinja2 mapping expressions, matching values, Stripe value coercion, and the
flat-payload helpers of ``fields``.

Expected values are written out literally; none is computed with the code under test.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.fields import (
    field_problem,
    read_path,
    same_value,
    to_params,
)
from krenalis_airflow.core.matching import matching_problem
from krenalis_airflow.core.records import (
    Record,
    Rejection,
    Skip,
    read_records,
    read_rejections,
    write_jsonl,
)
from krenalis_airflow.core.spec import PipelineSpec, load_spec, parse_spec
from krenalis_airflow.core.transform.mapping import MappingTransform, syntax_problems, variables
from krenalis_airflow.core.transform.run import (
    NO_MATCH,
    TransformSettings,
    transform_file,
    transform_profiles,
)
from krenalis_airflow.core.transform.validate import stripe_value
from krenalis_airflow.exceptions import TransformError

SAMPLE = Path(__file__).resolve().parents[2] / "dags" / "pipelines" / "sample_customers.yaml"

ADA = {
    "profile_id": 1,
    "first_name": "Ada",
    "last_name": "Lovelace",
    "email": "Ada@Example.com",
    "country": "it",
    "plan": "pro",
    "orders": 4,
    "lifetime_value": 250.5,
    "tags": ["a", "b"],
    "nickname": None,
}


def make_spec(stripe: str = "email", prop: str = "email", mode: str = "create_and_update") -> PipelineSpec:
    return parse_spec(
        f"""\
id: transform_test
source: {{conn_id: warehouse, table: customer_profiles, key: profile_id}}
export:
  mode: {mode}
  matching: {{property: {prop}, stripe: {stripe}}}
transformation:
  mapping:
    name: first_name ~ ' ' ~ last_name
"""
    )


@pytest.fixture
def email_spec() -> PipelineSpec:
    return make_spec()


@pytest.fixture
def metadata_spec() -> PipelineSpec:
    return make_spec(stripe="metadata.crm_id", prop="crm_id")


def name_transform() -> MappingTransform:
    return MappingTransform({"name": "first_name ~ ' ' ~ last_name"})


# --------------------------------------------------------------------------------------------
# MappingTransform


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("first_name ~ ' ' ~ last_name", "Ada Lovelace"),
        ("country|upper", "IT"),
        ("first_name|lower ~ '.' ~ last_name|lower", "ada.lovelace"),
        ("orders * 2 + 1", 9),
        ("lifetime_value / 2", 125.25),
        ("(lifetime_value * 2)|round|int", 501),
        ("nickname or first_name", "Ada"),
        ("'vip' if lifetime_value > 100 else 'regular'", "vip"),
        ("tags|join(',')", "a,b"),
        ("'constant'", "constant"),
        ("nickname", None),  # a property that exists with a null value is not missing
    ],
)
def test_mapping_evaluates_expressions_over_the_profile(expression: str, expected: Any) -> None:
    assert MappingTransform({"description": expression})(ADA) == {"description": expected}


def test_mapping_returns_every_field_in_mapping_order() -> None:
    transform = MappingTransform(
        {"name": "first_name ~ ' ' ~ last_name", "address.country": "country|upper", "metadata.plan": "plan"}
    )
    payload = transform(ADA)
    assert payload == {"name": "Ada Lovelace", "address.country": "IT", "metadata.plan": "pro"}
    assert list(payload) == ["name", "address.country", "metadata.plan"]


def test_mapping_is_reusable_across_profiles() -> None:
    transform = name_transform()
    assert transform({"first_name": "Ada", "last_name": "L"}) == {"name": "Ada L"}
    assert transform({"first_name": "Alan", "last_name": "T"}) == {"name": "Alan T"}


@pytest.mark.parametrize(
    "expression",
    [
        "first_name ~ ' ' ~ surname",  # missing inside a concatenation
        "surname|upper",  # missing through a filter
        "surname",  # a bare missing name
        "surname + 1",  # missing in arithmetic
        "first_name.no_such_attribute",  # a missing attribute of a present value
    ],
)
def test_mapping_reading_a_missing_property_raises_transform_error_naming_the_field(expression: str) -> None:
    transform = MappingTransform({"metadata.plan": "plan", "shipping.name": expression})
    with pytest.raises(TransformError) as info:
        transform(ADA)
    message = str(info.value)
    assert message.startswith("shipping.name: ")
    assert "UndefinedError" in message
    undefined = "no_such_attribute" if "no_such_attribute" in expression else "surname"
    assert undefined in message


def test_columns_named_like_the_templates_internals_are_plain_columns() -> None:
    transform = MappingTransform({"description": "result ~ '!'", "name": "environment ~ context"})
    assert transform({"result": "r", "environment": "e", "context": "c"}) == {
        "description": "r!",
        "name": "ec",
    }


def test_bare_column_names_read_the_profile_as_jinja_does() -> None:
    """Bare names skip the template; what they give must not change."""
    transform = MappingTransform({"name": "first_name", "metadata.trim": "trim", "metadata.n": "nickname"})
    assert transform({"first_name": "Ada", "trim": "a column named like a helper", "nickname": None}) == {
        "name": "Ada",
        "metadata.trim": "a column named like a helper",
        "metadata.n": None,
    }
    helper = transform({"first_name": "Ada", "nickname": "A"})["metadata.trim"]  # no such column: the helper
    assert callable(helper)
    with pytest.raises(TransformError, match=r"^name: UndefinedError: 'first_name' is undefined"):
        transform({"nickname": "A"})


def test_mapping_wraps_runtime_errors_of_an_expression() -> None:
    with pytest.raises(TransformError, match=r"^metadata\.ratio: ZeroDivisionError"):
        MappingTransform({"metadata.ratio": "orders / 0"})(ADA)


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__",
        "''.__class__.__mro__[1].__subclasses__()",
        "first_name.__class__.__base__",
        "first_name.__init__.__globals__",
        "lifetime_value.__class__",
    ],
)
def test_sandbox_refuses_dunder_access(expression: str) -> None:
    with pytest.raises(TransformError) as info:
        MappingTransform({"description": expression})(ADA)
    assert str(info.value).startswith("description: ")
    assert "unsafe" in str(info.value)


def test_sandbox_refuses_mutating_the_profile() -> None:
    profile = {**ADA, "tags": ["a", "b"]}
    with pytest.raises(TransformError, match=r"^description: SecurityError"):
        MappingTransform({"description": "tags.append('c')"})(profile)
    assert profile["tags"] == ["a", "b"]


# --------------------------------------------------------------------------------------------
# Helpers (the Krenalis mapping language's functions)


def evaluate(expression: str, **profile: Any) -> Any:
    return MappingTransform({"description": expression})(profile)["description"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("coalesce(n, 'x')", "x"),
        ("coalesce(n, n)", None),
        ("coalesce(n, '', 'x')", ""),  # "" is a value, as in Krenalis
        ("coalesce(n, 0)", 0),
        ("if(true, 1, 2)", 1),
        ("if(false, 'a', 'b')", "b"),
        ("if(n, 7.5, 9.8)", 9.8),
        ("if(true, 5)", 5),
        ("if(false, 5)", None),
        ("if(n, 5)", None),
        ("if(one, 'yes', 'no')", "yes"),  # SQLite booleans are 0/1
        ("if(zero, 'yes', 'no')", "no"),
        ("if('TRUE', 'yes', 'no')", "yes"),
        ("and(true, true)", True),
        ("and(true, false)", False),
        ("and(n, true)", None),
        ("and(n, false)", False),
        ("or(true, false)", True),
        ("or(false, false)", False),
        ("or(n, true)", True),
        ("or(n, false)", None),
        ("true|not", False),
        ("zero|not", True),
        ("n|not", None),
        ("eq(5, 5)", True),
        ("eq('a', 'b')", False),
        ("eq('a', 5)", False),
        ("eq(1, true)", False),
        ("eq('a', n)", None),
        ("ne(5, 5)", False),
        ("ne('a', 5)", True),
        ("ne('a', n)", None),
        ("initcap('emily johnson')", "Emily Johnson"),
        ("initcap('john o\\'connor')", "John O'Connor"),
        ("initcap('NEW YORK')", "New York"),
        ("initcap('3rd avenue')", "3rd Avenue"),
        ("initcap(n)", None),
        ("lower('aBc')", "abc"),
        ("lower(n)", None),
        ("upper('usa')", "USA"),
        ("upper(n)", None),
        ("trim('  info@example.com ')", "info@example.com"),
        ("trim(tab)", "hello world"),
        ("trim(n)", None),
        ("ltrim(tab)", "hello world\n"),
        ("ltrim(n)", None),
        ("rtrim(tab)", "\t   hello world"),
        ("rtrim(n)", None),
        ("substring('Alice Johnson', 0, 5)", "Alice"),
        ("substring('Alice Johnson', 1, 5)", "Alice"),
        ("substring('Alice Johnson', 7)", "Johnson"),
        ("substring('Alice Johnson', 7, 20)", "Johnson"),
        ("substring('Alice Johnson', 20, 5)", ""),
        ("substring('Alice Johnson', 1, 0)", ""),
        ("substring(n, 1, 5)", None),
        ("substring('Alice', n)", None),
        ("substring('Alice', 1, n)", None),
        ("len(n)", 0),
        ("len(true)", 4),
        ("len(false)", 5),
        ("len('Seattle')", 7),
        ("len('東京')", 2),
        ("len(array(1.5, 3.9, 0.15))", 3),
        ("len(520945)", 6),
        ("len(-722)", 4),
        ("len(88.0300)", 5),
        ('len(json_parse(\'{"a": 1, "b": 2}\'))', 2),
        ('json_parse(\'{"city": "Milan"}\')', {"city": "Milan"}),
        ("json_parse('\"Android\"')", "Android"),
        ("json_parse('true')", True),
        ("json_parse('[1, 2, 3]')", [1, 2, 3]),
        ("json_parse('null')", None),
        ("json_parse(n)", None),
        ("json_parse(decoded)", {"plan": "pro"}),  # a jsonb value is already decoded
        ("array(1, n, 'x')", [1, None, "x"]),
        ("array()", []),
        ("map('a', 1, 'b', n)", {"a": 1, "b": None}),
        ("map()", {}),
    ],
)
def test_helpers_have_the_krenalis_meaning(expression: str, expected: Any) -> None:
    profile = {"n": None, "one": 1, "zero": 0, "tab": "\t   hello world\n", "decoded": {"plan": "pro"}}
    assert evaluate(expression, **profile) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("first_name|initcap", "Ada"),
        ("vip|if('VIP', 'regular')", "VIP"),
        ("n|if('VIP', 'regular')", "regular"),
        ("vip|and(true)", True),
        ("n|or(vip)", True),
        ("vip|not", False),
        ("n|coalesce(first_name)", "ada"),
        ("first_name|eq('ada')", True),
        ("first_name|ne('ada')", False),
        ("first_name|substring(2, 2)", "da"),
        ("first_name|len", 3),
        ("'{\"a\": 1}'|json_parse", {"a": 1}),
        ("first_name|upper|lower", "ada"),
        ("'  x '|trim|ltrim|rtrim", "x"),
        ("first_name|array(n)", ["ada", None]),
        ("n|lower", None),  # Jinja's own lower filter would give 'none'
        ("n|trim", None),
        ("'xxaxx'|trim('x')", "a"),  # Jinja's trim(chars) still works
    ],
)
def test_helpers_are_filters_too_with_the_piped_value_first(expression: str, expected: Any) -> None:
    assert evaluate(expression, first_name="ada", vip=True, n=None) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("if(vip, 'VIP', 'regular')", "VIP"),  # a keyword where an operand starts is a name
        ("first_name ~ ' ' ~ if(vip, '*', '')", "ada *"),
        ("(and(vip, true))", True),
        ("[or(n, vip)]", [True]),
        ("vip and (n)", None),  # after an operand, `and` is Jinja's operator
        ("not(n)", True),  # `not` is always Jinja's operator: use n|not for Krenalis's
        ("tags|map('upper')|join(',')", "A,B"),  # Jinja's map filter is kept
    ],
)
def test_keyword_named_helpers_parse_where_an_operand_starts(expression: str, expected: Any) -> None:
    assert evaluate(expression, first_name="ada", vip=True, n=None, tags=["a", "b"]) == expected


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("if('maybe', 1, 2)", "if: 'maybe' is not a boolean"),
        ("and(2, true)", "and: 2 is not a boolean"),
        ("substring('abc', 1, -1)", "substring: the length cannot be negative"),
        ("substring('abc', 'x')", "substring: 'x' is not an integer"),
        ("json_parse('{nope')", "json_parse: not valid JSON"),
        ("json_parse(3)", "json_parse: a int is not JSON text"),
        ("map('a')", "map: takes key, value pairs"),
        ("map(1, 2)", "map: keys must be text"),
    ],
)
def test_helpers_reject_what_they_cannot_handle(expression: str, error: str) -> None:
    with pytest.raises(TransformError, match=r"^description: \w+: " + re.escape(error)):
        evaluate(expression)


# --------------------------------------------------------------------------------------------
# Null and text in ~


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ({"first_name": "Ada", "last_name": None}, "Ada "),
        ({"first_name": None, "last_name": "Lovelace"}, " Lovelace"),
        ({"first_name": None, "last_name": None}, " "),
    ],
)
def test_concatenation_joins_null_as_empty_text_never_none(profile: dict[str, Any], expected: str) -> None:
    assert name_transform()(profile) == {"name": expected}


def test_trim_drops_the_space_left_by_a_null_part() -> None:
    transform = MappingTransform({"name": "trim(first_name ~ ' ' ~ last_name)"})
    assert transform({"first_name": "Ada", "last_name": None}) == {"name": "Ada"}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'n=' ~ 12.0", "n=12"),
        ("'n=' ~ 12.5", "n=12.5"),
        ("'vip: ' ~ true", "vip: true"),
        ("none ~ 'x'", "x"),  # constants too: no folding with str()
        ("'a' ~ 1 ~ none ~ 'b'", "a1b"),
    ],
)
def test_concatenation_writes_values_as_stripe_receives_them(expression: str, expected: str) -> None:
    assert evaluate(expression) == expected


def test_concatenating_a_list_fails_with_a_hint() -> None:
    with pytest.raises(
        TransformError, match=r"^description: TypeError: cannot use a list as text; use \|join"
    ):
        evaluate("'tags: ' ~ tags", tags=["a"])


def test_the_sample_pipeline_mapping_never_writes_none() -> None:
    mapping = load_spec(SAMPLE).transformation.mapping  # the sample's id is its file name
    assert mapping is not None
    profile: dict[str, Any] = dict.fromkeys(set().union(*variables(mapping).values()), "x")
    payload = MappingTransform(mapping)({**profile, "last_name": None})
    assert payload["name"] == "x "


# --------------------------------------------------------------------------------------------
# JSON columns

TRAITS = {
    "plan": "pro",
    "birth day": "05-12",
    "tags": ["a", "b"],
    "address": {"city": "Milan"},
    "phone": "+39",
}


@pytest.mark.parametrize("traits", [json.dumps(TRAITS), TRAITS], ids=["sqlite-json-text", "jsonb-dict"])
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("traits.plan", "pro"),
        ("traits['plan']", "pro"),
        ("traits['birth day']", "05-12"),
        ("traits.tags[1]", "b"),
        ("traits.tags[-1]", "b"),
        ("traits.tags[5]", None),  # past the end: null
        ("traits.address.city", "Milan"),
        ("traits.address['city']", "Milan"),
        ("traits.name", None),  # a key the object does not have: null
        ("traits.name.first", None),  # reading through null: null
        ("traits.plan|upper", "PRO"),
        ("coalesce(traits.nickname, traits.plan)", "pro"),
        ("traits.tags|join(',')", "a,b"),
    ],
)
def test_json_columns_are_read_with_dots_and_brackets(traits: Any, expression: str, expected: Any) -> None:
    assert evaluate(expression, traits=traits) == expected


def test_json_text_stays_text_unless_read_into() -> None:
    text = json.dumps({"plan": "pro"})
    assert evaluate("traits", traits=text) == text
    assert evaluate("len(traits)", traits=text) == len(text)


@pytest.mark.parametrize(
    ("value", "expression", "expected"),
    [
        ("{draft} notes", "value[0]", "{"),  # not JSON: string behaviour
        ("[1, 2", "value[0]", "["),
        ('"just a string"', "value[0]", '"'),  # JSON, but not an object or array
        ("[10, 20]", "value[1]", 20),  # a JSON array held as text
        ('  {"a": 1}', "value.a", 1),  # leading whitespace
        ("Ada", "value.upper()", "ADA"),  # string methods still work on text
    ],
)
def test_only_json_objects_and_arrays_are_decoded(value: str, expression: str, expected: Any) -> None:
    assert evaluate(expression, value=value) == expected


@pytest.mark.parametrize("traits", [json.dumps(TRAITS), TRAITS], ids=["sqlite-json-text", "jsonb-dict"])
def test_reading_a_key_of_a_non_object_json_value_fails_the_profile(traits: Any) -> None:
    with pytest.raises(TransformError, match=r"^description: UndefinedError"):
        evaluate("traits.phone.mobile", traits=traits)


def test_json_columns_are_read_the_same_way_in_the_fast_and_the_field_by_field_path() -> None:
    transform = MappingTransform({"metadata.plan": "traits.plan", "metadata.city": "traits.address.city"})
    profiles = [{"traits": json.dumps(TRAITS)}, {"traits": None}, {"traits": TRAITS}]
    assert [transform(p) for p in profiles] == [
        {"metadata.plan": "pro", "metadata.city": "Milan"},
        {"metadata.plan": None, "metadata.city": None},
        {"metadata.plan": "pro", "metadata.city": "Milan"},
    ]


@pytest.mark.parametrize(
    "expression",
    [
        "traits.__class__",
        "traits['__class__']",
        "traits.address.__class__",
        "traits.plan.__class__",
        "traits.tags.__class__",
    ],
)
def test_json_access_never_reaches_python_attributes(expression: str) -> None:
    # an object key that happens to be called __class__ is data (null here); any other object
    # goes through the sandbox, which refuses
    for traits in (json.dumps(TRAITS), TRAITS):
        try:
            value = evaluate(expression, traits=traits)
        except TransformError as exc:
            assert "unsafe" in str(exc)
        else:
            assert value is None


@pytest.mark.parametrize("expression", ["coalesce.__globals__", "lower.__code__", "map.__module__"])
def test_sandbox_refuses_the_internals_of_helpers(expression: str) -> None:
    with pytest.raises(TransformError, match="unsafe"):
        evaluate(expression)


# --------------------------------------------------------------------------------------------
# syntax_problems and variables


def test_syntax_problems_reports_each_bad_expression_with_its_field() -> None:
    problems = syntax_problems(
        {
            "name": "first_name ~ ' ' ~ last_name",
            "phone": "phone ~",
            "description": "",
            "address.city": "   ",
            "metadata.x": "plan | | upper",
            "metadata.y": None,  # type: ignore[dict-item]
        }
    )
    fields = [field for field, _ in problems]
    assert fields == ["phone", "description", "address.city", "metadata.x", "metadata.y"]
    messages = dict(problems)
    assert messages["phone"].startswith("invalid Jinja2 expression 'phone ~': ")
    assert "invalid Jinja2 expression 'plan | | upper'" in messages["metadata.x"]
    for field in ("description", "address.city", "metadata.y"):
        assert "the expression is empty" in messages[field]


def test_syntax_problems_is_empty_for_valid_expressions() -> None:
    mapping = {"name": "first_name ~ ' ' ~ last_name", "phone": "phone|default('')", "metadata.n": "n * 2"}
    assert syntax_problems(mapping) == []


def test_variables_lists_the_properties_each_expression_reads() -> None:
    found = variables(
        {
            "name": "first_name ~ ' ' ~ last_name",
            "address.country": "country|upper",
            "description": "'constant'",
            "metadata.city": "address.city",
            "metadata.score": "(orders or 0) * weight",
            "metadata.kind": "'vip' if vip else plan",
        }
    )
    assert found == {
        "name": {"first_name", "last_name"},
        "address.country": {"country"},
        "description": set(),
        "metadata.city": {"address"},
        "metadata.score": {"orders", "weight"},
        "metadata.kind": {"vip", "plan"},
    }


# --------------------------------------------------------------------------------------------
# transform_profiles


def test_email_matching_value_is_normalised_and_match_value_keeps_the_trimmed_original(
    email_spec: PipelineSpec,
) -> None:
    profile = {**ADA, "email": "  Ada.Lovelace@Example.COM \t"}
    [record] = transform_profiles([profile], name_transform(), TransformSettings.of(email_spec))
    assert record == Record(
        "1", "ada.lovelace@example.com", "Ada.Lovelace@Example.COM", {"name": "Ada Lovelace"}
    )


def test_metadata_matching_value_is_compared_exactly(metadata_spec: PipelineSpec) -> None:
    profiles = [
        {**ADA, "profile_id": 1, "crm_id": "CRM-AbC"},
        {**ADA, "profile_id": 2, "crm_id": 4012},
        {**ADA, "profile_id": 3, "crm_id": 12.0},
    ]
    records = list(transform_profiles(profiles, name_transform(), TransformSettings.of(metadata_spec)))
    assert [(r.key, r.match, r.match_value) for r in records] == [  # type: ignore[union-attr]
        ("1", "CRM-AbC", "CRM-AbC"),
        ("2", "4012", "4012"),
        ("3", "12", "12"),
    ]


@pytest.mark.parametrize("value", [None, "", " ", "\t\n "])
def test_empty_matching_value_is_rejected(email_spec: PipelineSpec, value: Any) -> None:
    [item] = transform_profiles([{**ADA, "email": value}], name_transform(), TransformSettings.of(email_spec))
    assert isinstance(item, Rejection)
    assert (item.key, item.step, item.kind) == ("1", "transform", "empty matching value")
    assert "'email'" in item.reason


@pytest.mark.parametrize("mode", ["create_only", "create_and_update"])
def test_empty_matching_value_is_rejected_whenever_the_export_creates(mode: str) -> None:
    [item] = transform_profiles(
        [{**ADA, "email": None}], name_transform(), TransformSettings.of(make_spec(mode=mode))
    )
    assert isinstance(item, Rejection)
    assert item.kind == "empty matching value"


@pytest.mark.parametrize(("stripe", "prop"), [("email", "email"), ("id", "stripe_id")])
@pytest.mark.parametrize("value", [None, "", " "])
def test_update_only_skips_a_profile_without_a_matching_value(stripe: str, prop: str, value: Any) -> None:
    """Nothing to update and update_only never creates: the user's rule, not bad data."""
    spec = make_spec(stripe=stripe, prop=prop, mode="update_only")
    profiles = [{**ADA, "profile_id": 1, prop: value}, {**ADA, "profile_id": 2, prop: "cus_2"}]
    skipped, record = transform_profiles(profiles, name_transform(), TransformSettings.of(spec))
    assert skipped == Skip("1", "transform", NO_MATCH, f"'{prop}' is empty; nothing to update")
    assert NO_MATCH == "no matching value; update_only never creates"
    assert isinstance(record, Record) and record.match == "cus_2"


def test_transform_file_writes_records_and_rejections_and_counts_skips() -> None:
    profiles = [
        {**ADA, "profile_id": 1, "stripe_id": "cus_1"},
        {**ADA, "profile_id": 2, "stripe_id": None},
        {**ADA, "profile_id": 3, "stripe_id": "cus_3", "last_name": None},
        {**ADA, "profile_id": 4, "stripe_id": ""},
        {"profile_id": 5, "stripe_id": "cus_5", "first_name": "Al"},  # no last_name: an error
    ]
    source = io.StringIO()
    write_jsonl(source, profiles)
    source.seek(0)
    records, rejections = io.StringIO(), io.StringIO()
    spec = make_spec(stripe="id", prop="stripe_id", mode="update_only")
    count, left = transform_file(source, records, rejections, name_transform(), TransformSettings.of(spec))
    assert count == 2 and [r.key for r in read_records(io.StringIO(records.getvalue()))] == ["1", "3"]
    assert [(r.key, r.kind) for r in read_rejections(io.StringIO(rejections.getvalue()))] == [
        ("5", "transformation error")
    ]
    assert (dict(left.rejected), dict(left.skipped)) == ({"transformation error": 1}, {NO_MATCH: 2})
    assert left.samples == [
        "2: 'stripe_id' is empty; nothing to update",
        "4: 'stripe_id' is empty; nothing to update",
    ]


def test_missing_matching_property_is_rejected(email_spec: PipelineSpec) -> None:
    profile = {k: v for k, v in ADA.items() if k != "email"}
    [item] = transform_profiles([profile], name_transform(), TransformSettings.of(email_spec))
    assert isinstance(item, Rejection)
    assert item.kind == "empty matching value"


def test_a_failing_expression_rejects_only_that_profile(email_spec: PipelineSpec) -> None:
    profiles = [
        {"profile_id": 1, "email": "a@x.com", "first_name": "Ada", "last_name": "Lovelace"},
        {"profile_id": 2, "email": "b@x.com", "first_name": "Alan"},  # no last_name
        {"profile_id": 3, "email": "", "first_name": "Grace", "last_name": "Hopper"},
        {"profile_id": 4, "email": "d@x.com", "first_name": "Edsger", "last_name": "Dijkstra"},
    ]
    items = list(transform_profiles(profiles, name_transform(), TransformSettings.of(email_spec)))
    assert [type(item).__name__ for item in items] == ["Record", "Rejection", "Rejection", "Record"]
    assert items[0] == Record("1", "a@x.com", "a@x.com", {"name": "Ada Lovelace"})
    assert items[3] == Record("4", "d@x.com", "d@x.com", {"name": "Edsger Dijkstra"})
    failed = items[1]
    assert isinstance(failed, Rejection)
    assert (failed.key, failed.step, failed.kind) == ("2", "transform", "transformation error")
    assert failed.reason.startswith("name: ")
    assert "last_name" in failed.reason
    assert isinstance(items[2], Rejection)
    assert items[2].kind == "empty matching value"


def test_a_bare_missing_property_rejects_the_profile_instead_of_failing_the_run(
    email_spec: PipelineSpec,
) -> None:
    profiles = [{"profile_id": 1, "email": "a@x.com"}, {"profile_id": 2, "email": "b@x.com", "phone": "+39"}]
    items = list(
        transform_profiles(profiles, MappingTransform({"phone": "phone"}), TransformSettings.of(email_spec))
    )
    assert isinstance(items[0], Rejection)
    assert items[0].kind == "transformation error"
    assert items[0].reason.startswith("phone: ")
    assert items[1] == Record("2", "b@x.com", "b@x.com", {"phone": "+39"})


def test_payload_values_are_coerced_for_stripe(email_spec: PipelineSpec) -> None:
    transform = MappingTransform(
        {
            "metadata.orders": "orders",
            "metadata.ltv": "lifetime_value",
            "metadata.twelve": "12.0",
            "metadata.vip": "orders > 1",
            "description": "nickname",
            "phone": "''",
            "preferred_locales": "['it', none, '', 'en']",
        }
    )
    [record] = transform_profiles([ADA], transform, TransformSettings.of(email_spec))
    assert isinstance(record, Record)
    assert record.payload == {
        "metadata.orders": "4",
        "metadata.ltv": "250.5",
        "metadata.twelve": "12",
        "metadata.vip": "true",
        "description": None,
        "phone": None,
        "preferred_locales": ["it", "en"],
    }


def test_profiles_are_consumed_lazily_one_batch_at_a_time(email_spec: PipelineSpec) -> None:
    seen: list[int] = []

    def profiles() -> Any:
        for i in range(1, 6):
            seen.append(i)
            yield {"profile_id": i, "email": f"p{i}@x.com", "first_name": "A", "last_name": "B"}

    items = iter(
        transform_profiles(profiles(), name_transform(), TransformSettings.of(email_spec), batch_size=2)
    )
    first = next(items)
    assert isinstance(first, Record)
    assert first.key == "1"
    assert seen == [1, 2]
    assert [r.key for r in items] == ["2", "3", "4", "5"]


def test_an_invalid_output_rejects_that_profile_with_every_reason(email_spec: PipelineSpec) -> None:
    transform = MappingTransform(
        {"name": "first_name", "address.country": "country", "metadata.notes": "notes"}
    )
    profiles = [
        {"profile_id": 1, "email": "a@x.com", "first_name": "Ada", "country": "IT", "notes": "ok"},
        {"profile_id": 2, "email": "b@x.com", "first_name": "B" * 300, "country": "it", "notes": "n" * 501},
        {"profile_id": 3, "email": "c@x.com", "first_name": "Cy", "country": None, "notes": None},
    ]
    items = list(transform_profiles(profiles, transform, TransformSettings.of(email_spec)))
    assert items[0] == Record(
        "1", "a@x.com", "a@x.com", {"name": "Ada", "address.country": "IT", "metadata.notes": "ok"}
    )
    assert items[1] == Rejection(
        "2",
        "transform",
        "invalid output",
        "name: 300 characters; Stripe allows at most 256; "
        "address.country: 'it' must be upper case: 'IT' (e.g. upper(country)); "
        "metadata.notes: 501 characters; Stripe allows at most 500 in a metadata value",
    )
    assert isinstance(items[2], Record)


def test_a_value_without_a_text_form_is_an_invalid_output(email_spec: PipelineSpec) -> None:
    [item] = transform_profiles(
        [ADA], MappingTransform({"description": "tags"}), TransformSettings.of(email_spec)
    )
    assert item == Rejection(
        "1",
        "transform",
        "invalid output",
        "description: a list is not text; join it (|join(', ')) or pick one element",
    )


def test_the_matched_email_is_checked_when_a_create_would_write_it() -> None:
    profile = {**ADA, "email": "ada at example.com"}
    [item] = transform_profiles([profile], name_transform(), TransformSettings.of(make_spec()))
    assert item == Rejection(
        "1", "transform", "invalid output", "email: 'ada at example.com' is not an email address"
    )


def test_the_matched_value_is_not_checked_when_the_export_never_creates() -> None:
    spec = make_spec(mode="update_only")
    profile = {**ADA, "email": "ada at example.com"}
    [item] = transform_profiles([profile], name_transform(), TransformSettings.of(spec))
    assert isinstance(item, Record)


def test_the_matched_metadata_key_counts_towards_the_fifty(metadata_spec: PipelineSpec) -> None:
    mapping = {f"metadata.k{i}": "'v'" for i in range(50)}
    [item] = transform_profiles(
        [{**ADA, "crm_id": "C1"}], MappingTransform(mapping), TransformSettings.of(metadata_spec)
    )
    assert item == Rejection(
        "1", "transform", "invalid output", "metadata: 51 keys; Stripe allows at most 50"
    )


# --------------------------------------------------------------------------------------------
# stripe_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("Ada", "Ada"),
        (" padded ", " padded "),
        (0, "0"),
        (42, "42"),
        (12.0, "12"),
        (-3.0, "-3"),
        (12.5, "12.5"),
        (True, "true"),
        (False, "false"),
    ],
)
def test_stripe_value_coerces_to_text(value: Any, expected: Any) -> None:
    assert stripe_value("metadata.x", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("it", ["it"]),
        (["it", "en"], ["it", "en"]),
        (("fr",), ["fr"]),
        (["it", None, "", "en"], ["it", "en"]),
        ([1, True], ["1", "true"]),
        (None, None),
        ("", None),
    ],
)
def test_stripe_value_preferred_locales_is_a_list_of_text(value: Any, expected: Any) -> None:
    assert stripe_value("preferred_locales", value) == expected


def test_stripe_value_does_not_turn_lists_into_lists_outside_preferred_locales() -> None:
    assert stripe_value("description", ["it", "en"]) == "['it', 'en']"


# --------------------------------------------------------------------------------------------
# fields


def test_to_params_on_create_omits_none() -> None:
    payload = {"name": "Ada", "phone": None, "metadata.plan": None, "address.city": None}
    assert to_params(payload, creating=True) == {"name": "Ada"}


def test_to_params_on_update_sends_empty_string_for_none() -> None:
    payload = {
        "name": "Ada",
        "phone": None,
        "metadata.plan": None,
        "address.city": None,
        "address.line1": "1 Main",
    }
    assert to_params(payload, creating=False) == {
        "name": "Ada",
        "phone": "",
        "metadata": {"plan": ""},
        "address": {"city": "", "line1": "1 Main"},
    }


def test_to_params_on_update_removes_a_wholly_cleared_hash_whole() -> None:
    payload = {
        "shipping.name": None,
        "shipping.address.line1": None,
        "shipping.address.city": None,
        "address.city": None,
        "metadata.plan": None,
    }
    assert to_params(payload, creating=False) == {"shipping": "", "address": "", "metadata": {"plan": ""}}
    assert to_params(payload, creating=True) == {}


def test_to_params_nests_address_and_shipping_paths() -> None:
    payload = {
        "address.line1": "1 Main St",
        "address.country": "IT",
        "shipping.name": "Ada",
        "shipping.address.city": "Rome",
        "shipping.address.postal_code": "00100",
        "metadata.plan": "pro",
        "metadata.tier": "gold",
    }
    assert to_params(payload, creating=True) == {
        "address": {"line1": "1 Main St", "country": "IT"},
        "shipping": {"name": "Ada", "address": {"city": "Rome", "postal_code": "00100"}},
        "metadata": {"plan": "pro", "tier": "gold"},
    }


def test_to_params_keeps_dotted_metadata_keys_whole() -> None:
    payload = {"metadata.crm.id": "42", "metadata.a.b.c": None}
    assert to_params(payload, creating=False) == {"metadata": {"crm.id": "42", "a.b.c": ""}}
    assert to_params(payload, creating=True) == {"metadata": {"crm.id": "42"}}


def test_to_params_does_not_touch_the_payload() -> None:
    payload = {"address.city": None, "name": "Ada"}
    to_params(payload, creating=False)
    assert payload == {"address.city": None, "name": "Ada"}


CUSTOMER = {
    "id": "cus_1",
    "name": "Ada",
    "email": None,
    "address": {"city": "Rome", "country": "IT"},
    "shipping": None,
    "metadata": {"plan": "pro", "crm.id": "42"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("name", "Ada"),
        ("email", None),
        ("phone", None),
        ("address.city", "Rome"),
        ("address.line1", None),
        ("shipping.name", None),
        ("shipping.address.city", None),
        ("metadata.plan", "pro"),
        ("metadata.crm.id", "42"),
        ("metadata.missing", None),
    ],
)
def test_read_path(path: str, expected: Any) -> None:
    assert read_path(CUSTOMER, path) == expected


def test_read_path_nested_shipping_and_missing_metadata() -> None:
    customer = {"shipping": {"name": "Ada", "address": {"city": "Milan"}}, "metadata": None}
    assert read_path(customer, "shipping.address.city") == "Milan"
    assert read_path(customer, "shipping.name") == "Ada"
    assert read_path(customer, "metadata.plan") is None
    assert read_path({}, "metadata.plan") is None


@pytest.mark.parametrize(
    ("desired", "actual", "same"),
    [
        ("Ada", "Ada", True),
        ("Ada", "ada", False),
        (None, None, True),
        (None, "", True),
        ("", None, True),
        ([], None, True),
        (None, [], True),
        ("", [], True),
        (None, "Ada", False),
        ("Ada", None, False),
        ("", "x", False),
        (["it"], ["it"], True),
        (["it"], ["en"], False),
        (["it", "en"], ["en", "it"], False),
        ("12", 12, False),
    ],
)
def test_same_value(desired: Any, actual: Any, same: bool) -> None:
    assert same_value(desired, actual) is same


@pytest.mark.parametrize(
    "path",
    [
        "name",
        "email",
        "phone",
        "description",
        "preferred_locales",
        "tax_exempt",
        "address.line1",
        "address.postal_code",
        "shipping.name",
        "shipping.phone",
        "shipping.address.country",
        "metadata.plan",
        "metadata.crm.id",
        "metadata." + "k" * 40,
    ],
)
def test_field_problem_accepts_writable_fields(path: str) -> None:
    assert field_problem(path) is None


@pytest.mark.parametrize(
    "path", ["metadata.", "metadata." + "k" * 41, "metadata.a[b]", "metadata.[x", "metadata.x]"]
)
def test_field_problem_rejects_bad_metadata_keys(path: str) -> None:
    assert field_problem(path) == "a metadata key has 1 to 40 characters and no '[' or ']'"


@pytest.mark.parametrize(
    "path", ["id", "address", "shipping", "shipping.address", "address.street", "Name", "metadata", "balance"]
)
def test_field_problem_rejects_unknown_fields_and_lists_the_allowed_ones(path: str) -> None:
    problem = field_problem(path)
    assert problem is not None
    assert problem.startswith(f"unknown Stripe customer field {path!r}; allowed: ")
    assert "address.city" in problem
    assert "shipping.address.country" in problem
    assert problem.endswith(", metadata.<key>")


@pytest.mark.parametrize("field", ["email", "id", "metadata.crm_id", "metadata.crm.id"])
def test_matching_problem_accepts_matchable_fields(field: str) -> None:
    assert matching_problem(field) is None


@pytest.mark.parametrize("field", ["name", "phone", "address.city", "metadata.", "metadata.a[0]", "Email"])
def test_matching_problem_rejects_other_fields(field: str) -> None:
    assert matching_problem(field) == f"cannot match on {field!r}; allowed: email, id, metadata.<key>"
