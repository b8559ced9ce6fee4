"""What the "Stripe pipelines" page shows, read without Airflow: the specs of a pipelines folder
and the runs and rejections tables of their state stores (``core/history.py`` writes them).

Pure on purpose (no Airflow import): the FastAPI app (``app.py``) adds what only Airflow knows
(pause state, DAG runs, who may see what) and these functions are tested against SQLite tables.

Nothing here reads a connection: a spec names connections by id only, and the run summary is
copied field by field (``RUN_FIELDS``), so neither profile samples nor file paths reach the page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from krenalis_airflow.core.history import RUN_COUNTS, History
from krenalis_airflow.core.plan import describe_filter, plan_broken
from krenalis_airflow.core.spec import LoadedSpec, discover
from krenalis_airflow.exceptions import SpecError

ALL_PROFILES = "every profile (no filter)"
MANUAL_ONLY = "manual runs only"
MAX_PAGE = 200  # rows a page may ask for at once
# What a run's summary JSON contributes to the page, and nothing else (no samples: personal data;
# no rejection_files: storage paths).
RUN_FIELDS = ("dry_run", "rejected", "skipped", "api_calls", "retried", "sql")


@dataclass(frozen=True)
class PipelineInfo:
    """One row of the pipelines list, as the spec says it (or the error of a broken spec)."""

    dag_id: str
    file: str  # the spec's file name
    name: str
    description: str
    enabled: bool
    schedule: str
    filters: str
    destination: str
    source: str
    error: str | None = None

    @property
    def broken(self) -> bool:
        """True for a spec that does not load (its DAG is a placeholder showing the error)."""
        return self.error is not None

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return {**asdict(self), "broken": self.broken}


def pipelines(folder: str | Path) -> list[PipelineInfo]:
    """Every spec of ``folder`` in name order, as ``discover`` (and so the DAG factory) reads it;
    a broken spec keeps the DAG id of its placeholder DAG (``plan_broken``)."""
    loaded = discover(folder)
    taken = {item.spec.id for item in loaded if isinstance(item, LoadedSpec)}
    rows: list[PipelineInfo] = []
    for item in loaded:
        if isinstance(item, LoadedSpec):
            rows.append(pipeline_info(item))
        else:
            dag_id = plan_broken(item, taken).dag_id
            taken.add(dag_id)
            rows.append(broken_info(item, dag_id))
    return rows


def pipeline_info(loaded: LoadedSpec) -> PipelineInfo:
    """The list row of a valid spec."""
    spec = loaded.spec
    source = spec.source
    return PipelineInfo(
        dag_id=spec.id,
        file=loaded.path.name,
        name=spec.id,
        description=spec.description or "",
        enabled=spec.enabled,
        schedule=str(spec.schedule) if spec.schedule else MANUAL_ONLY,
        filters=describe_filter(spec.filter) if spec.filter else ALL_PROFILES,
        destination=spec.destination.conn_id,
        source=f"{source.conn_id}: {source.table or 'query'}",
    )


def broken_info(error: SpecError, dag_id: str) -> PipelineInfo:
    """The list row of a spec that does not load: its error instead of its settings (file names
    said relative to the pipelines folder)."""
    path = Path(error.source)
    return PipelineInfo(
        dag_id=dag_id,
        file=path.name,
        name=path.stem,
        description="",
        enabled=False,
        schedule="",
        filters="",
        destination="",
        source="",
        error=str(error).replace(f"{path.parent}/", ""),
    )


def find_pipeline(folder: str | Path, dag_id: str) -> tuple[PipelineInfo, Path] | None:
    """The row and spec file of the pipeline whose DAG is ``dag_id``, or None."""
    for info in pipelines(folder):
        if info.dag_id == dag_id:
            return info, Path(folder) / info.file
    return None


def spec_text(path: Path) -> str:
    """The spec as written (read only on the page: specs are edited in git)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"(cannot read {path.name}: {exc})"


# --------------------------------------------------------------------------------------------
# The runs and rejections tables


@dataclass(frozen=True)
class RunRow:
    """One row of ``<prefix>runs``: counts per step, duration, API calls and retried calls."""

    run_id: str
    started_at: str
    ended_at: str
    duration_s: float | None
    outcome: str
    full_resync: bool
    counts: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """Some rows of a longer list: ``total`` matched, these start at ``offset``."""

    rows: list[dict[str, Any]]
    total: int
    offset: int
    limit: int

    def as_dict(self) -> dict[str, Any]:
        """The page as JSON-ready data."""
        return asdict(self)


class HistoryReader:
    """Reads the runs and rejections tables of one state store (any DB-API connection).

    Every value is a bound parameter; the table names come from ``History`` (a table prefix is
    ``[a-z][a-z0-9_]*``, checked when the spec loads). A store whose tables do not exist yet
    (no run recorded) reads as empty.
    """

    def __init__(self, connection: Any, placeholder: str, table_prefix: str = "krenalis_") -> None:
        self._conn = connection
        self._ph = placeholder
        names = History(connection, placeholder, "", table_prefix)
        self.runs_table = names.runs
        self.rejections_table = names.rejections

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def runs(self, pipeline_id: str, *, limit: int = 20, offset: int = 0) -> Page:
        """The pipeline's runs, latest first."""
        limit, offset = _bounds(limit, offset)
        where = f"WHERE pipeline_id = {self._ph}"
        total = self._scalar(f"SELECT COUNT(*) FROM {self.runs_table} {where}", (pipeline_id,))
        columns = ", ".join(
            ("run_id", "started_at", "ended_at", "full_resync", *RUN_COUNTS, "outcome", "summary")
        )
        rows = self._rows(
            f"SELECT {columns} FROM {self.runs_table} {where} ORDER BY ended_at DESC, run_id DESC "
            f"LIMIT {limit} OFFSET {offset}",
            (pipeline_id,),
        )
        return Page([run_row(row).as_dict() for row in rows], total, offset, limit)

    def last_run(self, pipeline_id: str) -> RunRow | None:
        """The pipeline's latest recorded run, or None."""
        page = self.runs(pipeline_id, limit=1)
        return RunRow(**page.rows[0]) if page.rows else None

    def rejections(
        self, pipeline_id: str, run_id: str, *, search: str = "", limit: int = 50, offset: int = 0
    ) -> Page:
        """The run's rejected profiles (key, step, kind, reason) whose key, step, kind or reason
        contains ``search`` (case-insensitive, ``%`` and ``_`` literal), in key order."""
        limit, offset = _bounds(limit, offset)
        ph = self._ph
        where = f"WHERE pipeline_id = {ph} AND run_id = {ph}"
        params: tuple[Any, ...] = (pipeline_id, run_id)
        if search:
            pattern = "%" + like_escape(search.lower()) + "%"
            tests = " OR ".join(
                f"LOWER({column}) LIKE {ph} ESCAPE '\\'"
                for column in ("profile_key", "step", "kind", "reason")
            )
            where += f" AND ({tests})"
            params += (pattern,) * 4
        total = self._scalar(f"SELECT COUNT(*) FROM {self.rejections_table} {where}", params)
        rows = self._rows(
            f"SELECT profile_key, step, kind, reason FROM {self.rejections_table} {where} "
            f"ORDER BY profile_key, step LIMIT {limit} OFFSET {offset}",
            params,
        )
        found = [
            {"profile_key": key, "step": step, "kind": kind, "reason": reason}
            for key, step, kind, reason in rows
        ]
        return Page(found, total, offset, limit)

    def _scalar(self, sql: str, params: tuple[Any, ...]) -> int:
        rows = self._rows(sql, params)
        return int(rows[0][0]) if rows else 0

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if not self._has_tables():
            return []
        cursor = self._conn.cursor()
        try:
            cursor.execute(sql, params)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def _has_tables(self) -> bool:
        """Whether both tables exist (asked once; a failed probe is rolled back)."""
        if not hasattr(self, "_exists"):
            cursor = self._conn.cursor()
            try:
                for table in (self.runs_table, self.rejections_table):
                    cursor.execute(f"SELECT 1 FROM {table} WHERE 1 = 0")
                    cursor.fetchall()
                self._exists = True
            except Exception:  # any driver's "no such table"; PEP 249 has no common class to name
                self._conn.rollback()
                self._exists = False
            finally:
                cursor.close()
        return self._exists


def run_row(row: Sequence[Any]) -> RunRow:
    """A ``RunRow`` from the columns ``HistoryReader.runs`` selects."""
    run_id, started_at, ended_at, full_resync, *rest = row
    counts = dict(zip(RUN_COUNTS, (int(value) for value in rest[: len(RUN_COUNTS)]), strict=True))
    outcome, summary = rest[len(RUN_COUNTS)], rest[len(RUN_COUNTS) + 1]
    try:
        loaded = json.loads(summary) if summary else {}
    except ValueError:
        loaded = {}
    details = {name: loaded[name] for name in RUN_FIELDS if name in loaded}
    details["retried_total"] = sum((details.get("retried") or {}).values())
    return RunRow(
        run_id=str(run_id),
        started_at=str(started_at),
        ended_at=str(ended_at),
        duration_s=duration(str(started_at), str(ended_at)),
        outcome=str(outcome),
        full_resync=bool(full_resync),
        counts=counts,
        details=details,
    )


PLAN_COUNTS = (
    "extracted",
    "filtered_out",
    "created",
    "updated",
    "unchanged",
    "skipped_total",
    "rejected_total",
)
PLAN_FIELDS = ("rejected", "skipped", "api_calls", "samples", "outcome")


def plan_summary(value: Any) -> dict[str, Any] | None:
    """What a dry run's upsert step returned (its XCom), as the page shows a plan: counts, Stripe
    calls (reads only), reasons and samples; None for anything that is not such a summary."""
    if not isinstance(value, dict) or "extracted" not in value:
        return None
    counts = {name: int(value.get(name) or 0) for name in PLAN_COUNTS}
    if "skipped_total" not in value:
        counts["skipped_total"] = sum((value.get("skipped") or {}).values())
    found = {name: value[name] for name in PLAN_FIELDS if name in value}
    found["samples"] = {outcome: list(texts)[:5] for outcome, texts in (found.get("samples") or {}).items()}
    return {"counts": counts, "dry_run": bool(value.get("dry_run")), **found}


def duration(started_at: str, ended_at: str) -> float | None:
    """Seconds between two ISO 8601 times, or None when one is missing or unreadable."""
    try:
        return (datetime.fromisoformat(ended_at) - datetime.fromisoformat(started_at)).total_seconds()
    except (TypeError, ValueError):
        return None


def like_escape(text: str) -> str:
    """``text`` for a ``LIKE … ESCAPE '\\'`` pattern: ``%``, ``_`` and ``\\`` match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _bounds(limit: int, offset: int) -> tuple[int, int]:
    """``limit`` within 1..MAX_PAGE and ``offset`` ≥ 0, as plain ints (they are written into SQL)."""
    return max(1, min(int(limit), MAX_PAGE)), max(0, int(offset))
