"""The transform step: profile → Record (or Rejection, or Skip), whatever the transformation language.

This is where the export's matching rules are applied: the matching value is read and
normalised here. A profile without one is rejected when the export creates customers (it is
never created blank), and skipped under ``update_only``, which leaves such profiles alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from krenalis_airflow.core.records import JsonlWriter, LeftOut, Record, Rejection, Skip, read_jsonl
from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.validate import checked_payload, stripe_text
from krenalis_airflow.exceptions import TransformError

if TYPE_CHECKING:  # spec imports the mapping module, which imports validate
    from krenalis_airflow.core.spec import PipelineSpec

STEP = "transform"
BATCH_SIZE = 1000
NO_MATCH = "no matching value; update_only never creates"  # the skip reason


def normalise_match(stripe_field: str, value: Any) -> str:
    """The comparable form of a matching value.

    Surrounding spaces never count (the value written on create is trimmed too, so a trimmed
    and an untrimmed profile value must find the same customer); emails also ignore case.
    """
    text = (value if isinstance(value, str) else stripe_text(value)).strip()
    return text.lower() if stripe_field == "email" else text


def transform_profiles(
    profiles: Iterable[Mapping[str, Any]],
    spec: PipelineSpec,
    transformer: Transformer,
    *,
    batch_size: int = BATCH_SIZE,
) -> Iterator[Record | Rejection | Skip]:
    """Records, rejections and skips, in input order, transforming ``batch_size`` profiles per call."""
    matching = spec.export.matching
    empty = f"'{matching.property}' is empty; nothing to match on"
    creates = spec.export.mode != "update_only"
    batch: list[Mapping[str, Any]] = []
    for profile in profiles:
        raw = profile.get(matching.property)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            yield from _finish(batch, spec, transformer)
            batch = []
            key = stripe_text(profile.get(spec.source.key))
            if creates:
                yield Rejection(key, STEP, "empty matching value", empty)
            else:  # nothing to update, and update_only leaves the others alone
                yield Skip(key, STEP, NO_MATCH, f"'{matching.property}' is empty; nothing to update")
            continue
        batch.append(profile)
        if len(batch) >= batch_size:
            yield from _finish(batch, spec, transformer)
            batch = []
    yield from _finish(batch, spec, transformer)


def transform_file(
    profiles: IO[str], records: IO[str], rejections: IO[str], spec: PipelineSpec, transformer: Transformer
) -> tuple[int, LeftOut]:
    """The transform step over JSONL files: the records written, and what was left out (the
    rejections are written to ``rejections``; skips are only counted)."""
    left = LeftOut()
    with JsonlWriter(records) as ok, JsonlWriter(rejections) as bad:
        for item in transform_profiles(read_jsonl(profiles), spec, transformer):
            if isinstance(item, Record):  # the common case first
                ok.write(item)
            elif isinstance(item, Rejection):
                left.rejected[item.kind] += 1
                bad.write(item)
            else:
                left.skip(item)
    return ok.count, left


def _finish(
    batch: list[Mapping[str, Any]], spec: PipelineSpec, transformer: Transformer
) -> Iterator[Record | Rejection]:
    if not batch:
        return
    key_column, matching = spec.source.key, spec.export.matching
    written = _written_field(spec)
    language = spec.transformation.language  # the words of the hints in rejections
    for profile, result in zip(batch, transformer.transform_batch(batch), strict=True):
        key = profile.get(key_column)
        if type(key) is not str:
            key = stripe_text(key)
        if isinstance(result, TransformError):
            yield Rejection(key, STEP, "transformation error", str(result))
            continue
        raw = profile[matching.property]
        if type(raw) is str:
            match_value = raw.strip()
            match = match_value.lower() if matching.stripe == "email" else match_value  # normalise_match
        else:
            match_value, match = stripe_text(raw), normalise_match(matching.stripe, raw)
        payload, problems = checked_payload(result, {written: match_value} if written else {}, language)
        if problems:
            yield Rejection(key, STEP, "invalid output", "; ".join(problems))
            continue
        yield Record(key, match, match_value, payload)


def _written_field(spec: PipelineSpec) -> str | None:
    """The matched field, which a create writes too; None when this export never creates."""
    stripe_field = spec.export.matching.stripe
    if stripe_field == "id" or spec.export.mode == "update_only":
        return None
    return stripe_field
