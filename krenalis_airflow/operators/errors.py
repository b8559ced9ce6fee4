"""The one place where krenalis_airflow's exceptions become Airflow task outcomes.

* ``TerminalError`` (spec and configuration errors, a key Stripe refuses, a run past
  ``export.max_rejected``) becomes ``AirflowFailException``: the task fails without retries, since
  a retry would fail the same way.
* Everything else propagates unchanged: ``RetryableError`` (429, 5xx, network) and any unexpected
  exception are retried by Airflow (the DAGs set ``retries``), and a retried upsert resends only
  what is still missing.

Per-record outcomes (``RecordError``) never get here: the steps turn them into rejections.
See ``krenalis_airflow.exceptions`` for the whole taxonomy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from krenalis_airflow.exceptions import TerminalError


@contextmanager
def airflow_outcome() -> Iterator[None]:
    """Run a step; a ``TerminalError`` fails the task at once, anything else propagates."""
    try:
        yield
    except TerminalError as exc:
        raise AirflowFailException(str(exc)) from exc
