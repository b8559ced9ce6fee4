"""Alerts decided without Airflow: which conditions fire for a run's summary and the last
successful run, what the message says, and how the notifier is found and called."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from krenalis_airflow.core.alerts import (
    TEMPLATED_TEXT,
    call_arguments,
    failure_alert,
    notifier_problem,
    run_alerts,
)
from krenalis_airflow.core.history import History
from krenalis_airflow.core.lineage import destination_uri, source_uri, stripe_writes, writes_alias
from krenalis_airflow.core.spec import Alerts, parse_spec

CHANNEL = "tests.core.fake_notifiers.ChannelNotifier"
WHERE = "DAG run http://airflow/dags/p/runs/r1"


def settings(**values: Any) -> Alerts:
    return Alerts(notifier=CHANNEL, args={"channel": "#ops"}, **values)


def summary(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pipeline": "eu_customers",
        "dry_run": False,
        "extracted": 200,
        "rejected": {"empty matching value": 8, "rejected by Stripe": 2},
        "rejected_total": 10,
        "failed": 2,
        "created": 5,
        "updated": 1,
        "unchanged": 180,
        "reconcile": None,
        "left": None,
    }
    return {**base, **values}


PREVIOUS = {"run_id": "scheduled__2026-11-29T10:00:00+00:00", "extracted": 200}


def kinds(alerts: list) -> list[str]:
    return [alert.kind for alert in alerts]


# -- rejected share ----------------------------------------------------------------------------


def test_rejected_share_counts_rejected_and_failed_against_the_extracted() -> None:
    # 10 rejected + 2 failed of 200 = 6 %: above 5 %, not above 6 %.
    [alert] = run_alerts(settings(rejected_share="5%"), summary(), PREVIOUS, WHERE)
    assert alert.kind == "rejected_share" and alert.pipeline == "eu_customers"
    assert alert.title == (
        "Pipeline eu_customers: 12 of 200 profiles rejected or failed (6.0%), above alerts.rejected_share 5%"
    )
    assert "empty matching value 8, rejected by Stripe 2" in alert.text
    assert alert.text.endswith(f"Where to look: {WHERE}")
    assert alert.figures == {"extracted": 200, "rejected": 10, "failed": 2, "share": 0.06, "threshold": "5%"}
    assert run_alerts(settings(rejected_share="6%"), summary(), PREVIOUS, WHERE) == []


def test_no_rejected_share_alert_without_a_threshold_or_profiles() -> None:
    assert run_alerts(settings(), summary(), PREVIOUS, WHERE) == []
    nothing = summary(extracted=0, rejected={}, rejected_total=0, failed=0)
    assert run_alerts(settings(rejected_share="0%"), nothing, PREVIOUS, WHERE) == []
    one = summary(rejected={"x": 1}, rejected_total=1, failed=0)
    assert kinds(run_alerts(settings(rejected_share="0%"), one, PREVIOUS, WHERE)) == ["rejected_share"]


# -- extracted swing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "fires", "words"),
    [
        (100, True, "dropped 50%, from 200 to 100"),
        (101, False, ""),
        (300, True, "rose 50%, from 200 to 300"),
        (299, False, ""),
        (0, True, "dropped 100%, from 200 to 0"),
    ],
)
def test_extracted_swing_against_the_last_successful_run(now: int, fires: bool, words: str) -> None:
    quiet = {"rejected": {}, "rejected_total": 0, "failed": 0}
    found = run_alerts(settings(extracted_swing="50%"), summary(extracted=now, **quiet), PREVIOUS, WHERE)
    assert kinds(found) == (["extracted_swing"] if fires else [])
    if fires:
        assert words in found[0].title and "alerts.extracted_swing 50%" in found[0].title
        assert PREVIOUS["run_id"] in found[0].text
        assert found[0].figures["previous"] == 200 and found[0].figures["extracted"] == now


def test_no_swing_without_a_base() -> None:
    swing = settings(extracted_swing="10%")
    assert run_alerts(swing, summary(extracted=5), None, WHERE) == []  # first run
    assert run_alerts(swing, summary(extracted=5), {"run_id": "r0", "extracted": 0}, WHERE) == []
    assert run_alerts(settings(extracted_swing="0%"), summary(), PREVIOUS, WHERE) == []  # unchanged


# -- drift, dry runs, failure ------------------------------------------------------------------


def test_drift_found_by_a_reconciliation() -> None:
    found = {"reason": "asked for (reconcile: true)", "reads": 1, "drifted": 3, "repaired": 2, "contested": 1}
    [alert] = run_alerts(settings(on_drift=True), summary(reconcile=found), PREVIOUS, WHERE)
    assert alert.kind == "drift"
    assert alert.title == "Pipeline eu_customers: 3 Stripe customers drifted from what this pipeline wrote"
    assert "2 set back, 1 left alone" in alert.text
    assert run_alerts(settings(on_drift=False), summary(reconcile=found), PREVIOUS, WHERE) == []
    calm = {**found, "drifted": 0, "repaired": 0, "contested": 0}
    assert run_alerts(settings(on_drift=True), summary(reconcile=calm), PREVIOUS, WHERE) == []
    assert run_alerts(settings(on_drift=True), summary(), PREVIOUS, WHERE) == []  # did not reconcile


def test_every_condition_at_once_and_none_for_a_dry_run() -> None:
    found = {"reason": "due", "reads": 1, "drifted": 1, "repaired": 1, "contested": 0}
    loud = settings(rejected_share="1%", extracted_swing="10%", on_drift=True)
    run = summary(extracted=100, reconcile=found)
    assert kinds(run_alerts(loud, run, PREVIOUS, WHERE)) == ["rejected_share", "extracted_swing", "drift"]
    assert run_alerts(loud, {**run, "dry_run": True}, PREVIOUS, WHERE) == []


def test_failure_alert_names_the_task_the_error_and_where_to_look() -> None:
    alert = failure_alert("eu_customers", "upsert", "RunFailed: 12 rejected exceed max_rejected", WHERE)
    assert alert.kind == "failure"
    assert alert.text.splitlines() == [
        "Pipeline eu_customers: the run failed at task upsert",
        "RunFailed: 12 rejected exceed max_rejected",
        f"Where to look: {WHERE}",
    ]
    keyed = failure_alert("p", "upsert", "Invalid API Key provided: sk_test_****abcd", WHERE)
    assert "sk_test" not in keyed.text and "Invalid API Key provided: <api key>" in keyed.text
    long = failure_alert("p", "extract", "x" * 2000, "")
    assert len(long.text.splitlines()[1]) == 500 and "Where to look" not in long.text
    assert alert.as_dict()["figures"] == {"task_id": "upsert"}


# -- the notifier ------------------------------------------------------------------------------


def test_the_text_goes_in_as_a_template_where_the_notifier_renders_its_argument() -> None:
    from tests.core.fake_notifiers import ChannelNotifier, page

    text = "Pipeline p: {{ not a template }}"
    assert call_arguments(settings(), ChannelNotifier, text) == {"channel": "#ops", "text": TEMPLATED_TEXT}
    function = Alerts(notifier="tests.core.fake_notifiers:page", args={"team": "x"}, message_arg="message")
    assert call_arguments(function, page, text) == {"team": "x", "message": text}
    silent = settings(message_arg=None)
    assert call_arguments(silent, ChannelNotifier, text) == {"channel": "#ops"}


@pytest.mark.parametrize(
    ("notifier", "args", "message_arg", "says"),
    [
        (CHANNEL, {"channel": "#ops"}, "text", None),
        ("tests.core.fake_notifiers:ChannelNotifier", {"channel": "#ops"}, "text", None),
        ("tests.core.fake_notifiers:page", {}, "message", None),
        (
            "tests.core.no_such_module.Notifier",
            {},
            "text",
            "cannot import module 'tests.core.no_such_module'",
        ),
        ("tests.core.fake_notifiers.Missing", {}, "text", "has no class or function 'Missing'"),
        ("tests.core.fake_notifiers.NOT_CALLABLE", {}, "text", "has no class or function 'NOT_CALLABLE'"),
        (CHANNEL, {}, "text", "missing a required argument: 'channel'"),
        (CHANNEL, {"channel": "#ops"}, "message", "unexpected keyword argument 'message'"),
        ("tests.core.fake_notifiers:page", {}, "text", "it takes message, team"),
    ],
)
def test_notifier_problems(notifier: str, args: dict, message_arg: str, says: str | None) -> None:
    alerts = Alerts.model_validate(
        {"notifier": notifier, "args": args, "message_arg": message_arg},
        context={"import_references": False},
    )
    problem = notifier_problem(alerts)
    assert problem is None if says is None else says in (problem or ""), problem


# -- lineage names and writes ------------------------------------------------------------------

LINEAGE_SPEC = """\
id: eu_customers
source: {conn_id: warehouse, table: crm.customer_profiles, key: profile_id}
destination: {conn_id: stripe eu}
export:
  matching: {property: email, stripe: email}
transformation:
  mapping: {name: first_name}
"""


def test_asset_uris_name_connections_and_tables() -> None:
    spec = parse_spec(LINEAGE_SPEC)
    assert destination_uri(spec) == "x-stripe://stripe%20eu/customers"
    assert source_uri(spec) == "x-sql://warehouse/crm.customer_profiles"
    assert writes_alias(spec) == "krenalis/eu_customers/stripe-writes"
    query = parse_spec(LINEAGE_SPEC.replace("table: crm.customer_profiles", "query: 'select * from people'"))
    assert source_uri(query) == "x-sql://warehouse/query/eu_customers"


def test_stripe_writes_counts_every_change_made_in_stripe() -> None:
    assert stripe_writes(summary()) == 6
    quiet = summary(created=0, updated=0)
    assert stripe_writes(quiet) == 0
    assert stripe_writes({**quiet, "reconcile": {"repaired": 2}}) == 2
    assert stripe_writes({**quiet, "left": {"cleared": 1, "deleted": 3}}) == 4
    assert stripe_writes(summary(dry_run=True)) == 0


# -- the last successful run -------------------------------------------------------------------


def test_last_success_skips_failed_runs_and_the_run_asking(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    history = History(conn, "?", "pipe", "t_")
    history.ensure_tables()
    assert history.last_success("r3") is None
    counts = {
        "full_resync": False,
        "filtered_out": 0,
        "transformed": 0,
        "rejected": {},
        "duplicates": 0,
        "created": 0,
        "updated": 0,
        "unchanged": 0,
        "skipped": {},
        "failed": 0,
        "api_calls": {},
    }
    history.record_run("r1", "", {**counts, "extracted": 100}, "success")
    history.record_run("r2", "", {**counts, "extracted": 90}, "failed: too many rejections")
    history.record_run("r3", "", {**counts, "extracted": 40}, "success")
    other = History(conn, "?", "other", "t_")
    other.record_run("r9", "", {**counts, "extracted": 7}, "success")
    found = history.last_success("r3")
    assert found is not None and (found["run_id"], found["extracted"]) == ("r1", 100)
    latest = history.last_success("r4")
    assert latest is not None and (latest["run_id"], latest["extracted"]) == ("r3", 40)
    conn.close()
