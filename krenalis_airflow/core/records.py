"""What travels between steps: one JSON object per line, streamed, never a whole list in memory."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any


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


def write_jsonl(stream: IO[str], items: Iterable[Record | Rejection | dict[str, Any]]) -> int:
    count = 0
    for item in items:
        data = item if isinstance(item, dict) else asdict(item)
        stream.write(json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str))
        stream.write("\n")
        count += 1
    return count


def read_jsonl(stream: IO[str]) -> Iterator[dict[str, Any]]:
    for line in stream:
        if line.strip():
            yield json.loads(line)


def read_records(stream: IO[str]) -> Iterator[Record]:
    for data in read_jsonl(stream):
        yield Record(**data)


def read_rejections(stream: IO[str]) -> Iterator[Rejection]:
    for data in read_jsonl(stream):
        yield Rejection(**data)
