"""The transform step: profile → Record (or Rejection, or Skip), whatever the transformation language.

This is where the export's matching rules (``core/matching.py``) are applied: the matching value
is read and normalised here. A profile without one is rejected when the export creates customers
(it is never created blank), and skipped under ``update_only``, which leaves such profiles alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, Protocol

from krenalis_airflow.core.inputs import INPUT, RECORDED
from krenalis_airflow.core.matching import Mode, normalise_match, written_field
from krenalis_airflow.core.records import JsonlWriter, LeftOut, Record, Rejection, Skip, read_jsonl
from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.validate import checked_payload, stripe_text
from krenalis_airflow.exceptions import TransformError

STEP = "transform"
BATCH_SIZE = 1000
NO_MATCH = "no matching value; update_only never creates"  # the skip reason

Language = Literal["mapping", "javascript", "python"]


@dataclass(frozen=True)
class TransformSettings:
    """What the transform step reads of a pipeline spec, as plain values.

    ``key_column``: the source key (names records and rejections); ``matching_property``: the
    profile column holding the matching value; ``stripe_field``: the matched Stripe field (email,
    id or metadata.<key>); ``mode``: the export mode; ``language``: the transformation's language
    (the words of the hints in rejections).
    """

    key_column: str
    matching_property: str
    stripe_field: str
    mode: Mode
    language: Language

    @classmethod
    def of(cls, spec: SpecFields) -> TransformSettings:
        """The settings of a spec (a ``PipelineSpec``): the one place they are read from it."""
        matching = spec.export.matching
        return cls(
            key_column=spec.source.key,
            matching_property=matching.property,
            stripe_field=matching.stripe,
            mode=spec.export.mode,
            language=spec.transformation.language,
        )


def transform_profiles(
    profiles: Iterable[Mapping[str, Any]],
    transformer: Transformer,
    settings: TransformSettings,
    *,
    batch_size: int = BATCH_SIZE,
) -> Iterator[Record | Rejection | Skip]:
    """Records, rejections and skips, in input order, transforming ``batch_size`` profiles per call."""
    matching_property = settings.matching_property
    empty = f"'{matching_property}' is empty; nothing to match on"
    creates = settings.mode != "update_only"
    batch: list[Mapping[str, Any]] = []
    for profile in profiles:
        raw = profile.get(matching_property)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            yield from _finish(batch, transformer, settings)
            batch = []
            key = stripe_text(profile.get(settings.key_column))
            if creates:
                yield Rejection(key, STEP, "empty matching value", empty)
            else:  # nothing to update, and update_only leaves the others alone
                yield Skip(key, STEP, NO_MATCH, f"'{matching_property}' is empty; nothing to update")
            continue
        batch.append(profile)
        if len(batch) >= batch_size:
            yield from _finish(batch, transformer, settings)
            batch = []
    yield from _finish(batch, transformer, settings)


def transform_file(
    profiles: IO[str],
    records: IO[str],
    rejections: IO[str],
    transformer: Transformer,
    settings: TransformSettings,
) -> tuple[int, LeftOut]:
    """The transform step over JSONL files: the records written, and what was left out (the
    rejections are written to ``rejections``; skips are only counted)."""
    left = LeftOut()
    with JsonlWriter(records) as ok, JsonlWriter(rejections) as bad:
        for item in transform_profiles(read_jsonl(profiles), transformer, settings):
            if isinstance(item, Record):  # the common case first
                ok.write(item)
            else:
                left.leave_out(item, bad)
    return ok.count, left


def _finish(
    batch: list[Mapping[str, Any]], transformer: Transformer, settings: TransformSettings
) -> Iterator[Record | Rejection]:
    if not batch:
        return
    key_column, matching_property, stripe_field = (
        settings.key_column,
        settings.matching_property,
        settings.stripe_field,
    )
    by_email = stripe_field == "email"
    written = written_field(stripe_field, settings.mode)
    language = settings.language  # the words of the hints in rejections
    # The input digest (core/inputs.py) travels beside the profile, never into the transformation.
    inputs = [
        (profile.pop(INPUT, None), bool(profile.pop(RECORDED, False)))
        if isinstance(profile, dict)
        else (None, False)
        for profile in batch
    ]
    for number, (profile, result) in enumerate(zip(batch, transformer.transform_batch(batch), strict=True)):
        key = profile.get(key_column)
        if type(key) is not str:
            key = stripe_text(key)
        if isinstance(result, TransformError):
            yield Rejection(key, STEP, "transformation error", str(result))
            continue
        raw = profile[matching_property]
        if type(raw) is str:
            # matching.normalise_match inlined for the common case (a str), per record: keep both alike
            match_value = raw.strip()
            match = match_value.lower() if by_email else match_value
        else:
            match_value, match = stripe_text(raw), normalise_match(stripe_field, raw)
        payload, problems = checked_payload(result, {written: match_value} if written else {}, language)
        if problems:
            yield Rejection(key, STEP, "invalid output", "; ".join(problems))
            continue
        yield Record(key, match, match_value, payload, *inputs[number])


# What ``TransformSettings.of`` reads of a spec, so that this module needs no import of the spec
# module (which sits above the transformations it validates).


class _Source(Protocol):
    @property
    def key(self) -> str: ...


class _Matching(Protocol):
    @property
    def stripe(self) -> str: ...

    @property
    def property(self) -> str: ...  # last: the name shadows the builtin in this class body


class _Export(Protocol):
    @property
    def mode(self) -> Mode: ...

    @property
    def matching(self) -> _Matching: ...


class _Transformation(Protocol):
    @property
    def language(self) -> Language: ...


class SpecFields(Protocol):
    """The parts of a ``PipelineSpec`` the transform step reads."""

    @property
    def source(self) -> _Source:
        """The source part of the spec."""

    @property
    def export(self) -> _Export:
        """The export part of the spec."""

    @property
    def transformation(self) -> _Transformation:
        """The transformation part of the spec."""
