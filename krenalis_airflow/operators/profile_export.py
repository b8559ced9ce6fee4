"""``ProfileExportOperator``: runs one step of one pipeline. All logic lives in the core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from krenalis_airflow.core.plan import STEPS, disabled_message
from krenalis_airflow.core.spec import PipelineSpec
from krenalis_airflow.operators.errors import airflow_outcome
from krenalis_airflow.operators.storage import run_folder

# The function of ``operators/steps.py`` each step runs, by name: that module (hooks, stripe,
# requests, SQL providers) is imported when a task runs, never when a DAG file is parsed.
RUNNERS = {"extract": "extract", "transform": "transform", "dedupe": "dedupe", "upsert": "upsert"}


class ProfileExportOperator(BaseOperator):
    """Run ``step`` (extract, transform, dedupe or upsert) of the pipeline ``spec``.

    Profiles travel between steps as files under the object-storage base; XCom carries only
    paths and counts. Spec, configuration and terminal Stripe errors fail the task without
    retries; transient failures raise so Airflow's retries take over (see ``operators.errors``).
    A spec with ``enabled: false`` skips the step before anything is read or written.

    :param spec: the validated pipeline spec.
    :param step: which step to run.
    :param spec_file: where the spec came from, for error messages.
    :param upstream_task_id: the task whose XCom this step reads (None for extract).
    """

    template_fields: Sequence[str] = ()
    ui_color = "#e8e4ff"

    def __init__(
        self,
        *,
        spec: PipelineSpec,
        step: str,
        spec_file: str = "<spec>",
        upstream_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
        self.spec = spec
        self.step = step
        self.spec_file = spec_file
        self.upstream_task_id = upstream_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        """Run this operator's step of the pipeline; returns the XCom the next step reads."""
        if not self.spec.enabled:
            # ``enabled: false`` already removed the schedule; a run started anyway (the UI's
            # trigger, the REST API, ``airflow dags test``) reads and writes nothing. A skip, not a
            # failure: nothing is broken, so no failure alert fires and no retry runs, and the run
            # ends with every step skipped and this message in the first step's log. (The CLI's
            # ``plan`` still previews a disabled spec: it runs the steps without this operator.)
            raise AirflowSkipException(disabled_message(self.spec, self.spec_file))
        from krenalis_airflow.operators import steps

        params = context.get("params") or {}
        upstream = context["ti"].xcom_pull(task_ids=self.upstream_task_id) if self.upstream_task_id else {}
        run = steps.StepRun(
            spec=self.spec,
            spec_file=self.spec_file,
            folder=run_folder(self.spec.id, context["run_id"]),
            upstream=upstream or {},
            dry_run=bool(params.get("dry_run", False)),
            full_resync=bool(params.get("full_resync", False)),
            reconcile=bool(params.get("reconcile", False)),
            run_id=context["run_id"],
            log=self.log,  # type: ignore[arg-type]
        )
        with airflow_outcome():
            result: dict[str, Any] = getattr(steps, RUNNERS[self.step])(run)
        if self.step == "upsert":  # the destination's asset event, only when the run wrote
            from krenalis_airflow.operators.lineage import record_writes

            record_writes(context, self.spec, result)
        return result
