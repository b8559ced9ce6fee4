"""The four steps of a pipeline run, as Airflow tasks: the core's steps (``core/run.py``) wired to
Airflow hooks, object storage, XCom and the task log.

Each step reads its upstream's files, writes its own, and returns a small dict for XCom that
carries the upstream's counts forward, so the last step can report the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook, ObjectStoragePath

from krenalis_airflow.core import run as core
from krenalis_airflow.core.ratelimit import RateLimiter, concurrency_for
from krenalis_airflow.core.shared_limit import sharing
from krenalis_airflow.core.spec import PipelineSpec
from krenalis_airflow.core.stripe_api import StripeCustomers
from krenalis_airflow.exceptions import ConnectionUnusable, RunFailed
from krenalis_airflow.hooks.stripe import StripeHook
from krenalis_airflow.operators import alerts
from krenalis_airflow.operators.storage import keep_files


@dataclass(frozen=True)
class StepRun:
    """What a step needs from the operator: the spec, its run folder, upstream XCom and flags."""

    spec: PipelineSpec
    spec_file: str
    folder: ObjectStoragePath
    upstream: dict[str, Any]
    dry_run: bool
    full_resync: bool
    log: logging.Logger
    reconcile: bool = False  # check the ledger against one listing of Stripe, repairing drift
    run_id: str = "local"
    limit: int | None = None  # extract at most this many profiles (preview)

    def file(self, name: str) -> ObjectStoragePath:
        """A file in the run's folder."""
        return self.folder / name

    def name(self, file: str) -> str:
        """The full name of a file in the run's folder, as passed in XCom."""
        return str(self.file(file))


def open_file(name: str, mode: str) -> Any:
    """The core's ``OpenFile`` over object storage."""
    stream: IO[str] = ObjectStoragePath(name).open(mode)
    return stream


def sql_hook(conn_id: str) -> DbApiHook:
    """The DB-API hook of a connection; refuses a connection that is not SQL."""
    hook = BaseHook.get_connection(conn_id).get_hook()
    if not isinstance(hook, DbApiHook):
        raise ConnectionUnusable(
            f"connection {conn_id!r} is a {type(hook).__name__}, not a SQL connection: point "
            "source.conn_id (or state.conn_id) at a common-sql connection such as sqlite or postgres"
        )
    return hook


@contextmanager
def _connection(hook: DbApiHook) -> Iterator[Any]:
    conn = hook.get_conn()
    try:
        yield conn
    finally:
        conn.close()


def extract(run: StepRun) -> dict[str, Any]:
    """Extract step: read the source's profiles into the run's folder."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    hook = sql_hook(run.spec.source.conn_id)
    profiles = run.name("profiles.jsonl")
    with _connection(hook) as conn:
        inputs = None
        if not run.dry_run and run.limit is None:  # a dry run creates no table; a limited one skips nothing
            inputs = core.input_digests(
                conn,
                run.spec,
                run.spec_file,
                dialect=hook.dialect_name,
                placeholder=hook.placeholder,
                fingerprint=_fingerprint(run.spec.destination.conn_id),
                full_resync=run.full_resync,
                reconcile=run.reconcile,
            )
        done = core.run_extract(
            conn,
            run.spec,
            run.spec_file,
            profiles,
            open_file,
            dialect=hook.dialect_name,
            placeholder=hook.placeholder,
            log=run.log,
            limit=run.limit,
            inputs=inputs,
            leavers=run.name("left.jsonl"),
        )
    return done.xcom(profiles, started_at)


def _fingerprint(conn_id: str) -> str:
    """The Stripe key's fingerprint, to find its account in the state store; "" when the
    connection cannot be read here (the extract then reads every profile; the upsert says why)."""
    try:
        return StripeHook(conn_id).settings.fingerprint
    except Exception:  # any failure means "not known": the safe answer
        return ""


def transform(run: StepRun) -> dict[str, Any]:
    """Transform step: turn profiles into Stripe records, rejecting the ones that fail."""
    records, rejections = run.name("records.jsonl"), run.name("rejected-transform.jsonl")
    files = (run.upstream["profiles"], records, rejections)
    done = core.run_transform(run.spec, run.spec_file, run.upstream["columns"], files, open_file, log=run.log)
    return {
        **run.upstream,
        "records": records,
        "transformed": done.kept,
        **core.carried(run.upstream, done.left, rejections),
    }


def dedupe(run: StepRun) -> dict[str, Any]:
    """Dedupe step: keep one record per matching value, rejecting or dropping the rest."""
    kept, duplicates = run.name("deduped.jsonl"), run.name("rejected-dedupe.jsonl")
    done = core.run_dedupe(run.spec, (run.upstream["records"], kept, duplicates), open_file, log=run.log)
    return {
        **run.upstream,
        "deduped": kept,
        "duplicates": done.left_out,
        **core.carried(run.upstream, done.left, duplicates),
    }


def upsert(run: StepRun) -> dict[str, Any]:
    """Upsert step: sync the records to Stripe and record the run."""
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
    limiter = RateLimiter(settings.limits)
    api = StripeCustomers(stripe_hook.get_conn(), limiter=limiter, retries=settings.max_network_retries)
    concurrency = concurrency_for(settings.limits)
    options = core.sync_options(
        spec,
        dry_run=run.dry_run,
        full_resync=run.full_resync,
        concurrency=concurrency,
        reconcile=run.reconcile,
    )
    run.log.info(
        "Syncing to Stripe (%s mode key): at most %s, %d requests in flight",
        settings.mode,
        settings.limits.describe(),
        concurrency,
    )
    files = core.UpsertFiles(
        run.upstream["deduped"], run.name("rejected-upsert.jsonl"), run.name("summary.json")
    )
    state = sql_hook(spec.state_conn_id)
    # Upserts writing to the same Stripe share its limits through a lease in the state store; the
    # lease thread gets its own hook and connections (core/shared_limit.py). Dry runs take none.
    lease = sharing(
        limiter,
        sql_hook(spec.state_conn_id).get_conn,
        state.placeholder,
        settings.fingerprint,
        enabled=not run.dry_run,
        logger=run.log,
    )
    with lease, _connection(state) as conn:
        state_run = core.UpsertRun(conn, state.placeholder, options, run.run_id, settings.fingerprint)
        done = core.run_upsert(
            api, spec, state_run, run.upstream, files, open_file, log=run.log, retried=api.retried
        )
        found, context = alerts.run_alerts_of(
            spec, run.run_id, done.summary, conn, state.placeholder, files.summary, run.log
        )
    if found and spec.alerts is not None:  # sent outside the lease, before a max_rejected failure
        alerts.send(spec.alerts, found, context, run.log, run.spec_file)
    if error := done.error():
        # Transient failures: an Airflow retry resends just those. Rejections: fix the data first.
        # The profile files stay for the retry, and for whoever looks into it.
        raise error
    if not keep:
        _remove_profile_files(run)
    return done.summary


def _remove_profile_files(run: StepRun) -> None:
    """Whole profiles (personal data) are not kept once Stripe and the ledger have what they need;
    the summary and the rejection files stay."""
    removed = []
    for name in ("profiles", "records", "deduped", "leavers"):  # leavers: only with input digests
        if not run.upstream.get(name):
            continue
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
