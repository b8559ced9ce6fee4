"""Each benchmark step runs in a fresh interpreter, so that its peak RSS is its own: this runs
one (``python -m <module> ...``) and reads back the JSON line it prints after ``RESULT_PREFIX``.
Only the standard library here: a child that imports this measures nothing of ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "
CHILD_TIMEOUT = 3600.0  # seconds; a child that takes longer is killed and reported as failed


def spawn(module: str, argv: Sequence[str], timeout: float = CHILD_TIMEOUT) -> tuple[dict[str, Any], str]:
    """Run ``python -m module *argv`` in a fresh interpreter (so its peak RSS is its own) and
    return the JSON of its ``RESULT_PREFIX`` line, or ({}, why there is none)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {}, f"timed out after {timeout:g} s"
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if done.returncode != 0 or line is None:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        return {}, f"exit {done.returncode}: {tail}"
    found: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
    return found, ""
