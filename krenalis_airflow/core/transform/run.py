"""The transform step: profile → Record (or Rejection), whatever the transformation language.

This is where the export's matching rules are applied: the matching value is read and
normalised here, and a profile without one is rejected, never created blank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from krenalis_airflow.core.records import Record, Rejection
from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.validate import output_problems, type_problems
from krenalis_airflow.exceptions import TransformError

if TYPE_CHECKING:  # spec imports the mapping module, which uses stripe_value from here
    from krenalis_airflow.core.spec import PipelineSpec

STEP = "transform"
BATCH_SIZE = 1000


def normalise_match(stripe_field: str, value: Any) -> str:
    """The comparable form of a matching value.

    Surrounding spaces never count (the value written on create is trimmed too, so a trimmed
    and an untrimmed profile value must find the same customer); emails also ignore case.
    """
    text = (value if isinstance(value, str) else _text(value)).strip()
    return text.lower() if stripe_field == "email" else text


def transform_profiles(
    profiles: Iterable[Mapping[str, Any]],
    spec: PipelineSpec,
    transformer: Transformer,
    *,
    batch_size: int = BATCH_SIZE,
) -> Iterator[Record | Rejection]:
    """Records and rejections, in input order, transforming ``batch_size`` profiles per call."""
    matching = spec.export.matching
    batch: list[Mapping[str, Any]] = []
    for profile in profiles:
        raw = profile.get(matching.property)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            yield from _finish(batch, spec, transformer)
            batch = []
            key = _text(profile.get(spec.source.key))
            yield Rejection(
                key, STEP, "empty matching value", f"'{matching.property}' is empty; nothing to match on"
            )
            continue
        batch.append(profile)
        if len(batch) >= batch_size:
            yield from _finish(batch, spec, transformer)
            batch = []
    yield from _finish(batch, spec, transformer)


def _finish(
    batch: list[Mapping[str, Any]], spec: PipelineSpec, transformer: Transformer
) -> Iterator[Record | Rejection]:
    if not batch:
        return
    matching = spec.export.matching
    for profile, result in zip(batch, transformer.transform_batch(batch), strict=True):
        key = _text(profile.get(spec.source.key))
        if isinstance(result, TransformError):
            yield Rejection(key, STEP, "transformation error", str(result))
            continue
        raw = profile[matching.property]
        match_value = raw.strip() if isinstance(raw, str) else _text(raw)
        payload, problems = _checked(result, _written_match(spec, match_value))
        if problems:
            yield Rejection(key, STEP, "invalid output", "; ".join(problems))
            continue
        yield Record(key, normalise_match(matching.stripe, raw), match_value, payload)


def _checked(result: Mapping[str, Any], match: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The coerced payload, and every reason Stripe would refuse it (with ``match``, which a
    create writes too)."""
    problems = type_problems(result)
    if problems:
        return {}, problems
    payload = {path: stripe_value(path, value) for path, value in result.items()}
    return payload, output_problems({**payload, **match})


def _written_match(spec: PipelineSpec, match_value: str) -> dict[str, str]:
    """The matched field as a create writes it; empty when this export never creates."""
    stripe_field = spec.export.matching.stripe
    if stripe_field == "id" or spec.export.mode == "update_only":
        return {}
    return {stripe_field: match_value}


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
        return [_text(item) for item in items if item not in (None, "")]
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)
