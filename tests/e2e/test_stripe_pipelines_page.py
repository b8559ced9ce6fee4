"""The provider's "Stripe pipelines" page (``krenalis_airflow/plugins``) in a real deployment:
api-server, scheduler and dag-processor (LocalExecutor, PostgreSQL metadata), the simple auth
manager with an admin and a read-only ``viewer``.

Two rings over one deployment: the plugin's HTTP API as callers meet it (anonymous, a bad token,
the viewer, the admin: 401/403 on every write, no secret in any answer), then the page itself in
headless Chromium through the navigation entry (list, pause toggle, Run now, a pipeline's runs and
rejection search), checked against Airflow's REST API, with screenshots.

Pipelines: the shipped sample; ``gb_customers`` (paused, the browser switches it on);
``ch_off`` (``enabled: false``: Run now refused); ``de_history``, whose runs and rejections
are written into its state store (the warehouse) with ``History``, the tables' own writer, so the
page has a history to show whatever the runs of this deployment do; and a broken spec.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from krenalis_airflow.core.history import History
from krenalis_airflow.core.records import Rejection
from support.localstripe_process import STRIPE_TEST_KEY
from tests.e2e import specs
from tests.e2e.browser import chromium, require_chromium
from tests.e2e.conftest import Site, deployed
from tests.e2e.deployment import ROOT, AirflowDeployment, Api

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

SAMPLE = "sample_customers"
TOGGLED = "gb_customers"
OFF = "ch_off"
HISTORY = "de_history"
BROKEN = "broken_pipeline"
PYTHON = "nl_python"
VIEWER = "viewer"
SPECS = {
    "sample_customers.yaml": specs.sample(schedule="null"),
    "gb_customers.yaml": specs.by_country(
        TOGGLED, "GB", description="UK customers, switched on from the page"
    ),
    "ch_off.yaml": specs.by_country(OFF, "CH", description="Swiss customers", enabled=False),
    # No schedule anywhere: no run but the tests' own may write to a history the tests read.
    "de_history.yaml": specs.by_country(HISTORY, "DE", description="German customers"),
    specs.BROKEN_FILE: specs.BROKEN,
    # A Python transformation (the author's code): previewed on workers only, never the API server.
    "nl_python.yaml": specs.by_country(PYTHON, "NL", description="Dutch customers").replace(
        "  mapping:\n    name: first_name ~ ' ' ~ last_name\n    metadata.plan: plan\n"
        "    metadata.pipeline: \"'nl_python'\"\n",
        "  python: |\n    def transform(profile):\n        return {'name': profile['first_name']}\n",
    ),
}
SEEDED_RUNS = ("scheduled__2026-01-01T00:00:00+00:00", "scheduled__2026-01-01T01:00:00+00:00")
SEEDED_REJECTIONS = 130  # more than one page (50)
# The whole module runs under a path prefix ([api] base_url with a path, as behind a proxy): the
# page's relative URLs, its links to Airflow's pages and its API calls must all follow it.
BASE_PATH = "/airflow"
DOCS_SCREENSHOT = ROOT / "docs" / "stripe-pipelines.png"

# Every endpoint of the plugin: (method, path, JSON body).
READS: list[tuple[str, str, Any]] = [
    ("GET", "/krenalis/pipelines/", None),
    ("GET", f"/krenalis/pipelines/{HISTORY}/", None),
    ("GET", "/krenalis/api/pipelines", None),
    ("GET", f"/krenalis/api/pipelines/{HISTORY}", None),
    ("GET", f"/krenalis/api/pipelines/{HISTORY}/rejections?run_id={SEEDED_RUNS[1]}&q=dedupe", None),
]
WRITES: list[tuple[str, str, Any]] = [
    ("POST", f"/krenalis/api/pipelines/{TOGGLED}/pause", {"is_paused": False}),
    ("POST", f"/krenalis/api/pipelines/{TOGGLED}/runs", {}),
    ("POST", f"/krenalis/api/pipelines/{TOGGLED}/plan", {}),
    ("POST", f"/krenalis/api/pipelines/{TOGGLED}/preview", {"limit": 2}),
]
ORDER = [BROKEN, OFF, HISTORY, TOGGLED, PYTHON, SAMPLE]  # file name order


def seed_history(site: Site) -> None:
    """Two recorded runs of ``de_history``, the latest with ``SEEDED_REJECTIONS`` rejections."""
    with closing(sqlite3.connect(site.warehouse)) as conn:
        history = History(conn, "?", HISTORY)
        history.ensure_tables()
        for index, run_id in enumerate(SEEDED_RUNS):
            summary = {
                "full_resync": False,
                "dry_run": False,
                "sql": "SELECT * FROM customer_profiles AS src WHERE (src.country = ?)\n-- parameters: ['DE']",
                "extracted": 150,
                "filtered_out": 450,
                "transformed": 150 - 120 * index,
                "rejected": {"empty matching value": 120 * index, "duplicate": 10 * index},
                "duplicates": 10 * index,
                "created": 0 if index else 150,
                "updated": 3 * index,
                "unchanged": 17 * index,
                "skipped": {},
                "failed": 0,
                "api_calls": {"customers.list": 1, "customers.create": 0 if index else 150},
                "retried": {"customers.create": 0 if index else 2},
                "samples": {"created": [{"email": "secret-sample@example.com"}]},
                "rejection_files": ["file:///never/shown/rejected.jsonl"],
            }
            started = datetime.now(UTC) - timedelta(seconds=95 - 53 * index)  # ended: now
            history.record_run(run_id, started.isoformat(timespec="seconds"), summary, "success")
        rejections = [
            Rejection(f"de-{i:03d}", "transform", "empty matching value", "email is empty")
            for i in range(120)
        ]
        rejections += [
            Rejection(f"de-dup-{i}", "dedupe", "duplicate", "shares an email with de-dup-0")
            for i in range(10)
        ]
        history.record_rejections(SEEDED_RUNS[1], rejections)


@dataclass
class Page:
    airflow: AirflowDeployment
    site: Site

    @property
    def admin(self) -> Api:
        return self.airflow.api

    def viewer(self) -> Api:
        return self.airflow.api_as(VIEWER)

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.airflow.ui_url, timeout=30.0)

    def profile_ids(self, country: str) -> set[str]:
        with closing(sqlite3.connect(self.site.warehouse)) as db:
            rows = db.execute("SELECT profile_id FROM customer_profiles WHERE country = ?", (country,))
            return {key for (key,) in rows}


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, site: Site) -> Iterator[Page]:
    site.write_specs(SPECS)
    seed_history(site)
    env = {"KRENALIS_STORAGE_BASE": f"file://{site.root}/storage"}

    def prepare(deployment: AirflowDeployment) -> None:
        deployment.add_user(VIEWER, "viewer")
        deployment.set_base_path(BASE_PATH)

    with deployed(request, site, name="stripe-pipelines-page", env=env, prepare=prepare) as airflow:
        airflow.wait_for_dags(ORDER)
        airflow.api.set_paused(TOGGLED, True)
        yield Page(airflow, site)


# --------------------------------------------------------------------------------------------
# The HTTP API, caller by caller


def test_the_plugin_is_registered_with_a_navigation_entry(page: Page) -> None:
    plugins = {p["name"]: p for p in page.admin.get("/api/v2/plugins")["plugins"]}
    plugin = plugins["krenalis_stripe_pipelines"]
    assert plugin["source"].startswith("krenalis-airflow==")  # the package's entry point, no file copied
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/krenalis"]
    [view] = plugin["external_views"]
    assert (view["name"], view["destination"], view["url_route"]) == (
        "Stripe pipelines",
        "nav",
        "stripe-pipelines",
    )
    assert not view["href"].startswith(("/", "http")), "relative to the UI's base URL (proxy prefixes)"


def assert_refused_anonymously(page: Page, method: str, path: str, body: Any, *, cookie: bool = True) -> None:
    """No token: 401; a forged one (header, or the UI's cookie): 403. Shared with the FAB module."""
    with page.anonymous() as client:
        answer = client.request(method, path, json=body)
        assert answer.status_code == 401, answer.text
        forged = client.request(method, path, json=body, headers={"Authorization": "Bearer not.a.token"})
        assert forged.status_code == 403, forged.text
        if cookie:
            baked = client.request(method, path, json=body, cookies={"_token": "not.a.token"})
            assert baked.status_code == 403, baked.text


def assert_refused_to_the_viewer(page: Page, method: str, path: str, body: Any) -> None:
    """A read-only user's write is refused (403) and changes nothing. Shared with the FAB module."""
    before = page.admin.dags()[TOGGLED]["is_paused"]
    runs = page.admin.runs(TOGGLED)
    answer = page.viewer().http.request(method, path, json=body)
    assert answer.status_code == 403, answer.text
    assert page.admin.dags()[TOGGLED]["is_paused"] is before
    assert page.admin.runs(TOGGLED) == runs


@pytest.mark.parametrize(("method", "path", "body"), READS + WRITES)
def test_anonymous_callers_are_refused_everywhere(page: Page, method: str, path: str, body: Any) -> None:
    assert_refused_anonymously(page, method, path, body)


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_a_read_only_user_cannot_pause_or_run(page: Page, method: str, path: str, body: Any) -> None:
    assert_refused_to_the_viewer(page, method, path, body)


def test_a_read_only_user_sees_the_buttons_disabled(page: Page) -> None:
    """Only a convenience (the writes above are refused by the server either way)."""
    rows = page.viewer().get("/krenalis/api/pipelines")["pipelines"]
    assert {row["dag_id"]: row["permissions"] for row in rows}[TOGGLED] == {
        "edit": False,
        "trigger": False,
        "xcom": True,
    }
    for user, disabled in ((page.viewer(), True), (page.admin, False)):
        html = user.http.get("/krenalis/pipelines/").text
        buttons = re.findall(r'<button[^>]*data-testid="run-now"[^>]*>', html)
        switches = re.findall(r'<input[^>]*data-testid="pause-toggle"[^>]*>', html)
        assert len(buttons) == len(ORDER) and len(switches) == len(ORDER) - 1  # the broken spec: none
        assert [bool(re.search(r"\sdisabled\b", tag)) for tag in switches] == [disabled] * len(switches)
        runnable = [tag for tag in buttons if "data-run-url" in tag and f"/{TOGGLED}/" in tag]
        assert [bool(re.search(r"\sdisabled\b", tag)) for tag in runnable] == [disabled]


@pytest.mark.parametrize(("method", "path", "body"), READS)
def test_a_read_only_user_can_read(page: Page, method: str, path: str, body: Any) -> None:
    answer = page.viewer().http.request(method, path, json=body)
    assert answer.status_code == 200, answer.text


def test_the_list_shows_every_spec_with_its_settings_and_last_run(page: Page) -> None:
    rows = {row["dag_id"]: row for row in page.viewer().get("/krenalis/api/pipelines")["pipelines"]}
    assert list(rows) == ORDER
    assert specs.BROKEN_MESSAGE in rows[BROKEN]["error"] and rows[BROKEN]["broken"] is True
    assert (rows[OFF]["enabled"], rows[OFF]["filters"]) == (False, "country is 'CH'")
    assert rows[TOGGLED]["dag"]["is_paused"] is True and rows[HISTORY]["dag"]["is_paused"] is False
    assert (
        rows[HISTORY]["schedule"] == "manual runs only" and rows[HISTORY]["destination"] == "stripe_default"
    )
    last = rows[HISTORY]["last_run"]
    assert last["run_id"] == SEEDED_RUNS[1]
    assert {k: last["counts"][k] for k in ("created", "updated", "unchanged", "rejected_total")} == {
        "created": 0,
        "updated": 3,
        "unchanged": 17,
        "rejected_total": 130,
    }


def test_a_pipeline_page_has_runs_rejections_spec_and_sql(page: Page) -> None:
    detail = page.viewer().get(f"/krenalis/api/pipelines/{HISTORY}")
    assert [run["run_id"] for run in detail["runs"]["rows"]] == list(reversed(SEEDED_RUNS))
    first = detail["runs"]["rows"][1]
    assert first["duration_s"] is not None and first["details"]["retried_total"] == 2
    assert first["counts"]["api_calls_total"] == 151
    assert detail["run_id"] == SEEDED_RUNS[1] and detail["rejections"]["total"] == SEEDED_REJECTIONS
    assert detail["spec_text"] == SPECS["de_history.yaml"]
    assert detail["sql"].endswith("-- parameters: ['DE']")
    found = page.viewer().get(
        f"/krenalis/api/pipelines/{HISTORY}/rejections", run_id=SEEDED_RUNS[1], q="DEDUPE", limit=4, offset=8
    )
    assert found["total"] == 10 and [r["profile_key"] for r in found["rows"]] == ["de-dup-8", "de-dup-9"]


def test_run_now_is_refused_for_a_disabled_or_broken_spec(page: Page) -> None:
    for dag_id, words in ((OFF, "enabled: false"), (BROKEN, "does not load")):
        answer = page.admin.http.post(f"/krenalis/api/pipelines/{dag_id}/runs", json={})
        assert answer.status_code == 409 and words in answer.json()["detail"], answer.text
        assert page.admin.runs(dag_id) == []


def test_preview_transforms_live_rows_and_writes_nothing(page: Page) -> None:
    customers = page.site.customers(HISTORY)
    preview = page.admin.request("POST", f"/krenalis/api/pipelines/{HISTORY}/preview", json={"limit": 3})
    assert "country" in preview["sql"] and "['DE']" in preview["sql"]
    assert len(preview["rows"]) == 3
    for row in preview["rows"]:
        profile, payload = row["profile"], row["outcome"]["payload"]
        assert profile["country"] == "DE"
        assert payload["name"] == f"{profile['first_name']} {profile['last_name']}"
        assert payload["metadata.pipeline"] == HISTORY
    assert page.site.customers(HISTORY) == customers == {}
    too_many = page.admin.http.post(f"/krenalis/api/pipelines/{HISTORY}/preview", json={"limit": 500})
    assert too_many.status_code == 422


def test_a_python_transformation_is_never_run_by_the_api_server(page: Page) -> None:
    answer = page.admin.http.post(f"/krenalis/api/pipelines/{PYTHON}/preview", json={"limit": 1})
    assert answer.status_code == 409 and "never in the API server" in answer.json()["detail"]


def test_plan_is_a_dry_run_whose_counts_show_on_the_page(page: Page) -> None:
    api = page.admin
    started = api.request("POST", f"/krenalis/api/pipelines/{HISTORY}/plan", json={})
    run = page.airflow.wait_for_run(HISTORY, started["dag_run_id"])
    assert run["conf"] == {"dry_run": True} and run["triggering_user_name"] == "admin"
    assert run["state"] == "success", page.airflow.describe_run(HISTORY, started["dag_run_id"])
    plan = page.viewer().get(f"/krenalis/api/pipelines/{HISTORY}")["latest_plan"]
    assert (plan["run_id"], plan["state"]) == (started["dag_run_id"], "success")
    counts = plan["summary"]["counts"]
    assert counts["extracted"] == len(page.profile_ids("DE")) > 0
    assert counts["created"] + counts["rejected_total"] == counts["extracted"] and counts["created"] > 0
    assert plan["summary"]["dry_run"] is True
    assert page.site.customers(HISTORY) == {}  # a plan writes nothing to Stripe
    runs = page.viewer().get(f"/krenalis/api/pipelines/{HISTORY}")["runs"]
    assert [r["run_id"] for r in runs["rows"]] == list(reversed(SEEDED_RUNS))  # nor to the history


def test_writes_take_json_only(page: Page) -> None:
    """A form on another site cannot pause a pipeline with the UI's cookie."""
    answer = page.admin.http.post(
        f"/krenalis/api/pipelines/{TOGGLED}/pause",
        content="is_paused=false",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 422 and page.admin.dags()[TOGGLED]["is_paused"] is True


def test_no_secret_reaches_any_answer(page: Page) -> None:
    for method, path, body in READS:
        text = page.admin.http.request(method, path, json=body).text
        for secret in (STRIPE_TEST_KEY, "secret-sample@example.com", "/never/shown/", '"password"'):
            assert secret not in text, (path, secret)


def test_pages_use_relative_urls_only(page: Page) -> None:
    for path in ("/krenalis/pipelines/", f"/krenalis/pipelines/{HISTORY}/"):
        html = page.admin.http.get(path).text
        for absolute in ('href="/', 'src="/', 'action="/', "http://", "https://", 'url="/'):
            assert absolute not in html, (path, absolute)


# --------------------------------------------------------------------------------------------
# The page in the browser


def test_in_the_browser_list_toggle_run_now_and_search_rejections(page: Page) -> None:
    require_chromium()
    api = page.admin
    assert api.dags()[TOGGLED]["is_paused"] is True and api.runs(SAMPLE) == []
    with chromium(page.airflow.ui_url, "stripe-pipelines-page") as ui:
        ui.open("/")
        ui.until("the sign-in form", lambda: ui.css("input[name=username]")).send_keys("admin")
        ui.css("input[name=password]").send_keys(page.airflow.password)
        ui.css("button[type=submit]").click()
        ui.until("signed in", lambda: "/auth/login" not in ui.driver.current_url)

        ui.until("the navigation entry", lambda: ui.css("a[href$='/plugin/stripe-pipelines']")).click()
        ui.until("the plugin view", lambda: "/plugin/stripe-pipelines" in ui.driver.current_url)
        frame = ui.until("the page's frame", lambda: ui.css("iframe[title='Stripe pipelines']"))
        ui.driver.switch_to.frame(frame)
        here = ui.until("the page loaded", lambda: ui.driver.execute_script("return location.href"))
        assert here == f"{page.airflow.ui_url}/krenalis/pipelines/"  # under the base path

        def listed() -> list[str]:
            rows = ui.driver.find_elements("css selector", "[data-testid=pipeline-row]")
            return [row.get_attribute("data-dag-id") for row in rows]

        assert ui.until("the pipelines listed", listed) == ORDER
        row = _row(ui, SAMPLE)
        assert "country is one of 'IT', 'FR', 'DE', 'ES', 'NL'" in ui.css("[data-testid=filters]", row).text
        assert ui.css("[data-testid=run-now]", _row(ui, OFF)).is_enabled() is False  # enabled: false
        assert (
            specs.BROKEN_MESSAGE.split(":8: ")[1] in ui.css("[data-testid=spec-error]", _row(ui, BROKEN)).text
        )
        assert "rejected 130" in ui.css("[data-testid=last-run]", _row(ui, HISTORY)).text
        assert STRIPE_TEST_KEY not in ui.driver.page_source
        ui.driver.switch_to.default_content()
        ui.screenshot("list")

        # The pause toggle: switched on here, seen by Airflow's REST API.
        ui.driver.switch_to.frame(ui.css("iframe[title='Stripe pipelines']"))
        toggle = ui.css("[data-testid=pause-toggle]", _row(ui, TOGGLED))
        assert toggle.is_selected() is False
        # The page reloads itself 400 ms after a change is saved. Wait for that reload (the
        # frame's window loses this mark), not for the switch, which shows "on" from the click:
        # a Run now clicked before the reload is lost with the old page, and the run never shows.
        ui.driver.execute_script("window.beforeReload = true")
        toggle.click()
        page.airflow.wait(
            f"{TOGGLED} unpaused", lambda: api.dags()[TOGGLED]["is_paused"] is False, timeout=30
        )
        logs = api.get("/api/v2/eventLogs", dag_id=TOGGLED, limit=100)["event_logs"]
        audited = [(e["event"], e["owner"]) for e in logs if e["event"].startswith("stripe_pipelines")]
        assert audited and set(audited) == {("stripe_pipelines_pause", "admin")}  # none of the refused
        ui.until("the page reloaded", lambda: ui.driver.execute_script("return !window.beforeReload"))
        ui.until("switched on", lambda: ui.css("[data-testid=pause-toggle]", _row(ui, TOGGLED)).is_selected())

        # Run now: a manual run by the signed-in user appears in Airflow.
        ui.css("[data-testid=run-now]", _row(ui, SAMPLE)).click()
        [run] = page.airflow.wait(f"the run of {SAMPLE}", lambda: api.runs(SAMPLE), timeout=30)
        assert (run["run_type"], run["triggering_user_name"], run["conf"]) == ("manual", "admin", {})
        ui.until("the run on the list", lambda: ui.css("[data-testid=state]", _row(ui, SAMPLE)).text)
        ui.driver.switch_to.default_content()
        ui.screenshot("run-now")
        if os.environ.get("KRENALIS_UPDATE_DOCS"):  # the README's picture, refreshed on request only
            ui.driver.save_screenshot(str(DOCS_SCREENSHOT))

        # A pipeline's page: runs, then its rejections searched and paged.
        ui.driver.switch_to.frame(ui.css("iframe[title='Stripe pipelines']"))
        ui.css("[data-testid=pipeline-link]", _row(ui, HISTORY)).click()
        ui.until("the pipeline page", lambda: ui.css("[data-testid=pipeline-name]").text == HISTORY)
        runs = ui.driver.find_elements("css selector", "[data-testid=run-row]")
        assert [r.get_attribute("data-run-id") for r in runs] == list(reversed(SEEDED_RUNS))
        assert ui.css("[data-testid=plan-summary]").is_displayed()  # the plan test's dry run

        limit = ui.css("[data-testid=preview-limit]")
        limit.clear()
        limit.send_keys("3")
        ui.css("[data-testid=preview]").click()
        rows = ui.until(
            "the preview", lambda: ui.driver.find_elements("css selector", "[data-testid=preview-row]")
        )
        assert len(rows) == 3 and all('"country": "DE"' in row.text for row in rows), [r.text for r in rows]
        ui.driver.switch_to.default_content()
        ui.screenshot("preview")
        ui.driver.switch_to.frame(ui.css("iframe[title='Stripe pipelines']"))

        count = ui.css("[data-testid=rejection-count]").text
        assert count.startswith(f"1\u201350 of {SEEDED_REJECTIONS} rejected profiles"), count
        ui.css("[data-testid=next]").click()
        ui.until(
            "the second page",
            lambda: ui.css("[data-testid=rejection-count]").text.startswith("51\u2013100 of"),
        )
        query = ui.css("[data-testid=rejection-query]")
        query.clear()
        query.send_keys("shares an EMAIL")
        query.submit()
        ui.until(
            "the search", lambda: "of 10 rejected profiles" in ui.css("[data-testid=rejection-count]").text
        )
        keys = [
            r.find_element("css selector", "td").text
            for r in ui.driver.find_elements("css selector", "[data-testid=rejection-row]")
        ]
        assert keys == [f"de-dup-{i}" for i in range(10)]
        assert "country = ?" in ui.css("[data-testid=sql]").text
        assert "German customers" in ui.css("[data-testid=spec-text]").text
        ui.driver.switch_to.default_content()
        ui.screenshot("rejection-search")

        # The link to the DAG takes the whole UI there (the frame may not navigate it itself).
        ui.driver.switch_to.frame(ui.css("iframe[title='Stripe pipelines']"))
        ui.css("[data-testid=dag-link]").click()
        ui.driver.switch_to.default_content()
        ui.until("the DAG's page", lambda: ui.driver.current_url == f"{page.airflow.ui_url}/dags/{HISTORY}")
        ui.until("the DAG's page shown", lambda: ui.xpath(f"//*[normalize-space(.)='{HISTORY}']"))
        ui.screenshot("dag-page")
        assert all(path.stat().st_size > 0 for path in ui.taken)


def _row(ui: Any, dag_id: str) -> Any:
    return ui.css(f"[data-testid=pipeline-row][data-dag-id={dag_id}]")
