"""Airflow DAG file: one DAG per pipeline spec (YAML) in the pipelines folder.

The folder is ``$KRENALIS_PIPELINES_DIR``, or ``pipelines/`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

from krenalis_airflow.dag_factory import build_dags, pipelines_dir

globals().update(build_dags(pipelines_dir(Path(__file__).parent / "pipelines")))
