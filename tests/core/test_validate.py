"""Output validation (every rule, with its exact reason) and the static checks of mappings."""

from __future__ import annotations

import math
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krenalis_airflow.core.transform.mapping import mapping_static_problems
from krenalis_airflow.core.transform.validate import (
    Language,
    checked_payload,
    flat_output,
    output_problems,
    stripe_value,
    type_problems,
)

LANGUAGES: list[Language] = ["mapping", "javascript", "python"]

# --------------------------------------------------------------------------------------------
# output_problems: one value at a time


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("name", "N" * 256),
        ("phone", "+39 02 1234 5678"),
        ("phone", "+" + "1" * 19),
        ("email", "ada.lovelace+stripe@mail.example.co.uk"),
        ("email", "a@b.co"),
        ("description", "d" * 350),
        ("address.line1", "l" * 5000),
        ("address.country", "IT"),
        ("address.country", "XK"),
        ("shipping.address.country", "GB"),
        ("shipping.name", "Ada"),
        ("preferred_locales", ["en", "en-GB", "es-419", "zh-Hant-TW", "fil"]),
        ("preferred_locales", []),
        ("tax_exempt", "none"),
        ("tax_exempt", "exempt"),
        ("tax_exempt", "reverse"),
        ("metadata.notes", "n" * 500),
        ("metadata." + "k" * 40, "v"),
        ("metadata.crm.id", "42"),
        ("name", None),
        ("email", None),
        ("address.country", None),
        ("preferred_locales", None),
        ("tax_exempt", None),
        ("metadata.plan", None),
    ],
)
def test_valid_values_have_no_problems(path: str, value: Any) -> None:
    assert output_problems({path: value}) == []


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("name", "N" * 257, "name: 257 characters; Stripe allows at most 256"),
        ("phone", "+39 02 1234 5678 ext 9", "phone: 22 characters; Stripe allows at most 20"),
        ("description", "d" * 351, "description: 351 characters; Stripe allows at most 350"),
        ("address.city", "c" * 5001, "address.city: 5001 characters; Stripe allows at most 5000"),
        (
            "shipping.address.line2",
            "l" * 5001,
            "shipping.address.line2: 5001 characters; Stripe allows at most 5000",
        ),
        ("shipping.phone", "p" * 5001, "shipping.phone: 5001 characters; Stripe allows at most 5000"),
        ("email", "ada", "email: 'ada' is not an email address"),
        ("email", "ada@example", "email: 'ada@example' is not an email address"),
        ("email", "ada@@example.com", "email: 'ada@@example.com' is not an email address"),
        ("email", "ada lovelace@example.com", "email: 'ada lovelace@example.com' is not an email address"),
        ("email", "ada@example.com.", "email: 'ada@example.com.' is not an email address"),
        (
            "email",
            " ada@example.com",
            "email: ' ada@example.com' is not an email address (surrounding spaces: use trim())",
        ),
        ("email", "a@" + "e" * 508 + ".com", "email: 514 characters; Stripe allows at most 512"),
        ("address.country", "it", "address.country: 'it' must be upper case: 'IT' (e.g. upper(country))"),
        (
            "address.country",
            "Italy",
            "address.country: 'Italy' is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)",
        ),
        (
            "address.country",
            "ITA",
            "address.country: 'ITA' is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)",
        ),
        (
            "address.country",
            "ZZ",
            "address.country: 'ZZ' is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)",
        ),
        ("address.country", "UK", "address.country: 'UK' is not an ISO 3166-1 alpha-2 code; use 'GB'"),
        (
            "shipping.address.country",
            "de",
            "shipping.address.country: 'de' must be upper case: 'DE' (e.g. upper(country))",
        ),
        (
            "preferred_locales",
            ["english"],
            "preferred_locales: 'english' is not a locale like en, en-GB or es-419",
        ),
        (
            "preferred_locales",
            ["en_US"],
            "preferred_locales: 'en_US' is not a locale like en, en-GB or es-419",
        ),
        (
            "preferred_locales",
            ["en-us"],
            "preferred_locales: 'en-us' is not a locale like en, en-GB or es-419",
        ),
        (
            "preferred_locales",
            ["it,en"],
            "preferred_locales: 'it,en' is not a locale like en, en-GB or es-419",
        ),
        ("preferred_locales", "en", "preferred_locales: expected a list of locales, got str"),
        ("tax_exempt", "yes", "tax_exempt: 'yes' is not one of none, exempt, reverse"),
        ("tax_exempt", "NONE", "tax_exempt: 'NONE' is not one of none, exempt, reverse"),
        (
            "metadata.notes",
            "n" * 501,
            "metadata.notes: 501 characters; Stripe allows at most 500 in a metadata value",
        ),
        (
            "metadata." + "k" * 41,
            "v",
            "metadata." + "k" * 41 + ": a metadata key has 1 to 40 characters and no '[' or ']'",
        ),
        ("metadata.a[b]", "v", "metadata.a[b]: a metadata key has 1 to 40 characters and no '[' or ']'"),
        ("name", 42, "name: expected text, got int"),
        ("metadata.n", 4.5, "metadata.n: expected text, got float"),
    ],
)
def test_each_rule_names_the_field_and_the_problem(path: str, value: Any, problem: str) -> None:
    assert output_problems({path: value}) == [problem]


def test_unknown_fields_are_reported_with_the_allowed_ones() -> None:
    [problem] = output_problems({"balance": "100"})
    assert problem.startswith("balance: unknown Stripe customer field 'balance'; allowed: ")
    assert "tax_exempt" in problem


def test_unknown_fields_are_reported_even_when_null() -> None:
    [problem] = output_problems({"nmae": None})
    assert problem.startswith("nmae: unknown Stripe customer field 'nmae'")


def test_every_problem_of_a_payload_is_reported_in_order() -> None:
    payload = {"name": "Ada", "email": "nope", "address.country": "it", "metadata.x": "v" * 501}
    assert output_problems(payload) == [
        "email: 'nope' is not an email address",
        "address.country: 'it' must be upper case: 'IT' (e.g. upper(country))",
        "metadata.x: 501 characters; Stripe allows at most 500 in a metadata value",
    ]


# --------------------------------------------------------------------------------------------
# output_problems: the payload as a whole


def test_at_most_fifty_metadata_keys_are_written() -> None:
    fifty = {f"metadata.k{i}": "v" for i in range(50)}
    assert output_problems(fifty) == []
    assert output_problems({**fifty, "metadata.k50": "v"}) == ["metadata: 51 keys; Stripe allows at most 50"]


def test_deleted_metadata_keys_do_not_count() -> None:
    payload = {**{f"metadata.k{i}": "v" for i in range(50)}, "metadata.gone": None}
    assert output_problems(payload) == []


def test_shipping_needs_a_name_and_a_first_line_when_written() -> None:
    payload = {"shipping.name": None, "shipping.address.line1": None, "shipping.phone": "+39"}
    assert output_problems(payload) == [
        "shipping.name: Stripe requires it whenever shipping is written",
        "shipping.address.line1: Stripe requires it whenever shipping is written",
    ]


def test_shipping_all_null_is_a_clear_not_a_problem() -> None:
    assert (
        output_problems({"shipping.name": None, "shipping.address.line1": None, "shipping.phone": None}) == []
    )


def test_shipping_parts_the_payload_does_not_write_are_not_required_here() -> None:
    # on update they are completed from Stripe; a mapping that never writes them is a spec error
    assert output_problems({"shipping.phone": "+39"}) == []


# --------------------------------------------------------------------------------------------
# type_problems: raw outputs


@pytest.mark.parametrize(
    "value",
    [None, "text", 0, 12, -3.5, True, False],
)
def test_scalars_have_a_text_form(value: Any) -> None:
    assert type_problems({"metadata.x": value}) == []


def test_dates_decimals_and_uuids_have_a_text_form() -> None:
    import datetime
    import decimal
    import uuid

    values = [
        datetime.date(2024, 1, 2),
        datetime.datetime(2024, 1, 2, 3, 4),
        decimal.Decimal("1.5"),
        uuid.uuid4(),
    ]
    assert type_problems({f"metadata.v{i}": v for i, v in enumerate(values)}) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["a"], "metadata.x: a list is not text; join it (|join(', ')) or pick one element"),
        (("a",), "metadata.x: a list is not text; join it (|join(', ')) or pick one element"),
        (
            {"a": 1},
            "metadata.x: an object is not text; send it as JSON text with |tojson, or pick one of its keys",
        ),
        (b"bytes", "metadata.x: a value of type bytes is not text, a number, a boolean or null"),
        (object(), "metadata.x: a value of type object is not text, a number, a boolean or null"),
        (float("nan"), "metadata.x: nan is not a number Stripe can store"),
        (float("inf"), "metadata.x: inf is not a number Stripe can store"),
    ],
)
def test_values_without_a_text_form_are_reported(value: Any, problem: str) -> None:
    assert type_problems({"metadata.x": value}) == [problem]


def test_preferred_locales_may_be_a_list_of_scalars() -> None:
    assert type_problems({"preferred_locales": ["it", None, "en"]}) == []
    assert type_problems({"preferred_locales": ("it",)}) == []
    assert type_problems({"preferred_locales": [["it"]]}) == [
        "preferred_locales: a locale must be text, not a value of type list"
    ]


def test_field_names_must_be_text() -> None:
    assert type_problems({3: "x", "name": "Ada"}) == ["3: a field name must be text"]


def test_field_names_must_be_text_inside_nested_hashes_too() -> None:
    assert type_problems({"metadata": {1: "x"}}, "python") == ["metadata: the key 1 must be text"]


# --------------------------------------------------------------------------------------------
# Nested outputs: address, shipping, shipping.address and metadata as objects

NESTED = {
    "name": "Ada",
    "metadata": {"plan": "pro", "crm.id": 42},
    "address": {"city": "Milano", "country": "IT"},
    "shipping": {"name": "A", "phone": "+39 02 1234", "address": {"line1": "Via Roma 1", "city": "Milano"}},
}
DOTTED = {
    "name": "Ada",
    "metadata.plan": "pro",
    "metadata.crm.id": 42,
    "address.city": "Milano",
    "address.country": "IT",
    "shipping.name": "A",
    "shipping.phone": "+39 02 1234",
    "shipping.address.line1": "Via Roma 1",
    "shipping.address.city": "Milano",
}
ADDRESS_PARTS = ["line1", "line2", "city", "state", "postal_code", "country"]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(
    ("nested", "dotted"),
    [
        (NESTED, DOTTED),
        (
            {"shipping.address": {"line1": "Via Roma 1"}, "shipping.name": "A"},
            {"shipping.address.line1": "Via Roma 1", "shipping.name": "A"},
        ),
        (
            {"shipping": {"address.line1": "Via Roma 1", "name": "A"}},
            {"shipping.address.line1": "Via Roma 1", "shipping.name": "A"},
        ),
        ({"metadata": {"plan": None, "vip": True}}, {"metadata.plan": None, "metadata.vip": True}),
        ({"address": {"city": ""}}, {"address.city": ""}),
    ],
    ids=["every-hash", "shipping.address-and-dotted", "dotted-inside-nested", "metadata", "empty-text"],
)
def test_nested_hashes_mean_exactly_their_dotted_paths(
    nested: dict[str, Any], dotted: dict[str, Any], language: Language
) -> None:
    assert flat_output(nested, language) == (dotted, [])
    assert checked_payload(nested, {"email": "a@b.co"}, language) == checked_payload(
        dotted, {"email": "a@b.co"}, language
    )
    payload, problems = checked_payload(nested, {}, language)
    assert problems == [] and payload == {path: stripe_value(path, value) for path, value in dotted.items()}


def test_problems_inside_a_nested_hash_are_named_by_their_dotted_path() -> None:
    nested = {"address": {"country": "it", "town": "x"}, "metadata": {"notes": "n" * 501}}
    dotted = {"address.country": "it", "address.town": "x", "metadata.notes": "n" * 501}
    _, problems = checked_payload(nested, {}, "javascript")
    assert problems == checked_payload(dotted, {}, "javascript")[1]
    assert problems[0] == "address.country: 'it' must be upper case: 'IT' (e.g. upper(country))"
    assert problems[1].startswith("address.town: unknown Stripe customer field 'address.town'; allowed: ")
    assert problems[2] == "metadata.notes: 501 characters; Stripe allows at most 500 in a metadata value"


def test_a_nested_shipping_needs_its_required_parts_like_a_dotted_one() -> None:
    nested = {"shipping": {"name": "A", "address": None}}
    assert checked_payload(nested, {}, "python")[1] == [
        "shipping.address.line1: Stripe requires it whenever shipping is written"
    ]


@pytest.mark.parametrize(
    ("output", "cleared"),
    [
        ({"address": None}, [f"address.{part}" for part in ADDRESS_PARTS]),
        ({"shipping.address": None}, [f"shipping.address.{part}" for part in ADDRESS_PARTS]),
        ({"shipping": {"address": None}}, [f"shipping.address.{part}" for part in ADDRESS_PARTS]),
        (
            {"shipping": None},
            ["shipping.name", "shipping.phone", *(f"shipping.address.{part}" for part in ADDRESS_PARTS)],
        ),
    ],
)
def test_a_null_hash_clears_each_of_its_parts(output: dict[str, Any], cleared: list[str]) -> None:
    expected = dict.fromkeys(cleared)
    assert checked_payload(output, {}, "javascript") == (expected, [])
    assert checked_payload(expected, {}, "javascript") == (expected, [])


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_empty_hash_writes_nothing(language: Language) -> None:
    output = {"name": "Ada", "address": {}, "shipping": {"address": {}}, "metadata": {}}
    assert checked_payload(output, {}, language) == ({"name": "Ada"}, [])


@pytest.mark.parametrize(
    ("language", "problem"),
    [
        (
            "javascript",
            "metadata: null would delete keys this pipeline does not own; "
            "set each key to null, e.g. metadata: {plan: null}",
        ),
        (
            "python",
            "metadata: None would delete keys this pipeline does not own; "
            'set each key to None, e.g. "metadata": {"plan": None}',
        ),
        (
            "mapping",
            "metadata: null would delete keys this pipeline does not own; "
            "set each key to null, e.g. metadata.plan: none",
        ),
    ],
)
def test_a_null_metadata_is_refused(language: Language, problem: str) -> None:
    assert checked_payload({"name": "Ada", "metadata": None}, {}, language) == ({}, [problem])
    assert type_problems({"metadata": None}, language) == [problem]


@pytest.mark.parametrize(
    "output",
    [
        {"address.city": "Milano", "address": {"city": "Roma"}},
        {"address": {"city": "Roma"}, "address.city": "Milano"},
        {"shipping": {"address": {"city": "Roma"}}, "shipping.address": {"city": "Milano"}},
        {"address": None, "address.city": "Milano"},
        {"address.city": 1, "address": {"city": "1"}},
    ],
)
def test_a_path_given_twice_with_different_values_is_refused(output: dict[str, Any]) -> None:
    path = "shipping.address.city" if "shipping" in output else "address.city"
    assert checked_payload(output, {}, "python") == ({}, [f"{path}: given twice, with different values"])


@pytest.mark.parametrize(
    ("output", "payload"),
    [
        ({"address.city": "Milano", "address": {"city": "Milano"}}, {"address.city": "Milano"}),
        (
            {"address": None, "address.city": None, "address.line1": ""},
            {f"address.{part}": None for part in ADDRESS_PARTS},
        ),
        ({"metadata.plan": "pro", "metadata": {"plan": "pro"}}, {"metadata.plan": "pro"}),
    ],
)
def test_a_path_given_twice_with_the_same_value_is_fine(
    output: dict[str, Any], payload: dict[str, Any]
) -> None:
    assert checked_payload(output, {}, "javascript") == (payload, [])


@pytest.mark.parametrize(
    ("language", "value", "problem"),
    [
        (
            "mapping",
            {"a": 1},
            "an object is not text; send it as JSON text with |tojson, or pick one of its keys",
        ),
        ("mapping", ["a"], "a list is not text; join it (|join(', ')) or pick one element"),
        (
            "javascript",
            {"a": 1},
            "an object is not text; send it as JSON text with JSON.stringify(value), "
            "or pick one of its properties",
        ),
        ("javascript", ["a"], "an array is not text; join it (value.join(', ')) or pick one element"),
        (
            "python",
            {"a": 1},
            "a dict is not text; send it as JSON text with json.dumps(value), or pick one of its keys",
        ),
        ("python", ["a"], 'a list is not text; join it (", ".join(value)) or pick one element'),
        ("python", ("a",), 'a tuple is not text; join it (", ".join(value)) or pick one element'),
    ],
)
@pytest.mark.parametrize("path", ["name", "description", "metadata.prefs", "address.city"])
def test_objects_and_lists_where_text_is_wanted_get_a_hint_in_the_transformations_language(
    language: Language, value: Any, problem: str, path: str
) -> None:
    assert checked_payload({path: value}, {}, language) == ({}, [f"{path}: {problem}"])
    assert type_problems({path: value}, language) == [f"{path}: {problem}"]


def test_an_object_inside_a_nested_hash_gets_the_hint_too() -> None:
    output = {"metadata": {"prefs": {"a": 1}}, "shipping": {"address": {"city": ["Milano"]}}}
    assert checked_payload(output, {}, "javascript") == (
        {},
        [
            "metadata.prefs: an object is not text; send it as JSON text with JSON.stringify(value), "
            "or pick one of its properties",
            "shipping.address.city: an array is not text; join it (value.join(', ')) or pick one element",
        ],
    )


def test_a_hash_given_as_text_is_an_unknown_field_as_before() -> None:
    [problem] = checked_payload({"address": "Via Roma 1"}, {}, "javascript")[1]
    assert problem.startswith("address: unknown Stripe customer field 'address'; allowed: ")


# --------------------------------------------------------------------------------------------
# mapping_static_problems


def test_a_good_mapping_has_no_static_problems() -> None:
    mapping = {
        "name": "trim(first_name ~ ' ' ~ last_name)",
        "email": "lower(trim(email))",
        "address.country": "upper(country)",
        "preferred_locales": "['it', 'en']",
        "tax_exempt": "if(vat_exempt, 'exempt', 'none')",
        "description": "'Synced from the warehouse'",
        "metadata.plan": "traits.plan|coalesce('free')",
        "shipping.name": "first_name",
        "shipping.address.line1": "street",
    }
    assert mapping_static_problems(mapping) == []


@pytest.mark.parametrize(
    ("field", "expression", "problem"),
    [
        ("address.country", "'Italy'", "'Italy' is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)"),
        ("address.country", "'it'", "'it' must be upper case: 'IT' (e.g. upper(country))"),
        ("email", "'support'", "'support' is not an email address"),
        ("phone", "'+39 02 1234 5678 ext. 9'", "23 characters; Stripe allows at most 20"),
        ("preferred_locales", "['english']", "'english' is not a locale like en, en-GB or es-419"),
        ("tax_exempt", "'yes'", "'yes' is not one of none, exempt, reverse"),
        ("metadata.big", "'x' * 501", "501 characters; Stripe allows at most 500 in a metadata value"),
        ("metadata.tags", "['a', 'b']", "a list is not text; join it (|join(', ')) or pick one element"),
        ("description", "1 / 0", "fails for every profile: ZeroDivisionError: division by zero"),
        ("description", "json_parse('{')", "fails for every profile: ValueError: json_parse: not valid JSON"),
        (
            "address.country",
            "upper('it ')",
            "'IT ' is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)",
        ),
    ],
)
def test_constant_expressions_are_checked_like_outputs(field: str, expression: str, problem: str) -> None:
    [(found_field, message)] = mapping_static_problems({field: expression})
    assert found_field == field
    assert message.startswith(problem)


def test_constant_expressions_with_valid_values_pass() -> None:
    assert (
        mapping_static_problems({"address.country": "upper('it')", "description": "none", "phone": "''"})
        == []
    )


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        (
            "initcaps(first_name)",
            "unknown function 'initcaps'; helpers: and, array, coalesce, eq, if, initcap,",
        ),
        ("trim(nosuch(first_name))", "unknown function 'nosuch'; helpers: "),
        ("first_name if vip else last_name|initcaps", "unknown filter 'initcaps'; helpers: "),
        ("first_name if vip is nosuchtest else last_name", "unknown test 'nosuchtest'"),
    ],
)
def test_unknown_functions_filters_and_tests_are_reported(expression: str, problem: str) -> None:
    [(field, message)] = mapping_static_problems({"name": expression})
    assert field == "name"
    assert message.startswith(problem)


def test_an_unknown_filter_outside_a_condition_is_reported_once_with_the_helpers() -> None:
    [(field, message)] = mapping_static_problems({"name": "first_name|initcaps"})
    assert field == "name"
    assert message.startswith(
        "invalid Jinja2 expression 'first_name|initcaps': No filter named 'initcaps'.; helpers: "
    )


def test_field_and_syntax_problems_are_included() -> None:
    problems = mapping_static_problems(
        {"nmae": "first_name", "metadata." + "k" * 41: "'x'", "phone": "phone ~", "email": " "}
    )
    fields = [field for field, _ in problems]
    assert fields == ["nmae", "metadata." + "k" * 41, "phone", "email"]
    messages = dict(problems)
    assert messages["nmae"].startswith("unknown Stripe customer field 'nmae'")
    assert messages["metadata." + "k" * 41] == "a metadata key has 1 to 40 characters and no '[' or ']'"
    assert messages["phone"].startswith("invalid Jinja2 expression 'phone ~'")
    assert messages["email"].startswith("the expression is empty")


def test_expressions_reading_columns_are_not_evaluated() -> None:
    assert mapping_static_problems({"address.country": "country", "description": "1 / n"}) == []


def test_more_than_fifty_metadata_keys_is_a_spec_problem() -> None:
    mapping = {f"metadata.k{i}": "plan" for i in range(51)}
    assert mapping_static_problems(mapping) == [
        ("metadata.k50", "the mapping writes 51 metadata keys; Stripe allows at most 50")
    ]


@pytest.mark.parametrize(
    ("mapping", "missing"),
    [
        ({"shipping.phone": "phone"}, "shipping.name and shipping.address.line1"),
        ({"shipping.name": "n", "shipping.address.city": "city"}, "shipping.address.line1"),
        ({"shipping.address.line1": "street"}, "shipping.name"),
    ],
)
def test_shipping_without_its_required_parts_is_a_spec_problem(mapping: dict[str, str], missing: str) -> None:
    [(field, message)] = mapping_static_problems(mapping)
    assert field == next(iter(mapping))
    assert message == f"writing shipping needs {missing} in the mapping too: Stripe requires them"


# --------------------------------------------------------------------------------------------
# checked_payload: the one-pass version the transform step runs, against its definition

PATHS = [
    "name",
    "email",
    "phone",
    "description",
    "tax_exempt",
    "preferred_locales",
    "address.line1",
    "address.country",
    "shipping.name",
    "shipping.phone",
    "shipping.address.line1",
    "shipping.address.country",
    "metadata.plan",
    "metadata." + "k" * 41,
    "nmae",
    "balance",
]
TEXT = st.one_of(
    st.sampled_from(["", " ", "IT", "it", "UK", "none", "exempt", "en-GB", "a@b.co", "a@b", "+39 02 1234"]),
    st.text(max_size=30),
    st.integers(min_value=0, max_value=600).map(lambda n: "x" * n),  # around the length limits
    st.sampled_from([256, 257, 350, 351, 500, 501, 5000, 5001]).map(lambda n: "y" * n),
)
VALUES = st.one_of(
    TEXT,
    st.none(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.lists(st.one_of(TEXT, st.none(), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
RESULTS = st.one_of(
    st.dictionaries(st.sampled_from(PATHS), VALUES, max_size=8),
    st.integers(min_value=45, max_value=55).map(lambda n: {f"metadata.k{i}": "v" for i in range(n)}),
    st.tuples(st.dictionaries(st.sampled_from(PATHS), VALUES, max_size=4), st.integers()).map(
        lambda pair: {**pair[0], pair[1]: "a key that is not text"}
    ),
)
# Outputs that give hashes nested, beside dotted paths that may repeat what they say.
HASH_KEYS = ["address", "shipping", "shipping.address", "metadata"]
PARTS = ["line1", "city", "country", "town", "name", "phone", "address", "address.city", "plan", "k" * 41]
PART_VALUES = st.one_of(
    st.sampled_from(["IT", "Milano", "A", ""]),
    st.none(),
    st.integers(min_value=0, max_value=3),
    st.lists(st.sampled_from(["a", "b"]), max_size=2),
)
HASH_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.just({}), PART_VALUES),
    lambda inner: st.dictionaries(st.sampled_from(PARTS), inner, max_size=4),
    max_leaves=6,
)
NESTED_RESULTS = st.tuples(
    st.dictionaries(
        st.sampled_from([*PATHS, "address.city", "shipping.address.city", "metadata.k"]),
        PART_VALUES,
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(HASH_KEYS), HASH_VALUES, min_size=1, max_size=3),
).flatmap(lambda pair: st.permutations([*pair[0].items(), *pair[1].items()]).map(dict))
WRITTEN = st.one_of(
    st.just({}),
    st.builds(lambda value: {"email": value}, TEXT),
    st.builds(lambda value: {"metadata.plan": value}, TEXT),
)


def checked_by_definition(
    result: dict[Any, Any], written: dict[str, str], language: Language = "mapping"
) -> tuple[dict[str, Any], list[str]]:
    problems = type_problems(result, language)
    if problems:
        return {}, problems
    flat, _ = flat_output(result, language)
    payload = {path: stripe_value(path, value) for path, value in flat.items()}
    return payload, output_problems({**payload, **written})


def has_nan(result: dict[Any, Any]) -> bool:
    flat, _ = flat_output(result)
    return any(isinstance(value, float) and math.isnan(value) for value in flat.values())


@settings(max_examples=600, deadline=None, database=None)
@given(result=st.one_of(RESULTS, NESTED_RESULTS), written=WRITTEN, language=st.sampled_from(LANGUAGES))
def test_checked_payload_agrees_with_type_problems_then_output_problems(
    result: dict[Any, Any], written: dict[str, str], language: Language
) -> None:
    payload, problems = checked_payload(result, written, language)
    expected_payload, expected_problems = checked_by_definition(result, written, language)
    assert sorted(problems) == sorted(expected_problems)
    assert payload == expected_payload or has_nan(result)  # NaN never equals itself


SAMPLES: list[Any] = [
    *["", " ", "IT", "it", "UK", "none", "exempt", "en-GB", "a@b.co", "a@b", "+39 02 1234"],
    *["x" * n for n in (20, 21, 256, 257, 350, 351, 500, 501, 512, 513, 5000, 5001)],
    *[None, 0, 7, -3, True, False, 1.5, 2.0, -0.0, math.inf, math.nan, Decimal("2.50"), date(2026, 1, 2)],
    *[["en", "it"], ["x"], [], ("fr",), [1.5], {"a": 1}, {"x"}],
]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("written", [{}, {"email": "a@b.co"}, {"email": "not an email"}], ids=str)
def test_checked_payload_agrees_with_its_definition_on_every_path_and_kind_of_value(
    written: dict[str, str], language: Language
) -> None:
    for path in [*PATHS, *HASH_KEYS]:
        for value in SAMPLES:
            payload, problems = checked_payload({path: value}, written, language)
            expected_payload, expected_problems = checked_by_definition({path: value}, written, language)
            assert sorted(problems) == sorted(expected_problems), (path, value)
            if not (isinstance(value, float) and math.isnan(value)):
                assert payload == expected_payload, (path, value)


def test_checked_payload_coerces_like_stripe_value_and_checks_the_written_match() -> None:
    result = {"name": "", "metadata.ltv": 250.0, "metadata.vip": True, "metadata.day": date(2026, 1, 2)}
    payload, problems = checked_payload(result, {"email": "not an email"})
    assert payload == {
        "name": None,
        "metadata.ltv": "250",
        "metadata.vip": "true",
        "metadata.day": "2026-01-02",
    }
    assert problems == ["email: 'not an email' is not an email address"]
    assert checked_payload({"metadata.n": Decimal("1.5")}, {}) == ({"metadata.n": "1.5"}, [])
