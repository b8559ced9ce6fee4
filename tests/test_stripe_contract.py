"""Stripe's contract for the customer endpoints (support/stripe_contract.py), and its
enforcement by the localstripe wrapper (support/localstripe_server.py).

Requests are written as the params a caller hands stripe-python and encoded by stripe-python's own
encoder, so the decoder is tested against the real wire format along with the rules.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

import pytest
import stripe
from stripe._encode import _api_encode

from support.localstripe_process import STRIPE_TEST_KEY, LocalStripe
from support.stripe_contract import check_form, decode_form, violations

pytest_plugins = ["pytester"]

CREATE = ("POST", "/v1/customers")
UPDATE = ("POST", "/v1/customers/cus_NffrFeUfNV2Hib")
LIST = ("GET", "/v1/customers")
RETRIEVE = ("GET", "/v1/customers/cus_NffrFeUfNV2Hib")
ADDRESS = {"line1": "Via Roma 1", "city": "Milano", "postal_code": "20121", "country": "IT"}


def encode(params: dict[str, Any]) -> str:
    """What stripe-python 16 sends for ``params`` (``_api_requestor``: urlencode, brackets kept)."""
    return urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")


def found(endpoint: tuple[str, str], params: dict[str, Any] | str) -> list[str]:
    """The violations of one request, given as SDK params or as a raw encoded form."""
    method, path = endpoint
    return [
        v.message for v in check_form(method, path, params if isinstance(params, str) else encode(params))
    ]


VALID = {
    "create with every field the product writes": (
        CREATE,
        {
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "phone": "+39 02 1234567",
            "description": "x" * 5000,
            "preferred_locales": ["it", "en"],
            "address": ADDRESS,
            "shipping": {"name": "Ada", "address": ADDRESS, "phone": "+39 02 1234567"},
            "tax_exempt": "none",
            "metadata": {"profile_id": "42", "pipeline": "sample", "0": "a key, not an index"},
        },
    ),
    "create, empty": (CREATE, {}),
    "int and bool params": (CREATE, {"balance": -500, "validate": True}),
    "array of hashes": (CREATE, {"tax_id_data": [{"type": "eu_vat", "value": "IT123"}]}),
    "update clears shipping": (UPDATE, {"shipping": ""}),
    "update clears address": (UPDATE, {"address": ""}),
    "update clears one metadata key": (UPDATE, {"metadata": {"plan": ""}}),
    "update clears all metadata": (UPDATE, {"metadata": ""}),
    "update clears tax_exempt": (UPDATE, {"tax_exempt": ""}),
    "update clears a string": (UPDATE, {"name": "", "phone": ""}),
    "update clears an optional shipping part": (
        UPDATE,
        {"shipping": {"name": "A", "address": {"city": "X"}, "phone": ""}},
    ),
    "update clears an address part": (UPDATE, {"address": {"line2": ""}}),
    "metadata at the limits": (UPDATE, {"metadata": {f"{i:040d}": "v" * 500 for i in range(50)}}),
    "list, next page": (LIST, "limit=100&starting_after=cus_x"),
    "list by email": (LIST, "email="),
    "list by created range": (LIST, {"created": {"gte": 1700000000}}),
    "retrieve": (RETRIEVE, ""),
    "retrieve, expanded": (RETRIEVE, {"expand": ["default_source"]}),
    "another endpoint: not checked": (("GET", "/v1/customers/search"), "query=anything"),
    "localstripe's config: not checked": (("DELETE", "/_config/data"), "whatever=1"),
}


@pytest.mark.parametrize(("endpoint", "params"), VALID.values(), ids=VALID.keys())
def test_valid_requests_pass(endpoint: tuple[str, str], params: dict[str, Any] | str) -> None:
    assert found(endpoint, params) == []


INVALID = {
    "array unset with an empty string": (
        UPDATE,
        {"preferred_locales": ""},
        'preferred_locales: "" — an array; Stripe offers no "" to unset it '
        "(CustomerUpdateParams.preferred_locales: List[str])",
    ),
    "required shipping name emptied, address kept": (
        UPDATE,
        {"shipping": {"name": "", "address": {"city": "Milano"}}},
        'shipping[name]: "" — a required member of the shipping hash; Stripe answers it "cannot be unset" '
        "(CustomerUpdateParamsShipping.name: str)",
    ),
    "shipping without address on create": (
        CREATE,
        {"shipping": {"name": "Ada"}},
        "shipping[address]: missing — required in a shipping hash",
    ),
    "shipping whose address is empty, on update (encoded as nothing)": (
        UPDATE,
        {"shipping": {"name": "Ada", "address": {}}},
        "shipping[address]: missing — required in a shipping hash",
    ),
    "shipping without name": (UPDATE, {"shipping": {"address": ADDRESS}}, "shipping[name]: missing"),
    "tax_exempt outside the enum (the SDK's trailing str ignored)": (
        UPDATE,
        {"tax_exempt": "bogus"},
        "tax_exempt: \"bogus\" — not one of 'exempt', 'none', 'reverse'",
    ),
    "enum without Literal[''] emptied": (
        CREATE,
        {"tax": {"validate_location": ""}},
        "tax[validate_location]: \"\" — not one of 'deferred', 'immediately'",
    ),
    "unknown parameter": (UPDATE, {"nickname": "x"}, 'nickname: "x" — unknown parameter'),
    "unknown nested parameter": (
        CREATE,
        {"address": {"street": "Via Roma"}},
        'address[street]: "Via Roma" — unknown parameter (CustomerCreateParamsAddress has no street)',
    ),
    "request option sent as a parameter": (CREATE, {"idempotency_key": "k"}, "idempotency_key"),
    "create-only parameter on update": (
        UPDATE,
        {"tax_id_data": [{"type": "eu_vat", "value": "x"}]},
        "tax_id_data",
    ),
    "empty update": (UPDATE, {}, "(body): empty — an update with no parameters changes nothing"),
    "empty update: an empty list is encoded as nothing": (
        UPDATE,
        {"preferred_locales": []},
        "an update with no parameters changes nothing",
    ),
    "name too long": (CREATE, {"name": "x" * 257}, "name: "),
    "phone too long": (UPDATE, {"phone": "1" * 21}, "longer than 20 characters"),
    "shipping address part too long": (
        UPDATE,
        {"shipping": {"name": "A", "address": {"city": "x" * 5001}}},
        "shipping[address][city]: ",
    ),
    "locale too long": (CREATE, {"preferred_locales": ["it", "x" * 5001]}, "preferred_locales[1]: "),
    "metadata key too long": (CREATE, {"metadata": {"k" * 41: "v"}}, "key longer than 40 characters"),
    "metadata value too long": (CREATE, {"metadata": {"k": "v" * 501}}, "metadata[k]: "),
    "too many metadata keys": (CREATE, {"metadata": {str(i): "v" for i in range(51)}}, "metadata: 51 keys"),
    "metadata value nested": (CREATE, "metadata[a][b]=c", "metadata[a]: "),
    "hash without Literal[''] emptied": (UPDATE, {"cash_balance": ""}, 'a hash; Stripe offers no ""'),
    "string where a hash is expected": (CREATE, {"shipping": "Ada"}, 'shipping: "Ada" — not a valid hash'),
    "hash where a string is expected": (CREATE, {"email": {"a": "b"}}, "email: "),
    "not an integer": (LIST, {"limit": "ten"}, 'limit: "ten" — not a valid integer'),
    "not a boolean": (CREATE, "validate=yes", 'validate: "yes" — not a valid boolean'),
    "parameter given twice": (UPDATE, "name=a&name=b", "name: given twice"),
    "unknown list filter": (LIST, {"name": "Ada"}, 'name: "Ada" — unknown parameter'),
    "retrieve takes no filters": (RETRIEVE, {"email": "a@example.com"}, "email"),
}


@pytest.mark.parametrize(("endpoint", "params", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_requests_are_violations(
    endpoint: tuple[str, str], params: dict[str, Any] | str, expected: str
) -> None:
    messages = found(endpoint, params)
    assert len(messages) == 1, messages
    assert expected in messages[0]


def test_every_violation_of_a_request_is_listed() -> None:
    params = decode_form(
        encode({"preferred_locales": "", "shipping": {"name": "", "address": {"city": "X"}}})
    )
    assert [message.split(":")[0] for message in violations(*UPDATE, params)] == [
        "preferred_locales",
        "shipping[name]",
    ]


def test_decoder_keeps_empty_strings_and_nesting() -> None:
    form = encode(
        {
            "shipping": {"name": "", "address": {"city": "Milano"}},
            "preferred_locales": ["it"],
            "tax_exempt": "",
        }
    )
    assert decode_form(form) == {
        "shipping": {"name": "", "address": {"city": "Milano"}},
        "preferred_locales": {"0": "it"},  # indices stay keys: the schema tells arrays apart
        "tax_exempt": "",
    }


def post(
    url: str, body: str, content_type: str = "application/x-www-form-urlencoded"
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=body.encode(),
        headers={"Authorization": f"Bearer {STRIPE_TEST_KEY}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.stripe_contract_violations_expected
def test_localstripe_refuses_what_stripe_refuses_and_logs_it(
    localstripe: LocalStripe, stripe_url: str
) -> None:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": stripe_url})
    customer = client.v1.customers.create(params={"name": "Ada", "preferred_locales": ["it"]})
    mark = localstripe.mark()

    status, body = post(f"{stripe_url}/v1/customers/{customer.id}", "preferred_locales=&name=Grace")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "preferred_locales"
    assert body["error"]["message"].startswith('preferred_locales: "" — an array')
    assert client.v1.customers.retrieve(customer.id).name == "Ada"  # never reached localstripe
    with pytest.raises(stripe.InvalidRequestError, match="an update with no parameters"):
        client.v1.customers.update(customer.id, params={})
    json_status, _ = post(f"{stripe_url}/v1/customers", '{"name": "Ada"}', "application/json")
    assert json_status == 400  # stock localstripe takes JSON; Stripe's v1 API does not

    assert [(v["method"], v["path"], v["param"]) for v in localstripe.contract_violations(since=mark)] == [
        ("POST", f"/v1/customers/{customer.id}", "preferred_locales"),
        ("POST", f"/v1/customers/{customer.id}", None),
        ("POST", "/v1/customers", None),
    ]
    mark = localstripe.mark()
    client.v1.customers.update(customer.id, params={"name": "Grace", "preferred_locales": ["en"]})
    assert client.v1.customers.retrieve(customer.id).preferred_locales == ["en"]
    assert localstripe.contract_violations(since=mark) == []


INNER_TESTS = """
import os
import urllib.error
import urllib.request

import pytest


def send(path, form=None):
    request = urllib.request.Request(
        os.environ["CONTRACT_STRIPE_URL"] + path,
        data=None if form is None else form.encode(),
        headers={"Authorization": "Bearer sk_test_krenalis"},
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as error:
        error.close()


def test_clears_a_locale_with_an_empty_string():
    send("/v1/customers/cus_missing", "preferred_locales=")


@pytest.mark.stripe_contract_violations_expected
def test_opted_out():
    send("/v1/customers/cus_missing", "preferred_locales=")


def test_valid_requests():
    send("/v1/customers?limit=100")
"""


@pytest.mark.stripe_contract_violations_expected  # the inner tests' violations reach the same server
def test_the_autouse_fixture_fails_tests_that_broke_the_contract(
    pytester: pytest.Pytester, stripe_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTRACT_STRIPE_URL", stripe_url)
    pytester.makeconftest(
        "from tests.conftest import stripe_contract_check  # noqa: F401 - the fixture under test\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'stripe_contract_violations_expected: opt out')\n"
    )
    pytester.makepyfile(INNER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_clears_a_locale_with_an_empty_string*",
            "*1 request(s) that real Stripe refuses (localstripe answered 400):",
            '*POST /v1/customers/cus_missing: preferred_locales: "" — an array; Stripe offers no "" to unset it*',
        ]
    )
