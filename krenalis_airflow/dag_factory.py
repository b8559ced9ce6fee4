"""Spec → plan → DAG. Every spec is loaded, planned and rendered on its own: one bad spec never
hides, stalls or marks stale another pipeline's DAG.

A spec that fails becomes an unscheduled placeholder DAG (tag ``broken-spec``) whose description and
docs show the error and whose only task fails with it, so the person who broke it sees why.
A spec's DAG is never paused by the spec: ``enabled: false`` means no schedule and runs that skip
every step (see ``plan_pipeline``), and Airflow's pause toggle stays the operators' switch on top.
``check_specs``, run by a second DAG file that defines no DAG, also raises for broken specs so
Airflow lists them under "DAG Import Errors": an import error belongs to a file and marks that
file's DAGs stale, and that file has none, so no pipeline is hidden.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import MethodType
from typing import Any

from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowFailException

from krenalis_airflow.core.plan import BROKEN_PREFIX, BrokenPlan, PipelinePlan, plan_broken, plan_pipeline
from krenalis_airflow.core.spec import LoadedSpec, discover, shard_folder, shard_ids
from krenalis_airflow.exceptions import BrokenPipelineSpecs, SpecError, SpecProblem
from krenalis_airflow.operators.alerts import FailureAlert
from krenalis_airflow.operators.lineage import source_asset, writes_outlet
from krenalis_airflow.operators.profile_export import ProfileExportOperator

log = logging.getLogger(__name__)
START = datetime(2024, 1, 1, tzinfo=UTC)
DEFAULT_ARGS = {"owner": "krenalis", "retries": 2}


def pipelines_dir(default: str | Path) -> Path:
    """The pipelines folder: ``$KRENALIS_PIPELINES_DIR`` if set, else ``default``."""
    return Path(os.environ.get("KRENALIS_PIPELINES_DIR") or default)


def _dag_file_pipelines(dag_file: str | Path) -> Path:
    """The pipelines folder of a DAG file: ``$KRENALIS_PIPELINES_DIR``, or ``pipelines/`` beside it."""
    return pipelines_dir(Path(dag_file).parent / "pipelines")


def pipeline_dags(dag_file: str | Path, shard: str | None = None) -> dict[str, DAG]:
    """The DAGs of the DAG file ``krenalis_pipelines.py`` (``dag_file`` is its ``__file__``).

    The file does ``globals().update(pipeline_dags(__file__))``; it lives here, not in the file,
    so a deployment's DAGs folder (written by ``krenalis-airflow init``) never goes stale.
    ``shard``: the DAG file of one sub-folder of the pipelines folder (``init --shard``), parsed
    by Airflow on its own, so a slow or broken shard never takes another's DAGs with it. Without
    a shard, the pipelines folder's own files. A pipeline id used by two shards is an error in both.
    """
    pipelines = _dag_file_pipelines(dag_file)
    return build_dags(shard_folder(pipelines, shard), shards=pipelines)


def check_pipeline_specs(dag_file: str | Path, shard: str | None = None) -> None:
    """What the DAG file ``krenalis_spec_check.py`` runs: ``check_specs`` on its pipelines folder
    (or on its ``shard``, a sub-folder: see ``pipeline_dags``)."""
    pipelines = _dag_file_pipelines(dag_file)
    check_specs(shard_folder(pipelines, shard), shards=pipelines)


def _discover(folder: Path, shards: Path | None) -> tuple[list[LoadedSpec | SpecError], set[str]]:
    """``discover(folder)``, and the pipeline ids of the other shards: with ``shards`` (the
    pipelines folder ``folder`` is a shard of), an id another shard also holds is an error in
    each (see ``shard_ids``), and no placeholder may take it."""
    if shards is None:
        return discover(folder), set()
    elsewhere = shard_ids(shards, None if folder.resolve() == shards.resolve() else folder.name)
    return discover(folder, elsewhere=elsewhere), set(elsewhere)


def check_specs(folder: str | Path, *, shards: str | Path | None = None) -> None:
    """Raise ``BrokenPipelineSpecs`` naming every spec in ``folder`` that does not load.

    Builds no DAG: Airflow registers every DAG created while a file is parsed, so building the
    pipelines here would register each dag_id twice. ``shards``: see ``build_dags``.
    """
    with _collector_paused():
        found, _ = _discover(Path(folder), None if shards is None else Path(shards))
    errors = [str(item) for item in found if not isinstance(item, LoadedSpec)]
    if errors:
        count = f"{len(errors)} pipeline spec{'s' if len(errors) > 1 else ''}"
        raise BrokenPipelineSpecs(
            f"{count} in {folder} cannot run; each is listed as a 'broken-spec' placeholder DAG and the "
            "other pipelines are not affected:\n\n" + "\n\n".join(errors)
        )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the DAGs of a folder are built.

    Building thousands of DAGs allocates millions of objects that all stay alive; the collector
    kept re-scanning them (a fifth of a 5,000-spec parse). Whatever cycles the build drops are
    collected once it is back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_dags(folder: str | Path, *, shards: str | Path | None = None) -> dict[str, DAG]:
    """One DAG per spec file in ``folder`` (good or broken), keyed by dag_id.

    ``shards``: the pipelines folder when ``folder`` is one of its shards (itself or a
    sub-folder): a spec whose id another shard holds too is then broken, and a sub-folder's
    placeholders are named ``krenalis_broken_<shard>_…``, so no dag_id comes from two DAG files.
    """
    with _collector_paused():
        return _build_dags(Path(folder), None if shards is None else Path(shards))


def _build_dags(folder: Path, shards: Path | None) -> dict[str, DAG]:
    dags: dict[str, DAG] = {}
    loaded, elsewhere = _discover(folder, shards)
    in_shard = shards is not None and folder.resolve() != shards.resolve()
    prefix = f"{BROKEN_PREFIX}{folder.name}_" if in_shard else BROKEN_PREFIX
    taken = {item.spec.id for item in loaded if isinstance(item, LoadedSpec)} | elsewhere
    for item in loaded:
        if isinstance(item, LoadedSpec):
            try:
                dag = render(plan_pipeline(item))
            except Exception as exc:  # Airflow refused what the spec asked for: show it like a spec error
                item = SpecError(str(item.path), [SpecProblem("", f"Airflow rejected the pipeline: {exc}")])
            else:
                dags[dag.dag_id] = dag
                continue
        broken = plan_broken(item, taken | set(dags), prefix)
        log.error(
            "Pipeline spec %s is broken; it runs as the placeholder DAG %s:\n%s",
            item.source,
            broken.dag_id,
            item,
        )
        dags[broken.dag_id] = render_broken(broken)
    return dags


def render(plan: PipelinePlan) -> DAG:
    """Build the Airflow DAG of a valid spec from its plan."""
    with DAG(
        dag_id=plan.dag_id,
        description=plan.description,
        doc_md=plan.doc_md,
        schedule=plan.schedule,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=plan.paused,  # False: `enabled` lives in the schedule, not the pause
        tags=set(plan.tags),
        default_args=DEFAULT_ARGS,
        params=flags(
            {
                "dry_run": Param(
                    False, type="boolean", description="Compute everything, write nothing to Stripe."
                ),
                "full_resync": Param(
                    False, type="boolean", description="Ignore the ledger and compare with Stripe itself."
                ),
                "reconcile": Param(
                    False,
                    type="boolean",
                    description="List Stripe once and set back what was changed or deleted there "
                    "(also runs every export.reconcile).",
                ),
            }
        ),
    ) as dag:
        previous = None
        failure = _failure_callback(plan)
        for step in plan.steps:
            task = ProfileExportOperator(
                task_id=step.task_id,
                spec=plan.spec,
                step=step.step,
                spec_file=plan.spec_file,
                upstream_task_id=step.upstream,
                doc_md=step.doc,
                on_failure_callback=failure,
                **_lineage(plan, step.step),
            )
            if previous is not None:
                previous >> task
            previous = task
    dag.validate()
    return dag


def _failure_callback(plan: PipelinePlan) -> FailureAlert | None:
    """The tasks' ``on_failure_callback`` when the spec asks for failure alerts (``alerts.on_failure``).

    A task callback, not the DAG's: it runs in the failed task's process (see
    ``operators/alerts.py``). Holds plain settings: the notifier is imported only when it fires."""
    alerts = plan.spec.alerts
    return FailureAlert(plan.spec, plan.spec_file) if alerts is not None and alerts.on_failure else None


def _lineage(plan: PipelinePlan, step: str) -> dict[str, Any]:
    """The step's assets: the source table is the extract's inlet; the upsert's outlet is the alias
    through which a run that wrote emits the destination's asset event (``operators/lineage.py``).
    Built from the spec alone: no connection is read while parsing."""
    if step == "extract":
        return {"inlets": [source_asset(plan.spec)]}
    if step == "upsert":
        return {"outlets": [writes_outlet(plan.spec)]}
    return {}


BOOLEAN = {"type": "boolean"}
_NO_VALUE: Any = object()  # resolve() called without a value (Airflow's own marker is private)


def _resolve_flag(param: Param, value: Any = _NO_VALUE, suppress_exception: bool = False) -> Any:
    """``Param.resolve`` of a boolean param: a bool is returned (and kept) as jsonschema would
    accept it; anything else goes through ``Param.resolve`` and fails there as before."""
    final = param.value if value is _NO_VALUE else value
    if isinstance(final, bool) and param.schema == BOOLEAN:
        param.value = final
        return final
    if value is _NO_VALUE:
        return Param.resolve(param, suppress_exception=suppress_exception)
    return Param.resolve(param, value, suppress_exception)


def flags(params: dict[str, Param]) -> dict[str, Param]:
    """``params``, each boolean ``Param`` holding a bool resolved without jsonschema.

    Airflow resolves a Param through ``jsonschema.validate``, which checks the schema against its
    metaschema every time (0.2-0.8 ms): once per param when a scheduled DAG is built, when each
    task copies the DAG's params, and a dozen times more when the DAG is serialised; for a
    pipeline DAG that was most of its parse. A bool always satisfies ``{"type": "boolean"}``, so
    ``_resolve_flag`` answers what the validation would. The params stay ``Param`` objects with
    the same schema and description (Airflow serialises nothing else, and refuses subclasses);
    their deep copies (each task's) are made directly and keep the shortcut.
    """
    for param in params.values():
        if param.schema == BOOLEAN and isinstance(param.value, bool):
            _flag(param)
    return params


def _flag(param: Param) -> Param:
    param.__dict__["resolve"] = MethodType(_resolve_flag, param)
    # Each task deep-copies the DAG's params twice; the generic deepcopy was half of a task's cost.
    param.__dict__["__deepcopy__"] = MethodType(_copy_flag, param)
    return param


def _copy_flag(param: Param, memo: dict[int, Any]) -> Param:
    """``copy.deepcopy`` of a boolean param: a new one, with the same shortcut."""
    return _flag(Param(param.value, param.description, schema=dict(param.schema), source=param.source))


def _fail(message: str) -> Any:
    def report_spec_error() -> None:
        # The placeholder's only task reports a spec error that was already rendered (at parse
        # time) into text; it raises Airflow's outcome itself rather than going through
        # ``operators.errors.airflow_outcome``, which maps the package's exceptions raised by steps.
        raise AirflowFailException(message)

    return report_spec_error


def render_broken(plan: BrokenPlan) -> DAG:
    """Build the stand-in DAG of a broken spec, whose one task fails with the error."""
    from airflow.providers.standard.operators.python import PythonOperator

    with DAG(
        dag_id=plan.dag_id,
        description=plan.description,
        doc_md=plan.doc_md,
        schedule=None,
        start_date=START,
        catchup=False,
        # Never paused: a placeholder has no schedule, and its dag_id is the pipeline's, so a
        # placeholder created paused would leave the fixed pipeline paused (decided when first seen).
        is_paused_upon_creation=False,
        tags=set(plan.tags),
    ) as dag:
        PythonOperator(task_id="report_spec_error", python_callable=_fail(plan.error), retries=0)
    return dag
