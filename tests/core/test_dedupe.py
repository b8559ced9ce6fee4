"""Duplicate profiles: the reject and keep_first policies, and the two streaming passes.

``reject`` rejects (a problem, counted against max_rejected); ``keep_first`` skips (the user's
rule at work, counted by reason, never written as a rejection)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from krenalis_airflow.core.dedupe import KEPT_FIRST, dedupe, dedupe_file
from krenalis_airflow.core.records import Record, Rejection, Skip, read_rejections, write_jsonl


def rec(key: str, match: str) -> Record:
    return Record(key, match, match.upper(), {"name": f"profile {key}"})


class Source:
    """A ``records`` callable over fixed records: counts its calls, and every call is a fresh
    one-shot generator that remembers how far it has been read."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)
        self.calls = 0
        self.read: list[int] = []  # records yielded so far, per call

    def __call__(self) -> Iterator[Record]:
        self.calls += 1
        self.read.append(0)
        index = len(self.read) - 1
        for record in self.records:
            self.read[index] += 1
            yield record


Item = Record | Rejection | Skip


def run(records: Sequence[Record], policy: str, field: str = "email") -> list[Item]:
    return list(dedupe(Source(records), policy, field))  # type: ignore[arg-type]


def by_key(items: list[Item]) -> dict[str, Item]:
    return {item.key: item for item in items}


# --------------------------------------------------------------------------------------------
# Unique values


@pytest.mark.parametrize("policy", ["reject", "keep_first"])
def test_unique_values_pass_untouched_in_input_order(policy: str) -> None:
    records = [rec("9", "z@x"), rec("2", "a@x"), rec("5", "m@x"), rec("1", "b@x")]
    out = run(records, policy)
    assert out == records
    assert all(got is want for got, want in zip(out, records, strict=True))


@pytest.mark.parametrize("policy", ["reject", "keep_first"])
def test_no_records_give_nothing(policy: str) -> None:
    assert run([], policy) == []


# --------------------------------------------------------------------------------------------
# reject


def test_reject_rejects_every_profile_of_a_shared_value_and_names_the_others() -> None:
    records = [
        rec("a", "x@x"),
        rec("b", "y@x"),
        rec("c", "x@x"),
        rec("d", "z@x"),
        rec("e", "x@x"),
        rec("f", "z@x"),
    ]
    out = run(records, "reject")
    assert [item.key for item in out] == ["a", "b", "c", "d", "e", "f"]
    assert out[1] is records[1]
    items = by_key(out)
    for key in "acedf":
        item = items[key]
        assert isinstance(item, Rejection)
        assert (item.step, item.kind) == ("dedupe", "duplicate profile")
    assert items["a"].reason == "email 'x@x' is shared with profile(s) c, e (duplicate_profiles: reject)"  # type: ignore[union-attr]
    assert items["c"].reason == "email 'x@x' is shared with profile(s) a, e (duplicate_profiles: reject)"  # type: ignore[union-attr]
    assert items["e"].reason == "email 'x@x' is shared with profile(s) a, c (duplicate_profiles: reject)"  # type: ignore[union-attr]
    assert items["d"].reason == "email 'z@x' is shared with profile(s) f (duplicate_profiles: reject)"  # type: ignore[union-attr]
    assert items["f"].reason == "email 'z@x' is shared with profile(s) d (duplicate_profiles: reject)"  # type: ignore[union-attr]


def test_reject_names_the_stripe_field() -> None:
    out = run([rec("1", "crm-7"), rec("2", "crm-7")], "reject", field="metadata.crm_id")
    assert [item.reason for item in out] == [  # type: ignore[union-attr]
        "metadata.crm_id 'crm-7' is shared with profile(s) 2 (duplicate_profiles: reject)",
        "metadata.crm_id 'crm-7' is shared with profile(s) 1 (duplicate_profiles: reject)",
    ]


def test_reject_compares_the_normalised_match_not_the_original_value() -> None:
    records = [Record("1", "ada@x.com", "Ada@X.com"), Record("2", "ada@x.com", " ADA@x.com")]
    out = run(records, "reject")
    assert all(isinstance(item, Rejection) for item in out)


@pytest.mark.parametrize(
    ("sharing", "listed", "suffix"),
    [
        (6, ["k1", "k2", "k3", "k4", "k5"], ""),  # 5 others: all named, no "more"
        (7, ["k1", "k2", "k3", "k4", "k5"], " and 1 more"),
        (9, ["k1", "k2", "k3", "k4", "k5"], " and 3 more"),
    ],
)
def test_reject_caps_the_listed_names(sharing: int, listed: list[str], suffix: str) -> None:
    records = [rec(f"k{i}", "same@x") for i in range(sharing)]
    out = run(records, "reject")
    assert len(out) == sharing
    assert out[0].reason == (  # type: ignore[union-attr]
        f"email 'same@x' is shared with profile(s) {', '.join(listed)}{suffix} (duplicate_profiles: reject)"
    )
    assert f"k{sharing - 1}," not in out[0].reason  # type: ignore[union-attr]
    # The last profile names the first five others, never itself.
    last = out[-1].reason  # type: ignore[union-attr]
    assert f"k{sharing - 1}" not in last
    assert "profile(s) k0, k1, k2, k3, k4" in last


# --------------------------------------------------------------------------------------------
# keep_first


def test_keep_first_keeps_the_first_in_input_order_and_skips_the_others_naming_it() -> None:
    # Input order is the extraction order (export.order_by); it is deliberately not key order.
    records = [rec("z9", "x@x"), rec("b2", "y@x"), rec("a1", "x@x"), rec("m5", "x@x")]
    out = run(records, "keep_first")
    assert [item.key for item in out] == ["z9", "b2", "a1", "m5"]
    assert out[0] is records[0]
    assert out[1] is records[1]
    for item in out[2:]:
        assert isinstance(item, Skip)  # the user's rule, not a problem: never a Rejection
        assert (item.step, item.reason) == ("dedupe", "duplicate profile; keep_first kept another")
        assert item.detail == "email 'x@x' is also on profile z9, kept first"


def test_keep_first_handles_several_duplicated_values_independently() -> None:
    records = [rec("1", "a"), rec("2", "b"), rec("3", "b"), rec("4", "a"), rec("5", "c")]
    out = run(records, "keep_first")
    kept = [item.key for item in out if isinstance(item, Record)]
    assert kept == ["1", "2", "5"]
    skipped = {item.key: item.detail for item in out if isinstance(item, Skip)}
    assert skipped == {
        "3": "email 'b' is also on profile 2, kept first",
        "4": "email 'a' is also on profile 1, kept first",
    }
    assert not any(isinstance(item, Rejection) for item in out)


# --------------------------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize(
    ("policy", "count", "passes"),
    [
        ("reject", 0, 2),
        ("reject", 1, 2),
        ("reject", 4, 3),  # a second pass gathers every key of each shared value
        ("keep_first", 0, 2),
        ("keep_first", 1, 2),
        ("keep_first", 4, 2),  # the last pass keeps the first one it meets
    ],
)
def test_the_records_are_read_twice_or_three_times_with_duplicates(
    policy: str, count: int, passes: int
) -> None:
    records = [rec(str(i), "dup" if i % 2 else f"u{i}") for i in range(count)]
    source = Source(records)
    out = list(dedupe(source, policy, "email"))  # type: ignore[arg-type]
    assert len(out) == count
    assert source.calls == passes
    assert source.read == [count] * passes


@pytest.mark.parametrize(("policy", "read"), [("reject", [6, 6, 1]), ("keep_first", [6, 1])])
def test_the_last_pass_is_streamed(policy: str, read: list[int]) -> None:
    records = [rec(str(i), f"v{i % 3}") for i in range(6)]
    source = Source(records)
    out = dedupe(source, policy, "email")  # type: ignore[arg-type]
    first = next(out)
    assert first.key == "0"
    assert source.read == read  # the earlier passes read fully; the last one as far as yielded
    rest = list(out)
    assert [item.key for item in rest] == ["1", "2", "3", "4", "5"]
    assert source.calls == len(read)


@pytest.mark.parametrize(
    ("policy", "kinds"),
    [("reject", ["Rejection", "Record", "Rejection"]), ("keep_first", ["Record", "Record", "Skip"])],
)
def test_a_hash_collision_is_not_a_duplicate(
    monkeypatch: pytest.MonkeyPatch, policy: str, kinds: list[str]
) -> None:
    import krenalis_airflow.core.dedupe as module

    monkeypatch.setattr(module, "MASK", 0)  # every value hashes to 0: all are suspects
    records = [rec("1", "a@x.com"), rec("2", "b@x.com"), rec("3", "a@x.com")]
    out = list(dedupe(lambda: iter(records), policy, "email"))  # type: ignore[arg-type]
    assert [type(item).__name__ for item in out] == kinds
    assert out[1] is records[1]


# --------------------------------------------------------------------------------------------
# The dedupe step over files


@pytest.mark.parametrize("policy", ["reject", "keep_first"])
def test_dedupe_file_copies_kept_lines_unchanged_and_writes_only_the_rejections(policy: str) -> None:
    records = [rec("1", "a@x"), rec("2", "b@x"), rec("3", "a@x"), rec("4", "c@x")]
    encoded = io.StringIO()
    write_jsonl(encoded, records)
    lines = encoded.getvalue().splitlines(keepends=True)
    lines[1] = lines[1].replace('"payload":', ' "payload" :  ')  # spacing a re-encode would change
    text = "".join(lines)
    opened = []

    @contextmanager
    def open_records() -> Iterator[io.StringIO]:
        opened.append(1)
        yield io.StringIO(text)

    kept, rejected = io.StringIO(), io.StringIO()
    count, left = dedupe_file(open_records, kept, rejected, policy, "email")  # type: ignore[arg-type]
    expected = list(dedupe(lambda: iter(records), policy, "email"))  # type: ignore[arg-type]
    kept_keys = [item.key for item in expected if isinstance(item, Record)]
    assert kept.getvalue() == "".join(
        line for line, r in zip(lines, records, strict=True) if r.key in kept_keys
    )
    assert list(read_rejections(io.StringIO(rejected.getvalue()))) == [
        item for item in expected if isinstance(item, Rejection)
    ]
    assert count == len(kept_keys) == 3 - (policy == "reject")
    if policy == "reject":  # both profiles of a@x: a problem, written and counted as rejected
        assert (dict(left.rejected), dict(left.skipped), left.samples) == ({"duplicate profile": 2}, {}, [])
    else:  # the second profile of a@x: counted as skipped, with its reason; no rejection written
        assert rejected.getvalue() == ""
        assert (dict(left.rejected), dict(left.skipped)) == ({}, {KEPT_FIRST: 1})
        assert left.samples == ["3: email 'a@x' is also on profile 1, kept first"]
    assert len(opened) == (3 if policy == "reject" else 2)


def test_dedupe_file_names_only_the_first_skipped_profiles() -> None:
    records = [rec(str(i), "same@x") for i in range(1, 9)]
    encoded = io.StringIO()
    write_jsonl(encoded, records)
    text = encoded.getvalue()

    @contextmanager
    def open_records() -> Iterator[io.StringIO]:
        yield io.StringIO(text)

    kept, rejected = io.StringIO(), io.StringIO()
    count, left = dedupe_file(open_records, kept, rejected, "keep_first", "email")
    assert (count, dict(left.skipped), rejected.getvalue()) == (1, {KEPT_FIRST: 7}, "")
    assert [sample.split(":")[0] for sample in left.samples] == ["2", "3", "4", "5", "6"]
