"""The four steps chained as the DAG chains them, on an SQLite warehouse and localstripe: what a
run leaves in its folder, and what an upsert cleared after success says."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from krenalis_airflow.core.sample_data import write_sqlite_warehouse
from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.operators import steps
from krenalis_airflow.operators.storage import keep_files
from tests.support.fault_proxy import FaultProxy
from tests.support.localstripe_process import STRIPE_TEST_KEY

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"
PROFILE_FILES = {"profiles.jsonl", "records.jsonl", "deduped.jsonl"}


@pytest.fixture
def run_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stripe_conn_env: str
) -> Callable[..., tuple[steps.StepRun, dict[str, Any]]]:
    warehouse = tmp_path / "warehouse.sqlite"
    write_sqlite_warehouse(warehouse, profiles=150)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    monkeypatch.delenv("KRENALIS_KEEP_FILES", raising=False)

    def run(spec_text: str | None = None) -> tuple[steps.StepRun, dict[str, Any]]:
        spec_file = SAMPLE
        if spec_text is not None:
            spec_file = tmp_path / "pipelines" / "sample_customers.yaml"
            spec_file.parent.mkdir(exist_ok=True)
            spec_file.write_text(spec_text)
        folder = tmp_path / "storage" / "run"
        folder.mkdir(parents=True, exist_ok=True)
        run = steps.StepRun(
            spec=load_spec(spec_file),
            spec_file=str(spec_file),
            folder=ObjectStoragePath(f"file://{folder}"),
            upstream={},
            dry_run=False,
            full_resync=False,
            log=logging.getLogger("test_steps"),
        )
        upstream: dict[str, Any] = {}
        for step in (steps.extract, steps.transform, steps.dedupe):
            upstream = step(dataclasses.replace(run, upstream=upstream))
        return dataclasses.replace(run, upstream=upstream), upstream

    return run


def names(run: steps.StepRun) -> set[str]:
    return {path.name for path in Path(run.folder.path).iterdir()}


def test_a_successful_run_removes_its_profile_files_and_keeps_summary_and_rejections(run_steps) -> None:
    run, _ = run_steps()
    summary = steps.upsert(run)
    assert summary["created"] > 10 and summary["outcome"] == "success"
    assert summary["retried"] == {}  # localstripe never answers 429
    left = names(run)
    assert not left & PROFILE_FILES
    assert {
        "summary.json",
        "rejected-transform.jsonl",
        "rejected-dedupe.jsonl",
        "rejected-upsert.jsonl",
    } <= left

    with pytest.raises(AirflowFailException, match=r"deduped\.jsonl is gone: .* clear the whole DAG run"):
        steps.upsert(run)  # the upsert task cleared alone, after its success


def test_keep_files_keeps_them(run_steps, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "true")
    run, _ = run_steps()
    steps.upsert(run)
    assert names(run) >= PROFILE_FILES


def test_a_failed_run_keeps_its_files_for_the_retry(run_steps) -> None:
    text = SAMPLE.read_text().replace(
        "  duplicate_customers: reject\n", "  duplicate_customers: reject\n  max_rejected: 0\n"
    )
    run, upstream = run_steps(text)
    assert upstream["rejected"], "the sample warehouse has profiles to reject"
    with pytest.raises(AirflowFailException, match=r"exceed export\.max_rejected"):
        steps.upsert(run)
    assert names(run) >= PROFILE_FILES


@pytest.mark.parametrize(("value", "kept"), [("true", True), ("1", True), ("False", False), ("no", False)])
def test_keep_files_setting(monkeypatch: pytest.MonkeyPatch, value: str, kept: bool) -> None:
    monkeypatch.setenv("KRENALIS_KEEP_FILES", value)
    assert keep_files() is kept


def test_a_bad_keep_files_setting_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "sometimes")
    with pytest.raises(
        ValueError, match=r"KRENALIS_KEEP_FILES / \[krenalis\] keep_files must be true or false"
    ):
        keep_files()


def test_a_bad_keep_files_setting_fails_the_upsert_before_anything_is_sent(
    run_steps, monkeypatch: pytest.MonkeyPatch, stripe_client
) -> None:
    run, _ = run_steps()
    monkeypatch.setenv("KRENALIS_KEEP_FILES", "sometimes")
    with pytest.raises(ValueError, match="keep_files must be true or false"):
        steps.upsert(run)
    assert stripe_client.v1.customers.list(params={"limit": 1}).data == []
    assert names(run) >= PROFILE_FILES


def test_the_summary_counts_the_calls_retried_after_transient_errors(
    run_steps, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = run_steps()
    conn = {"conn_type": "stripe", "password": STRIPE_TEST_KEY, "host": fault_proxy.url}
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(conn))
    fault_proxy.burst_5xx(2, status=503)
    fault_proxy.fail_next(1, "rate_limit")
    summary = steps.upsert(run)
    assert summary["retried"] == {"HTTP 503": 2, "rate limited": 1}
    assert (summary["failed"], summary["outcome"]) == (0, "success")
    assert summary["created"] > 10
