"""The sample warehouse: deterministic, the right shape, and as dirty as promised."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest

from krenalis_airflow.core import sample_data
from krenalis_airflow.core.sample_data import COLUMNS, Profile, generate_profiles, write_sqlite_warehouse

EXPECTED_TYPES = {
    "profile_id": "TEXT",
    "email": "TEXT",
    "first_name": "TEXT",
    "last_name": "TEXT",
    "phone": "TEXT",
    "country": "TEXT",
    "city": "TEXT",
    "postal_code": "TEXT",
    "plan": "TEXT",
    "lifetime_value": "REAL",
    "vip": "INTEGER",
    "updated_at": "TEXT",
}


def _rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        query = f"SELECT {', '.join(COLUMNS)} FROM customer_profiles ORDER BY profile_id"
        return conn.execute(query).fetchall()


@pytest.fixture(scope="module")
def profiles() -> list[Profile]:
    return list(generate_profiles(3000, seed=7))


def test_same_seed_same_rows(tmp_path: Path) -> None:
    assert write_sqlite_warehouse(tmp_path / "a.db", profiles=300, seed=11) == 300
    assert write_sqlite_warehouse(tmp_path / "b.db", profiles=300, seed=11) == 300
    assert _rows(tmp_path / "a.db") == _rows(tmp_path / "b.db")


def test_other_seed_other_rows() -> None:
    assert list(generate_profiles(50, seed=1)) != list(generate_profiles(50, seed=2))


def test_rows_do_not_depend_on_chunk_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sqlite_warehouse(tmp_path / "a.db", profiles=250)
    monkeypatch.setattr(sample_data, "CHUNK_SIZE", 7)
    assert write_sqlite_warehouse(tmp_path / "b.db", profiles=250) == 250
    assert _rows(tmp_path / "a.db") == _rows(tmp_path / "b.db")


def test_inserts_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sample_data, "CHUNK_SIZE", 40)
    sizes: list[int] = []
    real_chunks = sample_data._chunks

    def spy(rows: Iterable[Profile], size: int) -> Iterator[list[Profile]]:
        for chunk in real_chunks(rows, size):
            sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(sample_data, "_chunks", spy)
    assert write_sqlite_warehouse(tmp_path / "w.db", profiles=100) == 100
    assert sizes == [40, 40, 20]


def test_counts_ids_and_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    assert write_sqlite_warehouse(path, profiles=120) == 120
    assert write_sqlite_warehouse(path, profiles=30) == 30  # the table is replaced, not appended to
    ids = [row[0] for row in _rows(path)]
    assert ids == [f"p{n:05d}" for n in range(1, 31)]


def test_zero_profiles(tmp_path: Path) -> None:
    assert write_sqlite_warehouse(tmp_path / "w.db", profiles=0) == 0
    assert _rows(tmp_path / "w.db") == []


def test_columns_and_declared_types(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    write_sqlite_warehouse(path, profiles=10)
    with closing(sqlite3.connect(path)) as conn:
        info = conn.execute("PRAGMA table_info(customer_profiles)").fetchall()
    assert {row[1]: row[2] for row in info} == EXPECTED_TYPES
    assert [row[1] for row in info] == list(EXPECTED_TYPES)
    assert [row[1] for row in info if row[5]] == ["profile_id"]  # the primary key


def test_stored_value_types(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    write_sqlite_warehouse(path, profiles=200)
    with closing(sqlite3.connect(path)) as conn:
        kinds = {
            column: conn.execute(
                f"SELECT group_concat(DISTINCT typeof({column})) FROM customer_profiles"
            ).fetchone()[0]
            for column in ("lifetime_value", "vip", "updated_at")
        }
    assert kinds == {"lifetime_value": "real", "vip": "integer", "updated_at": "text"}


def test_value_domains(profiles: list[Profile]) -> None:
    assert {p.plan for p in profiles} == {"free", "starter", "pro", "enterprise"}
    assert {p.vip for p in profiles} == {0, 1}
    countries = Counter(p.country for p in profiles)
    assert {"IT", "FR", "DE", "ES", "NL", "US", "GB"} <= set(countries)
    assert all(re.fullmatch(r"[A-Z]{2}", code) for code in countries)
    assert all(p.lifetime_value >= 0 for p in profiles)
    assert all(p.lifetime_value < 100 for p in profiles if p.plan == "free")
    for p in profiles:
        parsed = datetime.fromisoformat(p.updated_at)
        assert parsed.utcoffset() is not None and 2023 <= parsed.year <= 2025


def test_phones_look_like_e164(profiles: list[Profile]) -> None:
    phones = [p.phone for p in profiles if p.phone is not None]
    assert all(re.fullmatch(r"\+\d{1,3}( \d+)+", phone) for phone in phones)
    italian = next(p for p in profiles if p.country == "IT" and p.phone)
    assert italian.phone is not None and italian.phone.startswith("+39 ")


def test_accented_and_apostrophe_names(profiles: list[Profile]) -> None:
    names = {p.first_name for p in profiles} | {p.last_name for p in profiles}
    assert {"José", "Zoë", "Müller"} <= names
    assert any("'" in name for name in names)


def _share(profiles: list[Profile], predicate: Callable[[Profile], bool]) -> float:
    return sum(1 for p in profiles if predicate(p)) / len(profiles)


def test_null_and_empty_emails(profiles: list[Profile]) -> None:
    assert 0.01 <= _share(profiles, lambda p: p.email is None) <= 0.03
    assert 0.005 <= _share(profiles, lambda p: p.email == "") <= 0.02


def test_some_null_phones_and_addresses(profiles: list[Profile]) -> None:
    assert 0.02 <= _share(profiles, lambda p: p.phone is None) <= 0.10
    assert 0 < _share(profiles, lambda p: p.city is None and p.postal_code is None) <= 0.05


def test_duplicate_emails_differ_only_in_case_and_whitespace(profiles: list[Profile]) -> None:
    emails = [p.email for p in profiles if p.email]
    assert len(set(emails)) == len(emails), "duplicates must not be byte-identical"
    normalised = Counter(e.strip().lower() for e in emails)
    duplicated = {e for e, n in normalised.items() if n > 1}
    messy = [e for e in emails if e != e.strip().lower()]
    assert 0.005 <= len(messy) / len(profiles) <= 0.02
    assert all(e.strip().lower() in duplicated for e in messy)
    assert any(e != e.strip() for e in messy) and any(e.strip() != e.strip().lower() for e in messy)
    # A duplicate is the same person signing up again: same name as the original row.
    by_email = {p.email: p for p in profiles if p.email and p.email == p.email.strip().lower()}
    for p in profiles:
        if p.email in messy:
            original = by_email[p.email.strip().lower()]
            assert (p.first_name, p.last_name) == (original.first_name, original.last_name)


def test_emails_use_reserved_domains_only(profiles: list[Profile]) -> None:
    domains = {p.email.strip().lower().rpartition("@")[2] for p in profiles if p.email}
    assert domains and all(re.fullmatch(r"([a-z]+\.)?example\.(com|org|net)", d) for d in domains)


def test_negative_count_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zero or more"):
        write_sqlite_warehouse(tmp_path / "w.db", profiles=-1)
