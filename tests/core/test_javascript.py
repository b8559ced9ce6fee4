"""JavaScript transformations: ES5 validation, and the worker processes that run ``transform``.

The limits used here are short (0.5 s, 64 MB) to keep the file fast; elapsed-time assertions are
generous safety bounds, not performance checks.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from krenalis_airflow.core.records import Record, Rejection
from krenalis_airflow.core.spec import parse_spec
from krenalis_airflow.core.transform.javascript import JavaScriptTransformer, syntax_problems
from krenalis_airflow.core.transform.run import TransformSettings, transform_profiles
from krenalis_airflow.exceptions import TransformationUnusable, TransformError

pytest.importorskip("pyduktape2")

ADA = {
    "id": 1,
    "first_name": "Ada",
    "last_name": "Lovelace",
    "country": "it",
    "plan": "pro",
    "nickname": None,
}
GRACE = {
    "id": 2,
    "first_name": "Grace",
    "last_name": "Hopper",
    "country": "us",
    "plan": None,
    "nickname": "Amazing",
}

MAPPING_LIKE = """
function transform(profile) {
  return {
    "name": profile.first_name + " " + profile.last_name,
    "address.country": profile.country.toUpperCase(),
    "metadata.plan": profile.plan,
    "description": null
  };
}
"""

# Misbehaviour on demand: the profile's "do" property says what transform should do.
MISCHIEF = """
function transform(profile) {
  if (profile.do === "loop") { while (true) {} }
  if (profile.do === "grow") { var s = "x"; while (true) { s = s + s; } }
  if (profile.do === "hog") { var a = [], chunk = new Array(100001).join("x"); while (true) { a.push(chunk + a.length); } }
  if (profile.do === "crowd") { var b = []; while (true) { b.push({n: b.length, s: "x" + b.length}); } }
  if (profile.do === "throw") { throw new Error("no " + profile.id); }
  if (profile.do === "busy") { var end = Date.now() + profile.ms; while (Date.now() < end) {} }
  return {"name": "n" + profile.id};
}
"""


def run(source: str, profiles: Sequence[Mapping[str, Any]], **options: Any) -> list[Any]:
    with JavaScriptTransformer(source, **options) as transformer:
        return transformer.transform_batch(profiles)


def errors(results: list[Any]) -> list[str | None]:
    return [str(r) if isinstance(r, TransformError) else None for r in results]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- transforming -------------------------------------------------------------------------------


def test_profiles_become_flat_payloads_in_order() -> None:
    assert run(MAPPING_LIKE, [ADA, GRACE]) == [
        {"name": "Ada Lovelace", "address.country": "IT", "metadata.plan": "pro", "description": None},
        {"name": "Grace Hopper", "address.country": "US", "metadata.plan": None, "description": None},
    ]


def test_lists_numbers_and_booleans_pass_through() -> None:
    source = """function transform(p) {
      return {"preferred_locales": ["it", "en"], "metadata.orders": 4, "metadata.vip": true};
    }"""
    assert run(source, [ADA]) == [
        {"preferred_locales": ["it", "en"], "metadata.orders": 4, "metadata.vip": True}
    ]


def test_text_outside_ascii_round_trips() -> None:
    source = 'function transform(p) { return {"name": p.first_name.toUpperCase() + " " + p.last_name}; }'
    profile = {"first_name": "Zoë", "last_name": "中村 🚀"}
    assert run(source, [profile]) == [{"name": "ZOË 中村 🚀"}]


def test_a_throwing_profile_is_rejected_alone_with_the_js_error() -> None:
    profiles: list[dict[str, Any]] = [{"id": 1}, {"id": 2, "do": "throw"}, {"id": 3}]
    results = run(MISCHIEF, profiles)
    assert results[0] == {"name": "n1"} and results[2] == {"name": "n3"}
    assert errors(results)[1] == "Error: no 2 (line 7)"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("return null.x;", "TypeError: cannot read property 'x' of null (line 1)"),
        ('throw "no plan";', "no plan"),
        ("throw {code: 7};", 'threw {"code":7}'),
    ],
)
def test_error_messages_name_the_error(body: str, reason: str) -> None:
    assert errors(run(f"function transform(p) {{ {body} }}", [ADA])) == [reason]


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        ("[1, 2]", "transform must return an object of Stripe fields"),
        ('"Ada"', "not string"),
        ("null", "not null"),
        ("undefined", "not undefined"),
        ("{name: p.no_such_column}", 'field "name" is undefined'),
        ("{name: 0 / 0}", 'field "name" is NaN'),
        ("{address: {city: p.no_such_column}}", 'field "address.city" is undefined'),
        ("{shipping: {address: {line1: 1 / 0}}}", 'field "shipping.address.line1" is Infinity'),
        ("{metadata: {tags: [['a']]}}", 'field "metadata.tags": item 0 is an array'),
        ("{address: {since: new Date(0)}}", 'field "address.since" is an object'),
        ("{name: new Date(0)}", 'field "name" is an object'),
        ("{name: function () {}}", 'field "name" is function'),
        ("{preferred_locales: [['en']]}", 'field "preferred_locales": item 0 is an array'),
        ("{name: '\\ud800'}", "lone UTF-16 surrogate"),
        ("{name: new Array(70000).join('x')}", "the output is larger than 64 KiB"),
    ],
)
def test_outputs_that_are_not_flat_payloads_are_rejected(returned: str, reason: str) -> None:
    results = run(f"function transform(p) {{ return {returned}; }}", [ADA, GRACE])
    assert all(reason in (message or "") for message in errors(results)), results


def test_nested_objects_pass_through_for_the_transform_step_to_flatten() -> None:
    source = """function transform(p) {
      return {name: p.first_name, address: {country: p.country.toUpperCase()},
              shipping: {name: p.last_name, address: {line1: 'Via Roma 1'}},
              metadata: {plan: p.plan, prefs: {deep: {deeper: {deepest: 1}}}}};
    }"""
    assert run(source, [ADA]) == [
        {
            "name": "Ada",
            "address": {"country": "IT"},
            "shipping": {"name": "Lovelace", "address": {"line1": "Via Roma 1"}},
            "metadata": {"plan": "pro", "prefs": {"deep": {"deeper": {"deepest": 1}}}},
        }
    ]


def test_a_cyclic_output_is_rejected_with_a_reason() -> None:
    source = "function transform(p) { var a = {}; a.self = a; return {metadata: {a: a}}; }"
    assert errors(run(source, [ADA])) == ["the output cannot be turned into JSON: cyclic input"]


def test_nested_outputs_are_checked_in_javascripts_words() -> None:
    spec = parse_spec(
        """\
id: javascript_test
source: {conn_id: warehouse, table: customer_profiles, key: id}
export: {matching: {property: first_name, stripe: metadata.first_name}}
transformation:
  javascript: |
    function transform(p) { return {}; }
"""
    )
    nested = """function transform(p) {
      if (p.id === 2) return {metadata: null};
      if (p.id === 3) return {metadata: {prefs: {a: 1}}, name: ['a', 'b']};
      return {name: p.first_name, address: {country: 'IT'}, metadata: {plan: p.plan}};
    }"""
    dotted = """function transform(p) {
      return {name: p.first_name, 'address.country': 'IT', 'metadata.plan': p.plan};
    }"""
    profiles = [ADA, GRACE, {**ADA, "id": 3}]
    with JavaScriptTransformer(nested) as transformer:
        items = list(transform_profiles(profiles, transformer, TransformSettings.of(spec)))
    with JavaScriptTransformer(dotted) as transformer:
        [expected, *_] = transform_profiles(profiles, transformer, TransformSettings.of(spec))
    assert (
        items[0]
        == expected
        == Record("1", "Ada", "Ada", {"name": "Ada", "address.country": "IT", "metadata.plan": "pro"})
    )
    assert items[1:] == [
        Rejection(
            "2",
            "transform",
            "invalid output",
            "metadata: null would delete keys this pipeline does not own; "
            "set each key to null, e.g. metadata: {plan: null}",
        ),
        Rejection(
            "3",
            "transform",
            "invalid output",
            "metadata.prefs: an object is not text; send it as JSON text with JSON.stringify(value), "
            "or pick one of its properties; "
            "name: an array is not text; join it (value.join(', ')) or pick one element",
        ),
    ]


def test_require_and_the_module_loader_are_gone() -> None:
    source = 'function transform(p) { return {"name": typeof require + " " + typeof Duktape.modSearch}; }'
    assert run(source, [ADA]) == [{"name": "undefined undefined"}]


def test_print_does_not_disturb_the_results(capfd: pytest.CaptureFixture[str]) -> None:
    source = 'function transform(p) { print("debug", p.id); return {"name": "x"}; }'
    assert run(source, [ADA]) == [{"name": "x"}]
    assert "debug 1" in capfd.readouterr().err  # the worker's stderr is the task's (its log)


def test_non_finite_profile_values_arrive_as_null() -> None:
    source = 'function transform(p) { return {"name": String(p.value)}; }'
    assert run(source, [{"value": float("nan")}]) == [{"name": "null"}]


def test_large_inputs_are_split_into_batch_size_round_trips() -> None:
    profiles = [{"id": i} for i in range(7)]
    assert run(MISCHIEF, profiles, batch_size=3) == [{"name": f"n{i}"} for i in range(7)]


# --- limits and failures --------------------------------------------------------------------------


def test_a_runaway_profile_is_killed_and_the_rest_of_its_batch_is_transformed() -> None:
    profiles: list[dict[str, Any]] = [{"id": 1}, {"id": 2}, {"id": 3, "do": "loop"}, {"id": 4}, {"id": 5}]
    with JavaScriptTransformer(MISCHIEF, timeout=0.5) as transformer:
        transformer.transform_batch([{"id": 0}])
        first_worker = transformer.worker_pid
        start = time.monotonic()
        results = transformer.transform_batch(profiles)
        elapsed = time.monotonic() - start
        assert first_worker is not None and not alive(first_worker)
    assert errors(results) == [None, None, "timed out after 0.5 s", None, None]
    assert [r["name"] for r in results if isinstance(r, dict)] == ["n1", "n2", "n4", "n5"]
    assert elapsed < 3 * 0.5 + 2


def test_the_time_limit_is_per_profile_not_per_batch() -> None:
    profiles = [{"id": i, "do": "busy", "ms": 300} for i in range(3)]  # 0.9 s in all
    assert errors(run(MISCHIEF, profiles, timeout=0.5)) == [None, None, None]


@pytest.mark.parametrize("mischief", ["hog", "grow"])
def test_a_memory_blow_up_is_contained_and_the_rest_of_its_batch_is_transformed(mischief: str) -> None:
    profiles: list[dict[str, Any]] = [{"id": 1}, {"id": 2, "do": mischief}, {"id": 3}]
    with JavaScriptTransformer(MISCHIEF, memory_mb=64, timeout=5) as transformer:
        transformer.transform_batch([{"id": 0}])
        first_worker = transformer.worker_pid
        results = transformer.transform_batch(profiles)
        assert transformer.worker_pid != first_worker  # a worker that ran out of memory is replaced
    assert errors(results) == [None, "ran out of memory (limit 64 MB)", None]
    assert results[2] == {"name": "n3"}


def test_a_blow_up_that_crawls_at_the_memory_limit_is_stopped_by_the_time_limit() -> None:
    """Millions of small objects: near the limit each allocation may force a full collection that
    frees just enough for the next one, so Duktape crawls instead of throwing "alloc failed"."""
    start = time.monotonic()
    results = run(MISCHIEF, [{"id": 1, "do": "crowd"}, {"id": 2}], memory_mb=64, timeout=1)
    assert time.monotonic() - start < 3 * 1 + 2
    message = errors(results)[0] or ""
    assert message in (
        "ran out of memory (limit 64 MB)",
        "ran out of memory (limit 64 MB; timed out after 1 s)",
        "timed out after 1 s",  # a loaded machine: the time limit struck before the memory one
    )
    assert results[1] == {"name": "n2"}


def test_a_worker_killed_mid_batch_costs_only_the_profile_it_was_running() -> None:
    profiles: list[dict[str, Any]] = [{"id": 1}, {"id": 2, "do": "busy", "ms": 2000}, {"id": 3}]
    with JavaScriptTransformer(MISCHIEF, timeout=5) as transformer:
        transformer.transform_batch([{"id": 0}])
        worker = transformer.worker_pid
        assert worker is not None
        threading.Timer(0.3, os.kill, (worker, 9)).start()
        start = time.monotonic()
        results = transformer.transform_batch(profiles)
        assert time.monotonic() - start < 1.8
    message = errors(results)[1]
    assert message == "the JavaScript worker died (killed by SIGKILL: the kernel's out-of-memory killer?)"
    assert results[0] == {"name": "n1"} and results[2] == {"name": "n3"}


def test_an_interrupted_batch_takes_its_worker_down() -> None:
    """What Airflow's execution_timeout (SIGALRM) or a task kill (SIGTERM) does: an exception in
    the task process, which, unlike Duktape running in-process, is waiting and can take it."""

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with JavaScriptTransformer(MISCHIEF, timeout=30) as transformer:
            transformer.transform_batch([{"id": 0}])
            worker = transformer.worker_pid
            assert worker is not None
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Interrupted):
                transformer.transform_batch([{"id": 1, "do": "loop"}])
            assert not alive(worker)
            assert transformer.transform_batch([{"id": 2}]) == [{"name": "n2"}]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_worker_that_died_between_batches_is_replaced_quietly() -> None:
    with JavaScriptTransformer(MISCHIEF) as transformer:
        transformer.transform_batch([{"id": 0}])
        worker = transformer.worker_pid
        assert worker is not None
        os.kill(worker, 9)
        os.waitpid(worker, 0)  # what Popen would do; a zombie would still look alive
        assert transformer.transform_batch([{"id": 1}]) == [{"name": "n1"}]
        assert transformer.worker_pid != worker


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("throw new Error('config missing');\nfunction transform(p) { return {}; }", "Error: config missing"),
        ("var transform = 42;", "the source must define function transform(profile)"),
        ("while (true) {}\nfunction transform(p) { return {}; }", "top-level code timed out after 0.5 s"),
    ],
)
def test_a_source_that_cannot_load_fails_the_run(source: str, reason: str) -> None:
    with (
        JavaScriptTransformer(source, timeout=0.5) as transformer,
        pytest.raises(TransformationUnusable, match=re.escape(reason)),
    ):
        transformer.transform_batch([ADA])


# --- the worker's life ------------------------------------------------------------------------------


def test_one_worker_serves_every_batch_while_nothing_fails() -> None:
    with JavaScriptTransformer(MISCHIEF) as transformer:
        assert transformer.worker_pid is None  # started lazily
        pids: set[int | None] = set()
        for batch in range(5):
            assert transformer.transform_batch([{"id": batch}]) == [{"name": f"n{batch}"}]
            pids.add(transformer.worker_pid)
        assert len(pids) == 1


def test_close_leaves_no_process_behind() -> None:
    transformer = JavaScriptTransformer(MISCHIEF)
    transformer.transform_batch([{"id": 1}])
    worker = transformer.worker_pid
    assert worker is not None and alive(worker)
    transformer.close()
    transformer.close()  # idempotent
    assert not alive(worker) and transformer.worker_pid is None


def test_a_forked_child_starts_its_own_worker_and_leaves_the_parents_alone() -> None:
    with JavaScriptTransformer(MISCHIEF) as transformer:
        transformer.transform_batch([{"id": 1}])
        parent_worker = transformer.worker_pid
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                ok = transformer.transform_batch([{"id": 2}]) == [{"name": "n2"}]
                ok = ok and transformer.worker_pid not in (None, parent_worker)
                os.write(write_end, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert os.read(read_end, 1) == b"1"
        os.close(read_end)
        os.close(write_end)
        assert transformer.worker_pid == parent_worker
        assert transformer.transform_batch([{"id": 3}]) == [{"name": "n3"}]


# --- validation -----------------------------------------------------------------------------------------


def body(line: str) -> str:
    """A valid transform with ``line`` as its second line."""
    return f"function transform(p) {{\n  {line}\n  return {{}};\n}}"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (body("let x = 1;"), "line 2: 'let' is ES6; Duktape runs ES5 — use 'var'"),
        (body("const x = 1;"), "line 2: 'const' is ES6"),
        (body("var f = (x) => x;"), "line 2: arrow functions (=>) are ES6; write function (x) { … }"),
        (body("var s = `${p.a} b`;"), "line 2: template literals (`…`) are ES6; join strings with +"),
        (body("class A {}"), "line 2: classes are ES6"),
        (body("var {a, b} = p;"), "line 2: destructuring is ES6"),
        ("function transform({a}) {\n  return {};\n}", "line 1: destructuring is ES6"),
        (body("var a = [...p.tags];"), "line 2: spread/rest (...) is ES6"),
        ("function transform(p, q = 1) {\n  return {};\n}", "line 1: default parameter values are ES6"),
        (body("for (var t of p.tags) {}"), "line 2: for…of is ES6"),
        (body("function* g() {}"), "line 2: generators (function*) are ES6"),
        ("async function transform(p) {\n  return {};\n}", "line 1: async functions are ES2017"),
        ("import x from 'x';\n" + body(""), "line 1: modules (import/export) are ES6"),
        (body("var c = p?.a;"), "line 2: optional chaining (?.) is ES2020"),
        (body("var c = p.a ?? 'x';"), "line 2: the ?? operator is ES2020"),
        (body("var ok = /a/u.test(p.a);"), "line 2: regular expression flag 'u' is ES6 or later"),
        (body("var m = new Map();"), "line 2: Map does not exist in Duktape (ES5); use a plain object"),
        (body("console.log(p);"), "line 2: console does not exist in Duktape (ES5)"),
        (body("var e = Object.entries(p);"), "line 2: Object.entries does not exist in Duktape (ES5)"),
        (body("var o = {name: p.a +};"), "line 2: SyntaxError: parse error"),
        ("return 1;\n" + body(""), "line 1: 'return' outside a function"),
        ("function transfrom(p) { return {}; }", "the source must define function transform(profile)"),
        ("function outer() { function transform(p) { return {}; } }", "the source must define function"),
        ("", "the source must define function transform(profile)"),
    ],
)
def test_what_duktape_cannot_run_is_named_with_its_line(source: str, problem: str) -> None:
    problems = syntax_problems(source)
    assert any(p.startswith(problem) for p in problems), problems


def test_every_line_of_a_construct_is_listed_once() -> None:
    source = "function transform(p) {\n  let a = 1;\n  let b = 2; let c = 3;\n  return {};\n}"
    assert syntax_problems(source) == ["lines 2, 3: 'let' is ES6; Duktape runs ES5 — use 'var'"]


def test_duktape_errors_elsewhere_are_reported_beside_the_es6_ones() -> None:
    source = "const A = 1;\nfunction transform(p) {\n  return {name: p.a +};\n}"
    problems = syntax_problems(source)
    assert (
        problems[0].startswith("line 1: 'const' is ES6") and problems[1] == "line 3: SyntaxError: parse error"
    )


@pytest.mark.parametrize(
    "source",
    [
        MAPPING_LIKE,
        MISCHIEF,
        "var transform = function (p) { return {name: p.a}; };",
        # what looks like ES6 inside strings, comments and regular expressions, or as property names
        "// let x = `a` => class\nfunction transform(p) { /* const ... */ return {name: 'let x; `` => ...'}; }",
        "function transform(p) { return {name: p.a.replace(/`=>|\\.\\.\\./g, '')}; }",
        "function transform(p) { var o = {class: 1, let: 2}; return {name: p.class + o.let + p.a / 2 / 3}; }",
        # ES5 that merely resembles ES6, and the later bits Duktape does support
        "var let = 1;\nfunction transform(p) { return {name: let ? 'a' : .5}; }",
        "function transform(p) { var o = {a: 1, f() { return 2; }}; return {name: String(2 ** 3)}; }",
        # a polyfill, a local Map, feature detection
        "Object.entries = function (o) { return []; };\nfunction transform(p) { Object.entries(p); return {}; }",
        "function Map() {}\nfunction transform(p) { new Map(); return {}; }",
        "function transform(p) { if (typeof console !== 'undefined') { console.log(p); } return {}; }",
    ],
)
def test_es5_sources_are_accepted(source: str) -> None:
    assert syntax_problems(source) == []


def test_every_problem_found_by_validation_is_one_line_of_text() -> None:
    problems = syntax_problems("let a = () => `x`;\nclass B {}")
    assert len(problems) >= 3 and all("\n" not in p for p in problems)
