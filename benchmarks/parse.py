"""DAG parsing: how long Airflow takes to parse the two DAG files as the number of specs grows.

    .venv/bin/python -m benchmarks.parse                      # 10, 100, 1,000 and 5,000 specs
    .venv/bin/python -m benchmarks.parse --sizes 10 1000      # other sizes
    .venv/bin/python -m benchmarks.parse --importtime         # and what the parse imports, slowest first

For each size, N varied specs (mapping, Python and JavaScript transformations, filters, a few
broken) are written to a temporary ``pipelines/`` folder beside the two DAG files ``init``
writes. Each DAG file is then parsed in a fresh process (pinned to one core with ``taskset`` when
there is one) the way the dag processor parses it: Airflow imported first (the parsing process is
forked from the processor, which has it), then ``BundleDagBag(dag_folder=<file>)`` — the import
that ``dagbag_import_timeout`` limits — then every DAG serialised (``_serialize_dags``), as
``airflow.dag_processing.processor._parse_file`` does. Reported per file and size: the import's
wall and CPU time, milliseconds per spec, the serialisation, peak RSS (``VmHWM``) and what the
parse added to it, the DAGs and import errors found, and the packages the parse imported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from krenalis_airflow.dag_files import PIPELINES_FILE, PIPELINES_FOLDER

SIZES = (10, 100, 1000, 5000)
QUICK_SIZES = (10, 100, 1000)
TARGET_MS_PER_SPEC = 3.0  # per DAG file, at every size from 1,000 specs
AIRFLOW_IMPORT_TIMEOUT = 30.0  # Airflow's default [core] dagbag_import_timeout
AIRFLOW_PROCESSOR_TIMEOUT = 50.0  # Airflow's default [dag_processor] dag_file_processor_timeout
DEFAULT_MEASURED_TIMEOUT = 900.0  # high, so that a slow parse is measured rather than cut short
MB = 2**20
BROKEN_EVERY = 50  # one spec in 50 is broken (at least one per folder)
# Packages a DAG file has no need for at parse time: a task imports them when it runs. (Jinja2
# and pyduktape2 are needed: the parse checks every mapping and JavaScript transformation.)
NOT_AT_PARSE = (
    "stripe",
    "requests",
    "msgspec",
    "sqlalchemy",
    "psycopg2",
    "airflow.providers.common.sql",
    "airflow.providers.sqlite",
    "airflow.providers.postgres",
)


# -- the specs ------------------------------------------------------------------------------------

COUNTRIES = ("IT", "FR", "DE", "ES", "NL", "BE", "AT", "PT", "IE", "SE")
PLANS = ("free", "starter", "pro", "enterprise")
SCHEDULES = ("5m", "15m", "1h", "6h", "24h", "'@daily'", "'0 6 * * 1-5'", "null")
MAPPING_FIELDS = (
    ("name", "first_name ~ ' ' ~ last_name"),
    ("phone", "phone"),
    ("description", "'plan ' ~ plan"),
    ("address.city", "city"),
    ("address.postal_code", "postal_code"),
    ("address.country", "country"),
    ("metadata.plan", "plan"),
    ("metadata.profile_id", "profile_id"),
    ("metadata.lifetime_value", "lifetime_value"),
    ("metadata.vip", "if(vip, 'yes', 'no')"),
    ("preferred_locales", "array(lower(country))"),
)
BROKEN = (
    ("schedule: 1h", "schedule: 7m"),  # not a schedule
    ("  key: profile_id", "  key: profile_id\n  keys: [email]"),  # an unknown key
    ("export:", "export: [unclosed\n"),  # not YAML
    ("stripe: email", "stripe: emial"),  # not a matchable field
)


def spec_text(index: int, rng: random.Random) -> str:
    """A realistic spec, one of several shapes; ``index`` decides which."""
    kind = ("mapping", "mapping", "python", "javascript")[index % 4]
    matching = ("email", "email", "metadata.profile_id")[index % 3]
    lines = [
        f"description: Bench pipeline {index} ({kind}) → Stripe customers",
        f"enabled: {'false' if index % 11 == 0 else 'true'}",
        f"schedule: {SCHEDULES[index % len(SCHEDULES)]}",
        f"tags: [team_{index % 7}, region_{COUNTRIES[index % 10].lower()}]",
        "source:",
        "  conn_id: warehouse",
        *(
            ["  table: customer_profiles"]
            if index % 5
            else ["  query: SELECT * FROM customer_profiles WHERE deleted_at IS NULL"]
        ),
        "  key: profile_id",
        *_filter(index, rng),
        "export:",
        f"  mode: {('create_and_update', 'create_only', 'update_only')[index % 3]}",
        "  matching:",
        f"    property: {'email' if matching == 'email' else 'profile_id'}",
        f"    stripe: {matching}",
        *(
            ["  duplicate_profiles: keep_first", "  order_by: updated_at desc"]
            if index % 2
            else ["  duplicate_profiles: reject"]
        ),
        f"  max_rejected: {rng.choice(('5%', '10%', 50))}",
        "transformation:",
        *_transformation(kind, index, rng, matching),
    ]
    if index % 4 == 3:
        lines += ["state:", "  table_prefix: bench_"]
    return "\n".join(lines) + "\n"


def _filter(index: int, rng: random.Random) -> list[str]:
    if index % 6 == 0:
        return []
    countries = ", ".join(rng.sample(COUNTRIES, 1 + index % 4))
    lines = [
        "filter:",
        "  logical: and",
        "  conditions:",
        f"    - {{property: country, operator: is one of, values: [{countries}]}}",
        f"    - {{property: plan, operator: is not, values: [{rng.choice(PLANS)}]}}",
    ]
    if index % 3 == 0:
        lines += [
            "    - logical: or",
            "      conditions:",
            f'        - {{property: lifetime_value, operator: is greater than or equal to, values: ["{rng.randint(10, 500)}"]}}',
            "        - {property: vip, operator: is true}",
            "        - {property: traits.segment, operator: exists}",
        ]
    return lines


def _transformation(kind: str, index: int, rng: random.Random, matching: str) -> list[str]:
    if kind == "python":
        return [
            "  python: |",
            "    def transform(profile):",
            "        name = f\"{profile['first_name']} {profile['last_name']}\".strip()",
            f"        return {{'name': name, 'metadata.plan': profile['plan'], 'metadata.batch': '{index}'}}",
            "  inputs: [first_name, last_name, plan]",
        ]
    if kind == "javascript":
        return [
            "  javascript: |",
            "    function transform(profile) {",
            "      var name = (profile.first_name || '') + ' ' + (profile.last_name || '');",
            f"      return {{name: name.trim(), metadata: {{plan: profile.plan, batch: '{index}'}}}};",
            "    }",
            "  inputs: [first_name, last_name, plan]",
        ]
    fields = [f for f in MAPPING_FIELDS if f[0] != matching]
    chosen = sorted(rng.sample(fields, rng.randint(3, len(fields) - 1)))
    # One expression no other spec has: checking a mapping costs per distinct expression.
    chosen.append(("metadata.pipeline", f"'pipeline {index}: ' ~ plan"))
    return ["  mapping:", *(f"    {name}: {json.dumps(expression)}" for name, expression in chosen)]


def write_specs(folder: Path, count: int, seed: int = 42) -> int:
    """Write ``count`` specs into ``folder``; return how many of them are broken."""
    rng = random.Random(seed)
    broken = 0
    for index in range(count):
        text = spec_text(index, rng)
        if index % BROKEN_EVERY == BROKEN_EVERY // 2 or (count < BROKEN_EVERY and index == count - 1):
            old, new = BROKEN[broken % len(BROKEN)]
            text = text.replace(old, new, 1) if old in text else text + "unknown_key: 1\n"
            broken += 1
        (folder / f"pipeline_{index:05d}.yaml").write_text(text)
    return broken


def dags_folder(root: Path, count: int, seed: int = 42) -> tuple[Path, int]:
    """A DAGs folder as ``krenalis-airflow init`` writes it, with ``count`` specs; (folder, broken)."""
    from krenalis_airflow.dag_files import DAG_FILES

    folder = root / f"dags-{count}"
    (folder / PIPELINES_FOLDER).mkdir(parents=True)
    for name, text in DAG_FILES.items():
        (folder / name).write_text(text)
    return folder, write_specs(folder / PIPELINES_FOLDER, count, seed)


# -- one measurement, in a process of its own -------------------------------------------------------


@dataclass
class ParseResult:
    """One parse of one DAG file, in a process of its own."""

    file: str
    specs: int
    broken: int
    import_wall: float = 0.0  # seconds: what dagbag_import_timeout limits
    import_cpu: float = 0.0
    serialize_wall: float = 0.0  # the processor's next step, inside dag_file_processor_timeout
    dags: int = 0
    import_errors: int = 0
    rss_before: int = 0  # bytes, Airflow imported, before the parse
    rss_peak: int = 0  # VmHWM after the parse and the serialisation
    packages: dict[str, int] = field(default_factory=dict)  # top-level package → modules the parse imported
    error: str = ""

    @property
    def ms_per_spec(self) -> float:
        """Import wall time per spec, in milliseconds."""
        return 1000 * self.import_wall / self.specs if self.specs else 0.0

    @property
    def expected(self) -> tuple[int, int]:
        """(DAGs, import errors) the file must give: every spec a DAG, or one error for the check."""
        if self.file == PIPELINES_FILE:
            return self.specs, 0
        return 0, 1 if self.broken else 0

    @property
    def unneeded(self) -> list[str]:
        """Packages of ``NOT_AT_PARSE`` that the parse imported."""
        return [name for name in NOT_AT_PARSE if name in self.packages]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(dag_file: Path) -> dict[str, object]:
    """Parse ``dag_file`` as the dag processor's parsing process does; runs in a fresh process."""
    import structlog
    from airflow.dag_processing import processor  # what the forked parsing process already has
    from airflow.dag_processing.dagbag import BundleDagBag

    before = set(sys.modules)
    rss_before = _status("VmRSS")
    print(IMPORTTIME_MARK, file=sys.stderr, flush=True)
    started, cpu = time.perf_counter(), time.process_time()
    bag = BundleDagBag(
        dag_folder=str(dag_file), bundle_path=dag_file.parent, bundle_name="bench", load_op_links=False
    )
    import_wall, import_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(IMPORTTIME_MARK, file=sys.stderr, flush=True)
    started = time.perf_counter()
    serialized, errors = processor._serialize_dags(bag, structlog.get_logger())
    serialize_wall = time.perf_counter() - started
    packages: dict[str, int] = {}
    for name in set(sys.modules) - before:
        for package in {name.split(".")[0], *(p for p in NOT_AT_PARSE if name.startswith(p))}:
            packages[package] = packages.get(package, 0) + 1
    return {
        "import_wall": import_wall,
        "import_cpu": import_cpu,
        "serialize_wall": serialize_wall,
        "dags": len(serialized),
        "import_errors": len(bag.import_errors) + len(errors),
        "rss_before": rss_before,
        "rss_peak": _status("VmHWM"),
        "packages": dict(sorted(packages.items(), key=lambda item: -item[1])),
    }


IMPORTTIME_MARK = "-- the DAG file's import starts or ends here --"


def _env(home: Path, dags: Path, timeout: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KRENALIS"))}
    root = str(Path(__file__).resolve().parents[1])
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": str(timeout),
            "PYTHONPATH": os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")])),
        }
    )
    return env


def _pin() -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", "0"] if taskset else []


def measure(
    dag_file: Path, specs: int, broken: int, home: Path, timeout: float, *, importtime: bool = False
) -> ParseResult:
    """Parse ``dag_file`` in a fresh process pinned to one core; what it measured."""
    python = [sys.executable, *(["-X", "importtime"] if importtime else [])]
    done = subprocess.run(
        [*_pin(), *python, "-m", "benchmarks.parse", "--child", str(dag_file)],
        env=_env(home, dag_file.parent, timeout),
        capture_output=True,
        text=True,
        check=False,
        timeout=max(900.0, 2 * timeout),
    )
    result = ParseResult(dag_file.name, specs, broken)
    if done.returncode:
        result.error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return result
    for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
        setattr(result, key, value)
    if (result.dags, result.import_errors) != result.expected:
        result.error = (
            f"expected {result.expected[0]} DAGs and {result.expected[1]} import errors, "
            f"got {result.dags} and {result.import_errors}"
        )
    if importtime:
        print(import_table(done.stderr), flush=True)
    return result


def import_table(stderr: str, top: int = 20) -> str:
    """The slowest imports of the parse (cumulative ms) from a ``-X importtime`` log."""
    rows = []
    for line in stderr.split(IMPORTTIME_MARK)[1].splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, micros, name = line.removeprefix("import time:").split("|")
            rows.append((int(micros), name.rstrip()))
    rows.sort(reverse=True)
    lines = [f"{'ms':>9}  module (cumulative import time during the parse)"]
    for spent, module in rows[:top]:
        flag = "  <- not needed to parse" if module.strip().startswith(NOT_AT_PARSE) else ""
        lines.append(f"{spent / 1000:9.1f}  {module}{flag}")
    return "\n".join(lines)


def run(
    sizes: Sequence[int],
    work: Path,
    timeout: float = DEFAULT_MEASURED_TIMEOUT,
    log: Callable[[str], None] = print,
    *,
    importtime: bool = False,
) -> list[ParseResult]:
    """Measure both DAG files at every size; ``work`` holds the generated folders."""
    from krenalis_airflow.dag_files import DAG_FILES

    home = work / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    results = []
    for size in sizes:
        folder, broken = dags_folder(work, size)
        for name in DAG_FILES:
            result = measure(folder / name, size, broken, home, timeout, importtime=importtime)
            log(f"  {line(result)}")
            results.append(result)
        shutil.rmtree(folder)
    return results


def line(r: ParseResult) -> str:
    """One result as a log line."""
    head = f"{r.file} at {r.specs:,} specs ({r.broken} broken): "
    if r.error and not r.dags and not r.import_wall:
        return head + f"failed: {r.error}"
    return head + (
        f"import {r.import_wall:.2f} s = {r.ms_per_spec:.2f} ms/spec (CPU {r.import_cpu:.2f} s), "
        f"serialise {r.serialize_wall:.2f} s, {r.dags:,} DAGs, {r.import_errors} import errors, "
        f"peak RSS {r.rss_peak / MB:.0f} MB (+{(r.rss_peak - r.rss_before) / MB:.0f}); "
        f"imported {', '.join(r.unneeded) or 'none'} of {', '.join(NOT_AT_PARSE[:3])}…"
        + (f"; WRONG: {r.error}" if r.error else "")
    )


# -- the report's section (benchmarks/report.py) -----------------------------------------------------


def targets(results: Sequence[ParseResult]) -> list[tuple[str, str, bool]]:
    """The report's target rows: ms per spec and a third of the import timeout, at the largest size."""
    if not results:
        return []
    largest = max(r.specs for r in results)
    at = [r for r in results if r.specs == largest]
    per_spec = ", ".join(f"`{r.file}` {r.ms_per_spec:.2f} ms" for r in at)
    seconds = ", ".join(f"`{r.file}` {r.import_wall:.1f} s" for r in at)
    third = AIRFLOW_IMPORT_TIMEOUT / 3
    return [
        (
            f"DAG parsing ≤ {TARGET_MS_PER_SPEC:g} ms per spec for each DAG file ({largest:,} specs, one core)",
            per_spec,
            all(not r.error and r.ms_per_spec <= TARGET_MS_PER_SPEC for r in at),
        ),
        (
            f"{largest:,} specs parse in under a third of `dagbag_import_timeout` ({third:.0f} s of {AIRFLOW_IMPORT_TIMEOUT:.0f} s)",
            seconds,
            all(not r.error and r.import_wall < third for r in at),
        ),
    ]


def section(results: Sequence[ParseResult]) -> list[str]:
    """The "DAG parsing" section of REPORT.md."""
    if not results:
        return []
    sizes = sorted({r.specs for r in results})
    lines = [
        f"## DAG parsing: {', '.join(f'{size:,}' for size in sizes)} specs",
        "",
        "Each DAG file was parsed in a fresh process pinned to one core (`taskset -c 0`; other processes may "
        "share that core: see the load average below), the way the dag processor parses it: Airflow already "
        "imported, then `BundleDagBag(dag_folder=<file>)` — the import that `dagbag_import_timeout` "
        f"({AIRFLOW_IMPORT_TIMEOUT:.0f} s by default) limits, and whose timeout hides every DAG of the file — "
        "then every DAG serialised as `_parse_file` does; import + serialise is what `dag_file_processor_timeout` "
        f"({AIRFLOW_PROCESSOR_TIMEOUT:.0f} s) limits. The specs are varied (mapping, Python and JavaScript "
        f"transformations, filters, one in {BROKEN_EVERY} broken; every mapping has an expression no other spec "
        "has). `ms per spec` is the import's wall time divided by the specs. Peak RSS is the parsing process's "
        "high-water mark (`VmHWM`), `added` what the parse added to an interpreter that had imported Airflow. "
        "`Imported, not needed` lists the packages a task needs and a parse does not (stripe, requests, SQL "
        "hooks…) that the parse imported. Split bigger folders over several DAG files (README: *Many "
        "pipelines: one DAG file per sub-folder*).",
        "",
        "| DAG file | specs (broken) | import | ms per spec | CPU | serialise | DAGs | import errors | peak RSS | added | imported, not needed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        if r.error and not r.import_wall:
            lines.append(f"| `{r.file}` | {r.specs:,} ({r.broken}) | failed: {r.error} | | | | | | | | |")
            continue
        wrong = f" (expected {r.expected[0]:,}/{r.expected[1]})" if r.error else ""
        lines.append(
            f"| `{r.file}` | {r.specs:,} ({r.broken}) | {r.import_wall:,.2f} s | {r.ms_per_spec:.2f} | "
            f"{r.import_cpu:,.2f} s | {r.serialize_wall:,.2f} s | {r.dags:,} | {r.import_errors}{wrong} | "
            f"{r.rss_peak / MB:,.0f} MB | {(r.rss_peak - r.rss_before) / MB:+,.0f} MB | {', '.join(r.unneeded) or 'none'} |"
        )
    return [*lines, ""]


MARKERS = ("<!-- parse:begin -->", "<!-- parse:end -->")


def update(report: Path, results: Sequence[ParseResult]) -> None:
    """This run's section and target rows into ``report``, with the machine and its load."""
    from benchmarks.sections import put_section

    command = "python -m benchmarks.parse --update-report"
    put_section(report, section(results), targets(results), MARKERS, command)


def summary(results: Sequence[ParseResult]) -> str:
    """Milliseconds per spec of each DAG file at each size, and the target."""
    sizes = sorted({r.specs for r in results})
    rows = [f"{'ms per spec':<24}" + "".join(f"{size:>10,}" for size in sizes)]
    for name in dict.fromkeys(r.file for r in results):
        by_size = {r.specs: r for r in results if r.file == name}
        cells = (f"{by_size[size].ms_per_spec:10.2f}" if size in by_size else f"{'-':>10}" for size in sizes)
        rows.append(f"{name:<24}" + "".join(cells))
    worst = max((r.ms_per_spec for r in results if r.specs >= 1000), default=0.0)
    rows.append(
        f"target: <= {TARGET_MS_PER_SPEC} ms per spec from 1,000 specs: "
        + ("met" if worst <= TARGET_MS_PER_SPEC else "MISSED")
        + f" (worst {worst:.2f})"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``python -m benchmarks.parse --help``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parse", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="specs per folder (10 100 1000 5000)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_MEASURED_TIMEOUT,
        help="dagbag_import_timeout of the measured parses; high, so that a slow parse is measured "
        f"rather than cut short ({DEFAULT_MEASURED_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--importtime", action="store_true", help="also print the slowest imports of each parse"
    )
    parser.add_argument("--json", type=Path, help="write the results to this file as JSON")
    parser.add_argument(
        "--update-report",
        action="store_true",
        help="put the section into REPORT.md (and its rows of the Targets table)",
    )
    parser.add_argument("--work-dir", type=Path, help="where the specs go (a temporary folder)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    with tempfile.TemporaryDirectory(prefix="krenalis-parse-", dir=args.work_dir) as tmp:
        results = run(args.sizes, Path(tmp), args.timeout, importtime=args.importtime)
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.update_report:
        update(Path(__file__).parent / "REPORT.md", results)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
