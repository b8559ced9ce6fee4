"""Local stages of a run — extract, transform, dedupe, diff — each in a child process of its own.

The parent (``run_local``) builds the warehouse, then starts one child per stage::

    python -m benchmarks.stages '{"stage": "extract", ...}'

and the child prints one ``RESULT {json}`` line: rows, wall and CPU seconds, and its peak RSS
(``VmHWM``: of itself, and of its JavaScript worker). Each child calls the step functions the
DAG's tasks call (``krenalis_airflow/core/run.py``, through ``operators/steps.py``), with plain
files where a task uses object storage, and streams through JSONL files as the tasks do:

* extract: ``run_extract`` checks the spec's columns, counts the rows, and streams them into
  ``profiles.jsonl`` through the plain cursor (``named_cursor``: through a PostgreSQL server-side
  cursor, as the task does);
* transform: ``run_transform`` (``build_transformer`` + ``transform_file``) → ``records.jsonl``
  and rejections;
* dedupe: ``run_dedupe`` (two passes over ``records.jsonl`` with ``keep_first``) → ``deduped.jsonl``;
* diff: ``sync_records`` (the upsert's ``Syncer.run``) against a SQLite ledger that already holds
  every record with its current payload hash, and an API stub that fails the stage if it is called (a rerun with nothing
  changed costs no call); ``diff_changed`` changes one record in a hundred and lets the stub answer
  at once, to time the local bookkeeping of writes (thread pool, ledger checkpoints).

Nothing here imports Airflow except the ``airflow_imports`` stage, which measures what importing
the step module costs a task process on top of the core.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import resource
import shutil
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from benchmarks.child import RESULT_PREFIX, ROOT, spawn
from benchmarks.transform_javascript import SOURCE as JAVASCRIPT
from benchmarks.transform_mapping_python import PYTHON
from krenalis_airflow.core.ledger import Ledger, LedgerEntry, field_hashes, payload_hash
from krenalis_airflow.core.ratelimit import Limits, concurrency_for
from krenalis_airflow.core.records import Record
from krenalis_airflow.core.run import (
    UpsertRun,
    records_reader,
    run_dedupe,
    run_extract,
    run_transform,
    sync_options,
    sync_records,
)
from krenalis_airflow.core.sample_data import TABLE, generate_profiles, write_sqlite_warehouse
from krenalis_airflow.core.spec import PipelineSpec, Transformation, load_spec
from krenalis_airflow.core.transform.base import Transformer

SAMPLE_SPEC = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
LEDGER_CHUNK = 10_000
QUIET = logging.getLogger("benchmarks.stages")  # the steps' task log: not part of a stage's output
QUIET.disabled = True
CHANGED_EVERY = 100  # diff_changed: one record in a hundred has a new payload


def bench_spec(language: str = "mapping", table: str = TABLE) -> PipelineSpec:
    """The sample pipeline without its filter (every row goes through every stage)."""
    spec = load_spec(SAMPLE_SPEC)
    update: dict[str, Any] = {"filter": None, "source": spec.source.model_copy(update={"table": table})}
    if language == "python":
        update["transformation"] = Transformation(python=PYTHON)
    elif language == "javascript":
        update["transformation"] = Transformation(javascript=JAVASCRIPT)
    return spec.model_copy(update=update)


# -- the stages (child side) -------------------------------------------------------------------------


def stage_extract(args: dict[str, Any]) -> dict[str, Any]:
    spec = bench_spec(table=args.get("table", TABLE))
    if args["db"] == "sqlite":
        conn: Any = sqlite3.connect(args["database"])
        dialect, placeholder = "sqlite", "?"
    else:
        import psycopg2

        conn = psycopg2.connect(args["database"])
        dialect, placeholder = "postgresql", "%s"
    try:
        done = run_extract(
            conn,
            spec,
            str(SAMPLE_SPEC),
            args["output"],
            open,
            dialect=dialect,
            placeholder=placeholder,
            log=QUIET,
            server_side=bool(args.get("named_cursor")),
        )
    finally:
        conn.close()
    return {"rows": done.extracted, "total": done.total}


def stage_transform(args: dict[str, Any]) -> dict[str, Any]:
    spec = bench_spec(args["language"])
    worker_peak = 0

    def measure(transformer: Transformer) -> None:  # the JavaScript worker, while it still runs
        nonlocal worker_peak
        worker = getattr(transformer, "worker_pid", None)
        if worker is not None:
            worker_peak = peak_rss(worker)

    files = (args["input"], args["output"], args["rejections"])
    done = run_transform(spec, str(SAMPLE_SPEC), None, files, open, log=QUIET, before_close=measure)
    transformed, left = done.kept, done.left
    return {
        "rows": transformed + left.rejected.total() + left.skipped.total(),
        "transformed": transformed,
        "rejected": dict(left.rejected),
        "worker_rss": worker_peak,
    }


def _diff_reader(path: str, changing: bool) -> Callable[[], Iterator[Record]]:
    """The upsert's reader of ``path``; ``changing``: one record in a hundred changed on the way."""
    records = records_reader(open, path)
    if not changing:
        return records
    return lambda: map(_changed, records())


def stage_dedupe(args: dict[str, Any]) -> dict[str, Any]:
    files = (args["input"], args["output"], args["rejections"])
    done = run_dedupe(bench_spec(), files, open, log=QUIET)
    kept, dupes = done.kept, done.left_out
    return {"rows": kept + dupes, "kept": kept, "duplicates": dupes}


def stage_ledger_fill(args: dict[str, Any]) -> dict[str, Any]:
    """Preparation for the diff: every record in the ledger, synced with its current payload."""
    ledger = Ledger(sqlite3.connect(args["ledger"]), "?", bench_spec().id)
    ledger.ensure_table()
    count = 0
    records = records_reader(open, args["input"])()
    while chunk := list(islice(records, LEDGER_CHUNK)):
        ledger.record(
            {
                r.key: LedgerEntry(
                    r.match, (f"cus_bench{count + i:09d}",), payload_hash(r), field_hashes(r.payload)
                )
                for i, r in enumerate(chunk)
            }
        )
        count += len(chunk)
    return {"rows": count}


@dataclass
class StubApi:
    """The ``CustomerApi`` of the diff stages: no network; ``answer`` False fails on any call."""

    answer: bool
    calls: Counter[str] = field(default_factory=Counter)

    def _call(self, endpoint: str) -> None:
        self.calls[endpoint] += 1
        if not self.answer:
            raise AssertionError(f"the diff of an unchanged rerun called Stripe ({endpoint})")

    def list_all(self) -> Iterator[dict[str, Any]]:
        self._call("customers.list")
        return iter(())

    def retrieve(self, customer_id: str) -> dict[str, Any]:
        self._call("customers.retrieve")
        return {"id": customer_id}

    def find(self, customer_id: str) -> dict[str, Any] | None:
        return self.retrieve(customer_id)

    def account_id(self) -> str | None:
        return None

    def with_email(self, email: str) -> Iterator[dict[str, Any]]:
        self._call("customers.by_email")
        return iter(())

    def customer_events(self, since: int) -> Iterator[tuple[list[dict[str, Any]], bool]] | None:
        self._call("events.list")
        return None

    def delete(self, customer_id: str) -> None:
        self._call("customers.delete")

    def create(self, params: dict[str, Any], idempotency_key: str) -> str:
        self._call("customers.create")
        return "cus_new"

    def update(self, customer_id: str, params: dict[str, Any]) -> str:
        self._call("customers.update")
        return customer_id


def _changed(record: Record) -> Record:
    if int(record.key.lstrip("p") or 0) % CHANGED_EVERY:
        return record
    return Record(
        record.key, record.match, record.match_value, {**record.payload, "metadata.plan": "changed"}
    )


def stage_diff(args: dict[str, Any]) -> dict[str, Any]:
    """``Syncer.run`` as the upsert task runs it, against a ledger that knows every record."""
    spec = bench_spec()
    changing = bool(args.get("changed"))
    ledger_path = args["ledger"]
    if changing:  # writes go to the ledger: work on a copy so that the unchanged diff can be rerun
        ledger_path = args["ledger"] + ".changed"
        shutil.copyfile(args["ledger"], ledger_path)
    api = StubApi(answer=changing)
    limits = Limits(args.get("global_rps", 100.0), args.get("endpoint_rps", 25.0))
    options = sync_options(spec, dry_run=False, full_resync=False, concurrency=concurrency_for(limits))
    connection = sqlite3.connect(ledger_path)
    start = time.perf_counter()
    # The diff alone: no reconciliation (it lists Stripe) and no audience (no extract file here).
    spec = spec.model_copy(update={"export": spec.export.model_copy(update={"reconcile": "off"})})
    result = sync_records(
        api, spec, UpsertRun(connection, "?", options), _diff_reader(args["input"], changing)
    ).result
    elapsed = time.perf_counter() - start
    connection.close()
    if changing:
        os.unlink(ledger_path)
    rows = result.created + result.updated + result.unchanged + result.failed + len(result.rejections)
    return {
        "rows": rows,
        "unchanged": result.unchanged,
        "updated": result.updated,
        "created": result.created,
        "calls": dict(api.calls),
        "sync_seconds": elapsed,
    }


def stage_idle(args: dict[str, Any]) -> dict[str, Any]:
    """Nothing: the RSS of an interpreter that imported the core (what every stage starts from)."""
    return {"rows": 0}


def stage_airflow_imports(args: dict[str, Any]) -> dict[str, Any]:
    """The RSS of a process that imported the task's step module (Airflow's task SDK and hooks)."""
    import krenalis_airflow.operators.steps  # noqa: F401

    return {"rows": 0}


STAGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "extract": stage_extract,
    "transform": stage_transform,
    "dedupe": stage_dedupe,
    "ledger_fill": stage_ledger_fill,
    "diff": stage_diff,
    "idle": stage_idle,
    "airflow_imports": stage_airflow_imports,
}


def peak_rss(pid: int | str = "self") -> int:
    """Peak RSS in bytes: ``VmHWM`` of ``/proc/<pid>/status``, 0 when it cannot be read.

    Not ``ru_maxrss``: Linux carries a process's ``ru_maxrss`` across ``execve`` from the process
    that forked it, so a child started by a large parent reports at least the parent's size.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def child_main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = STAGES[args["stage"]](args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome.update(
        wall=wall,
        cpu=cpu,
        children_cpu=children.ru_utime + children.ru_stime,
        rss=peak_rss() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        children_rss=outcome.pop("worker_rss", 0),
    )
    print(RESULT_PREFIX + json.dumps(outcome), flush=True)


# -- the parent side ---------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str  # e.g. "extract (SQLite)"
    stage: str
    size: int  # profiles in the warehouse
    rows: int
    wall: float
    cpu: float  # the stage process's CPU seconds plus its children's (JavaScript workers)
    rss: int  # bytes, the stage process
    children_rss: int  # bytes, its largest child (JavaScript workers), 0 without
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def rate_wall(self) -> float:
        return self.rows / self.wall if self.wall else 0.0

    @property
    def rate_cpu(self) -> float:
        return self.rows / self.cpu if self.cpu else 0.0


def run_child(name: str, size: int, args: dict[str, Any]) -> StageResult:
    """Run one stage in a fresh interpreter and collect its RESULT line."""
    data, error = spawn("benchmarks.stages", [json.dumps(args)])
    if error:
        return StageResult(name, args["stage"], size, 0, 0, 0, 0, 0, error=error)
    return StageResult(
        name,
        args["stage"],
        size,
        rows=data.pop("rows"),
        wall=data.pop("wall"),
        cpu=data.pop("cpu") + data.pop("children_cpu"),
        rss=data.pop("rss"),
        children_rss=data.pop("children_rss"),
        details=data,
    )


def sqlite_pipeline(size: int, folder: Path, log: Callable[[str], None]) -> list[StageResult]:
    """Every local stage on ``size`` sample profiles from an SQLite warehouse."""
    warehouse = folder / "warehouse.sqlite"
    started = time.perf_counter()
    write_sqlite_warehouse(warehouse, size)
    log(f"  SQLite warehouse of {size:,} profiles built in {time.perf_counter() - started:.0f} s")
    f = {
        name: str(folder / name)
        for name in ("profiles.jsonl", "records.jsonl", "deduped.jsonl", "ledger.sqlite")
    }
    plan: list[tuple[str, dict[str, Any]]] = [
        ("idle", {"stage": "idle"}),
        (
            "extract (SQLite)",
            {"stage": "extract", "db": "sqlite", "database": str(warehouse), "output": f["profiles.jsonl"]},
        ),
    ]
    for language in ("mapping", "python", "javascript"):
        output = f["records.jsonl"] if language == "mapping" else str(folder / f"records-{language}.jsonl")
        plan.append(
            (
                f"transform ({language})",
                {
                    "stage": "transform",
                    "language": language,
                    "input": f["profiles.jsonl"],
                    "output": output,
                    "rejections": str(folder / f"rejected-{language}.jsonl"),
                },
            )
        )
    plan += [
        (
            "dedupe",
            {
                "stage": "dedupe",
                "input": f["records.jsonl"],
                "output": f["deduped.jsonl"],
                "rejections": str(folder / "rejected-dedupe.jsonl"),
            },
        ),
        (
            "ledger fill (preparation)",
            {"stage": "ledger_fill", "input": f["deduped.jsonl"], "ledger": f["ledger.sqlite"]},
        ),
        (
            "diff vs ledger (unchanged)",
            {"stage": "diff", "input": f["deduped.jsonl"], "ledger": f["ledger.sqlite"]},
        ),
        (
            "diff vs ledger (1% changed, API stubbed)",
            {"stage": "diff", "input": f["deduped.jsonl"], "ledger": f["ledger.sqlite"], "changed": True},
        ),
    ]
    results = []
    for name, args in plan:
        result = run_child(name, size, args)
        log(f"  {_line(result)}")
        results.append(result)
        if name.startswith("transform (") and name != "transform (mapping)":
            Path(args["output"]).unlink(missing_ok=True)  # only the mapping's records go on
    return results


def postgres_pipeline(size: int, dsn: str, folder: Path, log: Callable[[str], None]) -> list[StageResult]:
    """Extract ``size`` profiles from PostgreSQL: a plain cursor, and a named one (as the step)."""
    import psycopg2

    schema = f"krenalis_bench_{os.getpid()}"
    conn = psycopg2.connect(dsn)
    try:
        _load_postgres(conn, schema, size)
        log(f"  PostgreSQL table {schema}.{TABLE} of {size:,} profiles loaded")
        results = []
        for name, named in (
            ("extract (PostgreSQL)", False),
            ("extract (PostgreSQL, server-side cursor)", True),
        ):
            args = {
                "stage": "extract",
                "db": "postgresql",
                "database": dsn,
                "table": f"{schema}.{TABLE}",
                "named_cursor": named,
                "output": str(folder / "pg-profiles.jsonl"),
            }
            result = run_child(name, size, args)
            log(f"  {_line(result)}")
            results.append(result)
        return results
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.commit()
        conn.close()


def _load_postgres(conn: Any, schema: str, size: int) -> None:
    with conn.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cursor.execute(f"CREATE SCHEMA {schema}")
        cursor.execute(
            f"CREATE TABLE {schema}.{TABLE} (profile_id text PRIMARY KEY, email text, first_name text,"
            " last_name text, phone text, country text, city text, postal_code text, plan text,"
            " lifetime_value numeric(12, 2), vip boolean, updated_at timestamptz)"
        )
        profiles = generate_profiles(size)
        while chunk := list(islice(profiles, 50_000)):
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for p in chunk:
                values: list[Any] = ["\\N" if v is None else v for v in p]
                values[p._fields.index("vip")] = "t" if p.vip else "f"
                writer.writerow(values)
            buffer.seek(0)
            cursor.copy_expert(f"COPY {schema}.{TABLE} FROM STDIN WITH (FORMAT csv, NULL '\\N')", buffer)
    conn.commit()


def _line(result: StageResult) -> str:
    if result.error:
        return f"{result.name:<42} FAILED: {result.error}"
    return (
        f"{result.name:<42} {result.rows:>9,} rows {result.rate_wall:>9,.0f}/s wall {result.rate_cpu:>9,.0f}/s CPU"
        f"  peak RSS {result.rss / 2**20:6.0f} MB"
        + (f" (+ worker {result.children_rss / 2**20:.0f} MB)" if result.children_rss else "")
    )


if __name__ == "__main__":
    child_main(sys.argv[1:])
