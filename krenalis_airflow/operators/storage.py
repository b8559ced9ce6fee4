"""Where the profiles travel between steps: files under an object-storage base, not XCom.

The base is ``KRENALIS_STORAGE_BASE`` (any ``ObjectStoragePath`` URL: ``file:///…``,
``s3://bucket/prefix`` with the matching provider and connection), else ``[krenalis]
storage_base`` in airflow.cfg, else ``file://$AIRFLOW_HOME/krenalis``. Every worker must be able
to reach it: on a distributed executor use shared object storage.

The profile files of a run (whole profiles: personal data) are removed once its upsert
succeeds, unless ``KRENALIS_KEEP_FILES`` / ``[krenalis] keep_files`` is true.
"""

from __future__ import annotations

import os
import re

from airflow.sdk import ObjectStoragePath


def storage_base() -> ObjectStoragePath:
    """Where runs keep their files: the ``storage_base`` setting, else ``$AIRFLOW_HOME/krenalis``."""
    base = _setting("storage_base")
    if not base:
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        base = f"file://{os.path.abspath(home)}/krenalis"
    return ObjectStoragePath(base)


def _setting(name: str) -> str | None:
    value = os.environ.get(f"KRENALIS_{name.upper()}")
    if not value:
        from airflow.configuration import conf

        value = conf.get("krenalis", name, fallback=None)
    return value or None


def keep_files() -> bool:
    """Whether a successful run keeps its profile files (for debugging; they hold personal data)."""
    value = (_setting("keep_files") or "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"KRENALIS_KEEP_FILES / [krenalis] keep_files must be true or false, not {value!r}")
    return value in ("true", "1", "yes")


def run_folder(dag_id: str, run_id: str) -> ObjectStoragePath:
    """One folder per DAG run; run ids carry ':' and '+', which some stores dislike."""
    folder = storage_base() / dag_id / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
