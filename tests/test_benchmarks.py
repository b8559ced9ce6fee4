"""Smoke test of the benchmark harness (``python -m benchmarks.run``) on tiny sizes.

The real run is ``make bench`` (see benchmarks/README.md); this only checks that the harness runs
end to end — localstripe behind the metered fault proxy, the four scenarios with the baseline,
every local stage in its own process — and writes a report with its tables.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from benchmarks import run

pytestmark = pytest.mark.slow  # ~15 s: a dozen child processes and four API scenarios

TINY = [
    "--profiles", "20", "--sample", "4", "--changed-share", "0.1",
    "--local-rows", "1500", "--small-rows", "1500", "--pg-rows", "0",
    "--read-latency", "0.02", "--write-latency", "0.05", "--jitter", "0",
    "--parse-sizes", "5", "--big-account-customers", "3000", "--rerun-rows", "3000",
]  # fmt: skip


def test_a_tiny_run_writes_the_report_with_its_tables(tmp_path: Path) -> None:
    report, chart = tmp_path / "REPORT.md", tmp_path / "chart.png"
    options = ["--report", str(report), "--chart", str(chart), "--work-dir", str(tmp_path)]

    assert run.main([*TINY, *options]) == 0

    text = report.read_text()
    assert "## Targets" in text
    assert "| Rerun with nothing changed → 0 writes | 0 writes, 0 calls | met |" in text
    assert "| Rerun with k = 2 changed → k writes | 2 writes | met |" in text
    assert "## Stripe API: 20 profiles, ours vs a hand-written loop" in text
    for title in (
        "First sync into an empty Stripe",
        "First sync, 10 already in Stripe (5 of them outdated)",
        "Rerun, nothing changed",
        "Rerun, 10% changed (2 profiles)",
    ):
        assert f"### {title}" in text
        assert f"| {title} |" in text  # its row in the summary table
    assert "| `POST /v1/customers` | 20 | 20 |" in text  # first sync: ours and the baseline create 20
    assert "## Local stages: 1,500 profiles from SQLite" in text
    for stage in (
        "extract (SQLite)",
        "transform (mapping)",
        "transform (python)",
        "transform (javascript)",
        "dedupe",
        "diff vs ledger (unchanged)",
    ):
        assert f"| {stage} |" in text
    assert "failed" not in text.split("## Local stages")[1].split("\n## ")[0]  # that section only
    assert "## DAG parsing: 5 specs" in text
    assert "| `krenalis_pipelines.py` | 5 (1) |" in text and "| `krenalis_spec_check.py` | 5 (1) |" in text
    assert "DAG parsing ≤ 3 ms per spec for each DAG file (5 specs, one core)" in text
    assert "## Machine, versions, options" in text
    if importlib.util.find_spec("matplotlib") is None:
        assert "Chart skipped: matplotlib is not installed" in text
    else:
        assert chart.stat().st_size < 200_000
        assert "![API calls and wall time per scenario, ours vs baseline](chart.png)" in text


def test_the_parse_benchmark_parses_both_dag_files_as_airflow_does(tmp_path: Path) -> None:
    """``python -m benchmarks.parse`` on a few specs: every spec a DAG, the broken one reported."""
    from benchmarks import parse

    results = parse.run([7], tmp_path, log=lambda _: None)

    factory, check = results
    assert (factory.file, factory.specs, factory.broken) == ("krenalis_pipelines.py", 7, 1)
    assert (factory.dags, factory.import_errors, factory.error) == (7, 0, "")
    assert (check.file, check.dags, check.import_errors, check.error) == ("krenalis_spec_check.py", 0, 1, "")
    assert factory.import_wall > 0 and factory.rss_peak > factory.rss_before > 0
    assert "krenalis_airflow" in factory.packages and factory.unneeded == []  # no stripe, requests…
    assert "| `krenalis_pipelines.py` | 7 (1) |" in "\n".join(parse.section(results))


def test_a_benchmark_run_alone_replaces_its_section_and_its_target_rows(tmp_path: Path) -> None:
    from benchmarks.sections import measured_on, put_section, update_report, update_target_rows

    report = tmp_path / "REPORT.md"
    report.write_text(
        "# Benchmarks\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n"
        "| Parse ≤ 3 ms | 4.00 ms | **missed** |\n| Other | 1 | met |\n\n"
        "<!-- x:begin -->\n## X\n\nold figures\n<!-- x:end -->\n\n## Machine, versions, options\n"
    )
    X = ("<!-- x:begin -->", "<!-- x:end -->")
    update_report(report, ["## X", "", "new figures"], X)
    update_report(report, ["## Y", "", "first time"], ("<!-- y:begin -->", "<!-- y:end -->"))
    update_target_rows(report, [("Parse ≤ 3 ms", "1.50 ms", True), ("Not in the table", "2", False)])
    text = report.read_text()
    assert "old figures" not in text and "<!-- x:begin -->\n## X\n\nnew figures\n<!-- x:end -->" in text
    assert text.index("## Y") < text.index("## Machine")  # a new section goes before the machine's
    assert "| Parse ≤ 3 ms | 1.50 ms | met |\n| Other | 1 | met |\n" in text
    assert "Not in the table" not in text  # only rows already there are replaced
    line = measured_on("python -m benchmarks.parse --update-report")
    assert line.startswith("Measured on ") and "`python -m benchmarks.parse --update-report` at " in line

    put_section(report, ["## X", "", "newest", ""], [("Parse ≤ 3 ms", "4.10 ms", False)], X, "python -m x")
    section = report.read_text().split(X[0])[1].split(X[1])[0]
    assert (
        "newest\n\n| target | measured | |\n|---|---|---|\n| Parse ≤ 3 ms | 4.10 ms | **missed** |" in section
    )
    assert "by `python -m x` at " in section
    assert "| Parse ≤ 3 ms | 4.10 ms | **missed** |\n| Other | 1 | met |" in report.read_text().split(X[0])[0]
