"""The upsert step sends the alerts its summary calls for through the spec's notifier, a failing
notifier never fails the run, and the destination's asset event is emitted only for a write."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from krenalis_airflow.operators import steps
from tests.dags.recording_notifier import read_alerts
from tests.operators.test_steps import SAMPLE, run_steps  # noqa: F401  (the fixture)


def alerting(path: Path, notifier: str = "RecordingNotifier", share: str = "0%") -> str:
    args = f'{{path: "{path}"}}' if notifier == "RecordingNotifier" else "{}"
    return (
        SAMPLE.read_text()
        + f"\nalerts:\n  notifier: tests.dags.recording_notifier.{notifier}\n  args: {args}\n"
        + f"  rejected_share: {share}\n"
    )


def test_the_upsert_sends_the_alerts_its_summary_calls_for(run_steps, tmp_path: Path) -> None:  # noqa: F811
    sent = tmp_path / "alerts.jsonl"
    run, _ = run_steps(alerting(sent))
    summary = steps.upsert(run)
    assert summary["outcome"] == "success" and summary["rejected_total"] > 0
    [alert] = read_alerts(sent)
    assert alert["kind"] == "rejected_share"
    assert alert["text"].startswith(f"Pipeline sample_customers: {summary['rejected_total']} of ")
    assert (
        "summary file://" in alert["text"] and "table krenalis_runs on connection warehouse" in alert["text"]
    )


def test_a_quiet_run_sends_nothing(run_steps, tmp_path: Path) -> None:  # noqa: F811
    sent = tmp_path / "alerts.jsonl"
    run, _ = run_steps(alerting(sent, share="50%"))
    steps.upsert(run)
    assert read_alerts(sent) == []


def test_a_failing_notifier_never_fails_the_run(
    run_steps,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run, _ = run_steps(alerting(tmp_path / "unused", notifier="FailingNotifier"))
    with caplog.at_level(logging.WARNING, logger="test_steps"):
        summary = steps.upsert(run)
    assert summary["outcome"] == "success" and summary["created"] > 0
    assert (
        "Could not send the rejected_share alert through tests.dags.recording_notifier.FailingNotifier "
        "(the run is not affected): ConnectionError: notification service unreachable"
    ) in caplog.text


def test_the_asset_event_is_emitted_only_for_a_run_that_wrote() -> None:
    from airflow.sdk import Asset, AssetAlias
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from krenalis_airflow.core.spec import load_spec
    from krenalis_airflow.operators.lineage import record_writes

    spec = load_spec(SAMPLE)
    alias = AssetAlias("krenalis/sample_customers/stripe-writes")
    quiet = {"dry_run": False, "created": 0, "updated": 0, "unchanged": 5, "extracted": 5}
    events = OutletEventAccessors()
    assert record_writes({"outlet_events": events}, spec, quiet) is False
    assert events[alias].asset_alias_events == []
    assert record_writes({"outlet_events": events}, spec, {**quiet, "dry_run": True, "created": 3}) is False
    assert record_writes({"outlet_events": events}, spec, {**quiet, "updated": 2}) is True
    [event] = events[alias].asset_alias_events
    assert event.dest_asset_key.uri == Asset("x-stripe://stripe_default/customers").uri
    assert event.extra == {"pipeline": "sample_customers", "written": 2, "created": 0, "updated": 2} | {
        "unchanged": 5,
        "extracted": 5,
    }
