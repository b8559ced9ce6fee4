"""What travels between steps: one JSON object per line, streamed, never a whole list in memory.

Encoding and decoding use msgspec (an Airflow dependency), a thousand lines per call: lines are
read and written in chunks and decoded straight into ``Record``/``Rejection`` structs, because
per-line JSON calls and dict → object copies were the slowest part of every step.

A step's verdict on each profile is one of three types: a ``Record`` goes on, a ``Rejection`` is
a problem (written to the step's rejection file, counted against ``export.max_rejected``), a
``Skip`` is the pipeline's own rule at work (only counted, by reason; see ``LeftOut``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import IO, Any, TypeVar

import msgspec


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """A transformed profile, ready to be upserted.

    ``match`` is the normalised matching value (what is compared); ``match_value`` is what is
    written to the matched Stripe field when a customer is created. ``input``: the digest of the
    profile's input row (``core/inputs.py``; None when the extract step computed none), written to
    the ledger with the entry, or alone for an unchanged record unless ``input_recorded`` (the
    ledger holds it already).
    """

    key: str
    match: str
    match_value: str
    payload: dict[str, Any] = {}
    input: int | None = None
    input_recorded: bool = False


class Rejection(msgspec.Struct, frozen=True):
    """A profile left out of the sync, with the step, a short kind (for counts) and the detail."""

    key: str
    step: str
    kind: str
    reason: str


class Skip(msgspec.Struct, frozen=True):
    """A profile the spec's own rules leave out (``keep_first``, ``update_only``, ``create_only``):
    not a problem, so never written as a rejection nor counted against ``export.max_rejected``.

    ``reason`` is short and fixed (the count's key in the summary); ``detail`` names this profile's case.
    """

    key: str
    step: str
    reason: str
    detail: str = ""


SAMPLES = 5  # skipped profiles a step names in the summary


@dataclass
class LeftOut:
    """What a step left out: rejections by kind, skips by reason, and the first skips as samples."""

    rejected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)  # "key: detail" of the first SAMPLES skips

    def skip(self, item: Skip) -> None:
        """Count a skip by its reason, naming the first few profiles."""
        self.skipped[item.reason] += 1
        if len(self.samples) < SAMPLES:
            self.samples.append(f"{item.key}: {item.detail or item.reason}")

    def leave_out(self, item: Rejection | Skip, rejections: JsonlWriter) -> None:
        """Count ``item``; a rejection is also written to the step's ``rejections`` file."""
        if isinstance(item, Rejection):
            self.rejected[item.kind] += 1
            rejections.write(item)
        else:
            self.skip(item)


class Keys(msgspec.Struct, frozen=True):
    """Only the key and the matching value of a record line (the payload is skipped, not built)."""

    key: str
    match: str


LINES_PER_CALL = 1000
READ_SIZE = 1 << 18  # characters read at a time

Item = Record | Rejection | dict[str, Any]
T = TypeVar("T")

_ENCODER = msgspec.json.Encoder(enc_hook=str)
_DICTS: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])
_RECORDS = msgspec.json.Decoder(Record)
_REJECTIONS = msgspec.json.Decoder(Rejection)
_KEYS = msgspec.json.Decoder(Keys)


class JsonlWriter:
    """Writes items (encoded a chunk at a time) and ready lines, in order, to a text stream.

    Use it as a context manager (or call ``flush``): what is still buffered is written on exit,
    only when the block succeeded. ``count`` is the number of lines written.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.count = 0
        self._items: list[Item] = []
        self._text: list[str] = []  # encoded chunks and copied lines, in order
        self._lines = 0  # lines in _text

    def write(self, item: Item) -> None:
        """Queue an item; full chunks are encoded and written."""
        self._items.append(item)
        if len(self._items) >= LINES_PER_CALL:
            self._encode()
            self.flush()

    def write_line(self, line: str) -> None:
        """Copy a line already encoded (as read by ``read_keyed_lines``), as is."""
        if self._items:
            self._encode()
        self._text.append(line if line.endswith("\n") else line + "\n")
        self._lines += 1
        if self._lines >= LINES_PER_CALL:
            self.flush()

    def _encode(self) -> None:
        self._text.append(_ENCODER.encode_lines(self._items).decode())
        self._lines += len(self._items)
        self._items.clear()

    def flush(self) -> None:
        """Encode what is queued and write everything out."""
        if self._items:
            self._encode()
        if self._text:
            self.stream.write("".join(self._text))
            self.count += self._lines
            self._text.clear()
            self._lines = 0

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.flush()


def write_jsonl(stream: IO[str], items: Iterable[Item]) -> int:
    """Write ``items`` as JSON lines, a chunk at a time; returns how many."""
    count = 0
    iterator = iter(items)
    while chunk := list(islice(iterator, LINES_PER_CALL)):
        stream.write(_ENCODER.encode_lines(chunk).decode())
        count += len(chunk)
    return count


def _blocks(stream: IO[str]) -> Iterator[tuple[str, int]]:
    """Text of whole lines, read about ``READ_SIZE`` characters at a time, with the number of
    its first line. Never split into lines: ``decode_lines`` takes the block as it is."""
    rest, number = "", 1
    while block := stream.read(READ_SIZE):
        block = rest + block
        cut = block.rfind("\n") + 1
        if not cut:  # no line ends in this block yet
            rest = block
            continue
        text, rest = block[:cut], block[cut:]
        yield text, number
        number += text.count("\n")
    if rest:
        yield rest, number


def _decoded(stream: IO[str], decoder: msgspec.json.Decoder[T]) -> Iterator[T]:
    for text, number in _blocks(stream):
        yield from _decode(decoder, text, number)


def _decode(decoder: msgspec.json.Decoder[T], text: str, number: int) -> list[T]:
    """Blank lines are skipped; a bad line is named (the error of a block only has an index)."""
    try:
        return decoder.decode_lines(text)
    except msgspec.MsgspecError:
        for index, line in enumerate(text.split("\n"), number):
            try:
                if line and not line.isspace():
                    decoder.decode(line)
            except msgspec.MsgspecError as exc:
                raise ValueError(
                    f"line {index} of a file between steps: {exc}: {line.strip()[:200]!r}"
                ) from exc
        raise


def read_jsonl(stream: IO[str]) -> Iterator[dict[str, Any]]:
    """Each JSON line as a dict."""
    return _decoded(stream, _DICTS)


def read_records(stream: IO[str]) -> Iterator[Record]:
    """Each JSON line as a ``Record``."""
    return _decoded(stream, _RECORDS)


def read_rejections(stream: IO[str]) -> Iterator[Rejection]:
    """Each JSON line as a ``Rejection``."""
    return _decoded(stream, _REJECTIONS)


def read_keyed_lines(stream: IO[str]) -> Iterator[tuple[Keys, str]]:
    """Each record line with its key and matching value, for a step that copies lines unchanged."""
    number = 1
    while lines := stream.readlines(READ_SIZE):
        found = _decode(_KEYS, "".join(lines), number)
        number += len(lines)
        if len(found) < len(lines):
            lines = [line for line in lines if not line.isspace()]
        yield from zip(found, lines, strict=True)
