"""Alerts: which of a run's outcomes a person should hear about, and what they are told.

Pure decisions over plain values (the spec's ``alerts`` block, the run summary the upsert
returns, the last successful run's row of ``<prefix>runs``); sending them through an Airflow
notifier is the shell's job (``operators/alerts.py``). Four conditions:

- ``on_failure``: a task of the run failed for good (after its retries): ``failure_alert``.
- ``rejected_share``: rejected + failed profiles (what ``export.max_rejected`` counts) above this
  share of the extracted ones. Skipped profiles are the spec at work and never count.
- ``extracted_swing``: the extracted count moved by at least this share, up or down, from the
  last successful run's (a source table emptied or duplicated upstream). No alert without a
  previous successful run, or when it extracted nothing (no base to compare with).
- ``on_drift``: a reconciliation found customers whose fields this pipeline owns edited, or
  the customers deleted, in Stripe (``reconcile.drifted`` of the summary).

A message names the pipeline, says what happened with its figures and where to look (the DAG
run, the task log, the summary file); it carries counts and kinds only, never profile data, SQL
or anything from a connection. Dry runs alert on nothing: they preview, they do not run.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from krenalis_airflow.core.redact import redact
from krenalis_airflow.core.spec import Alerts
from krenalis_airflow.exceptions import NotifierUnusable

AlertKind = Literal["failure", "rejected_share", "extracted_swing", "drift"]
TEMPLATED_TEXT = "{{ krenalis_alert.text }}"  # how the text reaches a templated notifier argument
MAX_ERROR = 500  # characters of a failure's error kept in the message


@dataclass(frozen=True)
class Alert:
    """One alert: its pipeline and kind, a one-line title, the whole text and the figures.

    Notifier templates see it as ``krenalis_alert`` (``{{ krenalis_alert.title }}``)."""

    pipeline: str
    kind: AlertKind
    title: str
    text: str
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The alert as plain data, for a notifier's templates and for logs."""
        return asdict(self)


def _text(title: str, details: Sequence[str], where: str) -> str:
    lines = [title, *details]
    if where:
        lines.append(f"Where to look: {where}")
    return "\n".join(lines)


def failure_alert(pipeline: str, task_id: str, error: str, where: str) -> Alert:
    """The alert of a run whose ``task_id`` failed for good with ``error`` (its first lines;
    anything shaped like a Stripe key removed, as Stripe echoes masked keys in its errors)."""
    error = redact(error).strip() or "no error message"
    if len(error) > MAX_ERROR:
        error = error[: MAX_ERROR - 1] + "…"
    title = f"Pipeline {pipeline}: the run failed at task {task_id}"
    return Alert(pipeline, "failure", title, _text(title, [error], where), {"task_id": task_id})


def run_alerts(
    settings: Alerts, summary: Mapping[str, Any], previous: Mapping[str, Any] | None, where: str
) -> list[Alert]:
    """The alerts a finished upsert's ``summary`` calls for under ``settings``.

    ``previous``: the last successful run's row (``run_id``, ``extracted``), or None when there
    is none. A dry run's summary calls for none."""
    if summary.get("dry_run"):
        return []
    found = [
        _rejected_share(settings, summary, where),
        _extracted_swing(settings, summary, previous, where),
        _drift(settings, summary, where),
    ]
    return [alert for alert in found if alert is not None]


def _rejected_share(settings: Alerts, summary: Mapping[str, Any], where: str) -> Alert | None:
    threshold = settings.share("rejected_share")
    extracted = int(summary["extracted"])
    bad = int(summary["rejected_total"]) + int(summary["failed"])
    if threshold is None or not extracted or bad / extracted <= threshold:
        return None
    share = bad / extracted
    pipeline = summary["pipeline"]
    title = (
        f"Pipeline {pipeline}: {bad} of {extracted} profiles rejected or failed ({share:.1%}), "
        f"above alerts.rejected_share {settings.rejected_share}"
    )
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.get("rejected", {}).items()))
    details = [f"Rejected by kind: {kinds}" if kinds else "", f"Failed (transient): {summary['failed']}"]
    figures = {
        "extracted": extracted,
        "rejected": int(summary["rejected_total"]),
        "failed": int(summary["failed"]),
        "share": round(share, 4),
        "threshold": settings.rejected_share,
    }
    return Alert(pipeline, "rejected_share", title, _text(title, [d for d in details if d], where), figures)


def _extracted_swing(
    settings: Alerts, summary: Mapping[str, Any], previous: Mapping[str, Any] | None, where: str
) -> Alert | None:
    threshold = settings.share("extracted_swing")
    if threshold is None or previous is None or not int(previous["extracted"]):
        return None
    before, now = int(previous["extracted"]), int(summary["extracted"])
    change = (now - before) / before
    if now == before or abs(change) < threshold:
        return None
    pipeline = summary["pipeline"]
    direction = "dropped" if change < 0 else "rose"
    title = (
        f"Pipeline {pipeline}: extracted profiles {direction} {abs(change):.0%}, from {before} to {now} "
        f"(alerts.extracted_swing {settings.extracted_swing})"
    )
    details = [
        f"Compared with the last successful run, {previous['run_id']}.",
        "Check the source table and the filter before the next run syncs the change"
        + (" (and before profiles leave the audience)." if change < 0 else "."),
    ]
    figures = {"extracted": now, "previous": before, "previous_run_id": previous["run_id"], "change": change}
    return Alert(pipeline, "extracted_swing", title, _text(title, details, where), figures)


def _drift(settings: Alerts, summary: Mapping[str, Any], where: str) -> Alert | None:
    found = summary.get("reconcile") or {}
    drifted = int(found.get("drifted", 0))
    if not settings.on_drift or not drifted:
        return None
    pipeline = summary["pipeline"]
    title = f"Pipeline {pipeline}: {drifted} Stripe customers drifted from what this pipeline wrote"
    details = [
        f"Reconciliation ({found.get('reason', '')}): {found.get('repaired', 0)} set back, "
        f"{found.get('contested', 0)} left alone (fields another pipeline also writes).",
        "Someone changed or deleted them in Stripe (the dashboard, another integration).",
    ]
    figures = {k: found.get(k, 0) for k in ("drifted", "repaired", "contested")}
    return Alert(pipeline, "drift", title, _text(title, details, where), figures)


# -- the notifier: found, checked and called with what (no Airflow imported here) ----------------


def load_notifier(reference: str, search_path: Sequence[str | Path] = ()) -> Any:
    """The object ``alerts.notifier`` names (``package.module.Name`` or ``package.module:name``),
    imported with ``search_path`` first on ``sys.path`` (the spec's folder and its parent)."""
    module_name, _, name = reference.partition(":") if ":" in reference else reference.rpartition(".")
    added = [str(path) for path in search_path if str(path) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        error = traceback.format_exception_only(exc)[-1].strip()
        raise NotifierUnusable(f"cannot import module {module_name!r}: {error}") from None
    finally:
        for path in added:
            sys.path.remove(path)
    target = getattr(module, name, None)
    if target is None or not callable(target):
        raise NotifierUnusable(f"module {module_name!r} has no class or function {name!r}")
    return target


def call_arguments(settings: Alerts, target: Any, text: str) -> dict[str, Any]:
    """The keyword arguments ``target`` gets: ``args`` and the text as ``message_arg``.

    A notifier renders its templated arguments with the context: there the text goes in as
    ``{{ krenalis_alert.text }}``, so that braces in it are never read as a template."""
    arguments = dict(settings.args)
    if settings.message_arg is not None:
        templated = settings.message_arg in getattr(target, "template_fields", ())
        arguments[settings.message_arg] = TEMPLATED_TEXT if templated else text
    return arguments


def notifier_problem(settings: Alerts, search_path: Sequence[str | Path] = ()) -> str | None:
    """Why the notifier cannot be used with these arguments; None when it can (it is imported)."""
    try:
        target = load_notifier(settings.notifier, search_path)
    except NotifierUnusable as exc:
        return str(exc)
    arguments = call_arguments(settings, target, "")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # no signature to inspect (a builtin): trust it
        return None
    try:
        signature.bind(**arguments) if inspect.isclass(target) else signature.bind(None, **arguments)
    except TypeError as exc:
        how = (
            f"{settings.notifier}(**args)"
            if inspect.isclass(target)
            else f"{settings.notifier}(context, **args)"
        )
        takes = ", ".join(name for name in signature.parameters if name not in ("self", "context", "kwargs"))
        return (
            f"{how} cannot be called with {', '.join(sorted(arguments)) or 'no arguments'}: {exc}; "
            f"it takes {takes or 'no arguments'} (check args and message_arg)"
        )
    return None
