"""The mapping transformation: Stripe field path → Jinja2 expression over the profile.

Expressions run in an ``ImmutableSandboxedEnvironment`` (no attribute tricks, no mutation) with
``StrictUndefined``, so reading a column that does not exist fails loudly instead of writing an
empty string to Stripe. All the fields of a mapping are compiled once per run into a single
template that computes every field in one pass; only a profile that fails is evaluated again field
by field, to name the field that failed.

Helpers (the functions of the Krenalis mapping language, same names and meaning):

=============================  =================================================================
``coalesce(a, b, …)``          the first argument that is not null (``""`` counts as a value)
``if(cond, a[, b])``           ``a`` when ``cond`` is true, else ``b`` (null when omitted)
``and(a, b, …)``               true when all are true; false when one is false; else null
``or(a, b, …)``                true when one is true; false when all are false; else null
``x|not``                      logical not; null stays null
``eq(a, b)`` / ``ne(a, b)``    equality; null when either side is null
``initcap(s)``                 ``'john o\\'connor'`` → ``'John O\\'Connor'``
``lower(s)`` ``upper(s)``      case
``trim(s)`` ``ltrim(s)``       Unicode whitespace removed on both sides / the left /
``rtrim(s)``                   the right
``substring(s, start[, n])``   ``n`` characters from ``start`` (1-based; ``start`` < 1 counts as 1)
``len(x)``                     characters of text, items of a list or object, 0 for null
``json_parse(s)``              JSON text → value (a value already decoded is returned as is)
``array(a, b, …)``             a list
``map(k1, v1, k2, v2, …)``     an object (keys are text)
=============================  =================================================================

Text helpers return null for null. Booleans are ``true``/``false``, 0/1 (SQLite has no booleans)
or the text ``"true"``/``"false"``; anything else fails the profile. Helpers are functions, so
all their arguments are evaluated: ``if(n, 1 / n, 0)`` still divides by zero where Jinja's
``1 / n if n else 0`` does not.

Globals or filters: every helper is a global function (``initcap(first_name)``) and a filter
whose piped value is the first argument (``first_name|initcap``, ``vip|if('VIP', 'regular')``,
``phone|coalesce(mobile)``), with two exceptions. ``not`` is only a filter (``active|not``): Jinja
always parses ``not(x)`` as its own operator, for which ``not null`` is true. ``map`` is only a
global: Jinja's own ``map`` filter (``tags|map('upper')``) is kept. ``if``, ``and`` and ``or`` are
Jinja keywords, but a keyword where an operand starts is read as a name, so ``if(vip, 'VIP',
'regular')`` and ``first_name ~ ' ' ~ if(vip, '★', '')`` work; after an operand ``and``/``or`` are
Jinja's operators (``a and (b)``). ``lower``, ``upper`` and ``trim`` replace Jinja's filters of
the same name, which turn null into ``'none'``.

Null: ``~`` joins null as ``""`` (``first_name ~ ' ' ~ last_name`` with a null last name gives
``'Ada '``, never ``'Ada None'``; wrap it in ``trim()`` to drop the space), booleans as
``true``/``false`` and whole floats without ``.0``, the way values are sent to Stripe. Joining a
list or an object fails: use ``|join(', ')`` or ``|tojson``. Helper names are reserved: a column
named like a helper hides it.

JSON: a column holding a JSON object or array, as text (SQLite ``'{"plan": "pro"}'``) or decoded
(PostgreSQL ``jsonb``), is read with dots and brackets: ``traits.plan``,
``traits['birth day']``, ``traits.tags[0]``. Text is decoded only when read that way, and only
when it is a JSON object or array (anything else keeps string behaviour). As in Krenalis, a key
the object does not have is null, reading through null gives null, and an index past the end of
an array is null; reading a key of a non-object value fails the profile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import consume

from krenalis_airflow.core.fields import METADATA_PREFIX, field_problem
from krenalis_airflow.core.transform.base import PerRecord
from krenalis_airflow.core.transform.validate import (
    METADATA_MAX_KEYS,
    SHIPPING_REQUIRED,
    output_problems,
    stripe_value,
    type_problems,
)
from krenalis_airflow.exceptions import TransformError

# --------------------------------------------------------------------------------------------
# Helpers


def _text(value: Any) -> str:
    """The text of a value as Stripe receives it (the rules of ``validate.stripe_value``)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Mapping | list | tuple):
        raise TypeError(f"cannot use a {type(value).__name__} as text; use |join(', ') or |tojson")
    return str(value)  # a StrictUndefined raises here, naming the missing column


def join_text(values: Iterable[Any]) -> str:
    """What ``~`` compiles to: null joins as ``""``."""
    return "".join(map(_text, values))


def _boolean(value: Any, helper: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError(f"{helper}: {value!r} is not a boolean")


def _integer(value: Any, helper: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"{helper}: {value!r} is not an integer")


def _text_or_none(function: Callable[[str], str]) -> Callable[[Any], str | None]:
    def helper(value: Any) -> str | None:
        return None if value is None else function(_text(value))

    return helper


def coalesce(*values: Any) -> Any:
    """The first value that is not null."""
    return next((value for value in values if value is not None), None)


def if_(condition: Any, then: Any, otherwise: Any = None) -> Any:
    """``then`` when ``condition`` is true, else ``otherwise`` (null also picks ``otherwise``)."""
    return then if _boolean(condition, "if") else otherwise


def and_(*values: Any) -> bool | None:
    """Three-valued AND: false wins over null, null over true."""
    truths = [_boolean(value, "and") for value in values]
    return False if False in truths else (None if None in truths else True)


def or_(*values: Any) -> bool | None:
    """Three-valued OR: true wins over null, null over false."""
    truths = [_boolean(value, "or") for value in values]
    return True if True in truths else (None if None in truths else False)


def not_(value: Any) -> bool | None:
    """Three-valued NOT: null stays null."""
    truth = _boolean(value, "not")
    return None if truth is None else not truth


def eq(left: Any, right: Any) -> bool | None:
    """Equality that is null with a null side and never equates a boolean with a number."""
    if left is None or right is None:
        return None
    return isinstance(left, bool) == isinstance(right, bool) and bool(left == right)


def ne(left: Any, right: Any) -> bool | None:
    """The negation of ``eq``; null with a null side."""
    same = eq(left, right)
    return None if same is None else not same


_WORD_START = re.compile(r"(?<!\w)\w")


def _initcap(text: str) -> str:
    return _WORD_START.sub(lambda match: match.group().upper(), text.lower())


def trim(value: Any, chars: str | None = None) -> str | None:
    """The text without leading and trailing ``chars`` (whitespace by default); null stays null."""
    return None if value is None else _text(value).strip(chars)


_OMITTED: Any = object()


def substring(value: Any, start: Any, length: Any = _OMITTED) -> str | None:
    """``length`` characters from the 1-based ``start`` (to the end when omitted), as in SQL."""
    if value is None or start is None or length is None:
        return None
    text, first = _text(value), max(_integer(start, "substring"), 1) - 1
    if length is _OMITTED:
        return text[first:]
    count = _integer(length, "substring")
    if count < 0:
        raise ValueError("substring: the length cannot be negative")
    return text[first : first + count]


def len_(value: Any) -> int:
    """Items of a list or map, characters of text or of a value's text form; 0 for null."""
    if value is None:
        return 0
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    return len(_text(value))


def json_parse(value: Any) -> Any:
    """JSON text decoded; null and already-decoded values pass through."""
    if value is None or isinstance(value, Mapping | list):
        return value  # null, or already decoded (a jsonb column)
    if not isinstance(value, str):
        raise TypeError(f"json_parse: a {type(value).__name__} is not JSON text")
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"json_parse: not valid JSON ({exc.msg} at position {exc.pos})") from None


def array(*values: Any) -> list[Any]:
    """A list of the arguments."""
    return list(values)


def map_(*pairs: Any) -> dict[str, Any]:
    """A map from alternating key, value arguments; keys must be text."""
    if len(pairs) % 2:
        raise TypeError("map: takes key, value pairs (an even number of arguments)")
    keys = pairs[::2]
    if not all(isinstance(key, str) for key in keys):
        raise TypeError("map: keys must be text")
    return dict(zip(keys, pairs[1::2], strict=True))


_BOTH: dict[str, Callable[..., Any]] = {
    "coalesce": coalesce,
    "if": if_,
    "and": and_,
    "or": or_,
    "eq": eq,
    "ne": ne,
    "initcap": _text_or_none(_initcap),
    "lower": _text_or_none(str.lower),
    "upper": _text_or_none(str.upper),
    "trim": trim,
    "ltrim": _text_or_none(str.lstrip),
    "rtrim": _text_or_none(str.rstrip),
    "substring": substring,
    "len": len_,
    "json_parse": json_parse,
    "array": array,
}
GLOBALS = {**_BOTH, "map": map_}
FILTERS = {**_BOTH, "not": not_}
HELPERS = tuple(sorted({*GLOBALS, *FILTERS}))
_HELPER_LIST = f"helpers: {', '.join(HELPERS)}"

# --------------------------------------------------------------------------------------------
# The environment


class _CodeGenerator(CodeGenerator):
    """Compiles ``~`` to :func:`join_text` instead of Jinja's ``str()`` of each operand."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_text((")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")


@lru_cache(maxsize=1024)
def _decode(text: str) -> dict[str, Any] | list[Any] | None:
    """The JSON object or array ``text`` holds, or None. Cached: several fields read one column."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def _json(obj: Any) -> Any:
    """``obj`` as JSON data when it is an object/array or the JSON text of one, else None."""
    if isinstance(obj, dict | list):
        return obj
    if isinstance(obj, str) and obj.lstrip()[:1] in ("{", "["):
        return _decode(obj)
    return None


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, plus Krenalis's rules for JSON values and null (see the module docstring)."""

    code_generator_class = _CodeGenerator
    join_text = staticmethod(join_text)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if obj is None:
            return None
        data = _json(obj)
        if isinstance(data, dict):
            return data.get(attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if obj is None:
            return None
        data = _json(obj)
        if isinstance(data, dict) and isinstance(argument, str):
            return data.get(argument)
        if isinstance(data, list) and isinstance(argument, int) and not isinstance(argument, bool):
            return data[argument] if -len(data) <= argument < len(data) else None
        return super().getitem(obj if data is None else data, argument)


# Constant folding would join constants with str() (``none ~ 'x'`` → 'Nonex'): keep it off.
_ENV = _Environment(undefined=StrictUndefined, optimized=False)
_ENV.globals.update(GLOBALS)
_ENV.filters.update(FILTERS)


def _parse(expression: str) -> nodes.Expr:
    """The AST of one expression (what ``compile_expression`` parses)."""
    parser = Parser(_ENV, expression, state="variable")
    node = parser.parse_expression()
    if not parser.stream.eos:
        raise TemplateSyntaxError("chunk after expression", parser.stream.current.lineno)
    return node


def _compile_all(expressions: list[str]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """One template computing every expression: ``profile → [value, …]``."""
    values = nodes.List([_parse(expression) for expression in expressions], lineno=1)
    body = [nodes.Assign(nodes.Name("result", "store"), values, lineno=1)]
    tree = nodes.Template(body, lineno=1)
    tree.set_environment(_ENV)
    template = _ENV.from_string(tree)
    # Only the helpers the expressions name go in each profile's context (Template.new_context
    # would copy every global per profile); a column named like a helper still hides it.
    names = meta.find_undeclared_variables(tree)
    helpers = {name: value for name, value in template.globals.items() if name in names}
    render, context_class = template.root_render_func, _ENV.context_class

    def evaluate(profile: Mapping[str, Any]) -> list[Any]:
        # Jinja only reads the parent (``in`` and ``[]``): the profile itself serves, uncopied.
        parent = {**helpers, **profile} if helpers else cast(dict[str, Any], profile)
        context = context_class(_ENV, parent, None, {})
        consume(render(context))
        values: list[Any] = context.vars["result"]
        return values

    return evaluate


# --------------------------------------------------------------------------------------------
# Transformation


class MappingTransform(PerRecord):
    """Turns one profile into a flat payload ``{field path: value}``.

    A field whose expression is a bare column name (``phone: phone``, the most common kind) is
    copied from the profile without going through Jinja; the other expressions are computed
    together by one compiled template.
    """

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._each = [
            (field, _ENV.compile_expression(expression, undefined_to_none=False))
            for field, expression in mapping.items()
        ]
        trees = {field: _parse(expression) for field, expression in mapping.items()}
        # (field, column): a bare name, read from the profile; (field, None): computed
        self._plan = [
            (field, tree.name if isinstance(tree, nodes.Name) else None) for field, tree in trees.items()
        ]
        computed = [
            expression for field, expression in mapping.items() if not isinstance(trees[field], nodes.Name)
        ]
        self._all = _compile_all(computed) if computed else None

    def __call__(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        """The payload of one profile; on a failure, finds and names the field that failed."""
        try:
            values = iter(self._all(profile) if self._all else ())
        except Exception:  # find the field that failed
            return self._one_by_one(profile)
        payload: dict[str, Any] = {}
        for field, column in self._plan:
            if column is None:
                value = next(values)
                if isinstance(value, Undefined):  # a bare missing name or unsafe attribute
                    return self._one_by_one(profile)
            elif column in profile:
                value = profile[column]
            else:  # not a column (a helper's name, or a missing column): as Jinja reads it
                return self._one_by_one(profile)
            payload[field] = value
        return payload

    def _one_by_one(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for field, expression in self._each:
            try:
                payload[field] = value = expression(**profile)
                if isinstance(value, Undefined):
                    value._fail_with_undefined_error()
            except Exception as exc:  # any failure of a user expression rejects the profile
                raise TransformError(f"{field}: {type(exc).__name__}: {exc}") from exc
        return payload


# --------------------------------------------------------------------------------------------
# Static checks


def syntax_problems(mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(field, message)`` for every expression that does not parse."""
    problems = []
    for field, expression in mapping.items():
        if not isinstance(expression, str) or not expression.strip():
            problems.append((field, "the expression is empty; write e.g. first_name ~ ' ' ~ last_name"))
            continue
        try:
            _ENV.compile_expression(expression)
        except TemplateSyntaxError as exc:
            hint = f"; {_HELPER_LIST}" if "No filter named" in str(exc.message) else ""
            problems.append((field, f"invalid Jinja2 expression {expression!r}: {exc.message}{hint}"))
    return problems


def variables(mapping: Mapping[str, str]) -> dict[str, set[str]]:
    """The profile properties each field's expression reads (helpers are not properties)."""
    return {
        field: meta.find_undeclared_variables(_ENV.parse("{{ " + expression + " }}"))
        for field, expression in mapping.items()
    }


def mapping_static_problems(mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(field, message)`` for everything wrong with ``mapping`` that is known without data.

    A superset of ``fields.field_problem`` and ``syntax_problems`` (call it instead of both),
    plus: unknown functions, filters and tests; constant expressions that fail or produce a value
    Stripe would refuse (``address.country: "'Italy'"``); more than 50 metadata keys; shipping
    written without the parts Stripe requires.
    """
    problems: list[tuple[str, str]] = []
    for field, expression in mapping.items():
        if isinstance(field, str) and isinstance(expression, str):
            problems += _field_static_problems(field, expression)
        else:
            problems += _field_problems(field, expression)
    return problems + _mapping_problems(mapping)


@lru_cache(maxsize=8192)
def _field_static_problems(field: str, expression: str) -> tuple[tuple[str, str], ...]:
    """``_field_problems``, remembered: a DAG file checks every spec's mapping at each parse, and
    specs written from one template repeat their fields (compiling one costs ~0.6 ms)."""
    return tuple(_field_problems(field, expression))


def _field_problems(field: str, expression: str) -> list[tuple[str, str]]:
    """What is wrong with one field of a mapping and its expression, on their own."""
    problems: list[tuple[str, str]] = []
    unknown = field_problem(field)
    if unknown is not None:
        problems.append((field, unknown))
    if syntax := syntax_problems({field: expression}):
        return problems + syntax
    names = _name_problems(_parse(expression))
    problems += [(field, message) for message in names]
    if unknown is None and not names and not variables({field: expression})[field]:
        problems += [(field, message) for message in _constant_problems(field, expression)]
    return problems


def _name_problems(tree: nodes.Expr) -> list[str]:
    """Calls of functions that do not exist (profile values are never callable), and unknown
    filters and tests (Jinja reports those only when they are not inside a condition)."""
    found = [tree, *tree.find_all((nodes.Call, nodes.Filter, nodes.Test))]
    problems = []
    for node in found:
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
            if node.node.name not in _ENV.globals:
                problems.append(f"unknown function {node.node.name!r}; {_HELPER_LIST}")
        elif isinstance(node, nodes.Filter) and node.name not in _ENV.filters:
            problems.append(f"unknown filter {node.name!r}; {_HELPER_LIST} and Jinja's built-in filters")
        elif isinstance(node, nodes.Test) and node.name not in _ENV.tests:
            problems.append(f"unknown test {node.name!r}")
    return problems


def _constant_problems(field: str, expression: str) -> list[str]:
    """What is wrong with the one value a profile-independent expression always produces."""
    try:
        value = _ENV.compile_expression(expression, undefined_to_none=False)()
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
    except Exception as exc:
        return [f"fails for every profile: {type(exc).__name__}: {exc}"]
    problems = type_problems({field: value}) or output_problems({field: stripe_value(field, value)})
    return [problem.removeprefix(f"{field}: ") for problem in problems]


def _mapping_problems(mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """Rules about the mapping as a whole."""
    problems = []
    metadata = [field for field in mapping if field.startswith(METADATA_PREFIX)]
    if len(metadata) > METADATA_MAX_KEYS:
        message = (
            f"the mapping writes {len(metadata)} metadata keys; Stripe allows at most {METADATA_MAX_KEYS}"
        )
        problems.append((metadata[METADATA_MAX_KEYS], message))
    shipping = [field for field in mapping if field.startswith("shipping.")]
    missing = [path for path in SHIPPING_REQUIRED if path not in mapping]
    if shipping and missing:
        message = f"writing shipping needs {' and '.join(missing)} in the mapping too: Stripe requires them"
        problems.append((shipping[0], message))
    return problems
