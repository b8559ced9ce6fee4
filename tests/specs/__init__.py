"""Spec files shared by the tests: ``valid/*.yaml`` load, ``invalid/*.yaml`` fail with the error
their last line states (``# error: <text the SpecError contains>``; last, so line numbers hold).

A file's name is its pipeline id. Tests that vary a spec's text keep it inline.
"""

from __future__ import annotations

from pathlib import Path

SPECS = Path(__file__).resolve().parent
ERROR_PREFIX = "# error: "


def spec_path(name: str) -> Path:
    """``tests/specs/<name>.yaml``, e.g. ``spec_path("valid/minimal")``."""
    path = SPECS / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def spec_text(name: str) -> str:
    """The text of ``tests/specs/<name>.yaml``."""
    return spec_path(name).read_text(encoding="utf-8")


def expected_error(path: Path) -> str:
    """What an invalid spec's ``# error:`` line says its ``SpecError`` contains."""
    stated = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(ERROR_PREFIX)]
    if len(stated) != 1:
        raise ValueError(f"{path}: state the expected error on one '{ERROR_PREFIX}' line")
    return stated[0].removeprefix(ERROR_PREFIX)
