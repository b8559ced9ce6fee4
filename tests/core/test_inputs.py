"""Input digests (core/inputs.py) through the real steps: a warehouse that also holds the ledger
(SQLite file, or a PostgreSQL schema of its own) → extract → transform → dedupe → the sync and
the leave step against localstripe, as ``run_upsert`` chains them.

Each run is checked for what the extract step read, what Stripe was sent (the API's ``calls``),
and that a run reading every profile would have sent the same.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import stripe

from krenalis_airflow.core.inputs import python_source, spec_seed, sqlite_digest
from krenalis_airflow.core.run import (
    ExtractSummary,
    UpsertRun,
    audience_reader,
    input_digests,
    records_reader,
    run_dedupe,
    run_extract,
    run_transform,
    sync_options,
    sync_records,
)
from krenalis_airflow.core.spec import PipelineSpec, load_spec
from krenalis_airflow.core.stripe_api import StripeCustomers
from support.postgres import PG_DSN, drop_prefixed_tables

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("tests.core.test_inputs")
SPEC = """\
source: {{conn_id: warehouse, table: {table}, key: id}}
state: {{table_prefix: {prefix}}}
filter:
  logical: and
  conditions:
    - {{property: plan, operator: is not, values: [free]}}
export:
  matching: {{property: email, stripe: email}}
  duplicate_profiles: keep_first
  on_leave: clear
  max_leave: 70%
transformation:
  mapping:
    name: name
    metadata.plan: plan
"""
ROWS = [(i, f"p{i}@example.com", f"Name {i}", "gold") for i in range(1, 7)]


@dataclass
class Warehouse:
    """A source database that also holds the ledger: ``connect`` opens it, ``sql`` runs a statement."""

    connect: Callable[[], Any]
    dialect: str
    placeholder: str
    table: str
    prefix: str = "krenalis_"  # of the state tables: a PostgreSQL test's own

    def sql(self, statement: str, *params: Any) -> None:
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(statement.replace("?", self.placeholder), params)
            conn.commit()
        finally:
            conn.close()


def sqlite_warehouse(tmp_path: Path, key_type: str = "INTEGER") -> Warehouse:
    """An SQLite warehouse file with an empty ``profiles`` table keyed by ``id``."""
    path = tmp_path / "warehouse.sqlite"
    found = Warehouse(lambda: sqlite3.connect(path, check_same_thread=False), "sqlite", "?", "profiles")
    found.sql(f"CREATE TABLE profiles (id {key_type} PRIMARY KEY, email TEXT, name TEXT, plan TEXT)")
    return found


def write_spec(tmp_path: Path, warehouse: Warehouse, export: str = "") -> Path:
    """The pipeline's spec file for ``warehouse``, with ``export`` lines added to its export."""
    spec_file = tmp_path / "pipelines" / "inputs.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(
        SPEC.format(table=warehouse.table, prefix=warehouse.prefix).replace(
            "  on_leave:", f"{export}  on_leave:"
        )
    )
    return spec_file


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    if request.param == "sqlite":
        yield sqlite_warehouse(tmp_path)
        return
    psycopg2 = pytest.importorskip("psycopg2")
    schema = f"inputs_{uuid.uuid4().hex[:10]}"
    found = Warehouse(
        lambda: psycopg2.connect(PG_DSN), "postgresql", "%s", f"{schema}.profiles", f"{schema}_"
    )
    try:
        found.sql(f"CREATE SCHEMA {schema}")
    except psycopg2.OperationalError as exc:  # pragma: no cover - CI starts PostgreSQL
        pytest.skip(f"PostgreSQL is not running: {exc}")
    found.sql(f"CREATE TABLE {schema}.profiles (id INTEGER PRIMARY KEY, email TEXT, name TEXT, plan TEXT)")
    yield found
    found.sql(f"DROP SCHEMA {schema} CASCADE")
    conn = psycopg2.connect(PG_DSN)
    try:
        with conn.cursor() as cursor:
            drop_prefixed_tables(cursor, f"{schema}_")  # the state tables, whatever they are
        conn.commit()
    finally:
        conn.close()


@dataclass
class Run:
    extracted: ExtractSummary
    read: list[str]  # the keys the extract step wrote
    calls: dict[str, int]
    summary: dict[str, Any]


def one_run(
    spec: PipelineSpec,
    spec_file: Path,
    warehouse: Warehouse,
    client: stripe.StripeClient,
    folder: Path,
    *,
    digests: bool = True,
    full_resync: bool = False,
    between: Callable[[], None] = lambda: None,
) -> Run:
    """The four steps, as the DAG's tasks chain them (the state store is the warehouse)."""
    folder.mkdir()
    name = {f: str(folder / f) for f in ("profiles", "left", "records", "r1", "deduped", "r2")}
    fingerprint = "key:inputs-test"
    conn = warehouse.connect()
    try:
        inputs = None
        if digests:
            inputs = input_digests(
                conn,
                spec,
                str(spec_file),
                dialect=warehouse.dialect,
                placeholder=warehouse.placeholder,
                fingerprint=fingerprint,
                full_resync=full_resync,
            )
        extracted = run_extract(
            conn,
            spec,
            str(spec_file),
            name["profiles"],
            open,
            dialect=warehouse.dialect,
            placeholder=warehouse.placeholder,
            log=log,
            inputs=inputs,
            leavers=name["left"],
            server_side=False,
        )
        with open(name["profiles"]) as stream:
            read = [str(json.loads(line)["id"]) for line in stream]
        run_transform(
            spec,
            str(spec_file),
            extracted.columns,
            (name["profiles"], name["records"], name["r1"]),
            open,
            log=log,
        )
        run_dedupe(spec, (name["records"], name["deduped"], name["r2"]), open, log=log)
        between()  # after the extract step, before the upsert
        api = StripeCustomers(client)
        options = sync_options(spec, dry_run=False, full_resync=full_resync, concurrency=2)
        synced = sync_records(
            api,
            spec,
            UpsertRun(conn, warehouse.placeholder, options, fingerprint=fingerprint),
            records_reader(open, name["deduped"]),
            audience_reader(open, extracted.xcom(name["profiles"], ""), spec.source.key),
        )
    finally:
        conn.close()
    left = synced.left
    summary = {
        "unchanged": synced.result.unchanged,
        "created": synced.result.created,
        "updated": synced.result.updated,
        "cleared": 0 if left is None else left.cleared,
    }
    return Run(extracted, read, dict(api.calls), summary)


def customers(client: stripe.StripeClient) -> dict[str, dict[str, Any]]:
    return {str(c.email): c.to_dict() for c in client.v1.customers.list(params={"limit": 100}).data}


def test_reruns_read_only_what_changed_and_send_what_a_full_read_sends(
    tmp_path: Path, warehouse: Warehouse, stripe_client: stripe.StripeClient
) -> None:
    spec_file = write_spec(tmp_path, warehouse)
    spec = load_spec(spec_file)
    for row in ROWS:
        warehouse.sql(f"INSERT INTO {warehouse.table} VALUES (?, ?, ?, ?)", *row)
    runs = iter(range(100))

    def step(**flags: Any) -> Run:
        return one_run(spec, spec_file, warehouse, stripe_client, tmp_path / f"run{next(runs)}", **flags)

    first = step()  # the key's account is not known yet: every profile is read, digests recorded
    assert (first.extracted.unchanged_inputs, len(first.read), first.calls) == (
        0,
        6,
        {"account.retrieve": 1, "customers.list": 1, "customers.create": 6},
    )
    second = step()  # nothing changed: nothing read, nothing sent, all counted unchanged
    assert (second.extracted.extracted, second.extracted.unchanged_inputs, second.read) == (6, 6, [])
    assert (second.calls, second.summary["unchanged"]) == ({}, 6)

    warehouse.sql(f"UPDATE {warehouse.table} SET name = 'Renamed' WHERE id = 2")
    warehouse.sql(f"UPDATE {warehouse.table} SET plan = 'free' WHERE id = 3")  # leaves the filter
    warehouse.sql(f"DELETE FROM {warehouse.table} WHERE id = 4")  # leaves the warehouse
    third = step()
    assert third.read == ["2"] and third.extracted.unchanged_inputs == 3
    assert third.calls == {"customers.update": 3}  # the rename, and the two leavers cleared
    assert (third.summary["updated"], third.summary["cleared"], third.summary["unchanged"]) == (1, 2, 3)
    assert customers(stripe_client)["p2@example.com"]["name"] == "Renamed"

    # A new profile with the email of an unchanged one: dedupe must see both (keep_first keeps id 1).
    warehouse.sql(f"INSERT INTO {warehouse.table} VALUES (?, ?, ?, ?)", 9, "P1@example.com", "Dup", "gold")
    fourth = step()
    assert fourth.read == ["1", "9"] and fourth.calls == {}
    assert customers(stripe_client)["p1@example.com"]["name"] == "Name 1"

    # The same warehouse read whole (full resync) sends nothing more: the shortcut hid nothing.
    full = step(full_resync=True)
    assert len(full.read) == 5 and full.calls == {"customers.list": 1}
    again = step()  # the duplicate has nothing synced: read again each run, with the profile it duplicates
    assert (again.read, again.calls) == (["1", "9"], {})


def test_a_spec_change_reads_every_profile_again(
    tmp_path: Path, warehouse: Warehouse, stripe_client: stripe.StripeClient
) -> None:
    spec_file = write_spec(tmp_path, warehouse)
    for row in ROWS[:3]:
        warehouse.sql(f"INSERT INTO {warehouse.table} VALUES (?, ?, ?, ?)", *row)
    runs = iter(range(100))

    def step(spec: PipelineSpec) -> Run:
        return one_run(spec, spec_file, warehouse, stripe_client, tmp_path / f"run{next(runs)}")

    step(load_spec(spec_file))
    assert step(load_spec(spec_file)).read == []
    spec_file.write_text(
        SPEC.format(table=warehouse.table, prefix=warehouse.prefix).replace(
            "    name: name\n", "    description: name\n"
        )
    )
    changed = step(load_spec(spec_file))
    assert changed.read == ["1", "2", "3"] and changed.calls == {"customers.update": 3}
    assert step(load_spec(spec_file)).read == []


def test_keys_whose_sql_text_differs_turn_the_shortcut_off(
    tmp_path: Path, stripe_client: stripe.StripeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A REAL key 2.0 is '2.0' in SQL but '2' for the pipeline (and its ledger): the join cannot be
    trusted, so every profile is read, every run."""
    found = sqlite_warehouse(tmp_path, "REAL")
    found.sql("INSERT INTO profiles VALUES (2.0, 'a@example.com', 'A', 'gold')")
    spec_file = write_spec(tmp_path, found)
    spec = load_spec(spec_file)
    one_run(spec, spec_file, found, stripe_client, tmp_path / "run1")
    with caplog.at_level(logging.WARNING):
        second = one_run(spec, spec_file, found, stripe_client, tmp_path / "run2")
    assert len(second.read) == 1 and second.calls == {}
    assert "Input digests off for this run" in caplog.text


def test_skip_unchanged_false_reads_every_profile(tmp_path: Path, stripe_client: stripe.StripeClient) -> None:
    found = sqlite_warehouse(tmp_path)
    for row in ROWS[:2]:
        found.sql("INSERT INTO profiles VALUES (?, ?, ?, ?)", *row)
    spec_file = write_spec(tmp_path, found, "  skip_unchanged: false\n")
    spec = load_spec(spec_file)
    one_run(spec, spec_file, found, stripe_client, tmp_path / "run1")
    second = one_run(spec, spec_file, found, stripe_client, tmp_path / "run2")
    assert (second.read, second.extracted.unchanged_inputs, second.calls) == (["1", "2"], 0, {})


def test_a_column_postgresql_cannot_hash_turns_the_shortcut_off(
    tmp_path: Path, warehouse: Warehouse, stripe_client: stripe.StripeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """``json`` has no hash function in PostgreSQL (``jsonb`` has): the digest query fails, the run
    says so and reads every profile, and the sync goes on."""
    if warehouse.dialect != "postgresql":
        pytest.skip("SQLite hashes any value")
    warehouse.sql(f"ALTER TABLE {warehouse.table} ADD COLUMN extra json")
    for row in ROWS[:2]:
        warehouse.sql(f"INSERT INTO {warehouse.table} VALUES (?, ?, ?, ?, '{{}}')", *row)
    spec_file = write_spec(tmp_path, warehouse)
    spec = load_spec(spec_file)
    one_run(spec, spec_file, warehouse, stripe_client, tmp_path / "run1")
    with caplog.at_level(logging.WARNING):
        second = one_run(spec, spec_file, warehouse, stripe_client, tmp_path / "run2")
    assert (second.read, second.calls) == (["1", "2"], {})
    assert "Input digests off for this run, every profile is read: the database said" in caplog.text


def test_a_run_without_digests_leaves_no_stale_one(
    tmp_path: Path, stripe_client: stripe.StripeClient
) -> None:
    """A run that read without digests (a CLI run, a fallback) and wrote a profile clears its digest:
    when the row later returns to what the old digest described, the profile is read and sent."""
    found = sqlite_warehouse(tmp_path)
    found.sql("INSERT INTO profiles VALUES (?, ?, ?, ?)", *ROWS[0])
    spec_file = write_spec(tmp_path, found)
    spec = load_spec(spec_file)
    one_run(spec, spec_file, found, stripe_client, tmp_path / "run1")
    one_run(spec, spec_file, found, stripe_client, tmp_path / "run2")  # the account is known: digests on
    found.sql("UPDATE profiles SET name = 'Other' WHERE id = 1")
    plain = one_run(spec, spec_file, found, stripe_client, tmp_path / "run3", digests=False)
    assert plain.calls == {"customers.update": 1}
    found.sql("UPDATE profiles SET name = 'Name 1' WHERE id = 1")  # back to what run 2 recorded
    back = one_run(spec, spec_file, found, stripe_client, tmp_path / "run4")
    assert (back.read, back.calls) == (["1"], {"customers.update": 1})
    assert customers(stripe_client)["p1@example.com"]["name"] == "Name 1"


def test_a_reconciliation_due_after_a_partial_read_waits_for_the_next_run(
    tmp_path: Path, stripe_client: stripe.StripeClient
) -> None:
    """The extract step read only what changed; a reconciliation falling due before the upsert
    would check those alone and mark the destination reconciled: it waits for the next run,
    whose extract step reads every profile."""
    found = sqlite_warehouse(tmp_path)
    for row in ROWS[:3]:
        found.sql("INSERT INTO profiles VALUES (?, ?, ?, ?)", *row)
    spec_file = write_spec(tmp_path, found)
    spec = load_spec(spec_file)
    one_run(spec, spec_file, found, stripe_client, tmp_path / "run1")  # reconciles: the first run

    def due() -> None:
        found.sql("UPDATE krenalis_reconciled SET reconciled_at = '2020-01-01T00:00:00+00:00'")

    partial = one_run(spec, spec_file, found, stripe_client, tmp_path / "run2", between=due)
    assert (partial.read, partial.calls) == ([], {})  # no listing: no reconciliation of nothing
    whole = one_run(spec, spec_file, found, stripe_client, tmp_path / "run3")
    assert len(whole.read) == 3 and whole.calls == {"customers.list": 1}  # it reconciles now
    assert one_run(spec, spec_file, found, stripe_client, tmp_path / "run4").read == []


def test_the_seed_follows_a_python_transformation_module_but_not_inline_code(tmp_path: Path) -> None:
    (tmp_path / "shapes.py").write_text("def transform(profile):\n    return {'name': profile['name']}\n")
    spec_file = tmp_path / "pipelines" / "inputs.yaml"
    spec_file.parent.mkdir()
    text = SPEC.format(table="profiles", prefix="krenalis_")
    mapping = "  mapping:\n    name: name\n    metadata.plan: plan\n"
    spec_file.write_text(text.replace(mapping, "  python: shapes:transform\n"))
    spec = load_spec(spec_file)
    before = spec_seed(spec, [tmp_path])
    assert python_source("shapes:transform", [tmp_path]).startswith(b"def transform")
    (tmp_path / "shapes.py").write_text("def transform(profile):\n    return {'name': profile['email']}\n")
    assert spec_seed(spec, [tmp_path]) != before  # an edit of the module reads every profile again
    inline = "def transform(profile):\n    return {'name': 'x' * 5000}\n" * 40  # no file name this long
    assert python_source(inline, [tmp_path]) == b""


def test_the_sqlite_digest_is_the_same_in_every_process() -> None:
    """A row hashes alike whatever the process interned or shares: else unchanged rows read as
    changed after a restart (seen at 10M rows: the 1,111 one-digit postal codes, ~224 of them)."""
    fresh = ("".join(["ab", "c"]), "".join(["5"]), 1.25, None, 3, b"x")
    interned = (sys.intern("".join(["ab", "c"])), sys.intern("5"), 1.25, None, 3, b"x")
    assert fresh[0] is not interned[0]
    shared = "".join(["ab", "c"])
    assert sqlite_digest(7, *fresh) == sqlite_digest(7, *interned)
    assert sqlite_digest(7, shared, shared) == sqlite_digest(7, "".join(["ab", "c"]), "".join(["ab", "c"]))
    code = "from krenalis_airflow.core.inputs import sqlite_digest; print(sqlite_digest(7, 'abc', '5', 1.25, None, 3, b'x'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert int(other.stdout) == sqlite_digest(7, *interned)
    assert sqlite_digest(7, 1) != sqlite_digest(7, "1") != sqlite_digest(8, "1")  # types and seed count
