"""Python transformations: inline code and ``package.module:function`` references."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from krenalis_airflow.core.records import Record, Rejection
from krenalis_airflow.core.spec import PipelineSpec, parse_spec
from krenalis_airflow.core.transform.python import PythonTransformer, is_reference, source_problems
from krenalis_airflow.core.transform.run import TransformSettings, transform_profiles
from krenalis_airflow.exceptions import TransformationUnusable, TransformError

INLINE = """\
def transform(profile):
    return {
        "name": profile["first_name"] + " " + profile["last_name"],
        "metadata.plan": profile.get("plan"),
    }
"""
ADA = {
    "profile_id": 1,
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "plan": "pro",
}


@pytest.fixture
def spec() -> PipelineSpec:
    return parse_spec(
        """\
id: python_test
source: {conn_id: warehouse, table: customer_profiles, key: profile_id}
export: {matching: {property: email, stripe: email}}
transformation:
  python: |
    def transform(profile):
        return {}
"""
    )


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    """A DAGs-folder-like directory holding the package ``krenalis_test_pkg``."""
    root = tmp_path / "dags"
    pkg = root / "krenalis_test_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "transforms.py").write_text(
        textwrap.dedent(
            """\
            PREFIX = "ref"

            def to_stripe(profile):
                return {"name": PREFIX + ":" + profile["first_name"]}

            def fails(profile):
                value = profile["first_name"]
                return {"name": value["nope"]}

            def two_args(profile, other):
                return {}

            NOT_A_FUNCTION = 3
            """
        )
    )
    (pkg / "broken.py").write_text("import no_such_module_anywhere\n")
    yield root
    for name in [m for m in sys.modules if m.startswith("krenalis_test_pkg")]:
        del sys.modules[name]


# --------------------------------------------------------------------------------------------
# Inline


def test_inline_code_transforms_each_profile() -> None:
    transformer = PythonTransformer(INLINE)
    assert transformer(ADA) == {"name": "Ada Lovelace", "metadata.plan": "pro"}
    assert transformer.transform_batch([ADA, {**ADA, "first_name": "Grace"}]) == [
        {"name": "Ada Lovelace", "metadata.plan": "pro"},
        {"name": "Grace Lovelace", "metadata.plan": "pro"},
    ]


def test_inline_code_can_use_imports_and_helpers() -> None:
    code = textwrap.dedent(
        """\
        import json

        def _full(profile):
            return " ".join(p for p in (profile["first_name"], profile["last_name"]) if p)

        def transform(profile):
            return {"name": _full(profile), "metadata.raw": json.dumps({"plan": profile["plan"]})}
        """
    )
    assert PythonTransformer(code)({**ADA, "last_name": None}) == {
        "name": "Ada",
        "metadata.raw": '{"plan": "pro"}',
    }


def test_a_per_record_exception_rejects_that_profile_with_the_tracebacks_last_line() -> None:
    code = "def transform(profile):\n    x = 1\n    return {'name': profile['nope']}\n"
    [result] = PythonTransformer(code).transform_batch([ADA])
    assert isinstance(result, TransformError)
    assert str(result) == "KeyError: 'nope' (line 3)"


def test_the_line_is_the_transformations_own_even_when_a_library_raises() -> None:
    code = "import json\n\ndef transform(profile):\n    return json.loads(profile['first_name'])\n"
    [result] = PythonTransformer(code).transform_batch([ADA])
    assert isinstance(result, TransformError)
    assert str(result).startswith("json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)")
    assert str(result).endswith("(line 4)")


def test_a_failing_profile_does_not_stop_the_others(spec: PipelineSpec) -> None:
    code = "def transform(profile):\n    return {'name': 10 // profile['n']}\n"
    profiles = [
        {**ADA, "profile_id": i, "email": f"p{i}@example.com", "n": n} for i, n in enumerate([1, 0, 2])
    ]
    items = list(transform_profiles(profiles, PythonTransformer(code), TransformSettings.of(spec)))
    assert [type(item).__name__ for item in items] == ["Record", "Rejection", "Record"]
    assert items[1] == Rejection(
        "1",
        "transform",
        "transformation error",
        "ZeroDivisionError: integer division or modulo by zero (line 2)",
    )
    assert items[2] == Record("2", "p2@example.com", "p2@example.com", {"name": "5"})


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        ("None", "transform returned a NoneType, not a dict of field → value"),
        ("[('name', 'x')]", "transform returned a list, not a dict of field → value"),
    ],
)
def test_an_output_that_is_not_a_dict_rejects_the_profile(returned: str, reason: str) -> None:
    [result] = PythonTransformer(f"def transform(profile):\n    return {returned}\n").transform_batch([ADA])
    assert isinstance(result, TransformError)
    assert str(result) == reason


def test_outputs_are_validated_like_any_transformations(spec: PipelineSpec) -> None:
    code = "def transform(profile):\n    return {'nmae': 'x', 3: 'y', 'metadata.tags': ['a'], 'address.country': 'Italy'}\n"
    [item] = transform_profiles([ADA], PythonTransformer(code), TransformSettings.of(spec))
    assert item == Rejection(
        "1",
        "transform",
        "invalid output",
        '3: a field name must be text; metadata.tags: a list is not text; join it (", ".join(value)) or pick one element',
    )
    code = "def transform(profile):\n    return {'nmae': 'x', 'address.country': 'Italy'}\n"
    [item] = transform_profiles([ADA], PythonTransformer(code), TransformSettings.of(spec))
    assert isinstance(item, Rejection)
    assert item.reason.startswith("nmae: unknown Stripe customer field 'nmae'; allowed: ")
    assert item.reason.endswith(
        "; address.country: 'Italy' is not an ISO 3166-1 alpha-2 country code (like IT, DE, US)"
    )


def test_nested_hashes_are_the_same_output_as_dotted_paths(spec: PipelineSpec) -> None:
    nested = """\
def transform(profile):
    return {
        "name": profile["first_name"],
        "address": {"city": "Milano", "country": "IT"},
        "shipping": {"name": "A", "address": {"line1": "Via Roma 1", "city": "Milano"}},
        "metadata": {"plan": profile["plan"], "orders": 4},
    }
"""
    dotted = """\
def transform(profile):
    return {
        "name": profile["first_name"],
        "address.city": "Milano",
        "address.country": "IT",
        "shipping.name": "A",
        "shipping.address.line1": "Via Roma 1",
        "shipping.address.city": "Milano",
        "metadata.plan": profile["plan"],
        "metadata.orders": 4,
    }
"""
    [from_nested] = transform_profiles([ADA], PythonTransformer(nested), TransformSettings.of(spec))
    [from_dotted] = transform_profiles([ADA], PythonTransformer(dotted), TransformSettings.of(spec))
    assert from_nested == from_dotted
    assert isinstance(from_nested, Record)
    assert from_nested.payload["metadata.orders"] == "4"


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        (
            "{'metadata': None}",
            'metadata: None would delete keys this pipeline does not own; set each key to None, e.g. "metadata": {"plan": None}',
        ),
        (
            "{'metadata': {'prefs': {'a': 1}}}",
            "metadata.prefs: a dict is not text; send it as JSON text with json.dumps(value), or pick one of its keys",
        ),
        (
            "{'address': {'city': 'A'}, 'address.city': 'B'}",
            "address.city: given twice, with different values",
        ),
    ],
)
def test_nested_outputs_are_refused_in_pythons_words(spec: PipelineSpec, returned: str, reason: str) -> None:
    code = f"def transform(profile):\n    return {returned}\n"
    [item] = transform_profiles([ADA], PythonTransformer(code), TransformSettings.of(spec))
    assert item == Rejection("1", "transform", "invalid output", reason)


def test_the_function_gets_a_copy_of_the_profile(spec: PipelineSpec) -> None:
    code = "def transform(profile):\n    profile['email'] = 'changed@example.com'\n    return {'name': 'x'}\n"
    profile = dict(ADA)
    [item] = transform_profiles([profile], PythonTransformer(code), TransformSettings.of(spec))
    assert profile == ADA
    assert isinstance(item, Record)
    assert item.match == "ada@example.com"


def test_exceptions_outside_exception_are_not_swallowed() -> None:
    code = "def transform(profile):\n    raise KeyboardInterrupt\n"
    with pytest.raises(KeyboardInterrupt):
        PythonTransformer(code).transform_batch([ADA])


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("", "the code is empty; define def transform(profile: dict) -> dict"),
        ("def transform(profile):\n    return {\n", "line 2: syntax error: '{' was never closed"),
        ("def transfrom(profile):\n    return {}\n", "no top-level function named 'transform'"),
        (
            "async def transform(profile):\n    return {}\n",
            "line 1: transform must be a plain function, not async",
        ),
        ("def transform():\n    return {}\n", "line 1: transform must take one argument, the profile"),
        ("def transform(a, b):\n    return {}\n", "line 1: transform must take one argument, the profile"),
        (
            "def transform(p, *, flag):\n    return {}\n",
            "line 1: transform must take one argument, the profile",
        ),
    ],
)
def test_source_problems_of_inline_code(code: str, error: str) -> None:
    [problem] = source_problems(code)
    assert problem.startswith(error)
    with pytest.raises(TransformationUnusable, match="^" + re.escape(error)):
        PythonTransformer(code)


@pytest.mark.parametrize(
    "code",
    [
        INLINE,
        "def transform(profile, extra=None):\n    return {}\n",
        "def transform(*args):\n    return {}\n",
        "transform = lambda profile: {}\n",
        "from json import loads as transform\n",
    ],
)
def test_source_problems_accepts_usable_inline_code(code: str) -> None:
    assert source_problems(code) == []


def test_source_problems_never_runs_inline_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()\n\ndef transform(profile):\n    return {{}}\n"
    assert source_problems(code) == []
    assert not marker.exists()


def test_inline_code_that_fails_when_loaded_is_a_terminal_error() -> None:
    code = "import json\nBROKEN = 1 / 0\n\ndef transform(profile):\n    return {}\n"
    with pytest.raises(
        TransformationUnusable,
        match=r"^running the code failed: ZeroDivisionError: division by zero \(line 2\)$",
    ):
        PythonTransformer(code)


# --------------------------------------------------------------------------------------------
# References


@pytest.mark.parametrize(
    ("code", "reference"),
    [
        ("pkg.mod:fn", True),
        ("  pkg.mod:fn\n", True),
        ("mod:_private", True),
        ("pkg.mod:fn extra", False),
        ("def transform(p): return {}", False),
        ("pkg.mod:", False),
        ("1pkg:fn", False),
        ("import x\npkg.mod:fn", False),
    ],
)
def test_is_reference(code: str, reference: bool) -> None:
    assert is_reference(code) is reference


def test_a_reference_is_imported_from_the_search_path(package: Path) -> None:
    transformer = PythonTransformer("krenalis_test_pkg.transforms:to_stripe", search_path=[package])
    assert transformer(ADA) == {"name": "ref:Ada"}
    assert str(package) not in sys.path  # the search path is not left behind


def test_source_problems_accepts_a_good_reference(package: Path) -> None:
    assert source_problems("krenalis_test_pkg.transforms:to_stripe", search_path=[package]) == []


def test_a_per_record_exception_in_a_reference_names_its_file_and_line(package: Path) -> None:
    transformer = PythonTransformer("krenalis_test_pkg.transforms:fails", search_path=[str(package)])
    [result] = transformer.transform_batch([ADA])
    assert str(result) == "TypeError: string indices must be integers, not 'str' (transforms.py line 8)"


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        (
            "krenalis_no_such_pkg.mod:fn",
            "cannot import module 'krenalis_no_such_pkg.mod': ModuleNotFoundError: No module named 'krenalis_no_such_pkg'",
        ),
        (
            "krenalis_test_pkg.broken:fn",
            "cannot import module 'krenalis_test_pkg.broken': ModuleNotFoundError: No module named 'no_such_module_anywhere'",
        ),
        (
            "krenalis_test_pkg.transforms:missing",
            "module 'krenalis_test_pkg.transforms' has no function 'missing'",
        ),
        (
            "krenalis_test_pkg.transforms:NOT_A_FUNCTION",
            "krenalis_test_pkg.transforms:NOT_A_FUNCTION is a int, not a function",
        ),
        (
            "krenalis_test_pkg.transforms:two_args",
            "krenalis_test_pkg.transforms:two_args must take one argument, the profile",
        ),
    ],
)
def test_source_problems_of_references(package: Path, reference: str, problem: str) -> None:
    [found] = source_problems(reference, search_path=[package])
    assert found.startswith(problem)
    with pytest.raises(TransformationUnusable) as info:
        PythonTransformer(reference, search_path=[package])
    assert str(info.value).startswith(problem)


def test_a_reference_outside_the_search_path_is_not_found(package: Path) -> None:
    [problem] = source_problems("krenalis_test_pkg.transforms:to_stripe")
    assert problem.startswith("cannot import module 'krenalis_test_pkg.transforms'")


def test_a_reference_to_an_installed_module_needs_no_search_path() -> None:
    assert PythonTransformer("copy:copy")({"name": "x"}) == {"name": "x"}
