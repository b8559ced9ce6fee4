"""The "Stripe pipelines" page under the FAB auth manager (``apache-airflow-providers-fab``): the
plugin's routes use Airflow's own checks, so FAB's roles decide, as they do for the REST API.

The pipelines, their seeded history and the plugin's endpoints are those of
``test_stripe_pipelines_page`` (the simple auth manager, where the page itself is tested in
depth); here: anonymous callers, FAB's ``Viewer`` and ``Admin``, and a role of our own that may
read and edit one DAG only (``DAG:de_history``, ``DAG Run:de_history``), against which every other
pipeline is hidden and refused. Then FAB's sign-in page and the navigation entry in the browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.browser import chromium, require_chromium
from tests.e2e.conftest import Site, deployed, require
from tests.e2e.deployment import ADMIN, AirflowDeployment
from tests.e2e.test_stripe_pipelines_page import (
    HISTORY,
    ORDER,
    READS,
    SAMPLE,
    SPECS,
    TOGGLED,
    VIEWER,
    WRITES,
    Page,
    assert_refused_anonymously,
    assert_refused_to_the_viewer,
    seed_history,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

EDITOR = "de_editor"  # FAB role and user: read and edit de_history, its runs; nothing else
EDITOR_PERMISSIONS = [
    ("can_read", f"DAG:{HISTORY}"),
    ("can_edit", f"DAG:{HISTORY}"),
    ("can_read", f"DAG Run:{HISTORY}"),
    ("can_create", f"DAG Run:{HISTORY}"),
]


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, site: Site) -> Iterator[Page]:
    require("airflow.providers.fab")
    site.write_specs(SPECS)
    seed_history(site)
    env = {"KRENALIS_STORAGE_BASE": f"file://{site.root}/storage"}

    def prepare(deployment: AirflowDeployment) -> None:
        deployment.use_fab()

    with deployed(request, site, name="stripe-pipelines-page-fab", env=env, prepare=prepare) as airflow:
        airflow.wait_for_dags(ORDER)  # parsed: FAB's per-DAG resources (DAG:<dag_id>) exist
        airflow.api.set_paused(TOGGLED, True)
        airflow.add_fab_user(VIEWER, "Viewer")
        airflow.add_fab_role(EDITOR, EDITOR_PERMISSIONS)
        airflow.add_fab_user(EDITOR, EDITOR)
        yield Page(airflow, site)


def test_fab_is_the_auth_manager(page: Page) -> None:
    """FAB's own API answers (it exists under FAB only), with the users and roles made above."""
    for user, role in ((ADMIN, "Admin"), (VIEWER, "Viewer"), (EDITOR, EDITOR)):
        assert page.admin.get(f"/auth/fab/v1/users/{user}")["roles"] == [{"name": role}]


@pytest.mark.parametrize(("method", "path", "body"), READS + WRITES)
def test_anonymous_callers_are_refused_everywhere(page: Page, method: str, path: str, body: Any) -> None:
    assert_refused_anonymously(page, method, path, body, cookie=False)


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_a_viewer_cannot_pause_run_plan_or_preview(page: Page, method: str, path: str, body: Any) -> None:
    assert_refused_to_the_viewer(page, method, path, body)


@pytest.mark.parametrize(("method", "path", "body"), READS)
def test_a_viewer_can_read(page: Page, method: str, path: str, body: Any) -> None:
    answer = page.viewer().http.request(method, path, json=body)
    assert answer.status_code == 200, answer.text


def test_a_viewer_sees_every_pipeline_read_only(page: Page) -> None:
    rows = {row["dag_id"]: row for row in page.viewer().get("/krenalis/api/pipelines")["pipelines"]}
    assert list(rows) == ORDER
    assert rows[TOGGLED]["permissions"] == {"edit": False, "trigger": False, "xcom": True}
    assert rows[HISTORY]["last_run"]["counts"]["rejected_total"] == 130  # the seeded history


def test_the_navigation_entry_needs_read_on_plugins(page: Page) -> None:
    """The UI lists plugin views from ``/api/v2/plugins``, which FAB grants to Op and Admin only
    (``can_read`` on ``Plugins``): a Viewer has no "Stripe pipelines" entry, yet may open the page."""
    assert "krenalis_stripe_pipelines" in {p["name"] for p in page.admin.get("/api/v2/plugins")["plugins"]}
    assert page.viewer().http.get("/api/v2/plugins").status_code == 403
    assert page.viewer().http.get("/krenalis/pipelines/").status_code == 200


def test_an_admin_pauses_unpauses_and_runs_now(page: Page) -> None:
    api = page.admin
    for paused in (False, True):
        api.request("POST", f"/krenalis/api/pipelines/{TOGGLED}/pause", json={"is_paused": paused})
        assert api.dags()[TOGGLED]["is_paused"] is paused
    assert api.runs(SAMPLE) == []
    started = api.request("POST", f"/krenalis/api/pipelines/{SAMPLE}/runs", json={})
    [run] = api.runs(SAMPLE)
    assert run["dag_run_id"] == started["dag_run_id"]
    assert (run["run_type"], run["triggering_user_name"], run["conf"]) == ("manual", ADMIN, {})
    preview = api.request("POST", f"/krenalis/api/pipelines/{HISTORY}/preview", json={"limit": 2})
    assert len(preview["rows"]) == 2
    logs = [
        e for d in (TOGGLED, SAMPLE) for e in api.get("/api/v2/eventLogs", dag_id=d, limit=100)["event_logs"]
    ]
    audited = {(e["event"], e["owner"]) for e in logs if e["event"].startswith("stripe_pipelines")}
    assert {owner for _, owner in audited} == {ADMIN}  # the refused callers left no entry
    assert {"stripe_pipelines_pause", "stripe_pipelines_run_now"} <= {event for event, _ in audited}


def test_a_role_for_one_dag_sees_and_acts_on_that_pipeline_only(page: Page) -> None:
    editor = page.airflow.api_as(EDITOR)
    assert set(editor.dags()) == {HISTORY}  # Airflow's REST API agrees
    rows = editor.get("/krenalis/api/pipelines")["pipelines"]
    assert [row["dag_id"] for row in rows] == [HISTORY]
    [row] = rows
    assert row["permissions"] == {"edit": True, "trigger": True, "xcom": False}
    assert editor.get(f"/krenalis/api/pipelines/{HISTORY}")["latest_plan"] is None  # no XCom access
    preview = editor.http.post(f"/krenalis/api/pipelines/{HISTORY}/preview", json={"limit": 1})
    assert preview.status_code == 200, preview.text
    before = page.admin.dags()[TOGGLED]["is_paused"]
    other = [  # every endpoint of one pipeline, on another pipeline
        (method, path.replace(HISTORY, TOGGLED), body)
        for method, path, body in READS + WRITES
        if HISTORY in path or TOGGLED in path
    ]
    assert len(other) == len(READS) - 2 + len(WRITES)
    for method, path, body in other:
        answer = editor.http.request(method, path, json=body)
        assert answer.status_code == 403, (path, answer.text)
    assert editor.http.get(f"/krenalis/api/pipelines/{SAMPLE}").status_code == 403
    assert page.admin.dags()[TOGGLED]["is_paused"] is before and page.admin.runs(TOGGLED) == []


def test_in_the_browser_fab_sign_in_and_the_list(page: Page) -> None:
    require_chromium()
    with chromium(page.airflow.ui_url, "stripe-pipelines-page-fab") as ui:
        ui.open("/")
        ui.until("FAB's sign-in page", lambda: "/auth/login" in ui.driver.current_url)
        ui.until("the sign-in form", lambda: ui.css("input[name=username]")).send_keys(ADMIN)
        ui.css("input[name=password]").send_keys(page.airflow.password)
        ui.screenshot("fab-sign-in")
        ui.css("input[type=submit]").click()
        ui.until("signed in", lambda: "/auth/login" not in ui.driver.current_url)

        ui.until("the navigation entry", lambda: ui.css("a[href$='/plugin/stripe-pipelines']")).click()
        frame = ui.until("the page's frame", lambda: ui.css("iframe[title='Stripe pipelines']"))
        ui.driver.switch_to.frame(frame)

        def listed() -> list[str]:
            rows = ui.driver.find_elements("css selector", "[data-testid=pipeline-row]")
            return [row.get_attribute("data-dag-id") for row in rows]

        assert ui.until("the pipelines listed", listed) == ORDER
        ui.driver.switch_to.default_content()
        ui.screenshot("list")
        assert all(path.stat().st_size > 0 for path in ui.taken)
