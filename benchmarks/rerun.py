"""A rerun over ten million profiles of which 0.1 % changed, with input digests (core/inputs.py).

    .venv/bin/python -m benchmarks.rerun --rows 10000000 --db sqlite postgresql

For each database: a warehouse table of ``--rows`` sample-shaped profiles (generated in SQL), a
ledger in the same database as the previous run left it (every profile synced to one Stripe
account, with the input digest the extract step computes: filled in SQL with the same
expression, ``inputs.digest_sql``, as a full first run would take ~15 minutes per database), then
``--changed-share`` of the rows edited (their ``plan``, which the mapping writes to
``metadata.plan``) and ``--left`` rows deleted. The rerun is the four steps, each in a process of
its own as the DAG's tasks run them (``run_extract`` with ``input_digests``, ``run_transform``,
``run_dedupe``, and ``sync_records`` with the audience the extract step found), against an API
stub that answers at once and counts calls. Reported per step: wall seconds and peak RSS; for
the run: the total wall time, the calls (one update per changed row is the target: the same
writes a full read sends, which ``tests/core/test_inputs.py`` checks against localstripe).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.child import RESULT_PREFIX, spawn
from benchmarks.stages import QUIET, SAMPLE_SPEC, StubApi, bench_spec, peak_rss
from krenalis_airflow.core.destination import Destinations
from krenalis_airflow.core.extract import iter_rows, prepare_extraction
from krenalis_airflow.core.filters import quote_identifier, sql_dialect
from krenalis_airflow.core.inputs import digest_sql, register, spec_seed
from krenalis_airflow.core.ledger import Ledger, field_hashes, payload_hash
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.run import (
    UpsertRun,
    audience_reader,
    input_digests,
    records_reader,
    run_dedupe,
    run_extract,
    run_transform,
    selected_columns,
    sync_options,
    sync_records,
)
from krenalis_airflow.core.sample_data import CREATE_TABLE, TABLE
from krenalis_airflow.core.spec import PipelineSpec
from krenalis_airflow.core.transform.build import build_transformer
from krenalis_airflow.core.transform.run import TransformSettings, transform_profiles
from support.postgres import PG_DSN, drop_prefixed_tables

FINGERPRINT = "key:bench-rerun"
ACCOUNT = "acct_benchrerun"
CHILD_TIMEOUT = 1800.0
PREVIOUS = "0" * 64  # the payload hash the ledger holds: a changed profile differs from it
MARKERS = ("<!-- rerun:begin -->", "<!-- rerun:end -->")  # its section in REPORT.md


def rerun_spec(prefix: str, table: str) -> PipelineSpec:
    """The sample pipeline without its filter, its state tables under ``prefix``."""
    spec = bench_spec(table=table)
    return spec.model_copy(update={"state": spec.state.model_copy(update={"table_prefix": prefix})})


def connect(db: str, database: str) -> Any:
    if db == "sqlite":
        return sqlite3.connect(database)
    import psycopg2

    return psycopg2.connect(database)


# -- the steps (child side) ----------------------------------------------------------------------


def step(args: dict[str, Any]) -> dict[str, Any]:
    """One step of the rerun, as its task runs it."""
    spec = rerun_spec(args["prefix"], args["table"])
    folder = Path(args["folder"])
    names = {n: str(folder / f"{n}.jsonl") for n in ("profiles", "left", "records", "r1", "deduped", "r2")}
    dialect, placeholder = ("sqlite", "?") if args["db"] == "sqlite" else ("postgresql", "%s")
    if args["step"] == "extract":
        conn = connect(args["db"], args["database"])
        try:
            inputs = input_digests(
                conn,
                spec,
                str(SAMPLE_SPEC),
                dialect=dialect,
                placeholder=placeholder,
                fingerprint=FINGERPRINT,
            )
            done = run_extract(
                conn,
                spec,
                str(SAMPLE_SPEC),
                names["profiles"],
                open,
                dialect=dialect,
                placeholder=placeholder,
                log=QUIET,
                inputs=inputs,
                leavers=names["left"],
            )
        finally:
            conn.close()
        (folder / "extract.json").write_text(json.dumps(done.xcom(names["profiles"], "")))
        return {
            "read": done.extracted - done.unchanged_inputs,
            "skipped": done.unchanged_inputs,
            "why_not": done.inputs,
        }
    if args["step"] == "transform":
        files = (names["profiles"], names["records"], names["r1"])
        return {"kept": run_transform(spec, str(SAMPLE_SPEC), None, files, open, log=QUIET).kept}
    if args["step"] == "dedupe":
        return {
            "kept": run_dedupe(spec, (names["records"], names["deduped"], names["r2"]), open, log=QUIET).kept
        }
    upstream = json.loads((folder / "extract.json").read_text())
    api = StubApi(answer=True)
    conn = connect(args["db"], args["database"])
    try:
        options = sync_options(spec, dry_run=False, full_resync=False, concurrency=8)
        synced = sync_records(
            api,
            spec,
            UpsertRun(conn, placeholder, options, fingerprint=FINGERPRINT),
            records_reader(open, names["deduped"]),
            audience_reader(open, upstream, spec.source.key),
        )
    finally:
        conn.close()
    result, left = synced.result, synced.left
    return {
        "calls": dict(api.calls),
        "updated": result.updated,
        "created": result.created,
        "unchanged": result.unchanged,
        "left": 0 if left is None else left.leaving,
    }


def child_main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    wall = time.perf_counter()
    outcome = step(args)
    outcome.update(wall=time.perf_counter() - wall, rss=peak_rss())
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)


# -- the parent side -----------------------------------------------------------------------------


@dataclass
class Rerun:
    db: str
    rows: int
    changed: int
    left: int
    prepare: float  # seconds to build the warehouse and the ledger (not part of the rerun)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return sum(s["process_wall"] for s in self.steps.values())

    @property
    def peak_rss(self) -> int:
        return max(s["rss"] for s in self.steps.values())


def run_step(args: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    data, error = spawn("benchmarks.rerun", ["--child", json.dumps(args)], CHILD_TIMEOUT)
    if error:
        raise RuntimeError(f"step {args['step']} failed: {error}")
    data["process_wall"] = time.perf_counter() - started  # with the interpreter's start
    return data


SQLITE_ROWS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
SELECT printf('p%09d', i), 'person' || i || '@example.com', 'First' || (i % 997), 'Last' || (i % 4999),
  '+3906' || (1000000 + i), 'IT', 'City' || (i % 311), (i % 90000) || '', 'pro', (i % 5000) * 1.25, i % 2,
  '2025-01-01T00:00:00+00:00'
FROM n
"""
PG_ROWS = """
SELECT 'p' || lpad(i::text, 9, '0'), 'person' || i || '@example.com', 'First' || (i % 997), 'Last' || (i % 4999),
  '+3906' || (1000000 + i), 'IT', 'City' || (i % 311), (i % 90000)::text, 'pro', (i % 5000) * 1.25, i % 2 = 1,
  timestamptz '2025-01-01 00:00:00+00'
FROM generate_series(1, {rows}) i
"""
PG_TABLE = (
    "CREATE TABLE {table} (profile_id text PRIMARY KEY, email text, first_name text, last_name text, phone text,"
    " country text, city text, postal_code text, plan text, lifetime_value numeric(12, 2), vip boolean,"
    " updated_at timestamptz)"
)


def prepare(db: str, database: str, table: str, prefix: str, rows: int, changed: int, left: int) -> None:
    """The warehouse, and the ledger as a previous run left it; then the edits."""
    spec = rerun_spec(prefix, table)
    dialect, ph = ("sqlite", "?") if db == "sqlite" else ("postgresql", "%s")
    conn = connect(db, database)
    cursor = conn.cursor()
    if db == "sqlite":
        cursor.execute(CREATE_TABLE.replace(TABLE, table, 1))
        cursor.execute(f"INSERT INTO {table} {SQLITE_ROWS.format(rows=rows)}")
    else:
        cursor.execute(PG_TABLE.format(table=table))
        cursor.execute(f"INSERT INTO {table} {PG_ROWS.format(rows=rows)}")
        cursor.execute(f"ANALYZE {table}")
    conn.commit()
    ledger = Ledger(conn, ph, spec.id, prefix)
    ledger.ensure_table()
    places = Destinations(conn, ph, prefix)
    places.resolve(FINGERPRINT, lambda: ACCOUNT)
    places.record_reconciled(spec.id, ACCOUNT, datetime.now(UTC))
    extraction = prepare_extraction(
        cursor,
        spec.source,
        spec.filter,
        dialect=dialect,
        placeholder=ph,
        order=None,
        select=selected_columns(spec),
    )
    quoting = sql_dialect(dialect, ph)
    columns = [f"f.{quote_identifier(c, quoting)}" for c in extraction.columns]
    digest = digest_sql(dialect, columns, spec_seed(spec, [SAMPLE_SPEC.parent.parent]))
    register(conn, dialect)
    cursor.execute(
        f"INSERT INTO {ledger.table} (pipeline_id, profile_key, match_value, customer_ids, payload_hash,"
        " field_hashes, status, attempts, error, destination, origin, input_digest, synced_at)"
        f" SELECT {ph}, f.profile_id, lower(trim(f.email)), 'cus_' || f.profile_id, '{PREVIOUS}', '{{}}', 'synced', 0, '',"
        f" {ph}, 'created', {digest}, '2025-01-01T00:00:00+00:00' FROM ({extraction.body}) f",
        (spec.id, ACCOUNT, *extraction.params),
    )
    step_every = max(1, rows // changed) if changed else 0
    if step_every:
        _as_synced(conn, spec, ledger, table, f"CAST(substr(profile_id, 2) AS INTEGER) % {step_every} = 0")
        cursor.execute(
            f"UPDATE {table} SET plan = 'changed' WHERE CAST(substr(profile_id, 2) AS INTEGER) % {step_every} = 0"
        )
    if left:
        cursor.execute(
            f"DELETE FROM {table} WHERE CAST(substr(profile_id, 2) AS INTEGER) % {step_every or 1} = 1"
            f" AND CAST(substr(profile_id, 2) AS INTEGER) <= {left * (step_every or 1)}"
        )
    conn.commit()
    if db == "postgresql":
        conn.autocommit = True
        conn.cursor().execute(f"VACUUM ANALYZE {table}")
        conn.cursor().execute(f"VACUUM ANALYZE {ledger.table}")
    conn.close()


def _as_synced(conn: Any, spec: PipelineSpec, ledger: Ledger, table: str, where: str) -> None:
    """Give the rows about to change the ledger entries a real run leaves (their payload and
    per-field hashes, from the pipeline's own transformation), so their update sends only what
    the edit changes, as it would after a real first run."""
    cursor = conn.cursor()
    ph = "?" if isinstance(conn, sqlite3.Connection) else "%s"
    select = f"SELECT * FROM {table} WHERE {where}"
    rows = list(iter_rows(cursor, select if ph == "?" else select.replace("%", "%%"), []))
    transformer = build_transformer(spec.transformation)
    entries = {}
    for record in transform_profiles(rows, transformer, TransformSettings.of(spec)):
        if isinstance(record, Record):
            entries[record.key] = (payload_hash(record), field_hashes(record.payload), spec.id, record.key)
    transformer.close()
    cursor.executemany(
        f"UPDATE {ledger.table} SET payload_hash = {ph}, field_hashes = {ph}"
        f" WHERE pipeline_id = {ph} AND profile_key = {ph}",
        list(entries.values()),
    )
    conn.commit()


def run(db: str, rows: int, share: float, left: int, folder: Path, log: Any = print) -> Rerun:
    changed = int(rows * share)
    name = f"rerun_{uuid.uuid4().hex[:8]}"
    if db == "sqlite":
        database, table, prefix = str(folder / "warehouse.sqlite"), TABLE, "krenalis_"
    else:
        database, table, prefix = PG_DSN, f"{name}.{TABLE}", f"{name}_"
        conn = connect(db, database)
        conn.cursor().execute(f"CREATE SCHEMA {name}")
        conn.commit()
        conn.close()
    started = time.perf_counter()
    try:
        prepare(db, database, table, prefix, rows, changed, left)
        result = Rerun(db, rows, changed, left, time.perf_counter() - started)
        log(f"  {db}: {rows:,} profiles and their ledger ready in {result.prepare:.0f} s")
        work = folder / f"run-{db}"
        work.mkdir()
        for name_ in ("extract", "transform", "dedupe", "upsert"):
            args = {
                "step": name_,
                "db": db,
                "database": database,
                "table": table,
                "prefix": prefix,
                "folder": str(work),
            }
            result.steps[name_] = run_step(args)
            log(f"    {name_}: {result.steps[name_]}")
        return result
    finally:
        if db == "postgresql":
            conn = connect(db, database)
            conn.autocommit = True
            cursor = conn.cursor()
            cursor.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            drop_prefixed_tables(cursor, prefix)
            conn.close()


SQLITE_NOTE = (
    "On SQLite the digest is a Python function the extract step registers, called once per row. Its "
    "queries timed alone at 10M rows on a quiet machine (2026-11-30): the changed keys 22.9 s (the scan "
    "calling the digest ~16 s, against ~5 s calling a function that does nothing; the ledger join ~6 s), "
    "who left 6.6 s (a probe of the source key's index instead, `NOT EXISTS`, took 3.9 s). PostgreSQL "
    "hashes in C (`hash_record_extended`) with a parallel hash join. The same SQLite rerun took 111.7 s "
    "the first time it was measured, beside a 1M-customer benchmark on a slower machine: splitting the "
    "scan over processes by key range is the lever left if it must hold under such load."
)
TARGET_WALL = 60.0  # seconds for the whole rerun
TARGET_RSS = 300 * 2**20  # bytes, per task


def met(r: Rerun) -> bool:
    """Whether a rerun meets the targets: its wall time, every task's RSS, one update per change."""
    return r.wall <= TARGET_WALL and r.peak_rss < TARGET_RSS and r.steps["upsert"]["updated"] == r.changed


def targets(reruns: Sequence[Rerun]) -> list[tuple[str, str, bool]]:
    """The report's target rows: (target, measured, met)."""
    return [
        (
            f"Rerun of {r.rows:,} profiles, {r.changed:,} changed ({r.db}) ≤ {TARGET_WALL:.0f} s, "
            f"< {TARGET_RSS // 2**20} MB per task",
            f"{r.wall:.1f} s, {r.peak_rss / 2**20:.0f} MB, {r.steps['upsert']['updated']:,} updates",
            met(r),
        )
        for r in reruns
    ]


def section(reruns: Sequence[Rerun]) -> list[str]:
    """The report's section, as Markdown lines."""
    if not reruns:
        return []
    r0 = reruns[0]
    lines = [
        f"## Ten million profiles: a rerun with {r0.changed / r0.rows:.1%} changed",
        "",
        f"{r0.rows:,} sample-shaped profiles in one table, the ledger in the same database as the "
        f"previous run left it (every profile synced, with its input digest), then {r0.changed:,} rows "
        f"edited (their `plan`, which the mapping writes to `metadata.plan`) and {r0.left:,} deleted. "
        "The rerun is the four steps, each in a process of its own as the tasks run them, the "
        "extract step with input digests (`core/inputs.py`): only changed rows leave the warehouse. "
        "The API is a stub that answers at once (what Stripe costs is in the sections above); the "
        "ledger is filled in SQL with the extract step's own digest expression (a real first run "
        "over 10M profiles takes ~15 min per database). `python -m benchmarks.rerun`.",
        "",
        "| database | extract | transform | dedupe | upsert | rerun wall | peak RSS (task) | read / skipped | calls | left |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for r in reruns:
        s = r.steps
        e, u = s["extract"], s["upsert"]
        calls = ", ".join(f"{k} {v:,}" for k, v in sorted(u["calls"].items())) or "none"
        lines.append(
            f"| {r.db} | {e['process_wall']:.1f} s | {s['transform']['process_wall']:.1f} s | "
            f"{s['dedupe']['process_wall']:.1f} s | {u['process_wall']:.1f} s | **{r.wall:.1f} s** | "
            f"{r.peak_rss / 2**20:.0f} MB | {e['read']:,} / {e['skipped']:,} | {calls} | {u['left']:,} |"
        )
    lines.append("")
    for r in reruns:
        lines.append(
            f"- {r.db}: target ≤ {TARGET_WALL:.0f} s wall, < {TARGET_RSS // 2**20} MB per task, "
            f"{r.changed:,} updates: {r.wall:.1f} s, {r.peak_rss / 2**20:.0f} MB, "
            f"{r.steps['upsert']['updated']:,} updates → **{'met' if met(r) else 'not met'}** "
            f"(warehouse and ledger prepared in {r.prepare:.0f} s, not counted)."
        )
    lines += [
        "",
        SQLITE_NOTE,
        "",
        "Step times are each task process's wall time, interpreter start included (an Airflow task "
        "adds its own start-up). Before input digests the same rerun read, transformed and diffed "
        "every profile: ~6 minutes of CPU at the stage rates of the local stages section, and a "
        "synced-set of ~1.2 GB in the upsert.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changed-share", type=float, default=0.001)
    parser.add_argument(
        "--left", type=int, default=100, help="rows deleted from the warehouse (leave the audience)"
    )
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--update-report", action="store_true", help="put the section into REPORT.md")
    parser.add_argument(
        "--prepare-only", action="store_true", help="build the warehouse and ledger, keep them, print where"
    )
    args = parser.parse_args(argv)
    if args.prepare_only:  # for a closer look: keep the warehouse (a schema, or a file in --work-dir)
        name = f"rerun_{uuid.uuid4().hex[:8]}"
        changed = int(args.rows * args.changed_share)
        if args.db[0] == "sqlite":
            path = (args.work_dir or Path(".")) / f"{name}.sqlite"
            prepare("sqlite", str(path), TABLE, "krenalis_", args.rows, changed, args.left)
            print(path)
            return
        conn = connect("postgresql", PG_DSN)
        conn.cursor().execute(f"CREATE SCHEMA {name}")
        conn.commit()
        conn.close()
        prepare("postgresql", PG_DSN, f"{name}.{TABLE}", f"{name}_", args.rows, changed, args.left)
        print(name)
        return
    reruns = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        for db in args.db:
            (Path(folder) / db).mkdir()
            reruns.append(run(db, args.rows, args.changed_share, args.left, Path(folder) / db))
    lines = section(reruns)
    print("\n".join(lines))
    if args.update_report:
        from benchmarks.sections import put_section

        command = "python -m benchmarks.rerun --update-report"
        put_section(Path(__file__).parent / "REPORT.md", lines, targets(reruns), MARKERS, command)


if __name__ == "__main__":
    main()
