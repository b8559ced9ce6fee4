"""The "Stripe pipelines" pages and their JSON API: a FastAPI app that Airflow's API server mounts
at ``/krenalis`` (see ``StripePipelinesPlugin``).

Airflow does not protect a plugin's app: every route here depends on Airflow's own checks
(``airflow.api_fastapi.core_api.security``), the same ones its REST API uses, so whichever auth
manager the deployment runs (simple, FAB, …) decides:

* reading a pipeline (its page, runs, rejections): read access to its DAG and its DAG runs;
* the list: only the pipelines whose DAG the caller may read;
* the pause toggle: edit access to the DAG (the core API's ``PATCH /dags/{dag_id}``);
* Run now, Plan (a dry run) and Preview: DAG run create access (the core API's
  ``POST /dags/{dag_id}/dagRuns``); the latest plan's result: read access to the DAG's XComs.

Writes are recorded in Airflow's audit log (``stripe_pipelines_<action>`` events).

No credential, no token: ``get_user`` reads the UI's JWT cookie or an ``Authorization: Bearer``
header, and answers 401 without one; a missing permission is 403. Writes take a JSON body, so a
form on another site cannot send them (and the cookie is ``SameSite=Lax``). Every URL the pages
use is relative, so the app works under any ``[api] base_url`` path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import get_user, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging
from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, Field

from krenalis_airflow.plugins import queries
from krenalis_airflow.plugins.queries import HistoryReader, Page, PipelineInfo, RunRow

log = logging.getLogger(__name__)

PAGE_SIZE = 50
PREVIEW_MAX = 20
PLAN_CONF = {"dry_run": True}
READ_DAG = [Depends(requires_access_dag("GET")), Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
EDIT_DAG = [Depends(requires_access_dag("PUT"))]
TRIGGER_DAG = [Depends(requires_access_dag("POST", DagAccessEntity.RUN))]


def audited(event: str) -> list[Any]:
    """Record the action in Airflow's audit log (the DAG's "Audit Log" tab), as the core API's
    writes do; after the access checks, so a refused caller leaves no entry."""
    return [Depends(action_logging(f"stripe_pipelines_{event}"))]


User = Annotated[BaseUser, Depends(get_user)]

templates = Environment(
    loader=PackageLoader("krenalis_airflow.plugins", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

app = FastAPI(
    title="Krenalis: Stripe pipelines",
    description="The pipelines list and pages of the krenalis-airflow provider (Airflow plugin).",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


class PauseBody(BaseModel):
    """The pause toggle: ``{"is_paused": true}`` pauses the DAG."""

    is_paused: bool


class RunBody(BaseModel):
    """Run now takes no options yet (an empty JSON object): the DAG's params keep their defaults."""


class PreviewBody(BaseModel):
    """Preview: how many live rows of the source to transform."""

    limit: int = Field(default=5, ge=1, le=PREVIEW_MAX)


# --------------------------------------------------------------------------------------------
# Where the specs are, and what Airflow knows of their DAGs


def pipelines_folder() -> Path:
    """The pipelines folder as the DAG file sees it: ``$KRENALIS_PIPELINES_DIR``, else
    ``pipelines/`` in the DAGs folder (where ``krenalis-airflow init`` writes it). The API server
    must see the same folder as the dag-processor, as ``krenalis-airflow plan`` must."""
    from airflow.configuration import conf

    return Path(
        os.environ.get("KRENALIS_PIPELINES_DIR") or Path(conf.get("core", "dags_folder")) / "pipelines"
    )


def dag_states(dag_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per DAG id Airflow knows: ``is_paused``, ``is_stale`` and its latest run (state, time)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for model in session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids))):
            found[model.dag_id] = {"is_paused": bool(model.is_paused), "is_stale": bool(model.is_stale)}
        for dag_id in found:
            run = session.scalar(
                select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(1)
            )
            found[dag_id]["last_dag_run"] = (
                None
                if run is None
                else {
                    "run_id": run.run_id,
                    "state": str(run.state),
                    "run_after": run.run_after.isoformat() if run.run_after else None,
                    "run_type": str(run.run_type),
                }
            )
    return found


def may(user: BaseUser, dag_id: str, method: str, entity: DagAccessEntity | None = None) -> bool:
    """Whether ``user`` may do ``method`` on ``dag_id`` (or its ``entity``), as the core API asks."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return bool(
        get_auth_manager().is_authorized_dag(
            method=method,  # type: ignore[arg-type]
            access_entity=entity,
            details=details,
            user=user,
        )
    )


def readable(user: BaseUser, dag_ids: list[str]) -> set[str]:
    """The DAG ids among ``dag_ids`` whose DAG and runs ``user`` may read, as the core API decides."""
    return {
        dag_id
        for dag_id in dag_ids
        if may(user, dag_id, "GET") and may(user, dag_id, "GET", DagAccessEntity.RUN)
    }


def _spec_for(info: PipelineInfo) -> Any:
    return _spec_at(pipelines_folder() / info.file)


def _spec_at(path: Path) -> Any:
    """The spec of ``path``, Python references not imported (as the DAG factory loads it)."""
    from krenalis_airflow.core.spec import load_spec

    return load_spec(path, import_references=False)


def history_reader(info: PipelineInfo) -> HistoryReader:
    """A ``HistoryReader`` on the pipeline's state store, as a context manager (closes it)."""
    from krenalis_airflow.operators.steps import sql_hook

    spec = _spec_for(info)
    hook = sql_hook(spec.state_conn_id)
    return HistoryReader(hook.get_conn(), hook.placeholder, spec.state.table_prefix)


def last_runs(rows: list[PipelineInfo]) -> dict[str, dict[str, Any] | None]:
    """The latest recorded run of each valid pipeline, or a note why its history is unreadable."""
    found: dict[str, dict[str, Any] | None] = {}
    for info in rows:
        if info.broken:
            continue
        try:
            with history_reader(info) as reader:
                run = reader.last_run(info.dag_id)
        except Exception as exc:
            found[info.dag_id] = {"unavailable": _unavailable(exc)}
        else:
            found[info.dag_id] = run.as_dict() if run else None
    return found


def _unavailable(exc: Exception) -> str:
    """Why a state store cannot be read, without the driver's message (it may quote a DSN)."""
    log.warning("Stripe pipelines page: cannot read a state store: %s", exc)
    return f"history unavailable ({type(exc).__name__}; see the API server log)"


def listing(user: BaseUser) -> list[dict[str, Any]]:
    """The list's rows the user may read: the spec's settings, the pause state, the last runs."""
    rows = queries.pipelines(pipelines_folder())
    allowed = readable(user, [row.dag_id for row in rows])
    rows = [row for row in rows if row.dag_id in allowed]
    states = dag_states([row.dag_id for row in rows])
    runs = last_runs(rows)
    return [
        {
            **row.as_dict(),
            "dag": states.get(row.dag_id),
            "last_run": runs.get(row.dag_id),
            "permissions": permissions(user, row.dag_id),
        }
        for row in rows
    ]


def permissions(user: BaseUser, dag_id: str) -> dict[str, bool]:
    """What ``user`` may do to the pipeline: for the page's buttons only (every write checks again)."""
    return {
        "edit": may(user, dag_id, "PUT"),
        "trigger": may(user, dag_id, "POST", DagAccessEntity.RUN),
        "xcom": may(user, dag_id, "GET", DagAccessEntity.XCOM),
    }


def pipeline_or_404(dag_id: str) -> tuple[PipelineInfo, Path]:
    """The pipeline whose DAG is ``dag_id``; 404 when no spec of the folder has it."""
    found = queries.find_pipeline(pipelines_folder(), dag_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline spec for the DAG {dag_id!r}")
    return found


def detail(user: BaseUser, dag_id: str, run_id: str | None, search: str, offset: int) -> dict[str, Any]:
    """A pipeline's page: its row, runs, one run's rejections (searched, paged), spec and SQL,
    the latest plan (to XCom readers), and what the user may do (buttons only: every write
    checks again)."""
    info, path = pipeline_or_404(dag_id)
    allowed = permissions(user, dag_id)
    data: dict[str, Any] = {
        **info.as_dict(),
        "dag": dag_states([dag_id]).get(dag_id),
        "permissions": allowed,
        "latest_plan": latest_plan(dag_id) if allowed["xcom"] and not info.broken else None,
        "spec_text": queries.spec_text(path),
        "runs": None,
        "rejections": None,
        "run_id": None,
        "sql": None,
        "history_error": None,
    }
    if info.broken:
        return data
    try:
        with history_reader(info) as reader:
            runs = reader.runs(dag_id, limit=PAGE_SIZE)
            chosen = run_id or (runs.rows[0]["run_id"] if runs.rows else None)
            data["runs"] = runs.as_dict()
            data["run_id"] = chosen
            if chosen:
                data["rejections"] = reader.rejections(
                    dag_id, chosen, search=search, limit=PAGE_SIZE, offset=offset
                ).as_dict()
    except Exception as exc:
        data["history_error"] = _unavailable(exc)
    if data["runs"] and data["runs"]["rows"]:
        data["sql"] = RunRow(**data["runs"]["rows"][0]).details.get("sql")
    return data


# --------------------------------------------------------------------------------------------
# Pages


def render(template: str, **context: Any) -> HTMLResponse:
    """A page; ``root`` in the context is the relative path back to the app's root."""
    return HTMLResponse(templates.get_template(template).render(**context))


@app.get("/pipelines/", response_class=HTMLResponse)
def list_page(user: User) -> HTMLResponse:
    """The pipelines list (one row per spec the user may read)."""
    return render("list.html", root="../", pipelines=listing(user), user=user.get_name())


@app.get("/pipelines/{dag_id}/", response_class=HTMLResponse, dependencies=READ_DAG)
def pipeline_page(
    dag_id: str,
    user: User,
    run_id: str | None = None,
    q: str = "",
    offset: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    """A pipeline's page: runs, rejections of a run (search ``q``, paged), spec and SQL."""
    data = detail(user, dag_id, run_id, q, offset)
    return render(
        "pipeline.html", root="../../", p=data, q=q, offset=offset, page_size=PAGE_SIZE, user=user.get_name()
    )


# --------------------------------------------------------------------------------------------
# JSON


@app.get("/api/pipelines")
def list_json(user: User) -> dict[str, Any]:
    """The pipelines list as JSON."""
    return {"pipelines": listing(user)}


@app.get("/api/pipelines/{dag_id}", dependencies=READ_DAG)
def pipeline_json(
    dag_id: str, user: User, run_id: str | None = None, q: str = "", offset: Annotated[int, Query(ge=0)] = 0
) -> dict[str, Any]:
    """A pipeline's page as JSON."""
    return detail(user, dag_id, run_id, q, offset)


@app.get("/api/pipelines/{dag_id}/rejections", dependencies=READ_DAG)
def rejections_json(
    dag_id: str,
    run_id: str,
    q: str = "",
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = PAGE_SIZE,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """One run's rejections whose key, step, kind or reason contains ``q``, paged."""
    info, _ = pipeline_or_404(dag_id)
    if info.broken:
        return Page([], 0, offset, limit).as_dict()
    with history_reader(info) as reader:
        return reader.rejections(dag_id, run_id, search=q, limit=limit, offset=offset).as_dict()


@app.post("/api/pipelines/{dag_id}/pause", dependencies=[*EDIT_DAG, *audited("pause")])
def set_paused(dag_id: str, body: PauseBody) -> dict[str, Any]:
    """Pause or unpause the pipeline's DAG, as the core API's ``PATCH /dags/{dag_id}`` does."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    pipeline_or_404(dag_id)
    with create_session() as session:
        model = session.get(DagModel, dag_id)
        if model is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Airflow has no DAG {dag_id!r} yet (not parsed)")
        model.is_paused = body.is_paused
    return {"dag_id": dag_id, "is_paused": body.is_paused}


@app.post(
    "/api/pipelines/{dag_id}/runs",
    dependencies=[*TRIGGER_DAG, *audited("run_now")],
    status_code=status.HTTP_201_CREATED,
)
def run_now(dag_id: str, body: RunBody, user: User) -> dict[str, Any]:
    """Run now: a manual DAG run, created the way the core API's trigger does; refused (409) when
    the spec says ``enabled: false`` or does not load."""
    runnable_or_409(dag_id)
    return trigger(dag_id, user.get_name())


def runnable_or_409(dag_id: str) -> tuple[PipelineInfo, Path]:
    """The pipeline, when its spec loads and says ``enabled: true``; else 404 or 409."""
    info, path = pipeline_or_404(dag_id)
    if info.broken:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{info.file} does not load; fix the spec first")
    if not info.enabled:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{info.file} says enabled: false; set enabled: true to run it"
        )
    return info, path


@app.post(
    "/api/pipelines/{dag_id}/plan",
    dependencies=[*TRIGGER_DAG, *audited("plan")],
    status_code=status.HTTP_201_CREATED,
)
def plan(dag_id: str, body: RunBody, user: User) -> dict[str, Any]:
    """Plan: a dry run of the DAG (``dry_run: true``): every step runs on the workers, as
    ``krenalis-airflow plan`` runs them, reading the warehouse and Stripe and writing nothing.
    Its counts and samples show on the pipeline's page (``latest_plan``)."""
    runnable_or_409(dag_id)
    return trigger(dag_id, user.get_name(), dict(PLAN_CONF))


@app.post("/api/pipelines/{dag_id}/preview", dependencies=[*TRIGGER_DAG, *audited("preview")])
def preview(dag_id: str, body: PreviewBody) -> dict[str, Any]:
    """Preview: the transformation applied to ``limit`` live rows of the source, each profile
    beside its Stripe fields or its rejection; the CLI's ``preview`` (``local_run.preview``),
    which never touches Stripe or the state store.

    It runs in the API server, so only transformations that run sandboxed are previewed here:
    mappings (Jinja2's immutable sandbox) and JavaScript (Duktape in worker processes). A Python
    transformation is the spec author's code, which Airflow 3 never runs in the API server: Plan
    (a dry run on the workers) or ``krenalis-airflow preview`` show it instead.
    """
    from krenalis_airflow.core.redact import redact
    from krenalis_airflow.exceptions import KrenalisError
    from krenalis_airflow.local_run import preview as local_preview

    _, path = pipeline_or_404(dag_id)
    spec = _spec_at(path)
    if spec.transformation.python is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "a Python transformation runs only on workers, never in the API server: use Plan "
            "(a dry run) or `krenalis-airflow preview` on a worker",
        )
    try:
        sql, pairs = local_preview(path, body.limit)
    except KrenalisError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, redact(" ".join(str(exc).split()))) from None
    return {"sql": sql, "rows": [{"profile": profile, "outcome": outcome} for profile, outcome in pairs]}


def latest_plan(dag_id: str) -> dict[str, Any] | None:
    """The latest dry run of ``dag_id`` (Plan): its state and, once its upsert step succeeded,
    the summary it returned (counts, Stripe calls, samples), read from XCom."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(50)
        )
        run = next((r for r in runs if (r.conf or {}).get("dry_run") is True), None)
        if run is None:
            return None
        found: dict[str, Any] = {"run_id": run.run_id, "state": str(run.state), "summary": None}
        xcom = session.scalar(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == "upsert",
                XComModel.key == "return_value",
            )
        )
        if xcom is not None:
            found["summary"] = queries.plan_summary(_xcom_value(xcom))
    return found


def _xcom_value(xcom: Any) -> Any:
    import json

    value = xcom.value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value


def trigger(dag_id: str, user_name: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a manual run of ``dag_id`` with ``conf`` through ``airflow.api.common.trigger_dag``."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType

    model = DagModel.get_current(dag_id)
    if model is None or model.is_stale:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"Airflow has no current DAG {dag_id!r}")
    if model.has_import_errors:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"the DAG {dag_id!r} has import errors")
    try:
        run = trigger_dag(
            dag_id, triggered_by=DagRunTriggeredByType.UI, triggering_user_name=user_name, conf=conf or {}
        )
    except DagNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except DagRunAlreadyExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    if run is None:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "Airflow created no run")
    return {"dag_id": dag_id, "dag_run_id": run.run_id, "state": str(run.state)}
