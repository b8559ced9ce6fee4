"""Airflow DAG file with no DAG: a broken pipeline spec becomes this file's import error
("DAG Import Errors" in the UI). The pipelines' DAGs come from krenalis_pipelines.py, which never
raises, so a broken spec hides no other pipeline.
"""

from __future__ import annotations

from pathlib import Path

from krenalis_airflow.dag_factory import check_specs, pipelines_dir

check_specs(pipelines_dir(Path(__file__).parent / "pipelines"))
