"""Lineage: the names of what a pipeline reads and writes, as Airflow asset URIs, and whether a
run wrote anything. Plain strings; ``operators/lineage.py`` turns them into Airflow assets.

Both URIs are built from the spec alone: a DAG file is parsed every 30 s and must not read a
connection, so they name *connections*, not hosts or accounts (the Stripe account id is only
known once a run has read it, see ``core/destination.py``). Both schemes start with ``x-``,
Airflow's prefix for schemes it does not know: such URIs are kept as written, where a bare
``stripe://`` would make the first asset of every parse load the providers manager to look for a
normaliser (a few hundred milliseconds) and find none.

- destination: ``x-stripe://<destination.conn_id>/customers``;
- source: ``x-sql://<source.conn_id>/<table>`` (``schema.name`` as written), or
  ``x-sql://<source.conn_id>/query/<pipeline id>`` for a ``query:`` source, which has no table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from krenalis_airflow.core.spec import PipelineSpec

DESTINATION_SCHEME = "x-stripe"
SOURCE_SCHEME = "x-sql"


def _host(conn_id: str) -> str:
    return quote(conn_id, safe="")


def destination_uri(spec: PipelineSpec) -> str:
    """The asset a run that wrote to Stripe updates: the customers behind the destination connection."""
    return f"{DESTINATION_SCHEME}://{_host(spec.destination.conn_id)}/customers"


def source_uri(spec: PipelineSpec) -> str:
    """The asset the extract step reads: the source table (or the pipeline's query) on its connection."""
    source = spec.source
    path = source.table if source.table is not None else f"query/{spec.id}"
    return f"{SOURCE_SCHEME}://{_host(source.conn_id)}/{path}"


def writes_alias(spec: PipelineSpec) -> str:
    """The name of the asset alias through which the upsert reports a write (see
    ``operators/lineage.py``): one per pipeline."""
    return f"krenalis/{spec.id}/stripe-writes"


def stripe_writes(summary: Mapping[str, Any]) -> int:
    """How many customers a run changed in Stripe: created, updated, repaired by a
    reconciliation, and cleared or deleted because their profiles left the audience.
    A dry run changed nothing."""
    if summary.get("dry_run"):
        return 0
    repaired = (summary.get("reconcile") or {}).get("repaired", 0)
    left = summary.get("left") or {}
    return int(
        summary.get("created", 0)
        + summary.get("updated", 0)
        + repaired
        + left.get("cleared", 0)
        + left.get("deleted", 0)
    )
