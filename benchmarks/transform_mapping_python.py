"""Throughput of mapping (Jinja2) and Python transformations on one core, in records/s.

    .venv/bin/python benchmarks/transform_mapping_python.py [--profiles 100000] [--batch-size 1000]

Transforms synthetic sample profiles with the sample pipeline's mapping (8 fields: a name joined
with ``~``, phone, city, postal code, country, three metadata values) and with an equivalent
Python ``transform``. Two figures for each:

* ``transformer``: ``transform_batch`` alone, batch by batch, as the targets are stated
  (mapping ≥ 50,000 records/s, Python ≥ 200,000 records/s);
* ``transform step``: ``run.transform_profiles`` (matching value, coercion to Stripe's types and
  output validation included), which is what a run's transform task costs before writing files.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from krenalis_airflow.core.sample_data import generate_profiles
from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.core.transform.base import Transformer
from krenalis_airflow.core.transform.mapping import MappingTransform
from krenalis_airflow.core.transform.python import PythonTransformer
from krenalis_airflow.core.transform.run import TransformSettings, transform_profiles

SAMPLE = Path(__file__).resolve().parents[1] / "dags" / "pipelines" / "sample_customers.yaml"
PYTHON = """
def transform(profile):
    return {
        "name": f"{profile['first_name'] or ''} {profile['last_name'] or ''}",
        "phone": profile["phone"],
        "address.city": profile["city"],
        "address.postal_code": profile["postal_code"],
        "address.country": profile["country"],
        "metadata.plan": profile["plan"],
        "metadata.profile_id": profile["profile_id"],
        "metadata.lifetime_value": profile["lifetime_value"],
    }
"""
TARGETS = {"mapping": 50_000, "python": 200_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    spec = load_spec(SAMPLE)
    assert spec.transformation.mapping is not None
    profiles = [p._asdict() for p in generate_profiles(args.profiles)]
    batches = [profiles[i : i + args.batch_size] for i in range(0, len(profiles), args.batch_size)]
    transformers: dict[str, Transformer] = {
        "mapping": MappingTransform(spec.transformation.mapping),
        "python": PythonTransformer(PYTHON),
    }
    print(f"{len(profiles):,} profiles in batches of {args.batch_size:,}")
    settings = TransformSettings.of(spec)
    for name, transformer in transformers.items():
        alone = _rate(functools.partial(_transform_all, transformer, batches), len(profiles))
        step = _rate(
            functools.partial(_step, transformer, profiles, settings, args.batch_size), len(profiles)
        )
        verdict = "met" if alone >= TARGETS[name] else "NOT met"
        print(
            f"{name:<8} transformer {alone:>10,.0f} records/s   transform step {step:>9,.0f} records/s"
            f"   target {TARGETS[name]:,}: {verdict}"
        )


def _transform_all(transformer: Transformer, batches: Sequence[list[dict[str, Any]]]) -> None:
    for batch in batches:
        transformer.transform_batch(batch)


def _step(
    transformer: Transformer, profiles: Sequence[Mapping[str, Any]], settings: TransformSettings, size: int
) -> None:
    for _ in transform_profiles(profiles, transformer, settings, batch_size=size):
        pass


def _rate(work: Callable[[], None], count: int, repeats: int = 3) -> float:
    """Records/s of the best of ``repeats`` runs (CPU time of this process: one core)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return count / best


if __name__ == "__main__":
    main()
