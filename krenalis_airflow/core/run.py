"""Whole steps of a pipeline run: extract, transform, dedupe, upsert.

Each step takes its files as names plus an ``OpenFile`` (``(name, mode) → stream``: object
storage in a task, plain files in the benchmarks), a DB-API connection where it needs one, the
customer API for the upsert, and plain settings; it returns a typed summary. The Airflow tasks
(``operators/steps.py``), the CLI's dry runs (``local_run.py``) and the benchmarks all call these
functions, so none of them re-wires a step. The summary, outcome and report of a run are pure
functions of plain values, below the steps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from krenalis_airflow.core.columns import check_source, mapping_problems, spec_error
from krenalis_airflow.core.dedupe import dedupe_file
from krenalis_airflow.core.destination import Destinations, reconcile_due
from krenalis_airflow.core.extract import (
    Extraction,
    changed_keys_sql,
    iter_rows,
    leaving_sql,
    prepare_extraction,
    with_digests,
)
from krenalis_airflow.core.filters import dialect_name
from krenalis_airflow.core.history import History
from krenalis_airflow.core.inputs import (
    CHANGED,
    DIALECTS,
    INPUT,
    KEY,
    RECORDED,
    SEEN,
    Incremental,
    around_changed_sql,
    changed_table_sql,
    register,
    spec_seed,
)
from krenalis_airflow.core.leave import (
    LeaveLedger,
    LeaveOptions,
    LeaveResult,
    Leavers,
    Leaving,
    check_leave_limit,
    find_leavers,
    listed_leavers,
    read_audience,
)
from krenalis_airflow.core.leave import report_rows as leave_rows
from krenalis_airflow.core.ledger import EmptyLedger, Ledger
from krenalis_airflow.core.matching import normalise_match
from krenalis_airflow.core.records import (
    LeftOut,
    Record,
    Rejection,
    read_jsonl,
    read_records,
    read_rejections,
    write_jsonl,
)
from krenalis_airflow.core.spec import PipelineSpec
from krenalis_airflow.core.sync import CustomerApi, Syncer, SyncOptions, SyncResult
from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.build import build_transformer
from krenalis_airflow.core.transform.run import TransformSettings, transform_file
from krenalis_airflow.core.transform.validate import stripe_text
from krenalis_airflow.exceptions import RetryableSyncError, RunFailed

OpenFile = Callable[[str, str], AbstractContextManager[IO[str]]]  # (name, mode "r" | "w") → stream
LOGGED_REJECTIONS = 100
NAMED_CURSOR = "krenalis_extract"
CHANGED_MAX = 200_000  # profiles that changed (core/inputs.py), past which a run reads them all
FEW_ROWS = (
    20_000  # rows read at once through a plain cursor, not streamed (PostgreSQL plans them in parallel)
)


# -- extract ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractSummary:
    """What the extract step read, and the SQL it ran."""

    columns: list[str]  # what each profile holds
    total: int  # rows in the source before the filter
    extracted: int  # rows the filter kept: the run's audience (written, or skipped as unchanged)
    sql: str  # the extraction as a person reads it
    unchanged_inputs: int = 0  # of them, not written: their input is as last synced (core/inputs.py)
    leavers: str | None = None  # the file of the keys that left the audience, when found in SQL
    inputs: str = ""  # why every profile was read despite input digests ("" when not)
    destination: str = ""  # the Stripe the skipped profiles were synced to (when some were skipped)

    def xcom(self, profiles: str, started_at: str) -> dict[str, Any]:
        """The extract step's XCom: the summary with the profiles file and the start time."""
        return {
            "profiles": profiles,
            "columns": self.columns,
            "total": self.total,
            "extracted": self.extracted,
            "sql": self.sql,
            "started_at": started_at,
            "unchanged_inputs": self.unchanged_inputs,
            "leavers": self.leavers,
            "destination": self.destination,
        }


def run_extract(
    connection: Any,
    spec: PipelineSpec,
    spec_file: str,
    profiles: str,
    open_file: OpenFile,
    *,
    dialect: str | None,
    placeholder: str,
    log: logging.Logger,
    limit: int | None = None,
    server_side: bool = True,
    inputs: Incremental | None = None,
    leavers: str = "",
) -> ExtractSummary:
    """Check the spec's columns against the source, count its rows, and stream at most ``limit``
    filtered rows into ``profiles`` (through a server-side cursor where the driver has one).

    ``inputs`` (the ledger in the source database, see ``core/inputs.py``): each row carries its
    input digest; when ``inputs.enabled``, only the rows that may have changed are written, and
    the keys that left the audience go to ``leavers``."""
    cursor = connection.cursor()
    try:
        # Every column the spec names, checked before a row is read (as validate --connect does).
        probed = check_source(cursor, spec, spec_file, dialect=dialect, placeholder=placeholder)
        extraction = prepare_extraction(
            cursor,
            spec.source,
            spec.filter,
            dialect=dialect,
            placeholder=placeholder,
            order=spec.export.order,
            source_name=spec_file,
            select=selected_columns(spec),
            probed=probed,
        )
        cursor.execute(extraction.count_sql)
        total = int(cursor.fetchone()[0])
        if inputs is not None and limit is None:
            try:
                return _extract_digested(
                    connection,
                    spec,
                    extraction,
                    (profiles, leavers),
                    open_file,
                    inputs,
                    placeholder=placeholder,
                    total=total,
                    log=log,
                    server_side=server_side,
                )
            except KeysDiffer as exc:
                log.warning(
                    "Input digests off for this run: the source key's text in SQL differs from the "
                    "pipeline's (%s; e.g. a float or timestamp key); every profile is read",
                    exc,
                )
            except driver_errors(connection) as exc:  # the database could not hash or join the rows
                connection.rollback()
                log.warning(
                    "Input digests off for this run, every profile is read: the database said %s", exc
                )
        log.info("Extracting with:\n%s", extraction.display())
        with streaming(connection, cursor, server_side) as rows_cursor, open_file(profiles, "w") as out:
            rows = iter_rows(rows_cursor, extraction.sql, extraction.params)
            count = write_jsonl(out, itertools.islice(rows, limit))
    finally:
        cursor.close()
    log.info("Extracted %d of %d profiles (%d filtered out)", count, total, total - count)
    return ExtractSummary(extraction.columns, total, count, extraction.display())


def input_digests(
    connection: Any,
    spec: PipelineSpec,
    spec_file: str,
    *,
    dialect: str | None,
    placeholder: str,
    fingerprint: str,
    full_resync: bool = False,
    reconcile: bool = False,
) -> Incremental | None:
    """How the extract step uses input digests (``core/inputs.py``): None when the ledger lives in
    another database, the database has no row hash or ``export.skip_unchanged`` is false; else
    the plan, whose ``why_not`` says why this run reads every profile (a full resync, a
    reconciliation due or asked for, a Stripe key whose account the upsert never resolved).
    Creates the ledger table when it is missing."""
    if (
        not spec.export.skip_unchanged
        or spec.state_conn_id != spec.source.conn_id
        or dialect_name(dialect, placeholder) not in DIALECTS
    ):
        return None
    ledger = Ledger(connection, placeholder, spec.id, spec.state.table_prefix)
    ledger.ensure_table()
    places = Destinations(connection, placeholder, spec.state.table_prefix)
    destination = places.known(fingerprint) if fingerprint else None
    why = ""
    if full_resync:
        why = "a full resync reads every profile"
    elif destination is None:
        why = "the upsert has not resolved this Stripe key's account yet"
    else:
        last = places.reconciled_at(spec.id, destination)
        if due := reconcile_due(reconcile, spec.export.reconcile_every, last, datetime.now(UTC)):
            why = f"this run reconciles: {due}"
    seed = spec_seed(spec, [Path(spec_file).parent.parent])
    return Incremental(ledger.table, spec.id, destination or "", seed, why)


def driver_errors(connection: Any) -> type[Exception] | tuple[type[Exception], ...]:
    """The DB-API ``Error`` class of ``connection``'s driver (``sqlite3.Error``, ``psycopg2.Error``)."""
    driver = sys.modules.get(type(connection).__module__.split(".")[0])
    found = getattr(driver, "Error", None)
    return found if isinstance(found, type) and issubclass(found, Exception) else ()


def _not_read(count: int) -> str:
    return f"{count} not read: input unchanged since synced" if count else ""


class KeysDiffer(Exception):
    """A profile key's text in SQL is not the pipeline's: the ledger cannot be joined on it."""


def _extract_digested(
    connection: Any,
    spec: PipelineSpec,
    extraction: Extraction,
    files: tuple[str, str],
    open_file: OpenFile,
    inputs: Incremental,
    *,
    placeholder: str,
    total: int,
    log: logging.Logger,
    server_side: bool,
) -> ExtractSummary:
    """``run_extract`` with input digests (``core/inputs.py``); ``files``: profiles, leavers.

    With ``inputs.enabled``: the keys that may have changed first (a plain cursor: few), kept in a
    temporary table with those that share their matching values in the ledger (dedupe must see
    every profile of a matching value), then only those rows; past ``CHANGED_MAX`` changed keys
    every row is read instead. Then the audience's size and, in SQL, who left it."""
    profiles, leavers = files
    register(connection, extraction.dialect)
    changed: list[str] = []
    cursor = connection.cursor()
    try:
        if inputs.enabled:
            inputs, changed = _stage_changed(cursor, spec, extraction, inputs, placeholder)
        if not inputs.enabled:
            log.info("Input digests recorded, every profile read: %s", inputs.why_not)
        matches = _write_digested(
            connection, spec, extraction, profiles, open_file, inputs, placeholder, server_side
        )
        if inputs.enabled:
            ledger = Ledger(connection, placeholder, spec.id, spec.state.table_prefix)
            shared = {key for key, _ in ledger.keys_matching(sorted(set(matches.values()) - {""}))} - set(
                matches
            )
            if shared:  # read again with them: few rows, found through the temporary table
                _add_keys(cursor, placeholder, sorted(shared))
                few = len(changed) + len(shared) <= FEW_ROWS
                matches = _write_digested(
                    connection,
                    spec,
                    extraction,
                    profiles,
                    open_file,
                    inputs,
                    placeholder,
                    server_side and not few,
                )
            cursor.execute(f"DROP TABLE {CHANGED}")
        count = len(matches)
        if not inputs.enabled:
            connection.commit()
            log.info("Extracted %d of %d profiles (%d filtered out)", count, total, total - count)
            return ExtractSummary(
                extraction.columns, total, count, extraction.display(), inputs=inputs.why_not
            )
        audience = total
        if extraction.where:
            cursor.execute(f"SELECT COUNT(*) FROM ({extraction.body}) f", extraction.params)
            audience = int(cursor.fetchone()[0])
        cursor.execute(*leaving_sql(extraction, spec.source, inputs, placeholder))
        with open_file(leavers, "w") as out:
            left = write_jsonl(
                out, ({"key": row[0]} for rows in iter(lambda: cursor.fetchmany(10_000), []) for row in rows)
            )
        connection.commit()  # ends the read (and the temporary table's writes): no lock is kept
    finally:
        cursor.close()
    log.info(
        "Extracted %d of %d profiles (%d filtered out); %d read, %d skipped: their input is unchanged "
        "since they were synced (core/inputs.py); %d left the audience",
        audience,
        total,
        total - audience,
        count,
        audience - count,
        left,
    )
    return ExtractSummary(
        extraction.columns,
        total,
        audience,
        extraction.display(),
        unchanged_inputs=audience - count,
        leavers=leavers,
        destination=inputs.destination,
    )


def _stage_changed(
    cursor: Any, spec: PipelineSpec, extraction: Extraction, inputs: Incremental, placeholder: str
) -> tuple[Incremental, list[str]]:
    """Find the keys that may have changed and put them in the temporary table; past
    ``CHANGED_MAX`` of them, the plan to read every row instead."""
    before, after = around_changed_sql(extraction.dialect)
    for statement in before:
        cursor.execute(statement)
    cursor.execute(*changed_keys_sql(extraction, spec.source, inputs, placeholder, CHANGED_MAX + 1))
    changed = [row[0] for row in cursor.fetchall()]
    for statement in after:
        cursor.execute(statement)
    if len(changed) > CHANGED_MAX:
        return replace(inputs, why_not=f"more than {CHANGED_MAX:,} profiles changed"), []
    for statement in changed_table_sql():
        cursor.execute(statement)
    _add_keys(cursor, placeholder, changed)
    return inputs, changed


def _add_keys(cursor: Any, placeholder: str, keys: Sequence[str]) -> None:
    """Add ``keys`` to the temporary table of keys to read (``inputs.CHANGED``)."""
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ", ".join([f"({placeholder})"] * len(chunk))
        cursor.execute(f"INSERT INTO {CHANGED} (k) VALUES {marks}", chunk)


def _write_digested(
    connection: Any,
    spec: PipelineSpec,
    extraction: Extraction,
    profiles: str,
    open_file: OpenFile,
    inputs: Incremental,
    placeholder: str,
    server_side: bool,
) -> dict[str, str]:
    """Write the rows of ``inputs.digests_sql`` to ``profiles``: key → matching value of each."""
    sql, params = with_digests(extraction, spec.source, spec.export.order, inputs, placeholder)
    written = _Written(spec)
    cursor = connection.cursor()
    try:
        with (
            streaming(connection, cursor, server_side) as rows_cursor,
            open_file(profiles, "w") as out,
        ):
            write_jsonl(out, map(written.row, iter_rows(rows_cursor, sql, params)))
    finally:
        cursor.close()
    return written.matches


class _Written:
    """Checks each digested row on its way to the profiles file, keeping its key and matching value."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.matches: dict[str, str] = {}  # key → normalised matching value, of every row written
        self._key, self._property, self._field = (
            spec.source.key,
            spec.export.matching.property,
            spec.export.matching.stripe,
        )

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        seen, text = row.pop(SEEN), row.pop(KEY)
        key = row[self._key]
        if (key if type(key) is str else stripe_text(key)) != text:
            raise KeysDiffer(f"{key!r} is {text!r} in SQL")
        if row[INPUT] == seen:
            row[RECORDED] = True  # the ledger holds it: an unchanged record costs no write
        raw = row.get(self._property)
        self.matches[text] = "" if raw is None else normalise_match(self._field, raw)
        return row


@contextlib.contextmanager
def streaming(connection: Any, cursor: Any, server_side: bool = True) -> Iterator[Any]:
    """A server-side cursor where the driver has one (psycopg: rows arrive in batches instead of
    all at ``execute``), else the plain cursor (sqlite3 already steps through rows lazily)."""
    if not server_side:
        yield cursor
        return
    try:
        named = connection.cursor(name=NAMED_CURSOR)
    except TypeError:  # DB-API drivers without named cursors
        yield cursor
        return
    try:
        yield named
    finally:
        named.close()


def selected_columns(spec: PipelineSpec) -> list[tuple[str, str]]:
    """With ``transformation.inputs``, read only those columns (plus what the pipeline itself needs)."""
    inputs = spec.transformation.inputs
    if inputs is None:
        return []
    needed = [("source.key", spec.source.key), ("export.matching.property", spec.export.matching.property)]
    if spec.export.order is not None:
        needed.append(("export.order_by", spec.export.order[0]))
    return needed + [(f"transformation.inputs[{i}]", name) for i, name in enumerate(inputs)]


# -- transform ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSummary:
    """What a transform or dedupe step kept, and what it left out."""

    kept: int
    left: LeftOut

    @property
    def left_out(self) -> int:
        """How many records the step rejected or skipped."""
        return self.left.rejected.total() + self.left.skipped.total()


def run_transform(
    spec: PipelineSpec,
    spec_file: str,
    columns: Sequence[str] | None,
    files: tuple[str, str, str],
    open_file: OpenFile,
    *,
    log: logging.Logger,
    search_path: Sequence[Path] | None = None,
    before_close: Callable[[Transformer], None] | None = None,
) -> StepSummary:
    """Transform the profiles of ``files`` (profiles, records, rejections) with the spec's
    transformation. ``columns``: those of the extracted profiles, checked against the mapping
    before anything is written (None: not checked). ``search_path`` defaults to the spec's
    folder's parent. ``before_close`` sees the transformer once done, before it is closed."""
    profiles, records, rejections = files
    transformation = spec.transformation
    if columns is not None:
        check_columns(spec, spec_file, columns)
    paths = [Path(spec_file).parent.parent] if search_path is None else list(search_path)
    transformer = build_transformer(transformation, search_path=paths)
    try:
        with (
            open_file(profiles, "r") as src,
            open_file(records, "w") as ok,
            open_file(rejections, "w") as bad,
        ):
            transformed, left = transform_file(src, ok, bad, transformer, TransformSettings.of(spec))
        if before_close is not None:
            before_close(transformer)
    finally:
        transformer.close()
    log_rejections(open_file, rejections, log)
    log.info(
        "Transformed %d profiles (%s), rejected %d, skipped %d",
        transformed,
        transformation.language,
        left.rejected.total(),
        left.skipped.total(),
    )
    return StepSummary(transformed, left)


def check_columns(spec: PipelineSpec, spec_file: str, columns: Sequence[str]) -> None:
    """Fail before anything is written when a mapping reads columns the extracted profiles lack
    (the extract step checked them against the source; its output may be older than the spec)."""
    if problems := mapping_problems(spec.transformation, sorted(set(columns))):
        raise spec_error(spec_file, problems)


# -- dedupe -------------------------------------------------------------------------------------


def run_dedupe(
    spec: PipelineSpec, files: tuple[str, str, str], open_file: OpenFile, *, log: logging.Logger
) -> StepSummary:
    """Keep one record per matching value of ``files`` (records, kept, duplicates), as the
    spec's ``duplicate_profiles`` says."""
    records, kept, duplicates = files
    export = spec.export
    with open_file(kept, "w") as ok, open_file(duplicates, "w") as bad:
        count, left = dedupe_file(
            lambda: open_file(records, "r"), ok, bad, export.duplicate_profiles, export.matching.stripe
        )
    log_rejections(open_file, duplicates, log)
    done = StepSummary(count, left)
    log.info(
        "%d profiles left after dedupe; %d duplicates %s (duplicate_profiles: %s)",
        count,
        done.left_out,
        "skipped" if export.duplicate_profiles == "keep_first" else "rejected",
        export.duplicate_profiles,
    )
    return done


def carried(upstream: Mapping[str, Any], left: LeftOut, rejections: str) -> dict[str, Any]:
    """The upstream's rejections and skips (by kind / reason), with ``left``'s merged in, and the
    rejection files so far with this step's ``rejections``."""
    return {
        "rejected": dict(Counter(upstream.get("rejected", {})) + left.rejected),
        "skipped": dict(Counter(upstream.get("skipped", {})) + left.skipped),
        "skipped_samples": [*upstream.get("skipped_samples", []), *left.samples],
        "rejection_files": [*upstream.get("rejection_files", []), rejections],
    }


# -- upsert -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertFiles:
    """Where the upsert step writes its outputs."""

    deduped: str  # the records to sync
    rejections: str  # rejected-upsert.jsonl
    summary: str  # summary.json


@dataclass(frozen=True)
class UpsertSummary:
    """The run's summary (the XCom value, summary.json, the history row) and its outcome."""

    summary: dict[str, Any]
    failed: int

    @property
    def outcome(self) -> str:
        """The run's outcome as written in the summary (``success`` or why not)."""
        return str(self.summary["outcome"])

    def error(self) -> RetryableSyncError | RunFailed | None:
        """What fails the task: transient failures can be retried (just those are resent);
        rejections need the data fixed first. None on success."""
        if self.outcome == "success":
            return None
        error = RetryableSyncError if self.failed else RunFailed
        return error(f"{self.outcome}; see the summary above and {self.summary['rejection_files'][-1]}")


@dataclass(frozen=True)
class UpsertRun:
    """Where the upsert's state lives and how this run goes."""

    connection: Any  # DB-API connection to the state database (ledger, history)
    placeholder: str
    options: SyncOptions
    run_id: str = "local"
    fingerprint: str = ""  # of the Stripe key and base URL (core/destination.py), never the key


def sync_options(
    spec: PipelineSpec, *, dry_run: bool, full_resync: bool, concurrency: int, reconcile: bool = False
) -> SyncOptions:
    """The sync's options from the spec and the run's flags (``reconcile``: asked for by the
    trigger; ``sync_records`` also reconciles when the spec's cadence says so)."""
    export = spec.export
    return SyncOptions(
        pipeline_id=spec.id,
        mode=export.mode,
        stripe_field=export.matching.stripe,
        duplicate_customers=export.duplicate_customers,
        dry_run=dry_run,
        full_resync=full_resync,
        concurrency=concurrency,
        give_up_after=export.give_up_after,
        reconcile=reconcile,
    )


def records_reader(open_file: OpenFile, name: str) -> Callable[[], Iterator[Record]]:
    """The records of ``name``, read afresh at each call."""

    def records() -> Iterator[Record]:
        with open_file(name, "r") as stream:
            yield from read_records(stream)

    return records


@dataclass(frozen=True)
class Synced:
    """What the upsert did: the sync, and what became of the profiles that left the audience
    (None when the run was not given its audience)."""

    result: SyncResult
    left: LeaveResult | None = None


@dataclass(frozen=True)
class Audience:
    """What the extract step knows of the run's audience, to find who left it (``core/leave.py``).

    ``leavers`` finds them in the ledger: by the digests of every extracted profile's key, or
    from the keys the extract step found gone in the warehouse. ``unchanged``: the profiles that
    step skipped as unchanged since synced, and ``destination`` the Stripe it compared them with
    (``core/inputs.py``; "" when it read every profile)."""

    leavers: Callable[[LeaveLedger, LeaveOptions], Leavers]
    unchanged: int = 0
    destination: str = ""


def sync_records(
    api: CustomerApi,
    spec: PipelineSpec,
    state: UpsertRun,
    records: Callable[[], Iterator[Record]],
    audience: Audience | None = None,
) -> Synced:
    """``Syncer.run`` against the pipeline's ledger, on the run's destination, reconciling when
    asked or due (``core/destination.py``), then ``export.on_leave`` for the ledger's profiles
    that left the ``audience`` (see ``core/leave.py``), whose guard runs before anything is
    written. A dry run creates nothing, not even the tables."""
    dry_run = state.options.dry_run
    ledger = Ledger(state.connection, state.placeholder, spec.id, spec.state.table_prefix)
    store: Ledger | EmptyLedger = ledger
    if not dry_run:
        ledger.ensure_table()
    elif not ledger.exists():
        store = EmptyLedger()
    places = Destinations(state.connection, state.placeholder, spec.state.table_prefix, writable=not dry_run)
    destination = places.resolve(state.fingerprint, api.account_id)
    changed_only = audience is not None and bool(audience.destination)
    if changed_only and audience is not None and audience.destination != destination:
        raise RunFailed(
            f"the extract step compared the profiles with {audience.destination}, but the Stripe key now "
            f"belongs to {destination}: clear the whole DAG run (from extract) to read every profile again"
        )
    now = datetime.now(UTC)
    # A run whose extract step read only the changed profiles cannot reconcile (that checks every
    # one): one falling due since is left to the next run, whose extract step reads them all.
    why = (
        ""
        if changed_only
        else reconcile_due(
            state.options.reconcile,
            spec.export.reconcile_every,
            places.reconciled_at(spec.id, destination),
            now,
        )
    )
    options = replace(
        state.options,
        destination=destination,
        reconcile=bool(why),
        account_size=places.size(destination),
        changed_only=changed_only,
    )
    leave = LeaveOptions.of(spec, destination=destination, dry_run=dry_run, concurrency=options.concurrency)
    leavers = None if audience is None else audience.leavers(store, leave)
    if leavers is not None:
        check_leave_limit(leavers, leave)  # before anything is written
    result = Syncer(api, store, options, places).run(records)  # places: the value index, read and recorded
    result.destination, result.reconciled = destination, why
    result.unchanged += 0 if audience is None else audience.unchanged
    if why and not result.failed:
        places.record_reconciled(spec.id, destination, now)
    if result.listed is not None:
        places.record_size(destination, result.listed)
    # After the sync: a leaver's customer that a profile of this run now holds is handed over.
    left = None if leavers is None else Leaving(api, store, leave).run(leavers)
    return Synced(result, left)


def audience_reader(open_file: OpenFile, upstream: Mapping[str, Any], key_column: str) -> Audience:
    """The run's audience as the extract step left it (``upstream``: its XCom): the keys that
    left, when it found them in the warehouse, else every extracted profile's key."""
    if left := upstream.get("leavers"):

        def listed(ledger: LeaveLedger, options: LeaveOptions) -> Leavers:
            with open_file(left, "r") as stream:
                keys = [str(row["key"]) for row in read_jsonl(stream)]
            return listed_leavers(ledger, keys, options, int(upstream["extracted"]))

        return Audience(listed, int(upstream.get("unchanged_inputs", 0)), str(upstream["destination"]))

    def digests(ledger: LeaveLedger, options: LeaveOptions) -> Leavers:
        with open_file(upstream["profiles"], "r") as stream:
            return find_leavers(ledger, read_audience(stream, key_column), options)

    return Audience(digests)


def run_upsert(
    api: CustomerApi,
    spec: PipelineSpec,
    state: UpsertRun,
    upstream: Mapping[str, Any],
    files: UpsertFiles,
    open_file: OpenFile,
    *,
    log: logging.Logger,
    retried: Mapping[str, int] | None = None,
) -> UpsertSummary:
    """Sync the deduped records, write the upsert's rejections and the summary, log the report,
    and (unless a dry run) record the run in the history. ``retried``: the API's count of retried
    calls by endpoint (read once the sync is done)."""
    dry_run = state.options.dry_run
    audience = audience_reader(open_file, upstream, spec.source.key)
    synced = sync_records(api, spec, state, records_reader(open_file, files.deduped), audience)
    result = synced.result
    with open_file(files.rejections, "w") as out:
        write_jsonl(out, result.rejections)
    summary = run_summary(
        upstream,
        result,
        retried or {},
        pipeline=spec.id,
        dry_run=dry_run,
        full_resync=state.options.full_resync,
        left=synced.left,
    )
    summary["rejection_files"] = [*upstream["rejection_files"], files.rejections]
    with open_file(files.summary, "w") as out:
        json.dump(summary, out, indent=2)
    summary["outcome"] = outcome(spec.export.rejection_limit(summary["extracted"]), summary)
    log.info("%s", report(summary, dry_run))
    if skipped := summary["samples"].get("skipped"):
        listed = "\n".join(f"  {sample}" for sample in skipped)
        log.info("Skipped by the spec's rules (not counted as rejected), e.g.:\n%s", listed)
    log_rejections(open_file, files.rejections, log)
    if not dry_run:
        history = History(state.connection, state.placeholder, spec.id, spec.state.table_prefix)
        history.ensure_tables()
        history.record_rejections(state.run_id, _rejections(open_file, summary["rejection_files"]))
        history.record_run(state.run_id, upstream.get("started_at", ""), summary, summary["outcome"])
    return UpsertSummary(summary, result.failed)


def _rejections(open_file: OpenFile, names: Sequence[str]) -> Iterator[Rejection]:
    for name in names:
        with open_file(name, "r") as stream:
            yield from read_rejections(stream)


# -- summary, outcome, report (pure) ------------------------------------------------------------


def run_summary(
    upstream: Mapping[str, Any],
    result: SyncResult,
    retried: Mapping[str, int],
    *,
    pipeline: str,
    dry_run: bool,
    full_resync: bool,
    left: LeaveResult | None = None,
) -> dict[str, Any]:
    """The whole run's counts: the upstream steps' (from XCom), the sync's and those of the
    profiles that ``left`` the audience; skips and rejections merged by reason and kind.
    ``rejection_files`` is the upstream's."""
    up = upstream
    rejected = Counter(up["rejected"])
    rejected.update(r.kind for r in result.rejections)
    skipped = Counter(up.get("skipped", {}))  # every step's skips, merged by reason
    skipped.update(result.skipped)
    samples = dict(result.samples)
    if up.get("skipped_samples"):
        samples["skipped"] = [*up["skipped_samples"], *samples.get("skipped", [])]
    return {
        "pipeline": pipeline,
        "sql": up["sql"],
        "dry_run": dry_run,
        "full_resync": full_resync,
        "extracted": up["extracted"],
        "filtered_out": up["total"] - up["extracted"],
        "transformed": up["transformed"],
        "rejected": dict(rejected),
        "rejected_total": rejected.total(),
        "duplicates": up["duplicates"],
        "created": result.created,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "unchanged_inputs": up.get("unchanged_inputs", 0),  # of them, not read: input as last synced
        "skipped": dict(skipped),
        "skipped_total": skipped.total(),
        "failed": result.failed,
        "api_calls": dict(result.api_calls + (left.api_calls if left else Counter())),
        "retried": dict(retried),
        "samples": samples,
        "rejection_files": list(up["rejection_files"]),
        "destination": result.destination,
        "reconcile": reconciliation(result),
        "warnings": warnings(result),
        "left": left.summary() if left else None,
    }


def reconciliation(result: SyncResult) -> dict[str, Any] | None:
    """What a reconciliation found and cost (None when the run did not reconcile)."""
    if not result.reconciled:
        return None
    return {
        "reason": result.reconciled,
        "reads": result.api_calls.get("customers.list", 0),
        "drifted": result.drifted,
        "repaired": result.repaired,
        "contested": result.contested,
    }


def warnings(result: SyncResult) -> list[str]:
    """What a person should know although the run succeeded: entries verified because they were
    synced to another Stripe, and customers another pipeline also writes to."""
    found = [
        f"{count} ledger entries were synced to another Stripe ({place}), not {result.destination}: "
        "their customers were looked up again instead of trusted"
        for place, count in sorted(result.elsewhere.items())
    ]
    for (other, unit), overlap in sorted(result.overlaps.items()):
        found.append(
            f"pipeline {other} also writes {unit} to {overlap.customers} customers this pipeline writes "
            f"(e.g. {', '.join(overlap.samples)}): the last run to change it wins, and reconciliation "
            "leaves it alone; give each field one owner (narrow a filter or drop the field from one mapping)"
        )
    return found


def outcome(limit: int, summary: Mapping[str, Any]) -> str:
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


def report(summary: Mapping[str, Any], dry_run: bool) -> str:
    """The summary as a table a person reads in the task log."""
    would = "would be " if dry_run else ""
    rows = [
        ("extracted", summary["extracted"], f"filtered out {summary['filtered_out']}"),
        ("transformed", summary["transformed"], ""),
        ("rejected", summary["rejected_total"], summary["rejected"] or ""),
        ("duplicates", summary["duplicates"], ""),
        (f"{would}created", summary["created"], ""),
        (f"{would}updated", summary["updated"], ""),
        ("unchanged", summary["unchanged"], _not_read(summary.get("unchanged_inputs", 0))),
        ("skipped", summary["skipped_total"], summary["skipped"] or ""),
        ("failed", summary["failed"], ""),
        ("Stripe API calls", sum(summary["api_calls"].values()), summary["api_calls"] or ""),
        ("retried calls", sum(summary["retried"].values()), summary["retried"] or ""),
    ]
    if (left := summary.get("left")) is not None:
        rows += leave_rows(left, dry_run)
    if found := summary.get("reconcile"):
        rows += [
            ("drifted", found["drifted"], f"reconciled: {found['reason']}; {found['reads']} list reads"),
            *([] if dry_run else [("repaired", found["repaired"], "")]),
            ("left alone", found["contested"], "drifted only in fields another pipeline writes"),
        ]
    title = f"Pipeline {summary['pipeline']}" + (" (DRY RUN: nothing written)" if dry_run else "")
    table = "\n".join(f"  {name:<18}{count:>8}  {detail}".rstrip() for name, count, detail in rows)
    notes = "".join(f"\n  warning: {text}" for text in summary.get("warnings", []))
    if destination := summary.get("destination"):
        notes = f"\n  destination: Stripe {destination}{notes}"
    return f"Sync summary — {title}\n{table}{notes}"


def log_rejections(open_file: OpenFile, name: str, log: logging.Logger) -> None:
    """Up to ``LOGGED_REJECTIONS`` rejected profiles of ``name``, one warning each."""
    shown = 0
    with open_file(name, "r") as stream:
        for data in read_jsonl(stream):
            if shown == LOGGED_REJECTIONS:
                log.warning("… more rejected profiles in %s", name)
                return
            log.warning("Rejected profile %s (%s): %s", data["key"], data["step"], data["reason"])
            shown += 1
