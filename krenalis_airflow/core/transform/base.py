"""What every transformation language provides: a batch of profiles in, one result per profile out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from krenalis_airflow.exceptions import TransformError

Payload = dict[str, Any]


class Transformer(Protocol):
    """Turns profiles into payloads: flat (``{"name": …, "address.city": …, "metadata.plan": …}``)
    or, from Python and JavaScript, with ``address``/``shipping``/``metadata`` nested, which
    ``validate.flat_output`` flattens to the same paths.

    ``transform_batch`` returns exactly one item per profile, in order: the payload, or the
    ``TransformError`` that rejects that profile alone. Batches let a language with a costly
    boundary (JavaScript in worker processes) cross it once per batch rather than per record.
    """

    def transform_batch(self, profiles: Sequence[Mapping[str, Any]]) -> list[Payload | TransformError]:
        """One payload (or the ``TransformError`` rejecting that profile) per profile, in order."""
        ...

    def close(self) -> None:
        """Release what the transformer holds (worker processes); it is not used afterwards."""
        ...


class PerRecord:
    """Base for in-process transformers that handle one profile at a time via ``__call__``."""

    def __call__(self, profile: Mapping[str, Any]) -> Payload:
        """The payload of one profile; raise ``TransformError`` to reject it alone."""
        raise NotImplementedError

    def transform_batch(self, profiles: Sequence[Mapping[str, Any]]) -> list[Payload | TransformError]:
        """``__call__`` on each profile, a ``TransformError`` kept in its profile's place."""
        results: list[Payload | TransformError] = []
        for profile in profiles:
            try:
                results.append(self(profile))
            except TransformError as exc:
                results.append(exc)
        return results

    def close(self) -> None:
        """Nothing to release in process."""
        return None
