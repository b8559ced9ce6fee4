"""Command line: ``python -m krenalis_airflow …`` (or ``krenalis-airflow …``).

* ``validate PATH…``: check pipeline specs (files, or folders of ``*.yaml``/``*.yml``) without
  Airflow; prints ``OK <file> (<id>)`` or ``<file>:<line>: <key.path>: <problem>`` lines and exits 1
  when anything is wrong. Fast enough for a pre-commit hook or CI. With ``--connect``, also checks
  every column each spec names against its source's real columns and types (as the extract step
  does before reading a row), through Airflow's connections.
* ``preview SPEC [--limit N]``: read the first N filtered profiles and show each one beside what
  the transformation makes of it (no Stripe).
* ``plan SPEC``: the dry run — reads the warehouse and Stripe, writes nothing, reports how many
  customers would be created, updated, left unchanged or rejected, with samples.
* ``schema``: print the JSON Schema of the spec format (for editor autocompletion).
* ``sample-warehouse PATH``: build the SQLite sample warehouse the quick start syncs.
* ``init DAGS_FOLDER [--force] [--shard NAME]``: write the provider's two DAG files into an Airflow
  DAGs folder, and ``pipelines/`` with a sample spec when the folder has none; with ``--shard``, the
  two DAG files of the shard ``pipelines/NAME/`` instead.

``validate``, ``schema`` and ``sample-warehouse`` import only the pure core, ``init`` no Airflow either;
``validate --connect``, ``preview`` and ``plan`` use Airflow's connections (``AIRFLOW_CONN_*``, the
metadata DB or a secrets backend). An expected failure (a connection not defined, a database out of
reach, a spec error, a key Stripe rejects, a plan past ``export.max_rejected``) is one message on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from krenalis_airflow.core.spec import LoadedSpec, discover, load_spec, spec_schema, unique_ids
from krenalis_airflow.exceptions import CommandError, InitError, KrenalisError, SpecError

Result = LoadedSpec | SpecError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krenalis-airflow", description="Sync SQL warehouse customer profiles to Stripe customers."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check pipeline specs without Airflow",
        description="Check pipeline specs. A folder means every *.yaml and *.yml file in it. "
        "Exits 1 if any spec is invalid.",
    )
    validate.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="a spec file or a folder of specs"
    )
    validate.add_argument(
        "--connect",
        action="store_true",
        help="also check every column a spec names against its source's columns and types "
        "(reads Airflow's connections, as preview does)",
    )
    validate.set_defaults(run=_validate)

    preview = commands.add_parser(
        "preview",
        help="show filtered profiles beside their transformed output (no Stripe)",
        description="Run the extract and transform steps on the first N filtered profiles.",
    )
    preview.add_argument("spec", type=Path, metavar="SPEC", help="a spec file")
    preview.add_argument(
        "--limit", type=_count, default=20, metavar="N", help="profiles to show (default 20)"
    )
    preview.set_defaults(run=_preview)

    plan = commands.add_parser(
        "plan",
        help="dry run: what a sync would create, update and reject (writes nothing)",
        description="Run every step as a dry run: reads the warehouse and Stripe, writes nothing.",
    )
    plan.add_argument("spec", type=Path, metavar="SPEC", help="a spec file")
    plan.add_argument("--full-resync", action="store_true", help="compare with Stripe itself, not the ledger")
    plan.add_argument(
        "--reconcile", action="store_true", help="list Stripe once and report what drifted from the ledger"
    )
    plan.set_defaults(run=_plan)

    schema = commands.add_parser("schema", help="print the JSON Schema of pipeline specs")
    schema.set_defaults(run=lambda _: print(json.dumps(spec_schema(), indent=2)) or 0)

    sample = commands.add_parser(
        "sample-warehouse",
        help="build the SQLite sample warehouse",
        description="Write a table customer_profiles of realistic, deterministic sample profiles "
        "into an SQLite file (replacing that table if it exists).",
    )
    sample.add_argument("path", type=Path, metavar="PATH", help="the SQLite file to write")
    sample.add_argument(
        "--profiles", type=_count, default=1000, metavar="N", help="rows to write (default 1000)"
    )
    sample.add_argument("--seed", type=int, default=7, metavar="S", help="random seed (default 7)")
    sample.set_defaults(run=_sample_warehouse)

    init = commands.add_parser(
        "init",
        help="write the DAG files (and a sample pipeline) into an Airflow DAGs folder",
        description="Write krenalis_pipelines.py (one DAG per pipeline spec) and krenalis_spec_check.py "
        "(broken specs as an import error) into DAGS_FOLDER, plus pipelines/ with a sample spec "
        "(disabled) when DAGS_FOLDER has no pipelines/. The DAG files only import the installed "
        "package, so upgrading it needs no new init. An existing file is never replaced without "
        "--force; an existing pipelines/ folder is never touched.",
    )
    init.add_argument("folder", type=Path, metavar="DAGS_FOLDER", help="Airflow's DAGs folder")
    init.add_argument(
        "--force", action="store_true", help="replace DAG files that differ from what init writes"
    )
    init.add_argument(
        "--shard",
        metavar="NAME",
        help="write the DAG files of one shard instead: krenalis_pipelines_NAME.py and "
        "krenalis_spec_check_NAME.py serve pipelines/NAME/ (created if absent), and Airflow parses "
        "them on their own, so a slow or broken shard never hides another's DAGs",
    )
    init.set_defaults(run=_init)
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


# --------------------------------------------------------------------------------------------
# validate


def _validate(args: argparse.Namespace) -> int:
    results: list[Result] = []
    failed = False
    for path in _unique(args.paths):
        if path.is_dir():
            found = discover(path, import_references=True)
            if not found:
                print(f"{path}: no *.yaml or *.yml pipeline specs in this folder")
                failed = True
            results.extend(found)
        else:
            results.append(_load(path))
    for result in _unique_ids(results):
        if args.connect and isinstance(result, LoadedSpec):
            result = _connected(result)
        failed |= isinstance(result, SpecError)
        _report(result)
    return 1 if failed else 0


def _connected(loaded: LoadedSpec) -> Result:
    """``validate --connect``: the spec checked against its source (a problem per line)."""
    from krenalis_airflow.local_run import check_columns

    try:
        check_columns(loaded.path, loaded.spec)
    except SpecError as exc:
        return exc
    except CommandError as exc:
        return SpecError(exc.source, [exc.problem])
    return loaded


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    unique = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def _load(path: Path) -> Result:
    try:
        return LoadedSpec(path, load_spec(path))
    except SpecError as exc:
        return exc


def _unique_ids(results: Sequence[Result]) -> list[Result]:
    """Pipeline ids are DAG ids: the same rule as the DAG factory's, across every path given."""
    return unique_ids(results)


def _report(result: Result) -> None:
    if isinstance(result, LoadedSpec):
        print(f"OK {result.path} ({result.spec.id})")
    else:
        for problem in result.problems:
            print(problem.render(result.source))


# --------------------------------------------------------------------------------------------
# preview and plan


def _preview(args: argparse.Namespace) -> int:
    from krenalis_airflow.local_run import preview

    try:
        sql, pairs = preview(args.spec, args.limit)
    except KrenalisError as exc:
        return _failed("preview", exc)
    print(f"SQL: {sql}\n")
    for profile, outcome in pairs:
        left = [f"{name}: {value!r}" for name, value in profile.items()]
        if "payload" in outcome:
            right = [f"{path}: {value!r}" for path, value in outcome["payload"].items()]
        else:
            right = [f"REJECTED ({outcome.get('kind', '?')}): {outcome.get('reason', '')}"]
        print("-" * 100)
        for i in range(max(len(left), len(right))):
            cell = left[i] if i < len(left) else ""
            arrow = "→" if i == 0 else " "
            print(f"{cell[:48]:<48} {arrow} {right[i] if i < len(right) else ''}".rstrip())
    print(f"\n{len(pairs)} profile(s) shown")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from krenalis_airflow.local_run import plan, plan_failure

    try:
        summary = plan(args.spec, full_resync=args.full_resync, reconcile=args.reconcile)
    except KrenalisError as exc:
        return _failed("plan", exc)
    print(f"SQL: {summary['sql']}\n")
    _print_plan(summary)
    failure = plan_failure(args.spec, summary)
    return 0 if failure is None else _failed("plan", failure)


def _failed(command: str, exc: KrenalisError) -> int:
    """An expected failure: its message alone on stderr (one line, but a spec error's list of
    problems), exit status 1."""
    message = str(exc) if isinstance(exc, SpecError) else " ".join(str(exc).split())
    print(f"krenalis-airflow {command}: {message}", file=sys.stderr)
    return 1


def _print_plan(s: dict[str, Any]) -> None:
    rows = [
        ("extracted", s["extracted"], f"(filtered out {s['filtered_out']})"),
        ("would create", s["created"], ""),
        ("would update", s["updated"], ""),
        ("unchanged", s["unchanged"], ""),
        ("skipped", sum(s["skipped"].values()), s["skipped"] or ""),
        ("rejected", s["rejected_total"], s["rejected"] or ""),
        ("Stripe calls made", sum(s["api_calls"].values()), "(reads only)"),
    ]
    if found := s.get("reconcile"):
        rows.append(("drifted", found["drifted"], f"would be set back (reconcile: {found['reason']})"))
    if (left := s.get("left")) is not None:
        from krenalis_airflow.core.leave import report_rows

        rows += report_rows(left, dry_run=True)
    for name, count, detail in rows:
        print(f"  {name:<18}{count:>8}  {detail}".rstrip())
    print(f"  destination: Stripe {s.get('destination') or '?'}")
    for warning in s.get("warnings", []):
        print(f"  warning: {warning}")
    labels = {
        "created": "create",
        "updated": "update",
        "skipped": "skip",
        "drifted": "drift",
        "contested": "left alone",
    }
    for outcome, label in labels.items():
        for sample in s["samples"].get(outcome, []):
            print(f"  e.g. {label}: {sample}")
    for outcome, samples in ((s.get("left") or {}).get("samples") or {}).items():
        for sample in samples:
            print(f"  e.g. left the audience, {outcome}: {sample}")
    for item in s["rejected_samples"]:
        print(f"  e.g. rejected {item['key']} ({item['step']}): {item['reason']}")


# --------------------------------------------------------------------------------------------
# sample-warehouse


def _sample_warehouse(args: argparse.Namespace) -> int:
    from krenalis_airflow.core.sample_data import TABLE, write_sqlite_warehouse

    written = write_sqlite_warehouse(args.path, profiles=args.profiles, seed=args.seed)
    print(f"Wrote {written} customer profiles to {args.path} (table {TABLE}, seed {args.seed})")
    return 0


# --------------------------------------------------------------------------------------------
# init


def _init(args: argparse.Namespace) -> int:
    from krenalis_airflow.dag_files import SAMPLE_SPEC, init_dags_folder

    try:
        report = init_dags_folder(args.folder, force=args.force, shard=args.shard)
    except InitError as exc:
        print(f"krenalis-airflow init: {exc}", file=sys.stderr)
        return 1
    for path in report.written:
        note = " (a sample pipeline, disabled)" if path.name == SAMPLE_SPEC else ""
        print(f"Wrote {path}{'/ (the shard, empty)' if path == report.pipelines else note}")
    for path in report.unchanged:
        print(f"Unchanged {path} (already up to date)")
    for path in report.kept:
        print(f"Kept {path}/ (existing pipeline specs are never touched)")
    pipelines = report.pipelines
    sample = f" ({SAMPLE_SPEC}: a disabled example)" if pipelines / SAMPLE_SPEC in report.written else ""
    print(
        "\nNext steps:\n"
        f"  1. Put one YAML spec per pipeline in {pipelines}/{sample}; check them with\n"
        f"       krenalis-airflow validate {pipelines}/\n"
        "     (Specs elsewhere: set KRENALIS_PIPELINES_DIR to their folder on every Airflow component.)\n"
        "  2. Define the connections the specs name (the sample's: warehouse and stripe_default).\n"
        f"  3. Make sure {report.folder} is Airflow's DAGs folder (airflow config get-value core dags_folder)."
    )
    configured = os.environ.get("KRENALIS_PIPELINES_DIR")
    if configured:
        print(
            f"\nNote: KRENALIS_PIPELINES_DIR is set here ({configured}): the DAG files read specs from there."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
