"""Where the profiles travel between steps: files under an object-storage base, not XCom.

The base is ``KRENALIS_STORAGE_BASE`` (any ``ObjectStoragePath`` URL: ``file:///…``,
``s3://bucket/prefix`` with the matching provider and connection), else ``[krenalis]
storage_base`` in airflow.cfg, else ``file://$AIRFLOW_HOME/krenalis``. Every worker must be able
to reach it: on a distributed executor use shared object storage.
"""

from __future__ import annotations

import os
import re

from airflow.sdk import ObjectStoragePath


def storage_base() -> ObjectStoragePath:
    base = os.environ.get("KRENALIS_STORAGE_BASE")
    if not base:
        from airflow.configuration import conf

        base = conf.get("krenalis", "storage_base", fallback=None)
    if not base:
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        base = f"file://{os.path.abspath(home)}/krenalis"
    return ObjectStoragePath(base)


def run_folder(dag_id: str, run_id: str) -> ObjectStoragePath:
    """One folder per DAG run; run ids carry ':' and '+', which some stores dislike."""
    folder = storage_base() / dag_id / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
