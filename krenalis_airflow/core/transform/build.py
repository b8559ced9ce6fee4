"""One place that turns a spec's ``transformation`` into a Transformer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from krenalis_airflow.core.spec import Transformation
from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.mapping import MappingTransform
from krenalis_airflow.core.transform.python import PythonTransformer


def build_transformer(
    transformation: Transformation, *, search_path: Sequence[str | Path] = ()
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
