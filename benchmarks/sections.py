"""What a benchmark run alone needs to put its own section into ``REPORT.md``: its block between
markers, its rows of the Targets table, and a line that says where and when it was measured."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).parent


def update_report(report: Path, lines: Sequence[str], markers: tuple[str, str]) -> None:
    """Put a section into ``report`` between its ``markers`` (before the machine section if new):
    one benchmark rerun alone updates its own section of ``REPORT.md``."""
    BEGIN, END = markers
    block = "\n".join([BEGIN, *lines, END])
    text = report.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    elif "## Machine" in text:
        head, tail = text.split("## Machine", 1)
        text = f"{head}{block}\n\n## Machine{tail}"
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    report.write_text(text)


def update_target_rows(report: Path, rows: Sequence[tuple[str, str, bool]]) -> None:
    """Replace the rows of the report's "Targets" table that name the same targets as ``rows``:
    a benchmark rerun alone keeps the summary at the top in step with its own section."""
    text = report.read_text()
    for name, value, ok in rows:
        start = text.find(f"| {name} |")
        if start != -1:
            end = text.index("\n", start)
            text = f"{text[:start]}| {name} | {value} | {'met' if ok else '**missed**'} |{text[end:]}"
    report.write_text(text)


def put_section(
    report: Path,
    lines: Sequence[str],
    rows: Sequence[tuple[str, str, bool]],
    markers: tuple[str, str],
    command: str,
) -> None:
    """A benchmark's section (``lines``) with its targets (``rows``: name, measured, met) and the
    line that says where it ran, between ``markers``; and its rows of the Targets table."""
    body = list(lines)
    while body and not body[-1]:
        body.pop()
    table = [f"| {name} | {value} | {'met' if ok else '**missed**'} |" for name, value, ok in rows]
    update_report(
        report,
        [*body, "", "| target | measured | |", "|---|---|---|", *table, "", measured_on(command), ""],
        markers,
    )
    update_target_rows(report, rows)


def commit() -> str:
    """The commit measured, and whether the tree had uncommitted changes (the report aside)."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=HERE, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    found = git("rev-parse", "--short", "HEAD") or "unknown"
    outputs = (":(exclude,top)benchmarks/REPORT.md", ":(exclude,top)benchmarks/chart.png")  # this run's own
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/", *outputs)
    return found + (" with uncommitted changes" if dirty else "")


def measured_on(command: str) -> str:
    """The line under a section a benchmark wrote alone: date, command, commit, cores and load."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"Measured on {time.strftime('%Y-%m-%d')} by `{command}` at {commit()}: {os.cpu_count()} cores, "
        f"load average {load} at the end."
    )
