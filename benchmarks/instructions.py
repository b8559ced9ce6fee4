"""Instructions per profile through extract + transform (mapping) + dedupe, counted by callgrind.

Wall and CPU times on these shared machines move by ±10 % from one run to the next; instruction
counts do not. This runs the three local stages of ``stages.py`` in one process under
``valgrind --tool=callgrind``, on N and on 2N sample profiles, and prints
(instructions at 2N - instructions at N) / N: what one more profile costs, without the start-up.
To compare two versions, run it in each checkout (``--root``) on the same machine::

    python -m benchmarks.instructions                 # this checkout, N = 20,000 (~2 min)
    python -m benchmarks.instructions --root ../old   # another checkout of the repository

Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys
root, warehouse, folder = sys.argv[1:4]
sys.path.insert(0, root)
from benchmarks import stages
stages.STAGES["extract"]({"db": "sqlite", "database": warehouse, "output": folder + "/p.jsonl"})
stages.STAGES["transform"]({"language": "mapping", "input": folder + "/p.jsonl",
                            "output": folder + "/r.jsonl", "rejections": folder + "/x.jsonl"})
stages.STAGES["dedupe"]({"input": folder + "/r.jsonl", "output": folder + "/d.jsonl",
                         "rejections": folder + "/y.jsonl"})
"""


def instructions(root: Path, warehouse: Path, folder: Path) -> int:
    done = subprocess.run(
        [
            *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
            *(sys.executable, "-c", CHILD, str(root), str(warehouse), str(folder)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no callgrind total in:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the checkout to measure (this one)")
    parser.add_argument("--profiles", type=int, default=20_000, help="N (20,000)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    from krenalis_airflow.core.sample_data import write_sqlite_warehouse

    counts = []
    with tempfile.TemporaryDirectory(prefix="krenalis-instructions-") as tmp:
        for size in (args.profiles, 2 * args.profiles):
            folder = Path(tmp) / str(size)
            folder.mkdir()
            write_sqlite_warehouse(folder / "warehouse.sqlite", size)
            counts.append(instructions(args.root.resolve(), folder / "warehouse.sqlite", folder))
    per_profile = (counts[1] - counts[0]) / args.profiles
    print(f"{args.root.resolve()}: {per_profile:,.0f} instructions per profile (extract + mapping + dedupe)")


if __name__ == "__main__":
    main()
