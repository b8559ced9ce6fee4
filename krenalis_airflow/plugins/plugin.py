"""The "Stripe pipelines" page in the Airflow UI's navigation, as an Airflow plugin.

Registered by the package itself (``airflow.plugins`` entry point in ``setup.cfg``), so installing
krenalis-airflow is all it takes. The page is the FastAPI app of ``app.py``, mounted by the API
server at ``/krenalis``; the navigation entry is an external view that Airflow's UI shows in an
iframe at ``/plugin/stripe-pipelines``. Its ``href`` has no leading slash: the UI's document base
is ``[api] base_url``, so the page follows any path prefix.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/krenalis"
PAGE = "krenalis/pipelines/"  # relative to the UI's base URL
NAV_ROUTE = "stripe-pipelines"
NAME = "Stripe pipelines"


def _fastapi_app() -> dict[str, Any]:
    from krenalis_airflow.plugins.app import app

    return {"app": app, "url_prefix": URL_PREFIX, "name": NAME}


class StripePipelinesPlugin(AirflowPlugin):
    """The "Stripe pipelines" page (list, pipeline pages, pause toggle, Run now)."""

    name = "krenalis_stripe_pipelines"
    fastapi_apps = [_fastapi_app()]
    external_views = [
        {
            "name": NAME,
            "href": PAGE,
            "destination": "nav",
            "url_route": NAV_ROUTE,
            "nav_top_level": True,
        }
    ]
