"""Spec → plan: everything the DAG factory needs, as plain data, decided in one visible place.

The factory only renders a plan into Airflow objects; a broken spec becomes a ``BrokenPlan`` so
the person who broke it sees the error in the UI without hiding any other pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from krenalis_airflow.core.conditions import Condition, Group
from krenalis_airflow.core.spec import PIPELINE_ID, LoadedSpec, PipelineSpec, pipeline_id_of
from krenalis_airflow.exceptions import SpecError

STEPS = ("extract", "transform", "dedupe", "upsert")
STEP_DOCS = {
    "extract": "Reads the filtered profiles from the warehouse (the filter runs as SQL in the warehouse).",
    "transform": "Maps each profile to Stripe customer fields; rejects profiles without a matching value.",
    "dedupe": "Applies the duplicate_profiles policy to profiles sharing one matching value.",
    "upsert": "Creates/updates only new or changed customers in Stripe and records them in the ledger.",
}
TAGS = ("krenalis", "stripe")
DISABLED_TAG = "disabled"
DISABLED_PREFIX = "Disabled in spec — "


@dataclass(frozen=True)
class StepPlan:
    """One task of a pipeline's DAG: its step, upstream task and doc."""

    task_id: str
    step: str
    upstream: str | None
    doc: str


@dataclass(frozen=True)
class PipelinePlan:
    """Everything needed to render a valid spec as a DAG, decided without Airflow."""

    dag_id: str
    spec: PipelineSpec
    spec_file: str
    description: str
    schedule: timedelta | str | None
    paused: bool  # is_paused_upon_creation; see plan_pipeline
    tags: tuple[str, ...]
    doc_md: str
    steps: tuple[StepPlan, ...]


@dataclass(frozen=True)
class BrokenPlan:
    """A DAG standing in for a spec that failed to load, so the error shows in the UI."""

    dag_id: str
    spec_file: str
    description: str
    error: str
    doc_md: str
    tags: tuple[str, ...] = (*TAGS, "broken-spec")


def plan_pipeline(loaded: LoadedSpec) -> PipelinePlan:
    """The DAG of one spec.

    Two switches turn a pipeline on and off. The spec's ``enabled`` (reviewed in git) is carried
    by the schedule alone: ``false`` means no schedule here, and a run triggered anyway skips every
    step (``ProfileExportOperator.execute``). Airflow's pause toggle (operations) stays Airflow's
    switch on top. The spec never pauses a DAG: ``is_paused_upon_creation`` only acts when Airflow
    first sees the DAG, so a pipeline created paused because it was disabled would stay paused
    after ``enabled: true``; unpaused, flipping ``enabled`` is all it takes.
    """
    spec = loaded.spec
    steps = tuple(
        StepPlan(step, step, STEPS[i - 1] if i else None, STEP_DOCS[step]) for i, step in enumerate(STEPS)
    )
    description = spec.description or f"Sync {spec.source.table or 'query'} → Stripe customers"
    return PipelinePlan(
        dag_id=spec.id,
        spec=spec,
        spec_file=str(loaded.path),
        description=description if spec.enabled else DISABLED_PREFIX + description,
        schedule=spec.schedule_value if spec.enabled else None,
        paused=False,
        tags=tuple(dict.fromkeys((*TAGS, *(() if spec.enabled else (DISABLED_TAG,)), *spec.tags))),
        doc_md=describe(spec, loaded.path),
        steps=steps,
    )


def disabled_message(spec: PipelineSpec, spec_file: str) -> str:
    """Why a run of a spec-disabled pipeline does nothing, and how to turn it on."""
    return (
        f"pipeline {spec.id} is disabled by its spec (enabled: false in {spec_file}); "
        "set enabled: true to run it"
    )


BROKEN_PREFIX = "krenalis_broken_"


def plan_broken(error: SpecError, taken: set[str], prefix: str = BROKEN_PREFIX) -> BrokenPlan:
    """A placeholder DAG for a spec that does not load, named after its file (the pipeline id)
    when that is a valid id not already taken, so the broken pipeline's own DAG shows the error;
    else ``prefix`` + the file's name (a shard's DAG file passes a prefix naming the shard, so two
    shards never define one placeholder DAG)."""
    path = Path(error.source)
    dag_id = pipeline_id_of(path)
    if not re.match(PIPELINE_ID, dag_id) or dag_id in taken:
        dag_id = prefix + re.sub(r"[^a-z0-9_]", "_", path.stem.lower())
    while dag_id in taken:  # x.yaml and x.yml: both broken, each with a DAG of its own
        dag_id += "_"
    message = str(error)
    doc = (
        f"## Broken pipeline spec\n\n`{path}` does not load, so this pipeline is not running. "
        f"Fix the file; this DAG turns back into the pipeline at the next parse.\n\n```\n{message}\n```\n"
    )
    return BrokenPlan(dag_id, str(path), f"BROKEN SPEC {path.name}: fix it (see docs)", message, doc)


def describe(spec: PipelineSpec, path: Path) -> str:
    """The DAG's ``doc_md``: what a person needs to understand the pipeline at a glance."""
    src = spec.source
    origin = f"table `{src.table}`" if src.table else f"query\n\n```sql\n{src.query.strip()}\n```\n"  # type: ignore[union-attr]
    export = spec.export
    lines = [
        f"## {spec.description or spec.id}",
        "",
        f"Spec file: `{path}`",
        "",
        *(() if spec.enabled else (f"**Disabled in spec**: {disabled_message(spec, str(path))}.", "")),
        f"- **Source**: connection `{src.conn_id}`, {origin}, key `{src.key}`",
        f"- **Filter**: {describe_filter(spec.filter) if spec.filter else 'every profile'}",
        f"- **Destination**: Stripe connection `{spec.destination.conn_id}`",
        f"- **Mode**: `{export.mode}`",
        f"- **Matching**: profile `{export.matching.property}` ↔ Stripe `{export.matching.stripe}`",
        f"- **Duplicate profiles**: `{export.duplicate_profiles}`"
        + (f" (order by `{export.order_by}`)" if export.order_by else ""),
        f"- **Duplicate customers**: `{export.duplicate_customers}`",
        f"- **Schedule**: {spec.schedule or 'manual only'}" + ("" if spec.enabled else " (disabled)"),
        "",
        "| Stripe field | expression |",
        "|---|---|",
    ]
    for field, expression in (spec.transformation.mapping or {}).items():
        cell = expression.replace("|", r"\|")
        lines.append(f"| `{field}` | `{cell}` |")
    lines += [
        "",
        "Trigger params: `dry_run` (write nothing, report), `full_resync` (compare with Stripe itself).",
    ]
    return "\n".join(lines)


def describe_filter(group: Group) -> str:
    """The filter as a person reads it, nested groups in parentheses."""
    parts = [
        f"({describe_filter(item)})" if isinstance(item, Group) else _describe_condition(item)
        for item in group.conditions
    ]
    return f" {group.logical} ".join(parts)


def _describe_condition(condition: Condition) -> str:
    values = ", ".join(repr(v) for v in condition.values)
    return f"{condition.property} {condition.operator}" + (f" {values}" if values else "")
