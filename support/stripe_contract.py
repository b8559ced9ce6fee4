"""Stripe's contract for the customer endpoints, checked against the requests the tests send.

localstripe accepts much that Stripe refuses (``preferred_locales=""``, ``shipping[name]=""``,
unknown parameters...), so a sync can pass every test and still fail in production. This module
holds the other side of the contract: ``violations(method, path, params)`` lists what real Stripe
would refuse in one decoded request, ``decode_form`` turns a form body or query string into the
nested dicts it checks. ``localstripe_server.py`` runs it on every customer request.

The parameter definitions are read, by introspection, from the ``TypedDict``s stripe-python
generates from Stripe's OpenAPI spec (``stripe.params._customer_*_params``): names and nesting,
types, enums (``Literal``), which parameters take ``""`` to unset (``Literal['']`` in the union)
and the required members of nested hashes. Only the ``maxLength`` values, which the ``TypedDict``s
do not carry, are kept here by hand (``MAX_LENGTH``).

Checked endpoints: ``POST /v1/customers``, ``POST /v1/customers/{id}``, ``GET /v1/customers``,
``GET /v1/customers/{id}`` and ``DELETE /v1/customers/{id}`` (no parameters). Every other path is
outside the contract (``violations`` → []).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from types import UnionType
from typing import (
    Any,
    Literal,
    NamedTuple,
    NotRequired,
    Required,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)
from urllib.parse import parse_qsl

from stripe._request_options import RequestOptions
from stripe._stripe_context import StripeContext
from stripe._stripe_object import UntypedStripeObject
from stripe.params._customer_create_params import CustomerCreateParams
from stripe.params._customer_delete_params import CustomerDeleteParams
from stripe.params._customer_list_params import CustomerListParams
from stripe.params._customer_retrieve_params import CustomerRetrieveParams
from stripe.params._customer_update_params import CustomerUpdateParams
from typing_extensions import is_typeddict

# maxLength of the customer parameters, from stripe/openapi spec3.json, POST /v1/customers and
# /v1/customers/{customer} (GET /v1/customers states 512 for its ``email`` filter too). ``[]``
# stands for any index of an array. The product keeps descriptions to 350 characters itself.
_ADDRESS_PARTS = ("city", "country", "line1", "line2", "postal_code", "state")
MAX_LENGTH: dict[str, int] = {
    "name": 256,
    "phone": 20,
    "email": 512,
    "description": 5000,
    "preferred_locales[]": 5000,
    "shipping[name]": 5000,
    "shipping[phone]": 5000,
    **{f"address[{part}]": 5000 for part in _ADDRESS_PARTS},
    **{f"shipping[address][{part}]": 5000 for part in _ADDRESS_PARTS},
}
# Metadata (same source, and docs.stripe.com/api/metadata): at most 50 keys, keys up to 40
# characters, values up to 500. ``Dict[str, str]`` is metadata wherever the customer params use it.
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500

_ID = r"(?!search$)[^/]+"  # GET /v1/customers/search is another endpoint
ENDPOINTS: tuple[tuple[str, re.Pattern[str], type], ...] = (
    ("POST", re.compile(r"/v1/customers"), CustomerCreateParams),
    ("POST", re.compile(rf"/v1/customers/{_ID}"), CustomerUpdateParams),
    ("GET", re.compile(r"/v1/customers"), CustomerListParams),
    ("GET", re.compile(rf"/v1/customers/{_ID}"), CustomerRetrieveParams),
    ("DELETE", re.compile(rf"/v1/customers/{_ID}"), CustomerDeleteParams),  # takes no parameters
)
# Create, list and retrieve params extend RequestOptions (api_key, idempotency_key...): options
# the SDK sends as headers, never as parameters.
_OPTIONS = frozenset(RequestOptions.__annotations__)
# RequestOptions' annotations name types its own module only imports for type checkers.
_LOCALNS = {"StripeContext": StripeContext, "Mapping": Mapping}
_BLANK = Literal[""]


class Violation(NamedTuple):
    """One broken rule: ``param`` in bracket form (None for the request as a whole)."""

    param: str | None
    message: str


def endpoint_params(method: str, path: str) -> type | None:
    """The ``TypedDict`` of the customer endpoint ``method path``; None for any other request."""
    for endpoint_method, pattern, params in ENDPOINTS:
        if method.upper() == endpoint_method and pattern.fullmatch(path):
            return params
    return None


def decode_form(encoded: str) -> dict[str, Any]:
    """Decode Stripe's bracket encoding (``a[b][0]=x``) into nested dicts, keeping ``""`` values.

    Array indices stay dict keys (``{"0": "it"}``): only the schema can tell an index from a
    metadata key such as ``metadata[0]``. Raises ValueError for a parameter given twice or given
    both as a value and as a hash, which no encoder of Stripe's produces.
    """
    decoded: dict[str, Any] = {}
    for key, value in parse_qsl(encoded, keep_blank_values=True, strict_parsing=False):
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        if not match:
            raise ValueError(f"{key}: not a parameter name in Stripe's bracket encoding")
        names = [match[1], *re.findall(r"\[([^\[\]]*)\]", match[2])]
        node = decoded
        for depth, name in enumerate(names[:-1]):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"{_bracket(names[: depth + 1])}: given both as a value and as a hash")
        if names[-1] in node:
            raise ValueError(f"{key}: given twice (or both as a value and as a hash)")
        node[names[-1]] = value
    return decoded


def violations(method: str, path: str, params: Mapping[str, Any]) -> list[str]:
    """What real Stripe would refuse in this decoded request, one message per broken rule."""
    return [found.message for found in check(method, path, params)]


def check(method: str, path: str, params: Mapping[str, Any]) -> list[Violation]:
    """Like ``violations``, with each violation's parameter (for Stripe's ``error.param``)."""
    schema = endpoint_params(method, path)
    if schema is None:
        return []
    found: list[Violation] = []
    if schema is CustomerUpdateParams and not params:
        found.append(Violation(None, "(body): empty — an update with no parameters changes nothing"))
    _check_hash(params, schema, [], [], found)
    return found


def check_form(method: str, path: str, encoded: str) -> list[Violation]:
    """``check`` on a form body or query string, a malformed encoding being a violation too."""
    try:
        params = decode_form(encoded)
    except ValueError as exc:
        return [Violation(None, str(exc))] if endpoint_params(method, path) else []
    return check(method, path, params)


@cache
def _hints(typed_dict: type) -> dict[str, Any]:
    """Each parameter's type, NotRequired/Required unwrapped (``__required_keys__`` tells)."""
    hints = get_type_hints(typed_dict, include_extras=True, localns=_LOCALNS)
    return {name: _unwrap(hint) for name, hint in hints.items() if name not in _OPTIONS}


def _unwrap(hint: Any) -> Any:
    return _unwrap(get_args(hint)[0]) if get_origin(hint) in (NotRequired, Required) else hint


def _check_hash(
    value: Mapping[str, Any], typed_dict: type, names: list[str], shape: list[str], found: list[Violation]
) -> None:
    """Check a hash against a ``TypedDict``: unknown members, missing required ones, each value."""
    hints = _hints(typed_dict)
    for name, member in value.items():
        param = _bracket([*names, name])
        if name not in hints:
            found.append(
                Violation(
                    param,
                    f"{param}: {_show(member)} — unknown parameter ({typed_dict.__name__} has no {name})",
                )
            )
            continue
        required = name in typed_dict.__required_keys__  # type: ignore[attr-defined]
        where = (f"{typed_dict.__name__}.{name}", hints[name])
        _check_value(member, hints[name], [*names, name], [*shape, name], required, where, found)
    for name in sorted(typed_dict.__required_keys__ - value.keys()):  # type: ignore[attr-defined]
        param = _bracket([*names, name])
        owner = f"a {_bracket(names)} hash" if names else "this request"
        if is_typeddict(hints[name]):  # e.g. shipping[address] given as {}: the SDK sends nothing
            owner += "; an empty hash is encoded as nothing"
        declaration = f"{typed_dict.__name__}.{name}: {_type_name(hints[name])}"
        found.append(Violation(param, f"{param}: missing — required in {owner} ({declaration})"))


def _check_value(
    value: Any,
    hint: Any,
    names: list[str],
    shape: list[str],
    required: bool,
    where: tuple[str, Any],
    found: list[Violation],
) -> None:
    """Check one value against its type; ``where`` names the parameter's declaration."""
    param = _bracket(names)

    def broken(rule: str) -> None:
        declaration = f"{where[0]}: {_type_name(where[1])}"
        found.append(Violation(param, f"{param}: {_show(value)} — {rule} ({declaration})"))

    unsettable, enum, kinds = _analyse(hint)

    if isinstance(value, list):  # a Python list (unit tests): the dict the decoder would make
        value = {str(index): item for index, item in enumerate(value)}
    if value == "" and unsettable:
        return
    if value == "" and required:
        broken(f'a required member of the {_bracket(names[:-1])} hash; Stripe answers it "cannot be unset"')
        return
    if isinstance(value, str):
        if enum:
            if value not in enum:
                broken(f"not one of {_choices(enum)}")
        elif str in kinds:
            limit = MAX_LENGTH.get(_bracket(shape))
            if limit is not None and len(value) > limit:
                broken(f"longer than {limit} characters (Stripe's maxLength)")
        elif int in kinds and re.fullmatch(r"-?[0-9]+", value):
            pass
        elif bool in kinds and value in ("true", "false"):
            pass
        elif value == "" and any(_is_array(m) for m in kinds):
            broken('an array; Stripe offers no "" to unset it')
        elif value == "" and any(is_typeddict(m) or _is_mapping(m) for m in kinds):
            broken('a hash; Stripe offers no "" to unset it')
        else:
            broken(f"not a valid {_expected(hint)}")
        return
    if not isinstance(value, dict):
        broken(f"a {type(value).__name__}, which the form encoding cannot carry")
        return
    array = next((m for m in kinds if _is_array(m)), None)
    typed_dict = next((m for m in kinds if is_typeddict(m)), None)
    if array is not None and all(key.isdigit() for key in value):
        item = get_args(array)[0]
        for index in sorted(value, key=int):
            _check_value(value[index], item, [*names, index], [*shape, ""], False, where, found)
    elif typed_dict is not None:
        _check_hash(value, typed_dict, names, shape, found)
    elif any(_is_mapping(m) for m in kinds):
        _check_metadata(value, names, where, found)
    else:
        broken(f"a hash where Stripe expects {_expected(hint)}")


def _check_metadata(
    value: dict[str, Any], names: list[str], where: tuple[str, Any], found: list[Violation]
) -> None:
    param = _bracket(names)
    declaration = f"{where[0]}: {_type_name(where[1])}"
    if len(value) > METADATA_MAX_KEYS:
        found.append(
            Violation(param, f"{param}: {len(value)} keys — more than {METADATA_MAX_KEYS} ({declaration})")
        )
    for key, item in value.items():
        member = _bracket([*names, key])
        if not isinstance(item, str):
            rule = "a hash where Stripe expects a string"
        elif len(key) > METADATA_KEY_MAX_LENGTH:
            rule = f"key longer than {METADATA_KEY_MAX_LENGTH} characters"
        elif len(item) > METADATA_VALUE_MAX_LENGTH:
            rule = f"longer than {METADATA_VALUE_MAX_LENGTH} characters"
        else:
            continue
        found.append(Violation(member, f"{member}: {_show(item)} — {rule} ({declaration})"))


@cache
def _analyse(hint: Any) -> tuple[bool, tuple[str, ...], tuple[Any, ...]]:
    """Whether ``""`` unsets it, its enum (the SDK's forward-compatible ``|str`` dropped), and the
    other types it accepts (``str``, ``int``, ``List[...]``, a ``TypedDict``, ``Dict[str, str]``)."""
    members = _members(hint)
    enum = sorted({choice for m in members if get_origin(m) is Literal for choice in get_args(m)} - {""})
    kinds = [m for m in members if get_origin(m) is not Literal and not (enum and m is str)]
    return _BLANK in members, tuple(enum), tuple(kinds)


def _expected(hint: Any) -> str:
    _, enum, kinds = _analyse(hint)
    return " or ".join(dict.fromkeys(map(_kind, kinds))) or f"one of {_choices(enum)}"


def _members(hint: Any) -> list[Any]:
    """The members of a union (flattened), or ``[hint]``."""
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        return [member for arg in get_args(hint) for member in _members(arg)]
    return [hint]


def _is_array(hint: Any) -> bool:
    return get_origin(hint) is list


def _is_mapping(hint: Any) -> bool:
    """``Dict[str, str]`` (its twin ``UntypedStripeObject[str]`` too): a hash of free keys."""
    return get_origin(hint) in (dict, UntypedStripeObject)


def _kind(hint: Any) -> str:
    if _is_array(hint):
        return "array"
    if is_typeddict(hint) or _is_mapping(hint):
        return "hash"
    return {str: "string", int: "integer", bool: "boolean ('true' or 'false')"}.get(hint, _type_name(hint))


def _type_name(hint: Any) -> str:
    """The SDK's spelling of a type: ``Literal['']|CustomerUpdateParamsShipping``, ``List[str]``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return "|".join(_type_name(arg) for arg in args)
    if origin is Literal:
        return f"Literal[{_choices(args)}]"
    if origin is not None:
        name = {list: "List", dict: "Dict"}.get(origin, getattr(origin, "__name__", str(origin)))
        return f"{name}[{', '.join(map(_type_name, args))}]"
    return getattr(hint, "__name__", str(hint))


def _choices(choices: Sequence[str], shown: int = 8) -> str:
    listed = ", ".join(map(repr, choices[:shown]))
    return listed if len(choices) <= shown else f"{listed}, ... ({len(choices)} values)"


def _bracket(names: list[str]) -> str:
    """``["shipping", "address", "city"]`` → ``shipping[address][city]``."""
    return names[0] + "".join(f"[{name}]" for name in names[1:]) if names else ""


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}…{size}"
