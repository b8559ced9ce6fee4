"""Run a pipeline's steps in this process, for the ``preview`` and ``plan`` commands.

The same step functions as the DAG's tasks, chained here with a temporary folder instead of
object storage and XCom, so ``plan`` reports exactly what a ``dry_run`` DAG run would.
Connections come from Airflow as usual (``AIRFLOW_CONN_*``, the metadata DB, a secrets backend).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from krenalis_airflow.core.records import read_jsonl
from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.operators import steps

log = logging.getLogger("krenalis_airflow.local_run")
log.propagate = False  # Airflow's logging writes to stdout; the commands print their own report there
log.addHandler(logging.StreamHandler(sys.stderr))
log.setLevel(logging.WARNING)


@contextmanager
def _runs(spec_file: Path, **options: Any) -> Iterator[tuple[steps.StepRun, Path]]:
    spec = load_spec(spec_file)
    with tempfile.TemporaryDirectory(prefix=f"krenalis-{spec.id}-") as folder:
        run = steps.StepRun(
            spec=spec,
            spec_file=str(spec_file),
            folder=ObjectStoragePath(f"file://{folder}"),
            upstream={},
            dry_run=True,
            full_resync=options.get("full_resync", False),
            log=log,
            limit=options.get("limit"),
        )
        yield run, Path(folder)


def _then(run: steps.StepRun, upstream: dict[str, Any]) -> steps.StepRun:
    return dataclasses.replace(run, upstream=upstream)


def preview(spec_file: Path, limit: int) -> tuple[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The extraction SQL and up to ``limit`` (profile, outcome) pairs; nothing touches Stripe."""
    with _runs(spec_file, limit=limit) as (run, _):
        extracted = steps.extract(run)
        transformed = steps.transform(_then(run, extracted))
        outcomes: dict[str, dict[str, Any]] = {}
        for path in (transformed["records"], *transformed["rejection_files"]):
            with ObjectStoragePath(path).open() as stream:
                for item in read_jsonl(stream):
                    outcomes[item["key"]] = item
        key = run.spec.source.key
        with ObjectStoragePath(extracted["profiles"]).open() as stream:
            pairs = [(profile, outcomes.get(str(profile[key]), {})) for profile in read_jsonl(stream)]
        return extracted["sql"], pairs


def plan(spec_file: Path, *, full_resync: bool = False) -> dict[str, Any]:
    """A dry run of the whole pipeline: reads the warehouse and Stripe, writes nothing."""
    with _runs(spec_file, full_resync=full_resync) as (run, _):
        upstream: dict[str, Any] = {}
        for step in (steps.extract, steps.transform, steps.dedupe, steps.upsert):
            upstream = step(_then(run, upstream))
        rejected: list[dict[str, Any]] = []
        for path in upstream["rejection_files"]:
            with ObjectStoragePath(path).open() as stream:
                rejected.extend(item for _, item in zip(range(5), read_jsonl(stream), strict=False))
        return {**upstream, "rejected_samples": rejected[:5]}
