"""Alerts sent through the Airflow notifier a spec names (``alerts:``; decisions in
``core/alerts.py``).

Two moments. **A failure** reaches ``FailureAlert``, the ``on_failure_callback`` of each task of
a pipeline with ``alerts.on_failure``: task callbacks run in the task's own process once the task
has failed for good (not on a failure Airflow will retry), with the task's context, connections
and log; the dag-processor runs them only for a task whose process died. (A DAG-level callback
would run in the dag-processor on every failed run: away from the task's log and, in a deployment
whose workers alone hold the notifier's connection, unable to send.) Only the failing task calls
it: the tasks after it end ``upstream_failed``, which calls nothing, so a failed run alerts once.
**The figures** (rejected share, extracted swing, drift) are checked by the upsert step once its
summary is known (``run_alerts``), then sent, before the step fails on ``max_rejected`` if it does.

Parsing stays cheap: a ``FailureAlert`` holds the spec's plain settings; the notifier's module
(Slack's, SMTP's, …) is imported when an alert is sent, in the task. Sending never fails or hides
the run: a notifier that cannot be imported, built or called is logged as a warning, and the run
goes on (or fails) as it would have.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from krenalis_airflow.core.alerts import Alert, call_arguments, failure_alert, load_notifier, run_alerts
from krenalis_airflow.core.spec import Alerts, PipelineSpec

log = logging.getLogger(__name__)


def search_path(spec_file: str) -> tuple[Path, ...]:
    """Where ``alerts.notifier`` is imported from besides ``sys.path``: the spec's folder and its
    parent (the DAGs folder), as for ``transformation.python`` references."""
    folder = Path(spec_file).resolve().parent
    return folder, folder.parent


def send(
    settings: Alerts,
    alerts: Sequence[Alert],
    context: Mapping[str, Any],
    logger: logging.Logger,
    spec_file: str = "<spec>",
) -> int:
    """Send each alert through the notifier; returns how many were sent. Never raises.

    The notifier sees the task's context plus ``krenalis_alert`` (the alert as a dict: ``title``,
    ``text``, ``kind``, ``figures``), so its templated arguments may use ``{{ krenalis_alert.title }}``."""
    sent = 0
    for alert in alerts:
        logger.warning("Alert (%s): %s", alert.kind, alert.text)
        try:
            target = load_notifier(settings.notifier, search_path(spec_file))
            arguments = call_arguments(settings, target, alert.text)
            alert_context = {**context, "krenalis_alert": alert.as_dict()}
            if inspect.isclass(target):
                notifier: Any = target(**arguments)  # a BaseNotifier renders its templates, then notifies
                notifier(alert_context)
            else:
                target(alert_context, **arguments)
        except Exception as exc:  # a notifier must never fail or hide the run
            logger.warning(
                "Could not send the %s alert through %s (the run is not affected): %s: %s",
                alert.kind,
                settings.notifier,
                type(exc).__name__,
                exc,
            )
            continue
        sent += 1
    return sent


def where(context: Mapping[str, Any], *extra: str) -> str:
    """Where to look: the DAG run in the UI, the task's log, and ``extra`` (a summary file, a table)."""
    ti = context.get("ti")
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    dag_id = getattr(ti, "dag_id", None)
    places = []
    if dag_id and run_id:
        places.append(f"DAG run {_base_url()}/dags/{dag_id}/runs/{quote(str(run_id), safe='')}")
    if (url := getattr(ti, "log_url", None)) is not None:
        places.append(f"task log {url}")
    return "; ".join([*places, *extra])


def _base_url() -> str:
    try:
        from airflow.sdk.configuration import conf

        return str(conf.get("api", "base_url", fallback="http://localhost:8080/")).rstrip("/")
    except Exception:  # pragma: no cover - configuration unreadable: a relative link is still a hint
        return ""


class FailureAlert:
    """``on_failure_callback`` of a pipeline's tasks: sends the failure alert (``alerts.on_failure``).

    Built at parse time from plain values only; imports the notifier when it fires."""

    def __init__(self, spec: PipelineSpec, spec_file: str) -> None:
        if spec.alerts is None:
            raise ValueError(f"pipeline {spec.id} has no alerts block")
        self.pipeline = spec.id
        self.settings = spec.alerts
        self.spec_file = spec_file

    def __call__(self, context: Mapping[str, Any]) -> None:
        """Send the failure alert of the task in ``context``; never raises."""
        ti = context.get("ti")
        task_id = str(getattr(ti, "task_id", "?"))
        error = context.get("exception")
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "")
        alert = failure_alert(self.pipeline, task_id, message, where(context))
        send(self.settings, [alert], context, log, self.spec_file)

    def __repr__(self) -> str:
        """How the callback appears in Airflow's logs."""
        return f"FailureAlert({self.pipeline!r} via {self.settings.notifier})"


def run_alerts_of(
    spec: PipelineSpec,
    run_id: str,
    summary: Mapping[str, Any],
    state: Any,
    placeholder: str,
    summary_file: str,
    logger: logging.Logger,
) -> tuple[list[Alert], dict[str, Any]]:
    """The alerts a finished upsert calls for, and the context to send them with.

    ``state``: an open DB-API connection to the state store, where the last successful run is
    read from ``<prefix>runs`` (only when ``extracted_swing`` is set). Like sending, deciding
    never fails the run: an error (the state store gone meanwhile) is logged and alerts nothing."""
    settings = spec.alerts
    if settings is None or summary.get("dry_run"):
        return [], {}
    context = _current_context()
    try:
        previous = None
        if settings.extracted_swing is not None:
            from krenalis_airflow.core.history import History  # msgspec, via records: not at parse time

            history = History(state, placeholder, spec.id, spec.state.table_prefix)
            previous = history.last_success(run_id)
        runs = f"table {spec.state.table_prefix}runs on connection {spec.state_conn_id}"
        found = run_alerts(settings, summary, previous, where(context, f"summary {summary_file}", runs))
    except Exception as exc:  # the run succeeded or failed on its own: never change that here
        logger.warning(
            "Could not check the alert conditions (no alert sent): %s: %s", type(exc).__name__, exc
        )
        return [], context
    return found, context


def _current_context() -> dict[str, Any]:
    """The running task's context; empty outside a task (the CLI, tests calling a step)."""
    try:
        from airflow.sdk import get_current_context

        return dict(get_current_context())
    except Exception:
        return {}
