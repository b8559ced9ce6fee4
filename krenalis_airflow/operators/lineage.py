"""Lineage as Airflow assets: the source table is the extract task's inlet, and a run that wrote
to Stripe emits an event for the destination's asset (URIs: ``core/lineage.py``).

"Only when it wrote": Airflow emits an event for every asset a task declares in ``outlets``
whenever the task succeeds (3.3: ``TaskInstance.register_asset_changes_in_db``), and nothing
lets a task withdraw one. So the upsert's outlet is an ``AssetAlias`` (one per pipeline), and the
task adds the destination asset to it only when the run created, updated, repaired, cleared or
deleted at least one customer: a rerun that found nothing to change, or a dry run, emits no event
and triggers no downstream DAG. Airflow creates the asset at its first event (or when a DAG
scheduled on it is parsed) and links it to the alias; the event's ``extra`` carries the counts.
Downstream DAGs schedule on ``Asset("x-stripe://<conn_id>/customers")`` (every pipeline writing
through that connection) or on the alias (this pipeline only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, AssetAlias

from krenalis_airflow.core.lineage import destination_uri, source_uri, stripe_writes, writes_alias
from krenalis_airflow.core.spec import PipelineSpec

log = logging.getLogger(__name__)


def source_asset(spec: PipelineSpec) -> Asset:
    """The extract task's inlet: the source table (or the pipeline's query) on its connection."""
    return Asset(source_uri(spec))


def destination_asset(spec: PipelineSpec) -> Asset:
    """The asset updated by each run that wrote to Stripe: the destination connection's customers."""
    return Asset(destination_uri(spec))


def writes_outlet(spec: PipelineSpec) -> AssetAlias:
    """The upsert task's outlet: an alias that receives the destination asset only when a run wrote."""
    return AssetAlias(writes_alias(spec))


def record_writes(context: Mapping[str, Any], spec: PipelineSpec, summary: Mapping[str, Any]) -> bool:
    """Emit the destination asset's event through the upsert's alias when the run wrote to
    Stripe; returns whether it did. ``extra``: the counts, never profile data."""
    written = stripe_writes(summary)
    if "outlet_events" not in context:  # called outside a task (a test of the step): nothing to emit
        return False
    if not written:
        log.info("Nothing was written to Stripe: no event for %s", destination_uri(spec))
        return False
    extra = {
        "pipeline": spec.id,
        "written": written,
        **{name: summary.get(name, 0) for name in ("created", "updated", "unchanged", "extracted")},
    }
    context["outlet_events"][writes_outlet(spec)].add(destination_asset(spec), extra=extra)
    log.info("Asset event for %s: %d customers written", destination_uri(spec), written)
    return True
