"""The transform step: Jinja2 mapping expressions, matching values, Stripe value coercion, and the
flat-payload helpers of ``fields``.

Expected values are written out literally; none is computed with the code under test.
"""

from __future__ import annotations

from typing import Any

import pytest

from krenalis_airflow.core.fields import (
    field_problem,
    matching_problem,
    read_path,
    same_value,
    to_params,
)
from krenalis_airflow.core.records import Record, Rejection
from krenalis_airflow.core.spec import PipelineSpec, parse_spec
from krenalis_airflow.core.transform.mapping import MappingTransform, syntax_problems, variables
from krenalis_airflow.core.transform.run import stripe_value, transform_profiles
from krenalis_airflow.exceptions import TransformError

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


def make_spec(stripe: str = "email", prop: str = "email") -> PipelineSpec:
    return parse_spec(
        f"""\
id: transform_test
source: {{conn_id: warehouse, table: customer_profiles, key: profile_id}}
export:
  mode: create_and_update
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
    [record] = transform_profiles([profile], email_spec, name_transform())
    assert record == Record(
        "1", "ada.lovelace@example.com", "Ada.Lovelace@Example.COM", {"name": "Ada Lovelace"}
    )


def test_metadata_matching_value_is_compared_exactly(metadata_spec: PipelineSpec) -> None:
    profiles = [
        {**ADA, "profile_id": 1, "crm_id": "CRM-AbC"},
        {**ADA, "profile_id": 2, "crm_id": 4012},
        {**ADA, "profile_id": 3, "crm_id": 12.0},
    ]
    records = list(transform_profiles(profiles, metadata_spec, name_transform()))
    assert [(r.key, r.match, r.match_value) for r in records] == [  # type: ignore[union-attr]
        ("1", "CRM-AbC", "CRM-AbC"),
        ("2", "4012", "4012"),
        ("3", "12", "12"),
    ]


@pytest.mark.parametrize("value", [None, "", " ", "\t\n "])
def test_empty_matching_value_is_rejected(email_spec: PipelineSpec, value: Any) -> None:
    [item] = transform_profiles([{**ADA, "email": value}], email_spec, name_transform())
    assert isinstance(item, Rejection)
    assert (item.key, item.step, item.kind) == ("1", "transform", "empty matching value")
    assert "'email'" in item.reason


def test_missing_matching_property_is_rejected(email_spec: PipelineSpec) -> None:
    profile = {k: v for k, v in ADA.items() if k != "email"}
    [item] = transform_profiles([profile], email_spec, name_transform())
    assert isinstance(item, Rejection)
    assert item.kind == "empty matching value"


def test_a_failing_expression_rejects_only_that_profile(email_spec: PipelineSpec) -> None:
    profiles = [
        {"profile_id": 1, "email": "a@x.com", "first_name": "Ada", "last_name": "Lovelace"},
        {"profile_id": 2, "email": "b@x.com", "first_name": "Alan"},  # no last_name
        {"profile_id": 3, "email": "", "first_name": "Grace", "last_name": "Hopper"},
        {"profile_id": 4, "email": "d@x.com", "first_name": "Edsger", "last_name": "Dijkstra"},
    ]
    items = list(transform_profiles(profiles, email_spec, name_transform()))
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
    items = list(transform_profiles(profiles, email_spec, MappingTransform({"phone": "phone"})))
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
    [record] = transform_profiles([ADA], email_spec, transform)
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

    items = iter(transform_profiles(profiles(), email_spec, name_transform(), batch_size=2))
    first = next(items)
    assert isinstance(first, Record)
    assert first.key == "1"
    assert seen == [1, 2]
    assert [r.key for r in items] == ["2", "3", "4", "5"]


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
    payload = {"name": "Ada", "phone": None, "metadata.plan": None, "address.city": None}
    assert to_params(payload, creating=False) == {
        "name": "Ada",
        "phone": "",
        "metadata": {"plan": ""},
        "address": {"city": ""},
    }


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
