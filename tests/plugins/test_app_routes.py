"""Every route of the plugin's app checks its caller through Airflow's own dependencies.

Airflow does not protect a plugin's FastAPI app, so a route added without ``get_user`` and the
right ``requires_access_dag`` would be open to anyone. This reads the dependencies FastAPI will
run for each route (no server needed); ``tests/e2e/test_stripe_pipelines_page.py`` checks the
answers of a real API server (401 anonymous, 403 read-only on writes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import get_user
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from krenalis_airflow.plugins.app import app
from krenalis_airflow.plugins.plugin import PAGE, URL_PREFIX, StripePipelinesPlugin

READ = {("GET", None), ("GET", DagAccessEntity.RUN)}
# (method, path) → the DAG permissions it requires; None: no single DAG (the list filters rows).
EXPECTED: dict[tuple[str, str], set[tuple[str, Any]] | None] = {
    ("GET", "/pipelines/"): None,
    ("GET", "/api/pipelines"): None,
    ("GET", "/pipelines/{dag_id}/"): READ,
    ("GET", "/api/pipelines/{dag_id}"): READ,
    ("GET", "/api/pipelines/{dag_id}/rejections"): READ,
    ("POST", "/api/pipelines/{dag_id}/pause"): {("PUT", None)},
    ("POST", "/api/pipelines/{dag_id}/runs"): {("POST", DagAccessEntity.RUN)},
    ("POST", "/api/pipelines/{dag_id}/plan"): {("POST", DagAccessEntity.RUN)},
    ("POST", "/api/pipelines/{dag_id}/preview"): {("POST", DagAccessEntity.RUN)},
}


def calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    """Every dependency FastAPI resolves for a route, depth first."""
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from calls(dependency)


def dag_permissions(route: APIRoute) -> set[tuple[str, Any]]:
    """The ``(method, access_entity)`` of each ``requires_access_dag`` the route depends on."""
    found = set()
    for call in calls(route.dependant):
        if getattr(call, "__qualname__", "") == "requires_access_dag.<locals>.inner":
            scope = inspect.getclosurevars(call).nonlocals
            assert scope["param_dag_id"] is None  # the DAG id comes from the path
            found.add((scope["method"], scope["access_entity"]))
    return found


def routes() -> dict[tuple[str, str], APIRoute]:
    return {
        (method, route.path): route
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }


def test_the_routes_are_the_ones_this_test_knows() -> None:
    assert set(routes()) == set(EXPECTED), "a new route: say here which permission it needs"
    assert not [r for r in app.routes if not isinstance(r, APIRoute)]  # no docs, no static files


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_route_authenticates_and_checks_its_dag_permission(key: tuple[str, str]) -> None:
    route = routes()[key]
    assert get_user in set(calls(route.dependant)), f"{key}: no get_user, so anyone could call it"
    expected = EXPECTED[key]
    if expected is None:
        assert "{dag_id}" not in key[1]
    else:
        assert "{dag_id}" in key[1]
        assert dag_permissions(route) == expected


def test_writes_are_audited_after_the_access_check() -> None:
    for (method, path), route in routes().items():
        if method == "GET":
            continue
        names = [getattr(d.call, "__qualname__", "") for d in route.dependant.dependencies]
        checks = [i for i, name in enumerate(names) if name == "requires_access_dag.<locals>.inner"]
        audits = [i for i, name in enumerate(names) if name == "action_logging.<locals>.log_action"]
        assert len(audits) == 1 and checks and max(checks) < audits[0], (path, names)


def test_writes_take_a_json_body() -> None:
    for (method, path), route in routes().items():
        if method != "GET":
            assert route.body_field is not None, f"{path}: a write without a JSON body model"


def test_the_plugin_mounts_the_app_and_links_it_relatively() -> None:
    [mounted] = StripePipelinesPlugin.fastapi_apps
    assert mounted["app"] is app and mounted["url_prefix"] == URL_PREFIX
    [view] = StripePipelinesPlugin.external_views
    assert view["href"] == PAGE == URL_PREFIX.lstrip("/") + "/pipelines/"
    assert (view["destination"], view["url_route"]) == ("nav", "stripe-pipelines")
