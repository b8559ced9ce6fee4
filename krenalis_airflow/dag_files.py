"""The DAGs folder of a deployment, as ``krenalis-airflow init DAGS_FOLDER`` writes it.

Two DAG files of one import each (the logic lives in :mod:`krenalis_airflow.dag_factory`, so
upgrading the package never leaves stale logic behind in a DAGs folder) and, when the folder has
none, ``pipelines/`` holding the sample spec. The repository's ``dags/*.py`` are exactly
``DAG_FILES`` (a test checks), and its ``dags/pipelines/sample_customers.yaml`` is a link to the
packaged ``sample_customers.yaml``: one file.

Imports nothing from Airflow: ``init`` must work before Airflow is even configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from krenalis_airflow.exceptions import InitError

PIPELINES_FILE = "krenalis_pipelines.py"
SPEC_CHECK_FILE = "krenalis_spec_check.py"
PIPELINES_FOLDER = "pipelines"
SAMPLE_SPEC = "sample_customers.yaml"

# Airflow parses only files containing both words "airflow" and "dag" (DAG discovery safe mode):
# the docstrings say them, and so does the import.
DAG_FILES: dict[str, str] = {
    PIPELINES_FILE: '''\
"""Airflow DAG file: one DAG per pipeline spec (YAML) in the pipelines folder,
$KRENALIS_PIPELINES_DIR or pipelines/ beside this file. A broken spec becomes an unscheduled
'broken-spec' DAG; this file never raises, so no pipeline hides another.

Written by `krenalis-airflow init`; the logic lives in the installed package.
"""

from krenalis_airflow.dag_factory import pipeline_dags

globals().update(pipeline_dags(__file__))
''',
    SPEC_CHECK_FILE: '''\
"""Airflow DAG file with no DAG: broken pipeline specs become this file's import error
("DAG Import Errors" in the UI). The pipelines' DAGs come from krenalis_pipelines.py, which never
raises, so a broken spec hides no other pipeline.

Written by `krenalis-airflow init`; the logic lives in the installed package.
"""

from krenalis_airflow.dag_factory import check_pipeline_specs

check_pipeline_specs(__file__)
''',
}

SHARD_FILES: dict[str, str] = {
    "krenalis_pipelines_{shard}.py": '''\
"""Airflow DAG file: one DAG per pipeline spec (YAML) in the shard {shard!r}, the sub-folder
{shard}/ of the pipelines folder ($KRENALIS_PIPELINES_DIR or pipelines/ beside this file).
Airflow parses this file on its own, so a slow or broken shard never hides another's DAGs.

Written by `krenalis-airflow init --shard {shard}`; the logic lives in the installed package.
"""

from krenalis_airflow.dag_factory import pipeline_dags

globals().update(pipeline_dags(__file__, shard="{shard}"))
''',
    "krenalis_spec_check_{shard}.py": '''\
"""Airflow DAG file with no DAG: the broken pipeline specs of the shard {shard!r} (the sub-folder
{shard}/ of the pipelines folder) become this file's import error ("DAG Import Errors").

Written by `krenalis-airflow init --shard {shard}`; the logic lives in the installed package.
"""

from krenalis_airflow.dag_factory import check_pipeline_specs

check_pipeline_specs(__file__, shard="{shard}")
''',
}


def dag_files(shard: str | None = None) -> dict[str, str]:
    """The DAG files ``init`` writes: ``DAG_FILES``, or those of one shard (``SHARD_FILES``)."""
    if shard is None:
        return DAG_FILES
    if not re.match(r"^[a-z][a-z0-9_]*$", shard):
        raise InitError(
            f"--shard {shard!r}: a shard is a sub-folder of the pipelines folder named like a pipeline "
            "id (lowercase letters, digits and _, starting with a letter)"
        )
    return {name.format(shard=shard): text.format(shard=shard) for name, text in SHARD_FILES.items()}


# A new deployment has no `warehouse` connection yet: an enabled sample would start unpaused and
# fail every hour, so init writes it disabled (listed, no schedule, runs skip until enabled).
_ENABLED = "\nenabled: true\n"
_DISABLED = "\nenabled: false  # written by `krenalis-airflow init`: true once the connections exist\n"


@dataclass
class InitReport:
    """What ``init_dags_folder`` did, path by path."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)  # already identical to what init writes
    kept: list[Path] = field(default_factory=list)  # an existing pipelines folder, never touched
    shard: str | None = None

    @property
    def pipelines(self) -> Path:
        """The pipelines folder inside the DAGs folder (the shard's sub-folder, for a shard)."""
        pipelines = self.folder / PIPELINES_FOLDER
        return pipelines if self.shard is None else pipelines / self.shard


def sample_spec() -> str:
    """The sample pipeline spec shipped in the package (the repository's ``dags/pipelines`` one)."""
    return (files("krenalis_airflow") / SAMPLE_SPEC).read_text(encoding="utf-8")


def written_sample_spec() -> str:
    """The sample spec as ``init`` writes it: disabled."""
    text = sample_spec()
    if _ENABLED not in text:
        raise AssertionError(
            f"the sample spec has no line {_ENABLED.strip()!r} to turn into 'enabled: false'"
        )
    return text.replace(_ENABLED, _DISABLED, 1)


def init_dags_folder(  # noqa: C901 - checks every path before writing any; split, the all-or-nothing rule gets lost
    folder: str | Path, *, force: bool = False, shard: str | None = None
) -> InitReport:
    """Write the DAG files into ``folder``, and ``pipelines/`` with the sample spec if absent.

    Checks everything before writing anything: an existing DAG file that differs from ours raises
    ``InitError`` unless ``force``; one already identical is left alone. An existing
    ``pipelines/`` is never touched, even with ``force``: it holds the user's specs.
    ``shard``: write the DAG files of one shard instead (``krenalis_pipelines_<shard>.py`` and
    ``krenalis_spec_check_<shard>.py``, serving ``pipelines/<shard>/``, created empty if absent).
    """
    folder = Path(folder)
    files = dag_files(shard)
    report = InitReport(folder, shard=shard)
    if not folder.exists():
        raise InitError(
            f"{folder}: no such folder. Create it, or give Airflow's DAGs folder "
            "(airflow config get-value core dags_folder)."
        )
    if not folder.is_dir():
        raise InitError(f"{folder}: not a folder; give Airflow's DAGs folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InitError(f"{folder}: not writable by this user; nothing was written.")

    todo: list[tuple[Path, str]] = []
    clashes: list[Path] = []
    for name, text in files.items():
        target = folder / name
        if target.is_dir():
            raise InitError(f"{target}: a folder is in the way of the DAG file; nothing was written.")
        if not target.exists():
            todo.append((target, text))
        elif _read(target) == text:
            report.unchanged.append(target)
        elif force:
            todo.append((target, text))
        else:
            clashes.append(target)
    if clashes:
        names = ", ".join(str(path) for path in clashes)
        raise InitError(
            f"{names}: already exist{'s' if len(clashes) == 1 else ''} and differ"
            f"{'s' if len(clashes) == 1 else ''} from what init writes; nothing was written. "
            "Rerun with --force to replace the DAG files (pipeline specs are never touched)."
        )

    pipelines = report.pipelines
    new_folder = None
    if pipelines.exists() or pipelines.is_symlink():
        if not pipelines.is_dir():
            raise InitError(f"{pipelines}: exists and is not a folder; nothing was written.")
        report.kept.append(pipelines)
    elif shard is None:
        todo.append((pipelines / SAMPLE_SPEC, written_sample_spec()))
    else:
        new_folder = pipelines  # a shard starts empty: its specs are moved in by the user

    for target, text in todo:
        try:
            target.parent.mkdir(exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            done = f"; already written: {', '.join(map(str, report.written))}" if report.written else ""
            raise InitError(f"{target}: cannot write: {exc.strerror or exc}{done}") from exc
        report.written.append(target)
    if new_folder is not None:
        try:
            new_folder.mkdir(parents=True)
        except OSError as exc:
            raise InitError(f"{new_folder}: cannot create the shard's folder: {exc.strerror or exc}") from exc
        report.written.append(new_folder)
    return report


def _read(path: Path) -> str | None:
    """The file's text; ``None`` when it is not UTF-8 (so it differs from ours)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    except OSError as exc:
        raise InitError(f"{path}: cannot read: {exc.strerror or exc}; nothing was written.") from exc
