"""The one mapping from the package's exceptions to Airflow outcomes."""

from __future__ import annotations

import re

import pytest
from airflow.sdk.exceptions import AirflowFailException

from krenalis_airflow.exceptions import (
    ConnectionUnusable,
    RetryableSyncError,
    RunFailed,
    SpecError,
    SpecProblem,
    TerminalSyncError,
    TransformationUnusable,
)
from krenalis_airflow.operators.errors import airflow_outcome

TERMINAL = [
    SpecError("pipelines/a.yaml", [SpecProblem("source.key", "no such column", 3)]),
    TransformationUnusable("cannot import module 'nope': ModuleNotFoundError"),
    ConnectionUnusable("connection 'x' is a HttpHook, not a SQL connection"),
    TerminalSyncError("Stripe rejected the API key (401)"),
    RunFailed("failed: 3 rejected + 0 failed profiles exceed export.max_rejected"),
]


@pytest.mark.parametrize("error", TERMINAL, ids=lambda error: type(error).__name__)
def test_terminal_errors_fail_the_task_without_retries(error: Exception) -> None:
    with pytest.raises(AirflowFailException, match=f"^{re.escape(str(error))}$") as raised, airflow_outcome():
        raise error
    assert raised.value.__cause__ is error


@pytest.mark.parametrize("error", [RetryableSyncError("HTTP 503"), OSError("disk full")], ids=repr)
def test_anything_else_propagates_for_airflow_to_retry(error: Exception) -> None:
    with pytest.raises(type(error)) as raised, airflow_outcome():
        raise error
    assert raised.value is error
