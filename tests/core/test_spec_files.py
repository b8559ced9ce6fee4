"""Every spec of ``tests/specs/valid`` loads, every one of ``tests/specs/invalid`` fails as it states."""

from __future__ import annotations

from pathlib import Path

import pytest

from krenalis_airflow.core.spec import load_spec
from krenalis_airflow.exceptions import SpecError
from tests.specs import SPECS, expected_error

VALID = sorted((SPECS / "valid").glob("*.yaml"))
INVALID = sorted((SPECS / "invalid").glob("*.yaml"))


def test_both_folders_hold_specs() -> None:
    assert VALID and INVALID


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_spec_loads_as_the_pipeline_its_file_names(path: Path) -> None:
    assert load_spec(path).id == path.stem


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_spec_fails_with_its_stated_error(path: Path) -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert expected_error(path) in str(raised.value)
