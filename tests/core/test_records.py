"""The JSONL files between steps: chunked encoding and decoding, and what a reader tolerates."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest

from krenalis_airflow.core import records as module
from krenalis_airflow.core.records import (
    LINES_PER_CALL,
    JsonlWriter,
    Keys,
    Record,
    Rejection,
    read_jsonl,
    read_keyed_lines,
    read_records,
    read_rejections,
    write_jsonl,
)


def records(count: int) -> list[Record]:
    return [
        Record(
            f"p{i}", f"u{i}@x.io", f"U{i}@x.io", {"name": f"Zoë\n{i}", "metadata.n": str(i), "phone": None}
        )
        for i in range(count)
    ]


def test_records_round_trip_across_chunk_boundaries() -> None:
    items = records(2 * LINES_PER_CALL + 7)
    stream = io.StringIO()
    assert write_jsonl(stream, items) == len(items)
    text = stream.getvalue()
    assert text.count("\n") == len(items)  # a newline inside a value is escaped
    assert list(read_records(io.StringIO(text))) == items


def test_rejections_and_plain_dicts_round_trip() -> None:
    rejection = Rejection("p1", "transform", "invalid output", "phone: 25 characters")
    stream = io.StringIO()
    write_jsonl(stream, [rejection])
    assert list(read_rejections(io.StringIO(stream.getvalue()))) == [rejection]
    stream = io.StringIO()
    write_jsonl(stream, [{"id": 1, "ltv": Decimal("2.50"), "tags": ["a"], "none": None}])
    assert list(read_jsonl(io.StringIO(stream.getvalue()))) == [
        {"id": 1, "ltv": "2.50", "tags": ["a"], "none": None}
    ]


def test_blank_lines_and_a_last_line_without_newline_are_read() -> None:
    text = '\n{"key":"a","match":"m","match_value":"M"}\n  \n\n{"key":"b","match":"n","match_value":"N"}'
    assert list(read_records(io.StringIO(text))) == [Record("a", "m", "M"), Record("b", "n", "N")]
    assert [(keys, line) for keys, line in read_keyed_lines(io.StringIO(text))] == [
        (Keys("a", "m"), '{"key":"a","match":"m","match_value":"M"}\n'),
        (Keys("b", "n"), '{"key":"b","match":"n","match_value":"N"}'),
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [('{"key": "b", "match": ', "truncated"), ('{"key": "b", "match_value": "x"}', "missing required field")],
)
def test_a_bad_line_is_named_in_the_error(line: str, error: str) -> None:
    good = "".join(f'{{"key":"k{i}","match":"m{i}","match_value":"v"}}\n' for i in range(5))
    with pytest.raises(ValueError, match=error) as info:
        list(read_records(io.StringIO(good + line + "\n" + good)))
    assert str(info.value).startswith("line 6 of a file between steps: ")
    assert str(info.value).endswith(repr(line.strip()))


def test_writer_encodes_in_chunks_and_flushes_on_exit() -> None:
    stream = io.StringIO()
    with JsonlWriter(stream) as writer:
        for record in records(LINES_PER_CALL + 1):
            writer.write(record)
        assert stream.getvalue().count("\n") == LINES_PER_CALL  # one chunk written, one record pending
    assert stream.getvalue().count("\n") == LINES_PER_CALL + 1
    assert writer.count == LINES_PER_CALL + 1


def test_writer_keeps_the_order_of_items_and_copied_lines() -> None:
    stream = io.StringIO()
    with JsonlWriter(stream) as writer:
        writer.write(Record("a", "m", "M"))
        writer.write_line('{"key":"b","match":"n","match_value":"N", "payload": {}}')
        writer.write(Record("c", "o", "O"))
    assert [r.key for r in read_records(io.StringIO(stream.getvalue()))] == ["a", "b", "c"]
    assert '"match_value":"N", "payload": {}}\n' in stream.getvalue()  # copied as it was
    assert writer.count == 3


def test_writer_does_not_flush_when_the_block_fails() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), JsonlWriter(stream) as writer:
        writer.write(Record("a", "m", "M"))
        raise RuntimeError("the step failed")
    assert stream.getvalue() == ""


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 18])
def test_lines_that_straddle_read_blocks_are_whole(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(module, "READ_SIZE", size)
    items = [Record(f"p{i}", f"u{i}", f"U{i}", {"name": "é\u2028" * i}) for i in range(30)]
    stream = io.StringIO()
    write_jsonl(stream, items)
    text = stream.getvalue()
    assert list(read_records(io.StringIO(text))) == items
    assert list(read_records(io.StringIO(text.rstrip("\n")))) == items  # no newline at the end
    assert [keys.key for keys, _line in read_keyed_lines(io.StringIO(text))] == [r.key for r in items]
    broken = text.replace('"key":"p17"', '"key":17')
    with pytest.raises(ValueError, match=r"^line 18 of a file between steps: Expected `str`, got `int`"):
        list(read_records(io.StringIO(broken)))
