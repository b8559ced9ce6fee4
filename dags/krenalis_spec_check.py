"""Airflow DAG file with no DAG: broken pipeline specs become this file's import error
("DAG Import Errors" in the UI). The pipelines' DAGs come from krenalis_pipelines.py, which never
raises, so a broken spec hides no other pipeline.

Written by `krenalis-airflow init`; the logic lives in the installed package.
"""

from krenalis_airflow.dag_factory import check_pipeline_specs

check_pipeline_specs(__file__)
