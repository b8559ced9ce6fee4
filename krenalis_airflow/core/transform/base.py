"""What every transformation language provides: a batch of profiles in, one result per profile out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from krenalis_airflow.exceptions import TransformError

Payload = dict[str, Any]


class Transformer(Protocol):
    """Turns profiles into flat payloads (``{"name": …, "address.city": …, "metadata.plan": …}``).

    ``transform_batch`` returns exactly one item per profile, in order: the payload, or the
    ``TransformError`` that rejects that profile alone. Batches let a language with a costly
    boundary (JavaScript in worker processes) cross it once per batch rather than per record.
    """

    def transform_batch(self, profiles: Sequence[Mapping[str, Any]]) -> list[Payload | TransformError]: ...

    def close(self) -> None: ...


class PerRecord:
    """Base for in-process transformers that handle one profile at a time via ``__call__``."""

    def __call__(self, profile: Mapping[str, Any]) -> Payload:
        raise NotImplementedError

    def transform_batch(self, profiles: Sequence[Mapping[str, Any]]) -> list[Payload | TransformError]:
        results: list[Payload | TransformError] = []
        for profile in profiles:
            try:
                results.append(self(profile))
            except TransformError as exc:
                results.append(exc)
        return results

    def close(self) -> None:
        return None
