"""The Python transformation: ``def transform(profile: dict) -> dict``, inline or referenced.

``transformation.python`` holds either inline source that defines ``transform``, or a single
line ``package.module:function`` naming a function importable from the DAGs folder (the task
passes it as ``search_path``) or from site-packages. The function gets a copy of each profile
(column → value) and returns a payload, flat (``{"name": …, "address.city": …, "metadata.x": …}``)
or with ``address``/``shipping``/``metadata`` nested, checked like every other transformation's
output.

Trust model: this is not a sandbox. The code runs with the full rights of the Airflow worker
(files, network, connections, environment variables), exactly like the code of a DAG file: only
people trusted to write DAGs may write Python transformations. A spec's inline code is executed
when a transform task starts; a referenced module is imported when a transform task starts and
by ``krenalis-airflow validate`` (never when a DAG file is parsed). Validation never runs inline
code: it parses it and checks that ``transform`` exists with a usable signature.

An exception raised for one profile rejects that profile alone, with the last line of its
traceback and the line of the transformation that raised it (``KeyError: 'plan' (line 3)``);
the run goes on.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from krenalis_airflow.core.transform.base import PerRecord
from krenalis_airflow.exceptions import TransformationUnusable, TransformError

REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
INLINE_FILENAME = "<transformation.python>"
SIGNATURE = "def transform(profile: dict) -> dict"

_IMPORT_LOCK = threading.Lock()


def is_reference(code: str) -> bool:
    """Whether ``code`` names a function (``package.module:function``) rather than defining one."""
    return bool(REFERENCE.match(code.strip()))


def source_problems(
    code: str, search_path: Sequence[str | Path] = (), *, import_reference: bool = True
) -> list[str]:
    """Why ``code`` cannot be used as a Python transformation; empty when it can.

    Inline code is parsed, never run. A reference is imported (with ``search_path`` first on
    ``sys.path``), which runs the module's top-level code, as any import does — unless
    ``import_reference`` is False (DAG parsing: the dag-processor would run user code every 30 s;
    the transform task imports it, and ``krenalis-airflow validate`` checks it imports).
    """
    if not isinstance(code, str) or not code.strip():
        return [f"the code is empty; define {SIGNATURE}"]
    if is_reference(code):
        if not import_reference:
            return []
        try:
            _load_reference(code.strip(), search_path)
        except TransformationUnusable as exc:
            return [str(exc)]
        return []
    return _inline_problems(code)


def _inline_problems(code: str) -> list[str]:
    try:
        tree = ast.parse(code, INLINE_FILENAME)
    except SyntaxError as exc:
        return [f"line {exc.lineno}: syntax error: {exc.msg}"]
    definition = _top_level_transform(tree)
    if definition is None:
        return [f"no top-level function named 'transform'; define {SIGNATURE}"]
    if isinstance(definition, ast.AsyncFunctionDef):
        return [f"line {definition.lineno}: transform must be a plain function, not async"]
    if isinstance(definition, ast.FunctionDef) and not _takes_one_argument(definition.args):
        return [f"line {definition.lineno}: transform must take one argument, the profile: {SIGNATURE}"]
    return []


def _top_level_transform(tree: ast.Module) -> ast.stmt | None:
    """The last top-level statement that binds ``transform`` (a def, an assignment, an import)."""
    found: ast.stmt | None = None
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef) and statement.name == "transform":
            found = statement
        elif isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "transform" for target in statement.targets
        ):
            found = statement
        elif isinstance(statement, ast.ImportFrom) and any(
            (alias.asname or alias.name) == "transform" for alias in statement.names
        ):
            found = statement
    return found


def _takes_one_argument(args: ast.arguments) -> bool:
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    required_keywords = sum(default is None for default in args.kw_defaults)
    return required <= 1 and (positional >= 1 or args.vararg is not None) and required_keywords == 0


def _check_signature(function: Callable[..., Any], where: str) -> None:
    try:
        inspect.signature(function).bind(None)
    except TypeError as exc:
        raise TransformationUnusable(
            f"{where} must take one argument, the profile: {SIGNATURE} ({exc})"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): trust it
        return


@contextmanager
def _search_path(paths: Sequence[str | Path]) -> Iterator[None]:
    """``paths`` first on ``sys.path`` while importing; removed afterwards, so that a task's
    process is left as it was found (modules already imported stay imported)."""
    added = [str(path) for path in paths if str(path) not in sys.path]
    with _IMPORT_LOCK:
        sys.path[:0] = added
        try:
            yield
        finally:
            for path in added:
                sys.path.remove(path)


def _load_reference(reference: str, search_path: Sequence[str | Path]) -> Callable[..., Any]:
    module_name, _, attribute = reference.partition(":")
    try:
        with _search_path(search_path):
            module = importlib.import_module(module_name)
    except Exception as exc:
        error = traceback.format_exception_only(exc)[-1].strip()
        raise TransformationUnusable(f"cannot import module {module_name!r}: {error}") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise TransformationUnusable(f"module {module_name!r} has no function {attribute!r}")
    if not callable(function):
        raise TransformationUnusable(f"{reference} is a {type(function).__name__}, not a function")
    _check_signature(function, reference)
    return function


def _load_inline(code: str) -> Callable[..., Any]:
    if problems := _inline_problems(code):
        raise TransformationUnusable(problems[0])
    module = types.ModuleType("krenalis_transformation")
    module.__file__ = INLINE_FILENAME
    try:
        exec(compile(code, INLINE_FILENAME, "exec"), module.__dict__)
    except Exception as exc:
        raise TransformationUnusable(f"running the code failed: {_describe(exc, INLINE_FILENAME)}") from None
    function = module.__dict__.get("transform")
    if not callable(function):
        raise TransformationUnusable(f"'transform' is a {type(function).__name__}, not a function")
    _check_signature(function, "transform")
    return function


def _describe(exc: BaseException, filename: str) -> str:
    """The traceback's last line, and the innermost line of ``filename`` it went through."""
    message = traceback.format_exception_only(exc)[-1].strip()
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    if line is None:
        return message
    where = f"line {line}" if filename == INLINE_FILENAME else f"{Path(filename).name} line {line}"
    return f"{message} ({where})"


class PythonTransformer(PerRecord):
    """Runs ``transform(profile)`` in this process, one profile at a time.

    Raises ``TransformationUnusable`` at construction when the code cannot be loaded: retrying a
    run cannot fix it.
    """

    def __init__(self, code: str, *, search_path: Sequence[str | Path] = ()) -> None:
        if not isinstance(code, str) or not code.strip():
            raise TransformationUnusable(f"the code is empty; define {SIGNATURE}")
        if is_reference(code):
            self._function = _load_reference(code.strip(), search_path)
        else:
            self._function = _load_inline(code)
        self._filename = getattr(getattr(self._function, "__code__", None), "co_filename", INLINE_FILENAME)

    def __call__(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        """Call the user's ``transform`` on a copy of the profile and check it returned a dict."""
        try:
            payload = self._function(dict(profile))  # a copy: the run still reads the profile
        except Exception as exc:  # any failure of user code rejects this profile only
            raise TransformError(_describe(exc, self._filename)) from exc
        if not isinstance(payload, dict):
            raise TransformError(
                f"transform returned a {type(payload).__name__}, not a dict of field → value"
            )
        return payload
