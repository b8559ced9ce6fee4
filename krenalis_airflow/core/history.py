"""Records a person can query: one row per run, one row per rejected profile.

``<prefix>runs``: pipeline, run id, start and end, the counts of every step and the outcome.
``<prefix>rejections``: pipeline, run id, profile key, step, kind and reason. Both live in the
state store beside the ledger; a retried task replaces its run's rows instead of adding to them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from krenalis_airflow.core.records import Rejection

RUN_COUNTS = (
    "extracted",
    "filtered_out",
    "transformed",
    "rejected_total",
    "duplicates",
    "created",
    "updated",
    "unchanged",
    "skipped_total",
    "failed",
    "api_calls_total",
)


class History:
    """Writes a pipeline's run and rejection rows over a DB-API connection."""

    def __init__(self, connection: Any, placeholder: str, pipeline_id: str, table_prefix: str = "krenalis_"):
        self._conn = connection
        self._ph = placeholder
        self._pipeline = pipeline_id
        self.runs = f"{table_prefix}runs"
        self.rejections = f"{table_prefix}rejections"

    def ensure_tables(self) -> None:
        """Create the runs and rejections tables if they are missing."""
        counts = "".join(f" {name} INTEGER NOT NULL," for name in RUN_COUNTS)
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self.runs} ("
            " pipeline_id VARCHAR(250) NOT NULL, run_id VARCHAR(250) NOT NULL,"
            " started_at VARCHAR(40) NOT NULL, ended_at VARCHAR(40) NOT NULL,"
            f" full_resync INTEGER NOT NULL,{counts}"
            " outcome VARCHAR(250) NOT NULL, summary TEXT NOT NULL,"
            " PRIMARY KEY (pipeline_id, run_id))"
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self.rejections} ("
            " pipeline_id VARCHAR(250) NOT NULL, run_id VARCHAR(250) NOT NULL,"
            " profile_key VARCHAR(500) NOT NULL, step VARCHAR(20) NOT NULL,"
            " kind VARCHAR(100) NOT NULL, reason TEXT NOT NULL)"
        )
        self._conn.commit()

    def record_run(self, run_id: str, started_at: str, summary: dict[str, Any], outcome: str) -> None:
        """Add the row of one finished run, with its counts and outcome."""
        values = {
            "pipeline_id": self._pipeline,
            "run_id": run_id,
            "started_at": started_at,
            "ended_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "full_resync": int(bool(summary["full_resync"])),
            **{name: int(_count(summary, name)) for name in RUN_COUNTS},
            "outcome": outcome,
            "summary": json.dumps(summary, default=str),
        }
        self._execute(
            f"DELETE FROM {self.runs} WHERE pipeline_id = {self._ph} AND run_id = {self._ph}",
            (self._pipeline, run_id),
        )
        placeholders = ", ".join([self._ph] * len(values))
        self._execute(
            f"INSERT INTO {self.runs} ({', '.join(values)}) VALUES ({placeholders})", tuple(values.values())
        )
        self._conn.commit()

    def record_rejections(self, run_id: str, rejections: Iterable[Rejection]) -> int:
        """Replace the run's rejection rows with ``rejections``; returns how many were written."""
        self._execute(
            f"DELETE FROM {self.rejections} WHERE pipeline_id = {self._ph} AND run_id = {self._ph}",
            (self._pipeline, run_id),
        )
        sql = f"INSERT INTO {self.rejections} VALUES ({', '.join([self._ph] * 6)})"
        count = 0
        for chunk in _chunks((self._pipeline, run_id, r.key, r.step, r.kind, r.reason) for r in rejections):
            cursor = self._conn.cursor()
            try:
                cursor.executemany(sql, chunk)
            finally:
                cursor.close()
            count += len(chunk)
        self._conn.commit()
        return count

    def last_success(self, before_run_id: str) -> dict[str, Any] | None:
        """The latest successful run of the pipeline other than ``before_run_id`` (the run
        asking, which may be recorded already): its ``run_id``, ``ended_at`` and counts; None
        when there is none. Dry runs are never recorded, so they are never the base."""
        counts = ", ".join(RUN_COUNTS)
        cursor = self._conn.cursor()
        try:
            cursor.execute(
                f"SELECT run_id, ended_at, {counts} FROM {self.runs} WHERE pipeline_id = {self._ph}"
                f" AND outcome = 'success' AND run_id <> {self._ph} ORDER BY ended_at DESC, run_id DESC",
                (self._pipeline, before_run_id),
            )
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else dict(zip(("run_id", "ended_at", *RUN_COUNTS), row, strict=True))

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params) if params else cursor.execute(sql)
        finally:
            cursor.close()


def _count(summary: dict[str, Any], name: str) -> int:
    if name.endswith("_total") and name not in summary:
        return sum(summary[name.removesuffix("_total")].values())
    return int(summary[name])


def _chunks(rows: Iterable[tuple[Any, ...]], size: int = 1000) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk
