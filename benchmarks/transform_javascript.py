"""Throughput of JavaScript transformations: records/s through ``JavaScriptTransformer``.

    .venv/bin/python benchmarks/transform_javascript.py [--profiles 100000] [--batch-size 1000]

Transforms synthetic sample profiles with a mapping-like ES5 transform (name concatenation, an
upper-cased country, a metadata field) in batches, as the transform step does, and prints the
wall-clock rate and the rate per CPU core (parent + worker CPU time; they take turns, so one
core is what a run needs). The target is at least 50,000 records/s.
"""

from __future__ import annotations

import argparse
import resource
import time

from krenalis_airflow.core.sample_data import generate_profiles
from krenalis_airflow.core.transform.javascript import JavaScriptTransformer, syntax_problems

SOURCE = """
function transform(profile) {
  return {
    "name": profile.first_name + " " + profile.last_name,
    "phone": profile.phone,
    "address.city": profile.city,
    "address.country": profile.country ? profile.country.toUpperCase() : null,
    "metadata.plan": profile.plan,
    "metadata.vip": profile.vip ? "yes" : null
  };
}
"""
TARGET = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    assert not syntax_problems(SOURCE), syntax_problems(SOURCE)

    profiles = [p._asdict() for p in generate_profiles(args.profiles)]
    batches = [profiles[i : i + args.batch_size] for i in range(0, len(profiles), args.batch_size)]
    with JavaScriptTransformer(SOURCE, batch_size=args.batch_size) as transformer:
        transformer.transform_batch(profiles[:1])  # start the worker outside the measurement
        before, start = _cpu(), time.perf_counter()
        rejected = sum(
            1
            for batch in batches
            for result in transformer.transform_batch(batch)
            if not isinstance(result, dict)
        )
        elapsed = time.perf_counter() - start
        parent_cpu = _cpu() - before
    worker_cpu = _children_cpu()  # the worker's whole life, startup included: a slight overestimate

    count = len(profiles)
    per_core = count / (parent_cpu + worker_cpu)
    print(f"{count:,} profiles in batches of {args.batch_size:,}; {rejected} rejected")
    print(f"wall clock   {count / elapsed:>10,.0f} records/s  ({elapsed:.2f} s)")
    print(
        f"per CPU core {per_core:>10,.0f} records/s  (parent {parent_cpu:.2f} s + worker {worker_cpu:.2f} s)"
    )
    print(f"target       {TARGET:>10,} records/s: {'met' if per_core >= TARGET else 'NOT met'}")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
