"""Run a pipeline's steps in this process, for the ``preview``, ``plan`` and ``validate --connect``
commands.

The same step functions as the DAG's tasks, chained here with a temporary folder instead of
object storage and XCom, so ``plan`` reports exactly what a ``dry_run`` DAG run would.
Connections come from Airflow as usual (``AIRFLOW_CONN_*``, the metadata DB, a secrets backend).

What a person can fix — a connection that is not defined, a database that cannot be reached or
read, a run past ``export.max_rejected`` — is raised as ``CommandError``: one message naming the
spec file, line and key, and the fix. The command prints it without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook, ObjectStoragePath
from airflow.sdk.exceptions import AirflowNotFoundException

from krenalis_airflow.core.columns import check_source, line_of, spec_lines
from krenalis_airflow.core.records import read_jsonl
from krenalis_airflow.core.run import outcome
from krenalis_airflow.core.spec import PipelineSpec, load_spec
from krenalis_airflow.exceptions import (
    CommandError,
    ConnectionUnusable,
    RetryableSyncError,
    RunFailed,
    SpecProblem,
)
from krenalis_airflow.operators import steps

log = logging.getLogger("krenalis_airflow.local_run")
log.propagate = False  # Airflow's logging writes to stdout; the commands print their own report there
log.addHandler(logging.StreamHandler(sys.stderr))
log.setLevel(logging.ERROR)  # rejections: the commands print samples; their files are temporary

SQL_EXAMPLE = (
    '\'{"conn_type": "sqlite", "host": "/path/to/warehouse.sqlite"}\' '
    '(PostgreSQL: \'{"conn_type": "postgres", "host": "…", "login": "…", "schema": "<database>"}\')'
)
STRIPE_EXAMPLE = '\'{"conn_type": "stripe", "password": "sk_test_…"}\''
SOURCE_HINT = " and that source.table or source.query exists there"


def command_error(spec_file: str | Path, path: str, message: str) -> CommandError:
    """A ``CommandError`` at ``path``'s line of ``spec_file``: where, what, and the fix."""
    line = line_of(path, spec_lines(spec_file)) if path else None
    return CommandError(str(spec_file), SpecProblem(path, message, line))


# --------------------------------------------------------------------------------------------
# The commands


def check_columns(spec_file: Path, spec: PipelineSpec) -> None:
    """``validate --connect``: every column the spec names, against the source's real ones.

    Raises ``SpecError`` (file:line per problem) or ``CommandError`` (connection, database).
    """
    path, conn_id = "source.conn_id", spec.source.conn_id
    _require_connection(spec_file, path, conn_id, SQL_EXAMPLE)
    try:
        hook = steps.sql_hook(conn_id)
    except ConnectionUnusable as exc:  # not a SQL connection
        raise command_error(spec_file, path, str(exc)) from None
    with _database_errors(spec_file, path, conn_id, SOURCE_HINT):
        conn = hook.get_conn()
        try:
            cursor = conn.cursor()
            check_source(
                cursor, spec, str(spec_file), dialect=hook.dialect_name, placeholder=hook.placeholder
            )
        finally:
            conn.close()


def preview(spec_file: Path, limit: int) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The extraction SQL and up to ``limit`` (profile, outcome) pairs; nothing touches Stripe."""
    with _runs(spec_file, limit=limit) as run:
        _require_connection(spec_file, "source.conn_id", run.spec.source.conn_id, SQL_EXAMPLE)
        extracted = _extract(run)
        transformed = steps.transform(_then(run, extracted))
        outcomes: dict[str, dict[str, Any]] = {}
        for path in (transformed["records"], *transformed["rejection_files"]):
            with ObjectStoragePath(path).open() as stream:
                for item in read_jsonl(stream):
                    outcomes[item["key"]] = item
        key = run.spec.source.key
        with ObjectStoragePath(extracted["profiles"]).open() as stream:
            pairs = [(profile, outcomes.get(str(profile[key]), {})) for profile in read_jsonl(stream)]
        return extracted["sql"], pairs


def plan(spec_file: Path, *, full_resync: bool = False, reconcile: bool = False) -> dict[str, Any]:
    """A dry run of the whole pipeline: reads the warehouse and Stripe, writes nothing.

    The summary's ``outcome`` is ``"success"``, or why a real run would fail (past
    ``export.max_rejected``): the summary is returned either way.
    """
    with _runs(spec_file, full_resync=full_resync, reconcile=reconcile) as run:
        for path, conn_id, example in _connections(run.spec):
            _require_connection(spec_file, path, conn_id, example)
        upstream = _extract(run)
        for step in (steps.transform, steps.dedupe):
            upstream = step(_then(run, upstream))
        summary = _upsert(_then(run, upstream))
        return {**summary, "rejected_samples": _rejected_samples(summary["rejection_files"])}


def plan_failure(spec_file: Path, summary: dict[str, Any]) -> CommandError | None:
    """Why a real run would fail where this plan stopped (past ``export.max_rejected``), or None."""
    if summary["outcome"] == "success":
        return None
    reason = summary["outcome"].removeprefix("failed: ")
    message = (
        f"a sync would fail: {reason}; fix the rejected profiles' data (samples above) "
        "or raise export.max_rejected"
    )
    return command_error(spec_file, "export.max_rejected", message)


# --------------------------------------------------------------------------------------------
# Steps


@contextmanager
def _runs(spec_file: Path, **options: Any) -> Iterator[steps.StepRun]:
    spec = load_spec(spec_file)
    with tempfile.TemporaryDirectory(prefix=f"krenalis-{spec.id}-") as folder:
        yield steps.StepRun(
            spec=spec,
            spec_file=str(spec_file),
            folder=ObjectStoragePath(f"file://{folder}"),
            upstream={},
            dry_run=True,
            full_resync=options.get("full_resync", False),
            reconcile=options.get("reconcile", False),
            log=log,
            limit=options.get("limit"),
        )


def _then(run: steps.StepRun, upstream: dict[str, Any]) -> steps.StepRun:
    return dataclasses.replace(run, upstream=upstream)


def _extract(run: steps.StepRun) -> dict[str, Any]:
    with _database_errors(run.spec_file, "source.conn_id", run.spec.source.conn_id, SOURCE_HINT):
        return steps.extract(run)


def _upsert(run: steps.StepRun) -> dict[str, Any]:
    """The upsert's summary; past ``max_rejected`` too, where the step raises after writing it."""
    spec = run.spec
    path = "state.conn_id" if spec.state.conn_id else "source.conn_id"
    try:
        with _database_errors(run.spec_file, path, spec.state_conn_id):
            return steps.upsert(run)
    except (RunFailed, RetryableSyncError) as exc:
        written = run.file("summary.json")
        if isinstance(exc, RetryableSyncError) and not written.exists():
            raise _unreachable(run, exc) from None
        if not written.exists():
            raise
        with written.open() as stream:
            summary: dict[str, Any] = json.load(stream)
    limit = spec.export.rejection_limit(summary["extracted"])
    summary["outcome"] = outcome(limit, summary)  # the upsert step's own rule and words
    return summary


def _rejected_samples(paths: list[str], count: int = 5) -> list[dict[str, Any]]:
    rejected: list[dict[str, Any]] = []
    for path in paths:
        with ObjectStoragePath(path).open() as stream:
            rejected.extend(item for _, item in zip(range(count), read_jsonl(stream), strict=False))
    return rejected[:count]


# --------------------------------------------------------------------------------------------
# Connections and databases: one message each


def _connections(spec: PipelineSpec) -> list[tuple[str, str, str]]:
    """``(key path, conn_id, example)`` of every connection a plan uses."""
    found = [("source.conn_id", spec.source.conn_id, SQL_EXAMPLE)]
    if spec.state.conn_id and spec.state.conn_id != spec.source.conn_id:
        found.append(("state.conn_id", spec.state.conn_id, SQL_EXAMPLE))
    return [*found, ("destination.conn_id", spec.destination.conn_id, STRIPE_EXAMPLE)]


def _require_connection(spec_file: str | Path, path: str, conn_id: str, example: str) -> None:
    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        env = f"AIRFLOW_CONN_{conn_id.upper()}"
        message = (
            f"Airflow has no connection {conn_id!r}; define it (airflow connections add {conn_id} …), "
            f"or for this shell: export {env}={example}"
        )
        raise command_error(spec_file, path, message) from None


def _unreachable(run: steps.StepRun, exc: RetryableSyncError) -> CommandError:
    conn_id = run.spec.destination.conn_id
    message = (
        f"Stripe failed through connection {conn_id!r} (network, rate limit or a Stripe outage): "
        f"{' '.join(str(exc).split())}; check the connection's host, then run the plan again"
    )
    return command_error(run.spec_file, "destination.conn_id", message)


@contextmanager
def _database_errors(spec_file: str | Path, path: str, conn_id: str, hint: str = "") -> Iterator[None]:
    """A database error (PEP 249: every driver's exceptions derive from its module's ``Error``)
    becomes one ``CommandError`` at the connection's key."""
    try:
        yield
    except Exception as exc:
        if not any(cls.__name__ == "Error" and cls.__module__ != "builtins" for cls in type(exc).__mro__):
            raise
        reason = " ".join(str(exc).split()) or "no message"
        message = (
            f"cannot read through connection {conn_id!r}: {type(exc).__name__}: {reason}; check that the "
            f"connection reaches the right database (host, port, login, database or file){hint}"
        )
        raise command_error(spec_file, path, message) from None
