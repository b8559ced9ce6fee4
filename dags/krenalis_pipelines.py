"""Airflow DAG file: one DAG per pipeline spec (YAML) in the pipelines folder,
$KRENALIS_PIPELINES_DIR or pipelines/ beside this file. A broken spec becomes an unscheduled
'broken-spec' DAG; this file never raises, so no pipeline hides another.

Written by `krenalis-airflow init`; the logic lives in the installed package.
"""

from krenalis_airflow.dag_factory import pipeline_dags

globals().update(pipeline_dags(__file__))
