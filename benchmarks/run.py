"""Benchmarks: API economy, rate-limit use and local throughput, against a hand-written baseline.

    .venv/bin/python -m benchmarks.run            # the full run (make bench): ~45 min on 2 cores
    .venv/bin/python -m benchmarks.run --quick    # a smoke run: 500 profiles, 100k local rows, ~10 min

Writes ``benchmarks/REPORT.md`` and ``benchmarks/chart.png`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from krenalis_airflow.core.ratelimit import Limits
from support.fault_proxy import Latency
from support.postgres import PG_DSN

from . import api, big_account, parse, report, rerun, sections, shared_limit, stages

HERE = Path(__file__).resolve().parent
QUICK = {"profiles": 500, "sample": 50, "local_rows": 100_000, "pg_rows": 20_000}
FULL = {"profiles": 5000, "sample": 200, "local_rows": 1_000_000, "pg_rows": 100_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes for a smoke run: " + ", ".join(f"{k}={v:,}" for k, v in QUICK.items()),
    )
    size = parser.add_argument_group("sizes (defaults: the full run, or --quick)")
    size.add_argument("--profiles", type=int, help=f"profiles in the API scenarios ({FULL['profiles']:,})")
    size.add_argument("--sample", type=int, help=f"baseline profiles per scenario ({FULL['sample']})")
    size.add_argument(
        "--changed-share",
        type=float,
        default=0.01,
        help="share of profiles changed for the last rerun (0.01)",
    )
    size.add_argument(
        "--local-rows",
        type=int,
        help=f"profiles through the local stages from SQLite ({FULL['local_rows']:,})",
    )
    size.add_argument("--small-rows", type=int, help="profiles of the streaming check (local rows / 10)")
    size.add_argument(
        "--pg-rows", type=int, help=f"profiles extracted from PostgreSQL, 0 to skip ({FULL['pg_rows']:,})"
    )
    front = parser.add_argument_group("the Stripe-like front")
    front.add_argument("--global-rps", type=float, default=100.0, help="requests/s for the account (100)")
    front.add_argument("--endpoint-rps", type=float, default=25.0, help="requests/s per endpoint (25)")
    front.add_argument("--read-latency", type=float, default=0.15, help="seconds per read (0.15)")
    front.add_argument("--write-latency", type=float, default=0.3, help="seconds per write (0.3)")
    front.add_argument("--jitter", type=float, default=0.05, help="± seconds on each latency (0.05)")
    other = parser.add_argument_group("what and where")
    other.add_argument("--skip-api", action="store_true", help="skip the Stripe API scenarios")
    other.add_argument("--skip-local", action="store_true", help="skip the local stages")
    other.add_argument(
        "--skip-shared", action="store_true", help="skip the 4 pipelines on one account (shared_limit.py)"
    )
    other.add_argument("--skip-parse", action="store_true", help="skip DAG parsing (parse.py)")
    other.add_argument(
        "--skip-big-account", action="store_true", help="skip the big Stripe account (big_account.py)"
    )
    other.add_argument(
        "--big-account-customers",
        type=int,
        help="customers in the big account's Stripe double (1,000,000; --quick: 200,000)",
    )
    other.add_argument("--skip-rerun", action="store_true", help="skip the 10M-profile rerun (rerun.py)")
    other.add_argument(
        "--rerun-rows",
        type=int,
        help="profiles in the rerun's warehouse (10,000,000; --quick: 1,000,000); PostgreSQL too unless --pg-rows 0",
    )
    other.add_argument(
        "--parse-sizes",
        type=int,
        nargs="+",
        help="specs per DAG file for DAG parsing (full run: "
        f"{' '.join(map(str, parse.SIZES))}; --quick: {' '.join(map(str, parse.QUICK_SIZES))})",
    )
    other.add_argument("--pg-dsn", default=PG_DSN, help=f"PostgreSQL for the extract stage ({PG_DSN!r})")
    other.add_argument("--seed", type=int, default=42)
    other.add_argument("--report", type=Path, default=HERE / "REPORT.md")
    other.add_argument("--chart", type=Path, default=HERE / "chart.png")
    other.add_argument(
        "--work-dir", type=Path, help="where the warehouses and JSONL files go (a temporary folder)"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.big_account_customers is None:
        args.big_account_customers = 200_000 if args.quick else 1_000_000
    if args.rerun_rows is None:
        args.rerun_rows = 1_000_000 if args.quick else 10_000_000
    if args.parse_sizes is None:
        args.parse_sizes = list(parse.QUICK_SIZES if args.quick else parse.SIZES)
    if args.small_rows is None:
        args.small_rows = max(1000, args.local_rows // 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.run", *([shlex.join(given)] if given else [])])
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    load_before = os.getloadavg()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    options = api.ApiOptions(
        profiles=args.profiles,
        sample=args.sample,
        changed_share=args.changed_share,
        limits=Limits(args.global_rps, args.endpoint_rps),
        latency=Latency(read=args.read_latency, write=args.write_latency, jitter=args.jitter),
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="krenalis-bench-", dir=args.work_dir) as tmp:
        folder = Path(tmp)
        scenarios: list[api.Scenario] = []
        results: list[stages.StageResult] = []
        if not args.skip_local:
            results = _local(args, folder, log)
        if not args.skip_api:
            log(f"Stripe API scenarios on {args.profiles:,} profiles")
            (folder / "api").mkdir()
            scenarios = api.run_api(options, folder / "api", log)
        parsing: list[parse.ParseResult] = []
        if not args.skip_parse:
            log(f"DAG parsing at {', '.join(f'{n:,}' for n in args.parse_sizes)} specs per DAG file")
            parsing = parse.run(args.parse_sizes, folder / "parse", log=log)
        shared_runs: list[shared_limit.SharedRun] = []
        if not args.skip_shared:
            # --profiles / 5 new customers per pipeline, at most 250: 100 with --quick
            each = max(4, min(shared_limit.SharedOptions.profiles, args.profiles // 5))
            shared = shared_limit.SharedOptions(profiles=each, latency=options.latency)
            (folder / "shared").mkdir()
            shared_runs = shared_limit.run(shared, folder / "shared", log)
        big: list[big_account.BigResult] = []
        if not args.skip_big_account:
            big = big_account.run(args.big_account_customers, folder, log)
        reruns: list[rerun.Rerun] = []
        if not args.skip_rerun:
            log(f"A rerun over {args.rerun_rows:,} profiles, 0.1% changed, with input digests")
            for db in ("sqlite", "postgresql") if args.pg_rows else ("sqlite",):
                (folder / f"rerun-{db}").mkdir()
                reruns.append(rerun.run(db, args.rerun_rows, 0.001, 100, folder / f"rerun-{db}", log))

    chart_path: Path | None = None
    chart_note = ""
    if scenarios:
        try:
            report.chart(scenarios, args.chart)
            chart_path = args.chart
        except ImportError:
            chart_note = "Chart skipped: matplotlib is not installed (make bench installs it)."
            log(chart_note)
    context = report.Context(
        command=command,
        started=started_at,
        duration=time.perf_counter() - started,
        machine=machine(args, load_before),
        api_options=options if scenarios else None,
        local_rows=args.local_rows,
        small_rows=args.small_rows,
        pg_rows=args.pg_rows,
        chart=chart_path,
        chart_note=chart_note,
        shared_runs=shared_runs,
        parsing=parsing,
        big_account=big,
        reruns=reruns,
    )
    args.report.write_text(report.render(context, scenarios, results, args.report))
    log(f"wrote {args.report}" + (f" and {chart_path}" if chart_path else ""))
    return 0


def _local(args: argparse.Namespace, folder: Path, log: Callable[[str], None]) -> list[stages.StageResult]:
    results: list[stages.StageResult] = []
    sizes = [args.local_rows] + ([args.small_rows] if args.small_rows < args.local_rows else [])
    for size in sizes:
        log(f"Local stages on {size:,} profiles from SQLite")
        work = folder / f"sqlite-{size}"
        work.mkdir()
        results += stages.sqlite_pipeline(size, work, log)
        if size == args.local_rows:
            result = stages.run_child("airflow imports", size, {"stage": "airflow_imports"})
            log(f"  {stages._line(result)}")
            results.append(result)
        for path in work.iterdir():  # the next size needs the disk more than these files
            path.unlink()
    if args.pg_rows:
        log(f"Extract of {args.pg_rows:,} profiles from PostgreSQL")
        try:
            results += stages.postgres_pipeline(args.pg_rows, args.pg_dsn, folder, log)
        except Exception as exc:  # no server: the report says so instead of failing the whole run
            log(f"  PostgreSQL skipped: {exc}")
            results.append(
                stages.StageResult(
                    "extract (PostgreSQL)",
                    "extract",
                    args.pg_rows,
                    0,
                    0,
                    0,
                    0,
                    0,
                    error=f"skipped: {str(exc).strip()}",
                )
            )
    return results


def machine(args: argparse.Namespace, load_before: tuple[float, float, float]) -> list[tuple[str, str]]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal")
        ),
        "?",
    )
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in (
            "krenalis-airflow",
            "apache-airflow",
            "stripe",
            "localstripe",
            "pyduktape2",
            "psycopg2-binary",
            "matplotlib",
        )
    )
    rows = [
        ("machine", f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; {memory}"),
        ("load average", f"{load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (1 min)"),
        (
            "Python",
            f"{platform.python_version()}; SQLite {sqlite3.sqlite_version}; PostgreSQL {_postgres_version(args) if args.pg_rows and not args.skip_local else 'not used'}",
        ),
        ("packages", versions),
        ("commit", _git()),
        (
            "options",
            ", ".join(
                f"{k}={v}"
                for k, v in sorted(vars(args).items())
                if k not in ("report", "chart", "work_dir", "pg_dsn")
            ),
        ),
    ]
    return rows


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _postgres_version(args: argparse.Namespace) -> str:
    try:
        import psycopg2

        with psycopg2.connect(args.pg_dsn) as conn, conn.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return str(cursor.fetchone()[0])
    except Exception:
        return "unreachable"


def _git() -> str:
    return sections.commit()


if __name__ == "__main__":
    raise SystemExit(main())
