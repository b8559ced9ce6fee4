"""Airflow in the loop, as people meet it: a real api-server, scheduler and dag-processor
(LocalExecutor, metadata on PostgreSQL) with the provider installed and a folder of specs, driven
through the REST API the UI uses, and through the UI itself in headless Chromium.

One deployment serves the whole module (it takes ~15 s to start). Its pipelines select disjoint
countries of one sample warehouse and write to one localstripe:

* ``sample_customers`` — the shipped sample spec, manual runs only; the REST tests trigger it with
  params.
* ``us_every_minute`` — enabled, schedule ``* * * * *``: runs on its schedule, then is paused (the
  UI's toggle) and must not run again.
* ``ch_switched_on`` — ``enabled: false`` with schedule ``* * * * *``: not scheduled, and a run
  triggered through the API skips every step; then its YAML says ``enabled: true`` and it runs on
  its schedule with no other action.
* ``gb_customers`` — manual runs; paused through the API, then the browser test switches it on
  and triggers it.
* ``broken_pipeline.yaml`` — does not load: an unscheduled placeholder DAG, and an import error.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from tests.e2e import specs
from tests.e2e.browser import chromium, require_chromium
from tests.e2e.conftest import SPEC_CHECK, Site, deployed
from tests.e2e.deployment import AirflowDeployment

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

SAMPLE = "sample_customers"
SCHEDULED = "us_every_minute"
SWITCHED_ON = "ch_switched_on"
BROWSER = "gb_customers"
BROKEN = "broken_pipeline"
EVERY_MINUTE = '"* * * * *"'
SPECS = {
    "sample_customers.yaml": specs.sample(schedule="null"),
    "us_every_minute.yaml": specs.by_country(
        SCHEDULED,
        "US",
        description="US customers, every minute",
        schedule=EVERY_MINUTE,
        tags=("e2e", "scheduled"),
    ),
    "ch_switched_on.yaml": specs.by_country(
        SWITCHED_ON, "CH", description="Swiss customers", enabled=False, schedule=EVERY_MINUTE
    ),
    "gb_customers.yaml": specs.by_country(BROWSER, "GB", description="UK customers, switched on from the UI"),
    specs.BROKEN_FILE: specs.BROKEN,
}
DISABLED = (
    "pipeline ch_switched_on is disabled by its spec (enabled: false in {path}); set enabled: true to run it"
)
PAUSE_SLACK = 5.0  # seconds a scheduler loop already under way may still act after a pause


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def tags(dag: dict[str, Any]) -> set[str]:
    return {tag["name"] for tag in dag["tags"]}


def chain(api: Any, dag_id: str) -> list[str]:
    """The DAG's tasks in dependency order (each has at most one downstream task)."""
    tasks = {t["task_id"]: t["downstream_task_ids"] for t in api.get(f"/api/v2/dags/{dag_id}/tasks")["tasks"]}
    [first] = set(tasks) - {d for downstream in tasks.values() for d in downstream}
    order = [first]
    while tasks[order[-1]]:
        [following] = tasks[order[-1]]
        order.append(following)
    return order


@dataclass
class Local:
    airflow: AirflowDeployment
    site: Site
    paused_at: float | None = None
    switched_on_at: float | None = None

    def profile_ids(self, *countries: str) -> set[str]:
        marks = ", ".join("?" * len(countries))
        with sqlite3.connect(self.site.warehouse) as db:
            rows = db.execute(
                f"SELECT profile_id FROM customer_profiles WHERE country IN ({marks})", countries
            )
            return {key for (key,) in rows}

    def run_to_end(
        self, dag_id: str, conf: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Trigger ``dag_id`` with ``conf``; wait for it; return the run and the upsert summary."""
        api = self.airflow.api
        run_id = api.trigger(dag_id, conf)
        run = self.airflow.wait_for_run(dag_id, run_id)
        assert run["state"] == "success", self.airflow.describe_run(dag_id, run_id)
        return run, api.xcom(dag_id, run_id, "upsert")

    def first_scheduled_run(self) -> dict[str, Any]:
        def succeeded() -> dict[str, Any] | None:
            runs = [r for r in self.airflow.api.runs(SCHEDULED) if r["run_type"] == "scheduled"]
            return next((r for r in runs if r["state"] == "success"), None)

        return self.airflow.wait(f"a scheduled run of {SCHEDULED} to succeed", succeeded, timeout=240)

    def scheduled_task_instances(self) -> list[dict[str, Any]]:
        """Every task instance of every run of the every-minute pipeline."""
        found = self.airflow.api.get(f"/api/v2/dags/{SCHEDULED}/dagRuns/~/taskInstances", limit=100)
        return list(found["task_instances"])

    def pause_scheduled(self) -> float:
        """Pause the every-minute pipeline (once), after its first scheduled run succeeded.

        A run still under way stays "running" and starts no further task while the DAG is paused
        (Airflow does not schedule paused DAGs' runs); a task already started may finish.
        """
        if self.paused_at is None:
            self.first_scheduled_run()
            assert self.airflow.api.set_paused(SCHEDULED, True)["is_paused"] is True
            self.paused_at = time.time()
            self.airflow.wait(
                f"{SCHEDULED}'s started tasks to end",
                lambda: (
                    not [t for t in self.scheduled_task_instances() if t["state"] in ("queued", "running")]
                ),
                timeout=120,
            )
        return self.paused_at


@pytest.fixture(scope="module")
def local(request: pytest.FixtureRequest, site: Site) -> Iterator[Local]:
    site.write_specs(SPECS)
    env = {"KRENALIS_STORAGE_BASE": f"file://{site.root}/storage"}
    with deployed(request, site, name="local-executor", env=env) as airflow:
        airflow.wait_for_dags([SAMPLE, SCHEDULED, SWITCHED_ON, BROWSER, BROKEN])
        yield Local(airflow, site)


def test_pipelines_appear_as_dags_with_description_tags_and_schedule(local: Local) -> None:
    api = local.airflow.api
    dags = api.dags()
    assert set(dags) == {SAMPLE, SCHEDULED, SWITCHED_ON, BROWSER, BROKEN}
    for dag in dags.values():
        assert dag["relative_fileloc"] == "krenalis_pipelines.py"
        assert dag["has_import_errors"] is False and dag["is_stale"] is False, dag

    scheduled = dags[SCHEDULED]
    assert scheduled["description"] == "US customers, every minute"
    assert tags(scheduled) == {"krenalis", "stripe", "e2e", "scheduled"}
    assert (scheduled["timetable_summary"], scheduled["timetable_description"]) == (
        "* * * * *",
        "Every minute",
    )
    assert scheduled["is_paused"] is False  # enabled: true → switched on when first seen

    sample = dags[SAMPLE]
    assert sample["description"].startswith(
        "Paying customers in Italy, France, Germany, Spain and the Netherlands"
    )
    assert tags(sample) == {"krenalis", "stripe"}
    assert sample["is_paused"] is False and sample["timetable_summary"] is None  # manual runs only
    assert sample["owners"] == ["krenalis"]

    # enabled: false → listed, flagged, without a schedule, and not paused: the schedule alone
    # carries `enabled`, so that `enabled: true` is all it takes to turn it on again.
    off = dags[SWITCHED_ON]
    assert off["description"] == "Disabled in spec — Swiss customers"
    assert tags(off) == {"krenalis", "stripe", "disabled", "e2e"}
    assert off["is_paused"] is False and off["timetable_summary"] is None

    details = api.get(f"/api/v2/dags/{SAMPLE}/details")
    assert "Spec file: `" in details["doc_md"] and "sample_customers.yaml`" in details["doc_md"]
    assert {"dry_run", "full_resync"} <= set(details["params"])
    assert chain(api, SAMPLE) == ["extract", "transform", "dedupe", "upsert"]


def test_broken_spec_is_flagged_while_the_others_stay_healthy(local: Local) -> None:
    api = local.airflow.api
    broken = api.dags()[BROKEN]
    assert broken["is_paused"] is False and "broken-spec" in tags(broken)  # unscheduled instead
    assert broken["description"] == f"BROKEN SPEC {specs.BROKEN_FILE}: fix it (see docs)"
    assert specs.BROKEN_MESSAGE in api.get(f"/api/v2/dags/{BROKEN}/details")["doc_md"]

    # The factory file never raises, so it has no import error (one would hide every pipeline);
    # dags/krenalis_spec_check.py reports the broken spec as *its* import error.
    errors = local.airflow.wait(
        "the broken spec's import error", lambda: api.import_errors() or None, timeout=120
    )
    by_file = {error["filename"]: error for error in errors}
    assert set(by_file) == {SPEC_CHECK}
    assert specs.BROKEN_MESSAGE in by_file[SPEC_CHECK]["stack_trace"]
    dags = api.dags()
    assert len(dags) == 5 and not any(d["has_import_errors"] or d["is_stale"] for d in dags.values())


def test_a_spec_disabled_pipeline_triggered_through_the_api_does_nothing(local: Local) -> None:
    """ "Run now" on a disabled pipeline: the run starts, every step skips, nothing is written.

    Then its YAML says ``enabled: true``; ``test_enabling_the_spec_…`` below sees the schedule
    take over (waiting here would idle the module)."""
    api = local.airflow.api
    run_id = api.trigger(SWITCHED_ON)
    run = local.airflow.wait_for_run(SWITCHED_ON, run_id, timeout=120)
    states = {task: ti["state"] for task, ti in api.task_instances(SWITCHED_ON, run_id).items()}
    assert run["state"] == "success" and states == dict.fromkeys(chain(api, SWITCHED_ON), "skipped"), states
    path = local.site.pipelines / f"{SWITCHED_ON}.yaml"
    assert DISABLED.format(path=path) in api.task_log(SWITCHED_ON, run_id, "extract")
    assert local.site.customers(SWITCHED_ON) == {}  # no Stripe write (nor read: extract skipped)
    assert [r["run_type"] for r in api.runs(SWITCHED_ON)] == ["manual"]  # and none on its schedule

    local.site.write_specs({path.name: path.read_text().replace("enabled: false", "enabled: true")})
    local.switched_on_at = time.time()


def test_schedule_fires_while_the_pipeline_is_on(local: Local) -> None:
    run = local.first_scheduled_run()
    assert run["triggered_by"] == "timetable" and run["conf"] == {}
    us = local.profile_ids("US")
    assert set(local.site.customers(SCHEDULED)) == us  # every US profile, nothing else
    first = local.airflow.api.xcom(SCHEDULED, run["dag_run_id"], "upsert")
    assert first["extracted"] == len(us) and first["failed"] == 0
    local.pause_scheduled()


def test_trigger_with_params(local: Local) -> None:
    api = local.airflow.api
    assert api.dags()[SAMPLE]["is_paused"] is False
    assert api.runs(SAMPLE) == []

    dry_run, dry = local.run_to_end(SAMPLE, {"dry_run": True})
    assert dry_run["conf"] == {"dry_run": True} and dry_run["run_type"] == "manual"
    assert dry["dry_run"] is True and dry["created"] > 50 and dry["failed"] == 0
    assert not {"customers.create", "customers.update"} & set(dry["api_calls"])
    assert local.site.customers(SAMPLE) == {}  # a dry run writes nothing

    _, first = local.run_to_end(SAMPLE)
    assert first["dry_run"] is False and first["created"] == dry["created"]
    customers = local.site.customers(SAMPLE)
    assert len(customers) == first["created"]
    assert set(customers) <= local.profile_ids(*specs.SAMPLE_COUNTRIES)
    with sqlite3.connect(local.site.warehouse) as db:
        emails = dict(db.execute("SELECT profile_id, lower(trim(email)) FROM customer_profiles"))
    assert all(c["email"].strip().lower() == emails[key] for key, c in customers.items())

    resync_run, resync = local.run_to_end(SAMPLE, {"full_resync": True})
    assert resync_run["conf"] == {"full_resync": True}
    assert resync["full_resync"] is True
    assert (resync["created"], resync["updated"], resync["unchanged"]) == (0, 0, first["created"])
    assert set(resync["api_calls"]) == {"customers.list"}  # compared with Stripe, wrote nothing
    for run in api.runs(SAMPLE):
        tis = api.task_instances(SAMPLE, run["dag_run_id"])
        tries = {task: ti["try_number"] for task, ti in tis.items()}
        assert tries == dict.fromkeys(tis, 1)  # no retry hid a failure


def test_stripe_connection_type_and_form_fields_in_connection_metadata(local: Local) -> None:
    meta = {m["connection_type"]: m for m in local.airflow.api.get("/ui/connections/hook_meta")}
    stripe_meta = meta["stripe"]
    assert stripe_meta["hook_name"] == "Stripe"
    assert stripe_meta["hook_class_name"] == "krenalis_airflow.hooks.stripe.StripeHook"
    fields = stripe_meta["standard_fields"]
    assert fields["password"]["title"] == "API key" and fields["password"]["hidden"] is False
    assert fields["host"]["title"] == "API base URL"
    assert all(fields[name]["hidden"] for name in ("login", "port"))
    extra = stripe_meta["extra_fields"]
    assert set(extra) == {"max_network_retries", "timeout", "rate_limit", "endpoint_rate_limit"}
    assert extra["max_network_retries"]["schema"]["title"] == "Max network retries"
    assert extra["max_network_retries"]["value"] == 4


def test_in_the_browser_switch_on_trigger_and_watch_the_run_turn_green(local: Local) -> None:
    require_chromium()
    api = local.airflow.api
    assert api.set_paused(BROWSER, True)["is_paused"] is True  # operations switched it off
    with chromium(local.airflow.url, "local-executor") as ui:
        ui.open("/")  # → the simple auth manager's sign-in page
        ui.until("the sign-in form", lambda: ui.css("input[name=username]")).send_keys("admin")
        ui.css("input[name=password]").send_keys(local.airflow.password)
        ui.screenshot("sign-in")
        ui.css("button[type=submit]").click()
        ui.until("signed in", lambda: "/auth/login" not in ui.driver.current_url)

        ui.open("/dags")
        card_xpath = f"//div[@data-testid='dag-card'][.//a[@data-testid='dag-id' and .='{BROWSER}']]"
        ui.until("the pipelines listed", lambda: ui.xpath(card_xpath))
        listed = {e.text for e in ui.driver.find_elements("css selector", "[data-testid=dag-id]")}
        assert {SAMPLE, SCHEDULED, SWITCHED_ON, BROWSER, BROKEN} <= listed
        ui.screenshot("pipelines")

        ui.css("button[aria-label='Dag Import Error']").click()
        ui.until("the import error dialog", lambda: SPEC_CHECK in ui.css("[role=dialog]").text)
        ui.xpath(f"//*[@role='dialog']//button[contains(., '{SPEC_CHECK}')]").click()  # unfold it
        ui.until("the spec error in the dialog", lambda: "adress.city" in ui.css("[role=dialog]").text)
        ui.screenshot("import-error")
        ui.css("[role=dialog] button[aria-label=Close]").click()
        ui.until("the dialog closed", lambda: not ui.driver.find_elements("css selector", "[role=dialog]"))

        card = ui.xpath(card_xpath)
        switch = ui.css("[data-testid=toggle-pause]", card)
        assert switch.get_attribute("data-state") == "unchecked"
        switch.click()

        def switched_on() -> bool:
            toggle = ui.css("[data-testid=toggle-pause]", ui.xpath(card_xpath))
            return toggle.get_attribute("data-state") == "checked"

        ui.until("the switch on", switched_on)
        local.airflow.wait(
            f"{BROWSER} unpaused", lambda: api.dags()[BROWSER]["is_paused"] is False, timeout=30
        )
        ui.screenshot("switched-on")

        ui.css("[data-testid=trigger-dag-button]", ui.xpath(card_xpath)).click()
        # the form with the pipeline's params (they load after the form itself)
        ui.until("the run parameters", lambda: "full_resync" in ui.css("[role=dialog]").text)
        assert "Compute everything, write nothing to Stripe." in ui.css("[role=dialog]").text
        submit = ui.until(
            "the trigger button", lambda: (b := ui.css("[data-testid=trigger-dag-submit]")).is_enabled() and b
        )
        ui.screenshot("trigger-form")
        submit.click()

        [run] = local.airflow.wait(f"the run of {BROWSER}", lambda: api.runs(BROWSER), timeout=30)
        assert run["run_type"] == "manual" and run["triggering_user_name"] == "admin"
        ui.open(f"/dags/{BROWSER}/runs/{run['dag_run_id']}")

        refreshed = [time.monotonic()]

        def green() -> bool:
            state = ui.css("[data-testid=state-badge]").text.strip().lower()  # the run's, in the header
            if state in ("failed", "upstream_failed"):
                raise AssertionError(local.airflow.describe_run(BROWSER, run["dag_run_id"]))
            if state != "success" and time.monotonic() - refreshed[0] > 20:
                ui.driver.refresh()  # a fallback: the page refreshes itself while the run is active
                refreshed[0] = time.monotonic()
            return state == "success"

        ui.until("the run to turn green", green, timeout=300, every=1)
        ui.screenshot("run-success")
        assert len(ui.taken) >= 6 and all(path.stat().st_size > 0 for path in ui.taken)

    assert api.run(BROWSER, run["dag_run_id"])["state"] == "success"
    assert set(local.site.customers(BROWSER)) == local.profile_ids("GB")


def test_paused_pipeline_does_not_run_on_its_schedule(local: Local) -> None:
    api = local.airflow.api
    paused_at = local.pause_scheduled()
    # Wait (if the tests above took less) until a full schedule tick has passed after the pause.
    tick = math.ceil((paused_at + PAUSE_SLACK) / 60) * 60
    time.sleep(max(0.0, tick + 20 - time.time()))
    after = paused_at + PAUSE_SLACK
    late_runs = [r["dag_run_id"] for r in api.runs(SCHEDULED) if epoch(r["queued_at"]) > after]
    assert late_runs == [], f"{SCHEDULED} got new runs after it was paused"
    late_tasks = [
        (t["dag_run_id"], t["task_id"])
        for t in local.scheduled_task_instances()
        if t["start_date"] and epoch(t["start_date"]) > after
    ]
    assert late_tasks == [], f"{SCHEDULED} started tasks after it was paused"
    dag = api.dags()[SCHEDULED]
    assert dag["is_paused"] is True and dag["timetable_summary"] == "* * * * *"  # paused, not unscheduled
    for dag_id in (SAMPLE, BROWSER, BROKEN):  # pipelines without a schedule never ran on one
        assert [r for r in api.runs(dag_id) if r["run_type"] == "scheduled"] == []


def test_enabling_the_spec_brings_the_schedule_back_with_no_other_action(local: Local) -> None:
    """``enabled: false`` → ``true`` in the YAML, and nothing else: the next tick runs it."""
    api = local.airflow.api
    assert local.switched_on_at is not None, "runs after the disabled-pipeline test"

    def scheduled_success() -> dict[str, Any] | None:
        runs = [r for r in api.runs(SWITCHED_ON) if r["run_type"] == "scheduled"]
        return next((r for r in runs if r["state"] == "success"), None)

    run = local.airflow.wait(f"a scheduled run of {SWITCHED_ON}", scheduled_success, timeout=240)
    assert epoch(run["queued_at"]) > local.switched_on_at and run["triggered_by"] == "timetable"
    dag = api.dags()[SWITCHED_ON]
    assert dag["is_paused"] is False and dag["timetable_summary"] == "* * * * *"
    assert "disabled" not in tags(dag) and dag["description"] == "Swiss customers"
    assert set(local.site.customers(SWITCHED_ON)) == local.profile_ids("CH")
    # Off again, so it stops competing for the executor (nothing more to see here).
    path = local.site.pipelines / f"{SWITCHED_ON}.yaml"
    local.site.write_specs({path.name: path.read_text().replace("enabled: true", "enabled: false")})


def test_fixing_the_broken_spec_brings_the_pipeline_back(local: Local) -> None:
    """Last: the tests above (the browser's included) look at the broken spec."""
    api = local.airflow.api
    local.site.write_specs({specs.BROKEN_FILE: specs.BROKEN.replace("adress.city", "address.city")})

    def fixed() -> bool:
        dag = api.dags()[BROKEN]
        steps = chain(api, BROKEN)  # the api-server may serve its cached copy for a few seconds
        return "broken-spec" not in tags(dag) and not api.import_errors() and len(steps) == 4

    local.airflow.wait("the fixed spec to be picked up", fixed, timeout=120)
    assert chain(api, BROKEN) == ["extract", "transform", "dedupe", "upsert"]
    assert api.dags()[BROKEN]["is_paused"] is False  # fixing the spec is all it takes to run it
