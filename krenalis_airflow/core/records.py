"""What travels between steps: one JSON object per line, streamed, never a whole list in memory.

Encoding and decoding use msgspec (an Airflow dependency): with ``json`` and
``dataclasses.asdict`` this file format was the slowest part of every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec


@dataclass(frozen=True, slots=True)
class Record:
    """A transformed profile, ready to be upserted.

    ``match`` is the normalised matching value (what is compared); ``match_value`` is what is
    written to the matched Stripe field when a customer is created.
    """

    key: str
    match: str
    match_value: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A profile left out of the sync, with the step, a short kind (for counts) and the detail."""

    key: str
    step: str
    kind: str
    reason: str


_ENCODER = msgspec.json.Encoder(enc_hook=str)
_DECODER = msgspec.json.Decoder()


def _plain(item: Record | Rejection | dict[str, Any]) -> dict[str, Any]:
    if isinstance(item, Record):
        return {
            "key": item.key,
            "match": item.match,
            "match_value": item.match_value,
            "payload": item.payload,
        }
    if isinstance(item, Rejection):
        return {"key": item.key, "step": item.step, "kind": item.kind, "reason": item.reason}
    return item


def write_jsonl(stream: IO[str], items: Iterable[Record | Rejection | dict[str, Any]]) -> int:
    count = 0
    for item in items:
        stream.write(_ENCODER.encode(_plain(item)).decode())
        stream.write("\n")
        count += 1
    return count


def read_jsonl(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            yield _DECODER.decode(line)


def read_records(stream: IO[str]) -> Iterator[Record]:
    for data in read_jsonl(stream):
        yield Record(**data)


def read_rejections(stream: IO[str]) -> Iterator[Rejection]:
    for data in read_jsonl(stream):
        yield Rejection(**data)
