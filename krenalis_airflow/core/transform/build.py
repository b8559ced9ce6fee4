"""One place that turns a spec's ``transformation`` into a Transformer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.mapping import MappingTransform
from krenalis_airflow.core.transform.python import PythonTransformer


class TransformationFields(Protocol):
    """What building a transformer reads of a transformation (the spec's ``Transformation``):
    exactly one of ``mapping``, ``python`` or ``javascript``, and the JavaScript limits."""

    @property
    def mapping(self) -> Mapping[str, str] | None:
        """Target field → expression, for a mapping transformation."""

    @property
    def python(self) -> str | None:
        """The Python source (or a reference to it)."""

    @property
    def javascript(self) -> str | None:
        """The JavaScript source (or a reference to it)."""

    @property
    def timeout(self) -> float:
        """Seconds a JavaScript call may run."""

    @property
    def memory_mb(self) -> int:
        """Memory limit of a JavaScript worker, in MB."""


def build_transformer(
    transformation: TransformationFields, *, search_path: Sequence[str | Path] = ()
) -> Transformer:
    """The transformer for ``transformation``; call ``close()`` when done (JavaScript workers)."""
    if transformation.mapping is not None:
        return MappingTransform(transformation.mapping)
    if transformation.python is not None:
        return PythonTransformer(transformation.python, search_path=search_path)
    from krenalis_airflow.core.transform.javascript import JavaScriptTransformer  # optional extra

    assert transformation.javascript is not None
    return JavaScriptTransformer(
        transformation.javascript, timeout=transformation.timeout, memory_mb=transformation.memory_mb
    )
