"""The shipped JSON Schema is the loader's model, and it accepts what the loader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from krenalis_airflow.core.spec import spec_schema

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "krenalis_airflow" / "spec.schema.json"
SAMPLE = ROOT / "dags" / "pipelines" / "sample_customers.yaml"


def test_shipped_schema_is_generated_from_the_model() -> None:
    assert json.loads(SHIPPED.read_text()) == spec_schema(), (
        "regenerate it: python -m krenalis_airflow schema > krenalis_airflow/spec.schema.json"
    )


def test_schema_accepts_the_sample_spec() -> None:
    jsonschema.validate(yaml.safe_load(SAMPLE.read_text()), spec_schema())


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["export"].update(mode="upsert"),
        lambda d: d["filter"]["conditions"][0].update(operator="is like"),
        lambda d: d["transformation"]["mapping"].update({"adress.city": "city"}),
        lambda d: d.update(unknown_key=1),
        lambda d: d["source"].pop("key"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(edit) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    edit(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, spec_schema())
