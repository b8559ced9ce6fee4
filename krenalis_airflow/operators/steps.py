"""The four steps of a pipeline run, wiring the pure core to Airflow hooks and object storage.

Each step reads its upstream's files, writes its own, and returns a small dict for XCom that
carries the upstream's counts forward, so the last step can report the whole run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook, ObjectStoragePath

from krenalis_airflow.core import extract as sql
from krenalis_airflow.core.columns import check_source, mapping_problems, spec_error
from krenalis_airflow.core.dedupe import dedupe_file
from krenalis_airflow.core.history import History
from krenalis_airflow.core.ledger import EmptyLedger, Ledger
from krenalis_airflow.core.ratelimit import RateLimiter, concurrency_for
from krenalis_airflow.core.records import (
    Record,
    Rejection,
    read_jsonl,
    read_records,
    read_rejections,
    write_jsonl,
)
from krenalis_airflow.core.spec import PipelineSpec
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.core.sync import LedgerStore, Syncer, SyncOptions, SyncResult
from krenalis_airflow.core.transform.build import build_transformer
from krenalis_airflow.core.transform.run import TransformSettings, transform_file
from krenalis_airflow.exceptions import ConnectionUnusable, RetryableSyncError, RunFailed
from krenalis_airflow.hooks.stripe import StripeHook
from krenalis_airflow.operators.storage import keep_files

LOGGED_REJECTIONS = 100


@dataclass(frozen=True)
class StepRun:
    spec: PipelineSpec
    spec_file: str
    folder: ObjectStoragePath
    upstream: dict[str, Any]
    dry_run: bool
    full_resync: bool
    log: logging.Logger
    run_id: str = "local"
    limit: int | None = None  # extract at most this many profiles (preview)

    def file(self, name: str) -> ObjectStoragePath:
        return self.folder / name


def sql_hook(conn_id: str) -> DbApiHook:
    hook = BaseHook.get_connection(conn_id).get_hook()
    if not isinstance(hook, DbApiHook):
        raise ConnectionUnusable(
            f"connection {conn_id!r} is a {type(hook).__name__}, not a SQL connection: point "
            "source.conn_id (or state.conn_id) at a common-sql connection such as sqlite or postgres"
        )
    return hook


@contextlib.contextmanager
def _cursor(hook: DbApiHook) -> Iterator[tuple[Any, Any]]:
    conn = hook.get_conn()
    cursor = conn.cursor()
    try:
        yield conn, cursor
    finally:
        cursor.close()
        conn.close()


@contextlib.contextmanager
def _streaming(conn: Any, cursor: Any) -> Iterator[Any]:
    """A server-side cursor where the driver has one (psycopg: rows arrive in batches instead of
    all at ``execute``), else the plain cursor (sqlite3 already steps through rows lazily)."""
    try:
        named = conn.cursor(name="krenalis_extract")
    except TypeError:  # DB-API drivers without named cursors
        yield cursor
        return
    try:
        yield named
    finally:
        named.close()


def extract(run: StepRun) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    spec = run.spec
    hook = sql_hook(spec.source.conn_id)
    with _cursor(hook) as (conn, cursor):
        # Every column the spec names, checked before a row is read (as validate --connect does).
        probed = check_source(
            cursor, spec, run.spec_file, dialect=hook.dialect_name, placeholder=hook.placeholder
        )
        extraction = sql.prepare_extraction(
            cursor,
            spec.source,
            spec.filter,
            dialect=hook.dialect_name,
            placeholder=hook.placeholder,
            order=spec.export.order,
            source_name=run.spec_file,
            select=_selected_columns(spec),
            probed=probed,
        )
        run.log.info("Extracting with:\n%s", extraction.display())
        cursor.execute(extraction.count_sql)
        total = int(cursor.fetchone()[0])
        path = run.file("profiles.jsonl")
        with _streaming(conn, cursor) as rows_cursor, path.open("w") as out:
            rows = sql.iter_rows(rows_cursor, extraction.sql, extraction.params)
            count = write_jsonl(out, itertools.islice(rows, run.limit))
    run.log.info("Extracted %d of %d profiles (%d filtered out)", count, total, total - count)
    return {
        "profiles": str(path),
        "columns": extraction.columns,
        "total": total,
        "extracted": count,
        "sql": extraction.display(),
        "started_at": started_at,
    }


def _selected_columns(spec: PipelineSpec) -> list[tuple[str, str]]:
    """With ``transformation.inputs``, read only those columns (plus what the pipeline itself needs)."""
    inputs = spec.transformation.inputs
    if inputs is None:
        return []
    needed = [("source.key", spec.source.key), ("export.matching.property", spec.export.matching.property)]
    if spec.export.order is not None:
        needed.append(("export.order_by", spec.export.order[0]))
    return needed + [(f"transformation.inputs[{i}]", name) for i, name in enumerate(inputs)]


def transform(run: StepRun) -> dict[str, Any]:
    transformation = run.spec.transformation
    _check_columns(run, set(run.upstream["columns"]))
    records, rejections = run.file("records.jsonl"), run.file("rejected-transform.jsonl")
    transformer = build_transformer(transformation, search_path=[Path(run.spec_file).parent.parent])
    try:
        with (
            ObjectStoragePath(run.upstream["profiles"]).open() as src,
            records.open("w") as ok,
            rejections.open("w") as bad,
        ):
            transformed, left = transform_file(src, ok, bad, transformer, TransformSettings.of(run.spec))
    finally:
        transformer.close()
    _log_rejections(run, rejections)
    run.log.info(
        "Transformed %d profiles (%s), rejected %d, skipped %d",
        transformed,
        transformation.language,
        left.rejected.total(),
        left.skipped.total(),
    )
    return {
        **run.upstream,
        "records": str(records),
        "transformed": transformed,
        "rejected": dict(left.rejected),
        "skipped": dict(left.skipped),
        "skipped_samples": left.samples,
        "rejection_files": [str(rejections)],
    }


def _check_columns(run: StepRun, columns: set[str]) -> None:
    """Fail before anything is written when a mapping reads columns the extracted profiles lack
    (the extract step checked them against the source; its output may be older than the spec)."""
    if problems := mapping_problems(run.spec.transformation, sorted(columns)):
        raise spec_error(run.spec_file, problems)


def _reader(path: str) -> Callable[[], Iterator[Record]]:
    def records() -> Iterator[Record]:
        with ObjectStoragePath(path).open() as stream:
            yield from read_records(stream)

    return records


def dedupe(run: StepRun) -> dict[str, Any]:
    export = run.spec.export
    kept, duplicates = run.file("deduped.jsonl"), run.file("rejected-dedupe.jsonl")
    with kept.open("w") as ok, duplicates.open("w") as bad:
        count, left = dedupe_file(
            ObjectStoragePath(run.upstream["records"]).open,
            ok,
            bad,
            export.duplicate_profiles,
            export.matching.stripe,
        )
    _log_rejections(run, duplicates)
    dupes = left.rejected.total() + left.skipped.total()
    run.log.info(
        "%d profiles left after dedupe; %d duplicates %s (duplicate_profiles: %s)",
        count,
        dupes,
        "skipped" if export.duplicate_profiles == "keep_first" else "rejected",
        export.duplicate_profiles,
    )
    up = run.upstream
    return {
        **up,
        "deduped": str(kept),
        "duplicates": dupes,
        "rejected": dict(Counter(up["rejected"]) + left.rejected),
        "skipped": dict(Counter(up.get("skipped", {})) + left.skipped),
        "skipped_samples": [*up.get("skipped_samples", []), *left.samples],
        "rejection_files": [*up["rejection_files"], str(duplicates)],
    }


def upsert(run: StepRun) -> dict[str, Any]:
    spec = run.spec
    if not ObjectStoragePath(run.upstream["deduped"]).exists():
        raise RunFailed(
            f"{run.upstream['deduped']} is gone: a run's profile files are removed once its upsert "
            "succeeds. To sync again, clear the whole DAG run (from extract), not the upsert task alone."
        )
    keep = keep_files()  # a bad setting fails here, before anything is sent
    # The SDK logs two INFO lines per request, and request/response bodies (personal data) at DEBUG.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    stripe_hook = StripeHook(spec.destination.conn_id)
    settings = stripe_hook.settings
    api = StripeCustomers(
        stripe_hook.get_conn(), limiter=RateLimiter(settings.limits), retries=settings.max_network_retries
    )
    options = SyncOptions(
        pipeline_id=spec.id,
        mode=spec.export.mode,
        stripe_field=spec.export.matching.stripe,
        duplicate_customers=spec.export.duplicate_customers,
        dry_run=run.dry_run,
        full_resync=run.full_resync,
        concurrency=concurrency_for(settings.limits),
        give_up_after=spec.export.give_up_after,
    )
    run.log.info(
        "Syncing to Stripe (%s mode key): at most %s, %d requests in flight",
        settings.mode,
        settings.limits.describe(),
        options.concurrency,
    )
    state = sql_hook(spec.state_conn_id)
    conn = state.get_conn()
    try:
        ledger = Ledger(conn, state.placeholder, spec.id, spec.state.table_prefix)
        store: LedgerStore = ledger
        if not run.dry_run:
            ledger.ensure_table()
        elif not ledger.exists():
            store = EmptyLedger()  # a dry run creates nothing, not even the table
        result = Syncer(api, store, options).run(_reader(run.upstream["deduped"]))
        summary = _summary(run, result, api.retried)
        outcome = _outcome(spec.export.rejection_limit(summary["extracted"]), summary)
        summary["outcome"] = outcome
        _report(run, summary)
        if not run.dry_run:
            _record_history(run, History(conn, state.placeholder, spec.id, spec.state.table_prefix), summary)
    finally:
        conn.close()
    if outcome != "success":
        # Transient failures: an Airflow retry resends just those. Rejections: fix the data first.
        # The profile files stay for the retry, and for whoever looks into it.
        error = RetryableSyncError if result.failed else RunFailed
        raise error(f"{outcome}; see the summary above and {summary['rejection_files'][-1]}")
    if not keep:
        _remove_profile_files(run)
    return summary


def _remove_profile_files(run: StepRun) -> None:
    """Whole profiles (personal data) are not kept once Stripe and the ledger have what they need;
    the summary and the rejection files stay."""
    removed = []
    for name in ("profiles", "records", "deduped"):
        path = ObjectStoragePath(run.upstream[name])
        try:
            if path.exists():
                path.unlink()
                removed.append(path.name)
        except OSError as exc:  # the sync succeeded: say what is left, do not fail the task for it
            run.log.warning("Could not remove %s (whole profiles are left there): %s", path, exc)
    run.log.info(
        "Removed %s (set [krenalis] keep_files = true to keep them)", ", ".join(removed) or "nothing"
    )


def _rejections(paths: list[str]) -> Iterator[Rejection]:
    for path in paths:
        with ObjectStoragePath(path).open() as stream:
            yield from read_rejections(stream)


def _outcome(limit: int, summary: dict[str, Any]) -> str:
    """Only problems count against ``export.max_rejected``: rejected and failed profiles. Skipped
    ones (``keep_first``, ``update_only``, ``create_only`` at work) never turn a run red."""
    bad = summary["rejected_total"] + summary["failed"]
    if bad <= limit:
        return "success"
    skipped = summary.get("skipped_total", 0)
    return (
        f"failed: {summary['rejected_total']} rejected + {summary['failed']} failed profiles exceed "
        f"export.max_rejected ({limit} for {summary['extracted']} extracted)"
        + (f"; skipped profiles ({skipped}) do not count" if skipped else "")
    )


def _record_history(run: StepRun, history: History, summary: dict[str, Any]) -> None:
    history.ensure_tables()
    history.record_rejections(run.run_id, _rejections(summary["rejection_files"]))
    history.record_run(run.run_id, run.upstream.get("started_at", ""), summary, summary["outcome"])


def _summary(run: StepRun, result: SyncResult, retried: Counter[str]) -> dict[str, Any]:
    up = run.upstream
    rejected = Counter(up["rejected"])
    rejections = run.file("rejected-upsert.jsonl")
    with rejections.open("w") as out:
        write_jsonl(out, result.rejections)
    rejected.update(r.kind for r in result.rejections)
    skipped = Counter(up.get("skipped", {}))  # every step's skips, merged by reason
    skipped.update(result.skipped)
    samples = dict(result.samples)
    if up.get("skipped_samples"):
        samples["skipped"] = [*up["skipped_samples"], *samples.get("skipped", [])]
    summary = {
        "pipeline": run.spec.id,
        "sql": up["sql"],
        "dry_run": run.dry_run,
        "full_resync": run.full_resync,
        "extracted": up["extracted"],
        "filtered_out": up["total"] - up["extracted"],
        "transformed": up["transformed"],
        "rejected": dict(rejected),
        "rejected_total": rejected.total(),
        "duplicates": up["duplicates"],
        "created": result.created,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "skipped": dict(skipped),
        "skipped_total": skipped.total(),
        "failed": result.failed,
        "api_calls": dict(result.api_calls),
        "retried": dict(retried),
        "samples": samples,
        "rejection_files": [*up["rejection_files"], str(rejections)],
    }
    with run.file("summary.json").open("w") as out:
        json.dump(summary, out, indent=2)
    return summary


def _report(run: StepRun, summary: dict[str, Any]) -> None:
    would = "would be " if run.dry_run else ""
    rows = [
        ("extracted", summary["extracted"], f"filtered out {summary['filtered_out']}"),
        ("transformed", summary["transformed"], ""),
        ("rejected", summary["rejected_total"], summary["rejected"] or ""),
        ("duplicates", summary["duplicates"], ""),
        (f"{would}created", summary["created"], ""),
        (f"{would}updated", summary["updated"], ""),
        ("unchanged", summary["unchanged"], ""),
        ("skipped", summary["skipped_total"], summary["skipped"] or ""),
        ("failed", summary["failed"], ""),
        ("Stripe API calls", sum(summary["api_calls"].values()), summary["api_calls"] or ""),
        ("retried calls", sum(summary["retried"].values()), summary["retried"] or ""),
    ]
    title = f"Pipeline {summary['pipeline']}" + (" (DRY RUN: nothing written)" if run.dry_run else "")
    table = "\n".join(f"  {name:<18}{count:>8}  {detail}".rstrip() for name, count, detail in rows)
    run.log.info("Sync summary — %s\n%s", title, table)
    if skipped := summary["samples"].get("skipped"):
        listed = "\n".join(f"  {sample}" for sample in skipped)
        run.log.info("Skipped by the spec's rules (not counted as rejected), e.g.:\n%s", listed)
    _log_rejections(run, run.file("rejected-upsert.jsonl"))


def _log_rejections(run: StepRun, path: ObjectStoragePath) -> None:
    shown = 0
    with path.open() as stream:
        for data in read_jsonl(stream):
            if shown == LOGGED_REJECTIONS:
                run.log.warning("… more rejected profiles in %s", path)
                return
            run.log.warning("Rejected profile %s (%s): %s", data["key"], data["step"], data["reason"])
            shown += 1
