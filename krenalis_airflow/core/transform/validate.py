"""Output validation: what a transformation produced, checked against what Stripe accepts.

Every payload is checked before it is sent, whatever the language that produced it, so a bad
value rejects one profile with a precise reason instead of failing a Stripe call later. Two
passes, because coercion (``stripe_value``) hides types:

* ``type_problems`` looks at the raw output: a list or a dict where text is expected would
  otherwise be sent as its Python ``repr``. The raw output may give the hashes ``address``,
  ``shipping``, ``shipping.address`` and ``metadata`` as nested objects (``{"address": {"city":
  …}}``, the shape JavaScript and Python authors write): ``flat_output`` turns them into the same
  dotted paths first, so both forms mean exactly the same. Hints name the transformation's
  language (``|tojson`` in a mapping, ``JSON.stringify(value)`` in JavaScript, ``json.dumps(value)``
  in Python);
* ``output_problems`` looks at the coerced flat payload (text, ``None`` for "clear", a list of
  text for ``preferred_locales``): fields, lengths, formats, metadata limits.

``checked_payload`` coerces and does both in one pass, as the transform step needs for every
record: each field's rule is built once per path, and text within a plain length limit (most
values) passes without a call.

Limits, as stated by Stripe's OpenAPI spec (``stripe/openapi``, ``latest/openapi.spec3.json``,
``POST /v1/customers`` and ``POST /v1/customers/{customer}``, checked 2026): ``name`` 256,
``phone`` 20, ``email`` 512, every address and shipping part 5000, ``preferred_locales`` items
5000, ``tax_exempt`` one of ``none``/``exempt``/``reverse``, and ``shipping`` requires ``name``
(and, in older API versions, ``address.line1``). ``description``: the spec says 5000, but
Stripe's changelog for API version 2018-10-31 limits customer descriptions to 350 characters;
we keep the stricter 350. Metadata (docs.stripe.com/api/metadata): at most 50 keys, keys up to
40 characters without square brackets, values up to 500 characters.

Stripe's ``address.country`` is free text, but tax features need an ISO 3166-1 alpha-2 code, so
we require one, in upper case: ``'it'`` is rejected with a hint (``upper(country)``) rather than
silently changed, because the ledger and Stripe must hold exactly what the mapping says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date, time
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from krenalis_airflow.core.fields import GROUPS, METADATA_PREFIX, field_problem

MAX_LENGTH = {
    "name": 256,
    "phone": 20,
    "email": 512,
    "description": 350,
    "shipping.name": 5000,
    "shipping.phone": 5000,
}
ADDRESS_PART_MAX = 5000
METADATA_MAX_KEYS = 50
METADATA_VALUE_MAX = 500
TAX_EXEMPT = ("none", "exempt", "reverse")
SHIPPING_REQUIRED = ("shipping.name", "shipping.address.line1")
_SHIPPING_NAME, _SHIPPING_LINE1 = SHIPPING_REQUIRED

# ISO 3166-1 alpha-2 (checked against tzdata's iso3166.tab, 249 codes), plus XK (Kosovo),
# which Stripe accepts.
_ISO_3166_ALPHA_2 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM
    ZW XK
"""
COUNTRIES = frozenset(_ISO_3166_ALPHA_2.split())
COUNTRY_HINTS = {"UK": "GB", "EL": "GR"}  # common non-ISO spellings

# Deliberately simple: one @, no spaces, a dot in the domain. Stripe has the last word.
EMAIL = re.compile(r"^[^@\s]+@(?:[^@\s.]+\.)+[^@\s.]+$")
# BCP 47, as far as Stripe's locales go: language, optional script, optional region
# (en, en-GB, es-419, zh-Hant-TW).
LOCALE = re.compile(r"^[a-z]{2,3}(?:-[A-Z][a-z]{3})?(?:-(?:[A-Z]{2}|[0-9]{3}))?$")

# What a transformation may return for a field, before coercion to text.
SCALARS = (str, int, float, Decimal, date, time, UUID)

Language = Literal["mapping", "javascript", "python"]

# The hashes an output may give as nested objects, and the parts that null clears in each.
# ``metadata`` has no parts: null would delete every key, including keys the pipeline does not own.
HASHES: dict[str, tuple[str, ...]] = {
    "address": GROUPS["address"],
    "shipping": GROUPS["shipping"],
    "shipping.address": tuple(path for path in GROUPS["shipping"] if path.startswith("shipping.address.")),
    "metadata": (),
}

# Hints and reasons, in the words of the language that produced the value.
_OBJECT_HINT = {
    "mapping": "an object is not text; send it as JSON text with |tojson, or pick one of its keys",
    "javascript": (
        "an object is not text; send it as JSON text with JSON.stringify(value), "
        "or pick one of its properties"
    ),
    "python": "a dict is not text; send it as JSON text with json.dumps(value), or pick one of its keys",
}
_LIST_HINT = {
    "mapping": "a list is not text; join it (|join(', ')) or pick one element",
    "javascript": "an array is not text; join it (value.join(', ')) or pick one element",
    "python": 'a {kind} is not text; join it (", ".join(value)) or pick one element',
}
_METADATA_NULL = {
    "mapping": "metadata: null would delete keys this pipeline does not own; "
    "set each key to null, e.g. metadata.plan: none",
    "javascript": "metadata: null would delete keys this pipeline does not own; "
    "set each key to null, e.g. metadata: {plan: null}",
    "python": "metadata: None would delete keys this pipeline does not own; "
    'set each key to None, e.g. "metadata": {"plan": None}',
}


def flat_output(
    result: Mapping[Any, Any], language: Language = "mapping"
) -> tuple[dict[Any, Any], list[str]]:
    """``result`` with its nested hashes as dotted paths, and the problems of its shape.

    ``{"address": {"city": "Milano"}, "shipping": {"address": {"line1": "…"}}}`` is
    ``{"address.city": "Milano", "shipping.address.line1": "…"}``: a nested object means exactly
    what its dotted paths mean, and any key in it becomes a path (``address.town`` is then an
    unknown field, as it would be written dotted). Null for ``address``, ``shipping`` or
    ``shipping.address`` clears each of its parts; null for ``metadata`` is a problem (it would
    delete keys other systems wrote); ``{}`` writes nothing. A path given twice (dotted and
    nested) must have the same value both times. Other values, keys that are not text included,
    are left as they are, for ``type_problems`` to judge.
    """
    flat: dict[Any, Any] = {}
    problems: list[str] = []
    conflicts: list[str] = []
    for path, value in result.items():
        if path in HASHES and (value is None or type(value) is dict or isinstance(value, Mapping)):
            _flatten_hash(path, value, flat, problems, conflicts, language)
        elif path not in flat:  # keys that are not text too: type_problems names them
            flat[path] = value
        elif not _same(flat[path], value) and path not in conflicts:
            conflicts.append(path)
    problems += [f"{path}: given twice, with different values" for path in conflicts]
    return flat, problems


def _flatten_hash(
    path: str,
    value: Mapping[Any, Any] | None,
    flat: dict[Any, Any],
    problems: list[str],
    conflicts: list[str],
    language: Language,
) -> None:
    """Add the hash ``path`` (an object, or null) to ``flat`` as dotted paths."""
    parts: list[tuple[str, Any]] = []
    if value is None:
        if path == "metadata":
            problems.append(_METADATA_NULL[language])
        parts += [(part, None) for part in HASHES[path]]
    else:
        for key, item in value.items():
            if type(key) is str:
                parts.append((f"{path}.{key}", item))
            else:
                problems.append(f"{path}: the key {key!r} must be text")
    for part, item in parts:
        if part in HASHES and (item is None or type(item) is dict or isinstance(item, Mapping)):
            _flatten_hash(part, item, flat, problems, conflicts, language)
        elif part not in flat:
            flat[part] = item
        elif not _same(flat[part], item) and part not in conflicts:
            conflicts.append(part)


def _same(a: Any, b: Any) -> bool:
    """Whether two values given for one path mean the same: equal and of one type, or both "clear"."""
    if (a is None or (type(a) is str and not a)) and (b is None or (type(b) is str and not b)):
        return True
    return type(a) is type(b) and bool(a == b)


def type_problems(result: Mapping[Any, Any], language: Language = "mapping") -> list[str]:
    """``"<field>: <problem>"`` for every raw output value that has no sensible text form, and
    every problem of the output's shape (``flat_output``); hints are in ``language``'s words."""
    flat, problems = flat_output(result, language)
    return problems + _value_problems(flat, language)


def _value_problems(flat: Mapping[Any, Any], language: Language) -> list[str]:
    problems = []
    for path, value in flat.items():
        if type(path) is not str:
            problems.append(f"{path!r}: a field name must be text")
        elif (
            value is not None
            and type(value) not in _PLAIN
            and (problem := _type_problem(path, value, language))
        ):
            problems.append(f"{path}: {problem}")
    return problems


_PLAIN = frozenset({str, int, bool})  # the common case, checked without a call


def _type_problem(path: str, value: Any, language: Language) -> str | None:
    if path == "preferred_locales" and isinstance(value, list | tuple):
        bad = next((item for item in value if item is not None and _scalar_problem(item, language)), None)
        return None if bad is None else f"a locale must be text, not {_kind(bad)}"
    return _scalar_problem(value, language)


def _scalar_problem(value: Any, language: Language) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a number Stripe can store"
    if isinstance(value, SCALARS):
        return None
    if isinstance(value, Mapping):
        return _OBJECT_HINT[language]
    if isinstance(value, list | tuple | set | frozenset):
        return _LIST_HINT[language].format(kind=type(value).__name__)
    return f"{_kind(value)} is not text, a number, a boolean or null"


def _kind(value: Any) -> str:
    return f"a value of type {type(value).__name__}"


def output_problems(payload: Mapping[str, Any]) -> list[str]:
    """``"<field>: <problem>"`` for every way the coerced flat ``payload`` breaks Stripe's rules.

    ``payload`` is what ``stripe_value`` produced: text, ``None`` (clear the field or delete
    the metadata key) or, for ``preferred_locales``, a list of text.
    """
    problems = []
    for path, value in payload.items():
        if (problem := (_RULES.get(path) or _rule(path)).check(value)) is not None:
            problems.append(f"{path}: {problem}")
    return problems + _payload_problems(payload)


def checked_payload(  # noqa: C901 - the per-record hot path, inlined on purpose (see its docstring)
    result: Mapping[str, Any], written: Mapping[str, str], language: Language = "mapping"
) -> tuple[dict[str, Any], list[str]]:
    """A transformation's output coerced to a payload (``stripe_value``), and every reason Stripe
    would refuse it: ``type_problems(result, language)`` when there are any (with an empty
    payload), else ``output_problems`` of the payload (``flat_output(result)``, coerced) with
    ``written`` over it (the matching field a create writes, which is checked in place of the
    payload's own value of that field).

    Run for every record, so the common case is kept to a few operations: text that a field's
    rule accepts on sight (``_Rule.fits``) is neither coerced nor checked by a call. An output that
    gives a hash (``address``, ``shipping``, ``shipping.address``, ``metadata``) as an object or
    null is flattened (``flat_output``) and checked again, flat: only such outputs pay for it.
    ``language`` picks the wording of the hints.
    """
    payload: dict[str, Any] = {}
    problems: list[str] = []
    wrong_types: list[str] = []
    rule_of = _RULES.get
    for path, value in result.items():
        rule = rule_of(path)
        if rule is None:
            if type(path) is not str:
                wrong_types.append(f"{path!r}: a field name must be text")
                continue
            rule = _rule(path)
        # stripe_value and rule.fits, inlined for text, null and numbers
        kind = type(value)
        if kind is str and path != "preferred_locales":
            if value:
                payload[path] = value
                if len(value) <= rule.limit or value in rule.known:
                    continue
            else:
                payload[path] = value = None
                if rule.null_ok:
                    continue
        elif value is None:
            payload[path] = None
            if rule.null_ok:
                continue
            if path in HASHES:  # address: null (an unknown field, or a whole hash cleared)
                return _checked_nested(result, written, language)
        else:
            if kind is dict and path in HASHES:  # address: {city: …}
                return _checked_nested(result, written, language)
            if kind is float and path != "preferred_locales" and math.isfinite(value):
                value = str(int(value)) if value.is_integer() else str(value)
            elif kind not in _PLAIN and (problem := _type_problem(path, value, language)):
                if path in HASHES and isinstance(value, Mapping):  # a mapping that is not a dict
                    return _checked_nested(result, written, language)
                wrong_types.append(f"{path}: {problem}")
                continue
            else:
                value = stripe_value(path, value)
            payload[path] = value
            if type(value) is str and rule.fits(value):
                continue
        if path not in written and (problem := rule.check(value)) is not None:
            problems.append(f"{path}: {problem}")
    if wrong_types:
        return {}, wrong_types
    for path, value in written.items():
        rule = _RULES.get(path) or _rule(path)
        if not rule.fits(value) and (problem := rule.check(value)) is not None:
            problems.append(f"{path}: {problem}")
    if (
        len(payload) + len(written) > METADATA_MAX_KEYS
        or _SHIPPING_NAME in payload
        or _SHIPPING_LINE1 in payload
    ):
        problems += _payload_problems({**payload, **written})
    return payload, problems


def _checked_nested(
    result: Mapping[str, Any], written: Mapping[str, str], language: Language
) -> tuple[dict[str, Any], list[str]]:
    """``checked_payload`` of an output that gives a hash nested (or null): checked flat."""
    flat, problems = flat_output(result, language)
    if problems:
        return {}, problems + _value_problems(flat, language)
    return checked_payload(flat, written, language)  # no hash left to flatten: no recursion


def _payload_problems(payload: Mapping[str, Any]) -> list[str]:
    """The rules about fields together: metadata key count, the parts shipping requires."""
    problems = []
    if len(payload) > METADATA_MAX_KEYS:  # else there cannot be too many metadata keys
        keys = sum(
            1 for path, value in payload.items() if value is not None and path.startswith(METADATA_PREFIX)
        )
        if keys > METADATA_MAX_KEYS:
            problems.append(f"metadata: {keys} keys; Stripe allows at most {METADATA_MAX_KEYS}")
    cleared = [path for path in SHIPPING_REQUIRED if path in payload and payload[path] is None]
    if cleared and any(value is not None and path.startswith("shipping.") for path, value in payload.items()):
        problems += [f"{path}: Stripe requires it whenever shipping is written" for path in cleared]
    return problems


def stripe_value(path: str, value: Any) -> Any:
    """Coerce a transformation output to what the Stripe API takes: strings, or a list for locales.

    ``None`` and ``""`` both mean "clear this field".
    """
    if type(value) is str and path != "preferred_locales":  # the common case, first
        return value or None
    if value is None or value == "":
        return None
    if path == "preferred_locales":
        items = value if isinstance(value, list | tuple) else [value]
        return [stripe_text(item) for item in items if item not in (None, "")]
    return stripe_text(value)


def stripe_text(value: Any) -> str:
    """A scalar as Stripe receives it: booleans as true/false, whole floats without ``.0``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


Check = Callable[[Any], "str | None"]


class _Rule:
    """How a field's value is checked: ``check`` gives the problem with a coerced value, or
    None; ``fits`` tells, without a call, that a text value has none (within ``limit``
    characters, or one of ``known``); ``null_ok``, that null (clear the field) has none."""

    __slots__ = ("check", "known", "limit", "null_ok")

    def __init__(
        self, check: Check, limit: int = -1, known: frozenset[str] = frozenset(), null_ok: bool = True
    ) -> None:
        self.check, self.limit, self.known, self.null_ok = check, limit, known, null_ok

    def fits(self, value: str) -> bool:
        return len(value) <= self.limit or value in self.known


_RULES: dict[str, _Rule] = {}


def _rule(path: str) -> _Rule:
    """How to check the value of ``path``; memoised per path."""
    unknown = field_problem(path)
    if unknown is not None:
        rule = _Rule(lambda _value: unknown, null_ok=False)
    elif path == "preferred_locales":
        rule = _Rule(_locales_problem)
    elif path.startswith(METADATA_PREFIX):
        rule = _Rule(_length_rule(METADATA_VALUE_MAX, " in a metadata value"), METADATA_VALUE_MAX)
    elif path in ("address.country", "shipping.address.country"):
        rule = _Rule(_CHECKS[path], known=COUNTRIES)
    elif path == "tax_exempt":
        rule = _Rule(_CHECKS[path], known=frozenset(TAX_EXEMPT))
    elif path in _CHECKS:
        rule = _Rule(_CHECKS[path])
    else:
        limit = MAX_LENGTH.get(path, ADDRESS_PART_MAX)
        rule = _Rule(_length_rule(limit), limit)
    if len(_RULES) < 10_000:  # paths come from a mapping, or from code that could invent many
        _RULES[path] = rule
    return rule


def _length_rule(limit: int, where: str = "") -> Check:
    """The check of a text field that only has a length limit (most of them: kept to one call)."""

    def rule(value: Any) -> str | None:
        if value is None or (isinstance(value, str) and len(value) <= limit):
            return None
        if not isinstance(value, str):
            return f"expected text, got {type(value).__name__}"
        return f"{len(value)} characters; Stripe allows at most {limit}{where}"

    return rule


def _text_rule(check: Callable[[str], str | None]) -> Check:
    def rule(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            return f"expected text, got {type(value).__name__}"
        return check(value)

    return rule


def _too_long(value: str, limit: int) -> str | None:
    if len(value) <= limit:
        return None
    return f"{len(value)} characters; Stripe allows at most {limit}"


def _email_problem(value: str) -> str | None:
    if not EMAIL.match(value):
        hint = " (surrounding spaces: use trim())" if value.strip() != value else ""
        return f"{value!r} is not an email address{hint}"
    return _too_long(value, MAX_LENGTH["email"])


def _country_problem(value: str) -> str | None:
    if value in COUNTRIES:
        return None
    if value.upper() in COUNTRIES:
        return f"{value!r} must be upper case: {value.upper()!r} (e.g. upper(country))"
    if value.upper() in COUNTRY_HINTS:
        return f"{value!r} is not an ISO 3166-1 alpha-2 code; use {COUNTRY_HINTS[value.upper()]!r}"
    return f"{value!r} is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)"


def _locales_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return f"expected a list of locales, got {type(value).__name__}"
    for locale in value:
        if not isinstance(locale, str) or not LOCALE.match(locale):  # (so never over 5000)
            return f"{locale!r} is not a locale like en, en-GB or es-419"
    return None


def _tax_exempt_problem(value: str) -> str | None:
    if value in TAX_EXEMPT:
        return None
    return f"{value!r} is not one of {', '.join(TAX_EXEMPT)}"


_CHECKS: dict[str, Check] = {
    "email": _text_rule(_email_problem),
    "address.country": _text_rule(_country_problem),
    "shipping.address.country": _text_rule(_country_problem),
    "tax_exempt": _text_rule(_tax_exempt_problem),
}
