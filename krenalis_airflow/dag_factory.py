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

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowFailException

from krenalis_airflow.core.plan import BrokenPlan, PipelinePlan, plan_broken, plan_pipeline
from krenalis_airflow.core.spec import LoadedSpec, discover
from krenalis_airflow.exceptions import BrokenPipelineSpecs, SpecError, SpecProblem
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


def pipeline_dags(dag_file: str | Path) -> dict[str, DAG]:
    """The DAGs of the DAG file ``krenalis_pipelines.py`` (``dag_file`` is its ``__file__``).

    The file does ``globals().update(pipeline_dags(__file__))``; it lives here, not in the file,
    so a deployment's DAGs folder (written by ``krenalis-airflow init``) never goes stale.
    """
    return build_dags(_dag_file_pipelines(dag_file))


def check_pipeline_specs(dag_file: str | Path) -> None:
    """What the DAG file ``krenalis_spec_check.py`` runs: ``check_specs`` on its pipelines folder."""
    check_specs(_dag_file_pipelines(dag_file))


def check_specs(folder: str | Path) -> None:
    """Raise ``BrokenPipelineSpecs`` naming every spec in ``folder`` that does not load.

    Builds no DAG: Airflow registers every DAG created while a file is parsed, so building the
    pipelines here would register each dag_id twice.
    """
    errors = [str(item) for item in discover(folder) if not isinstance(item, LoadedSpec)]
    if errors:
        count = f"{len(errors)} pipeline spec{'s' if len(errors) > 1 else ''}"
        raise BrokenPipelineSpecs(
            f"{count} in {folder} cannot run; each is listed as a 'broken-spec' placeholder DAG and the "
            "other pipelines are not affected:\n\n" + "\n\n".join(errors)
        )


def build_dags(folder: str | Path) -> dict[str, DAG]:
    """One DAG per spec file in ``folder`` (good or broken), keyed by dag_id."""
    dags: dict[str, DAG] = {}
    loaded = discover(folder)
    taken = {item.spec.id for item in loaded if isinstance(item, LoadedSpec)}
    for item in loaded:
        if isinstance(item, LoadedSpec):
            try:
                dag = render(plan_pipeline(item))
            except Exception as exc:  # Airflow refused what the spec asked for: show it like a spec error
                item = SpecError(str(item.path), [SpecProblem("", f"Airflow rejected the pipeline: {exc}")])
            else:
                dags[dag.dag_id] = dag
                continue
        broken = plan_broken(item, taken | set(dags))
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
        params={
            "dry_run": Param(
                False, type="boolean", description="Compute everything, write nothing to Stripe."
            ),
            "full_resync": Param(
                False, type="boolean", description="Ignore the ledger and compare with Stripe itself."
            ),
        },
    ) as dag:
        previous = None
        for step in plan.steps:
            task = ProfileExportOperator(
                task_id=step.task_id,
                spec=plan.spec,
                step=step.step,
                spec_file=plan.spec_file,
                upstream_task_id=step.upstream,
                doc_md=step.doc,
            )
            if previous is not None:
                previous >> task
            previous = task
    dag.validate()
    return dag


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
