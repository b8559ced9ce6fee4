"""The pipeline spec: a typed model of one YAML file, and a loader whose errors point at lines.

Every model forbids unknown keys. ``load_spec`` collects *all* problems of a file into one
``SpecError`` whose lines read ``file:line: key.path: what is wrong; what is allowed``.

One file, one pipeline: the file name (without ``.yaml``/``.yml``) is the pipeline id, so ``id``
may be left out and, when written, must equal it; ``unique_ids`` reports every file of an id that
two files share, and lets none of them run.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from krenalis_airflow.core.conditions import OPERATORS, Group
from krenalis_airflow.core.fields import SCALAR_FIELDS
from krenalis_airflow.core.matching import mapping_problem, matching_problem, mode_problem
from krenalis_airflow.core.model import Model
from krenalis_airflow.core.transform.mapping import mapping_static_problems
from krenalis_airflow.core.transform.python import source_problems as python_problems
from krenalis_airflow.exceptions import KeyedError, SpecError, SpecProblem

PIPELINE_ID = r"^[a-z][a-z0-9_]*$"
# A spec is a few hundred YAML nodes (a 2,000-field mapping ~4,000). Past this many, counted with
# every alias expanded, it is refused before validation walks it: a few nested aliases
# ("billion laughs") would otherwise keep the DAG file busy past its import timeout, and that
# timeout hides every pipeline of the folder, not only this one.
MAX_SPEC_NODES = 100_000
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
INTERVALS = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "2h": timedelta(hours=2),
    "3h": timedelta(hours=3),
    "6h": timedelta(hours=6),
    "8h": timedelta(hours=8),
    "12h": timedelta(hours=12),
    "24h": timedelta(hours=24),
}
PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")

# libyaml's loader when PyYAML was built with it (about 10x faster than the pure-Python one: every
# DAG file parses every spec at each dag-processor pass). Each spec is parsed once: the same node
# gives the line index and the data.
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Source(Model):
    """Where profiles come from: a table or a query on a SQL connection, and their key column."""

    conn_id: str
    table: str | None = None
    query: str | None = None
    key: str

    @model_validator(mode="after")
    def _table_or_query(self) -> Source:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' (a table name) or 'query' (a SELECT)")
        if self.table is not None and not TABLE_NAME.match(self.table):
            raise ValueError(f"table {self.table!r} is not a table name (name or schema.name)")
        if self.query is not None and not re.match(r"^\s*(select|with)\b", self.query, re.I):
            raise ValueError("query must be a single SELECT (or WITH … SELECT) statement")
        if not IDENTIFIER.match(self.key):
            raise ValueError(f"key {self.key!r} is not a column name")
        return self


class Destination(Model):
    """The Airflow connection to the Stripe account."""

    conn_id: str = "stripe_default"


class Matching(Model):
    """Which profile property identifies a Stripe customer, and by which Stripe field."""

    property: str
    stripe: str

    @field_validator("stripe")
    @classmethod
    def _matchable(cls, value: str) -> str:
        if problem := matching_problem(value):
            raise ValueError(problem)
        return value

    @builtins.property  # the field named "property" shadows the builtin inside this class
    def metadata_key(self) -> str | None:
        """The metadata key matched on, or None when matching on a built-in field."""
        return self.stripe.removeprefix("metadata.") if self.stripe.startswith("metadata.") else None


class Export(Model):
    """How profiles are written to Stripe: the mode, matching, duplicates and failure limits."""

    mode: Literal["create_only", "update_only", "create_and_update"] = "create_and_update"
    matching: Matching
    duplicate_profiles: Literal["reject", "keep_first"] = "reject"
    order_by: str | None = None
    duplicate_customers: Literal["reject", "update_all"] = "reject"
    max_rejected: int | str = "10%"
    give_up_after: int = Field(default=3, ge=1, le=1000)
    reconcile: str = "24h"  # off, or how often the ledger is checked against Stripe (30m, 24h, 7d)
    on_leave: Literal["keep", "clear", "delete"] = "keep"
    max_leave: int | str = "10%"
    skip_unchanged: bool = Field(
        default=True,
        description="Read only the profiles whose columns changed since they were synced, when the "
        "ledger is in the source database (core/inputs.py). false: read and transform every profile "
        "each run, for a transformation that reads more than the row (the clock, files, services).",
    )

    @field_validator("max_rejected")
    @classmethod
    def _max_rejected(cls, value: int | str) -> int | str:
        return _count_or_share(value, "the extracted profiles")

    @field_validator("max_leave")
    @classmethod
    def _max_leave(cls, value: int | str) -> int | str:
        return _count_or_share(value, "the profiles in the ledger")

    @field_validator("reconcile", mode="before")
    @classmethod
    def _reconcile(cls, value: Any) -> str:
        if value is False:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value != "off" and (not isinstance(value, str) or parse_interval(value) is None):
            raise ValueError(f"{value!r} is not 'off' or an interval such as 30m, 6h, 24h or 7d")
        return value

    def rejection_limit(self, extracted: int) -> int:
        """How many rejected + failed profiles a run tolerates before it fails."""
        return count_or_share(self.max_rejected, extracted)

    def leave_limit(self, in_ledger: int) -> int:
        """How many profiles may leave the audience in one run before it fails, changing nothing."""
        return count_or_share(self.max_leave, in_ledger)

    @property
    def reconcile_every(self) -> timedelta | None:
        """How often the ledger is reconciled with Stripe; None when ``reconcile: off``."""
        return None if self.reconcile == "off" else parse_interval(self.reconcile)

    @field_validator("order_by")
    @classmethod
    def _order_by(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*( (asc|desc))?$", value, re.I):
            raise ValueError(f"{value!r} is not '<column>' or '<column> asc|desc'")
        return value

    @model_validator(mode="after")
    def _id_needs_update_only(self) -> Export:
        if problem := mode_problem(self.matching.stripe, self.mode):
            raise KeyedError(("matching", "stripe"), problem)
        return self

    @property
    def order(self) -> tuple[str, bool] | None:
        """``(column, descending)`` or None for the source key ascending."""
        if self.order_by is None:
            return None
        column, _, direction = self.order_by.partition(" ")
        return column, direction.lower() == "desc"


INTERVAL = re.compile(r"^(\d+)(m|h|d)$")
INTERVAL_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_interval(value: str) -> timedelta | None:
    """``30m``, ``6h``, ``7d`` as a timedelta (at least a minute); None when it is not one."""
    found = INTERVAL.match(value)
    if found is None or int(found[1]) == 0:
        return None
    return timedelta(**{INTERVAL_UNITS[found[2]]: int(found[1])})


def _count_or_share(value: int | str, of: str) -> int | str:
    """A count (``50``) or a share (``5%``) of ``of``, as the spec wrote it."""
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and re.match(r"^\d+(\.\d+)?%$", value) and float(value[:-1]) <= 100:
        return value
    raise ValueError(f"{value!r} is not a count (e.g. 50) or a percentage of {of} (e.g. 5%)")


def count_or_share(value: int | str, total: int) -> int:
    """The count a spec's count or share (``50``, ``5%``: ``max_rejected``, ``max_leave``) allows out of ``total``."""
    return value if isinstance(value, int) else int(total * float(value[:-1]) / 100)


class Transformation(Model):
    """Exactly one of ``mapping``, ``javascript`` or ``python``.

    ``inputs`` (javascript/python) lists the only columns read from the warehouse, besides the
    key, the matching property and the order column; ``timeout`` (seconds per record) and
    ``memory_mb`` bound each JavaScript worker process.
    """

    mapping: dict[str, str] | None = None
    javascript: str | None = None
    python: str | None = None
    inputs: tuple[str, ...] | None = None
    timeout: float = Field(default=5.0, gt=0, le=300)
    memory_mb: int = Field(default=256, ge=32, le=8192)

    @builtins.property
    def language(self) -> Literal["mapping", "javascript", "python"]:
        """Which of the three transformation kinds this spec uses."""
        return (
            "mapping"
            if self.mapping is not None
            else "javascript"
            if self.javascript is not None
            else "python"
        )

    @model_validator(mode="after")
    def _exactly_one(self) -> Transformation:
        given = [name for name in ("mapping", "javascript", "python") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'mapping', 'javascript' or 'python'")
        if self.inputs is not None and self.mapping is not None:
            raise KeyedError(
                ("inputs",), "inputs is for javascript and python; a mapping reads what it names"
            )
        limits = {"timeout", "memory_mb"} & self.model_fields_set
        if limits and self.javascript is None:
            raise KeyedError((sorted(limits)[0],), "timeout and memory_mb bound JavaScript workers only")
        return self

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("inputs is empty; list the columns the code reads, or leave inputs out")
            if bad := [name for name in value if not IDENTIFIER.match(name)]:
                raise ValueError(f"not column names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (problems := _mapping_messages(value)):
            raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
        return value

    @field_validator("javascript")
    @classmethod
    def _javascript(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                from krenalis_airflow.core.transform.javascript import syntax_problems as js_problems
            except ImportError:
                raise ValueError(
                    "JavaScript transformations need the optional extra (pyduktape2, GPL-2.0): "
                    "pip install 'krenalis-airflow[javascript]'"
                ) from None
            if problems := js_problems(value):
                raise ValueError("; ".join(problems))
        return value

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            context = info.context or {}
            search_path = context.get("search_path", ())
            importing = context.get("import_references", True)
            if problems := python_problems(value, search_path, import_reference=importing):
                raise ValueError("; ".join(problems))
        return value


def _mapping_messages(mapping: dict[str, str]) -> list[tuple[str, str]]:
    if not mapping:
        return [("mapping", "mapping is empty; map at least one Stripe field")]
    return mapping_static_problems(mapping)


class State(Model):
    """Where the ledger lives. Defaults to the source connection."""

    conn_id: str | None = None
    table_prefix: str = Field(default="krenalis_", pattern=r"^[a-z][a-z0-9_]*$")


NOTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*|\.[A-Za-z_]\w*)$")
ARGUMENT = re.compile(r"^[A-Za-z_]\w*$")


class Alerts(Model):
    """Who is told, and when: an Airflow notifier and the conditions that send through it.

    ``notifier`` is an import reference (``package.module.Name`` or ``package.module:name``): a
    ``BaseNotifier`` subclass (Slack, SMTP, SNS, … or your own), called as ``Name(**args)(context)``,
    or a function, called as ``name(context, **args)``. It is imported when an alert fires, never
    when a DAG file is parsed (``krenalis-airflow validate`` imports it and checks the arguments).
    ``message_arg`` names the argument that receives the alert's text (``text`` for Slack,
    ``html_content`` for SMTP, ``message`` for SNS; ``null``: none, use ``{{ krenalis_alert.text }}``
    in a templated argument instead). Conditions: ``on_failure`` (a task of the run failed for
    good), ``rejected_share`` (rejected + failed profiles above this share of the extracted ones),
    ``extracted_swing`` (the extracted count moved by at least this share from the last
    successful run's) and ``on_drift`` (a reconciliation found customers edited or deleted in
    Stripe). The figure conditions are checked when the upsert has its summary; dry runs send none.
    """

    notifier: str
    args: dict[str, Any] = {}
    message_arg: str | None = "text"
    on_failure: bool = True
    rejected_share: str | None = None
    extracted_swing: str | None = None
    on_drift: bool = False

    @field_validator("notifier")
    @classmethod
    def _notifier(cls, value: str) -> str:
        if not NOTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not an import reference; write package.module.Name (a BaseNotifier "
                "subclass, e.g. airflow.providers.slack.notifications.slack.SlackNotifier) or "
                "package.module:name"
            )
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, Any]) -> dict[str, Any]:
        if bad := [name for name in value if not ARGUMENT.match(str(name))]:
            raise ValueError(f"not argument names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("message_arg")
    @classmethod
    def _message_arg(cls, value: str | None) -> str | None:
        if value is not None and not ARGUMENT.match(value):
            raise ValueError(f"{value!r} is not an argument name (e.g. text, html_content, message)")
        return value

    @field_validator("rejected_share", "extracted_swing", mode="before")
    @classmethod
    def _share(cls, value: Any, info: ValidationInfo) -> Any:
        top = 100 if info.field_name == "rejected_share" else 1000
        percent = _percent(value) if isinstance(value, str) else None
        if value is None or (percent is not None and percent <= top):
            return value
        example = "5%" if info.field_name == "rejected_share" else "50%"
        raise ValueError(f"{value!r} is not a percentage up to {top}% (e.g. {example}), or null for never")

    @model_validator(mode="after")
    def _usable(self, info: ValidationInfo) -> Alerts:
        if not (self.on_failure or self.on_drift or self.rejected_share or self.extracted_swing):
            raise ValueError(
                "no condition is on: set on_failure: true, on_drift: true, rejected_share (e.g. 5%) or "
                "extracted_swing (e.g. 50%), or remove the alerts block"
            )
        if self.message_arg is not None and self.message_arg in self.args:
            raise KeyedError(
                ("args", self.message_arg),
                f"{self.message_arg} receives the alert's text (message_arg); remove it from args, "
                "or set message_arg: null and write the text yourself",
            )
        context = info.context or {}
        if context.get("import_references", True):
            from krenalis_airflow.core.alerts import notifier_problem

            if problem := notifier_problem(self, context.get("search_path", ())):
                raise KeyedError(("notifier",), problem)
        return self

    def share(self, name: Literal["rejected_share", "extracted_swing"]) -> float | None:
        """``rejected_share`` or ``extracted_swing`` as a fraction (``5%`` → 0.05); None when off."""
        value = getattr(self, name)
        return None if value is None else (_percent(value) or 0.0) / 100


def _percent(value: str) -> float | None:
    """``5%``, ``12.5%`` as a number of percent; None when ``value`` is not one."""
    return float(value[:-1]) if re.match(r"^\d+(\.\d+)?%$", value) else None


class PipelineSpec(Model):
    """A whole pipeline spec, as read from its YAML file."""

    # The file name is the pipeline's identity (like a dbt model's): ``load_spec`` fills ``id``
    # from it and refuses a written ``id`` that differs (see ``_identity_problems``).
    id: str = Field(
        pattern=PIPELINE_ID,
        description="Optional: the spec's file name without .yaml/.yml, which is the pipeline id "
        "(the DAG id); when written, it must equal the file name.",
    )
    description: str | None = None
    enabled: bool = Field(
        default=True,
        description="false: the pipeline has no schedule, and a run triggered anyway skips every "
        "step (nothing is read or written). Airflow's pause toggle still works on top.",
    )
    schedule: str | None = None
    tags: tuple[Annotated[str, StringConstraints(min_length=1, max_length=100)], ...] = ()
    source: Source
    filter: Group | None = None
    destination: Destination = Destination()
    export: Export
    transformation: Transformation
    state: State = State()
    alerts: Alerts | None = None

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, str) and (value in INTERVALS or value in PRESETS or _is_cron(value)):
            return value
        raise ValueError(
            f"{value!r} is not a schedule; use one of {', '.join(INTERVALS)}, "
            f"a preset ({', '.join(PRESETS)}), a 5-field cron expression, or null for manual runs"
        )

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineSpec:
        matching = self.export.matching
        if problem := mapping_problem(matching.stripe, self.transformation.mapping or {}, matching.property):
            raise KeyedError(("transformation", "mapping", matching.stripe), problem)
        return self

    @property
    def state_conn_id(self) -> str:
        """The connection holding the ledger and history: ``state.conn_id``, else the source's."""
        return self.state.conn_id or self.source.conn_id

    @property
    def schedule_value(self) -> timedelta | str | None:
        """What the DAG's ``schedule`` gets: a timedelta, a preset/cron string, or None."""
        if self.schedule is None:
            return None
        return INTERVALS.get(self.schedule, self.schedule)


def _is_cron(value: str) -> bool:
    fields = value.split()
    if len(fields) != 5:
        return False
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - croniter comes with Airflow
        return all(re.match(r"^[\d*/,\-A-Za-z?LW#]+$", f) for f in fields)
    return bool(croniter.is_valid(value))


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of the spec format, generated from the same model the loader uses."""
    schema = PipelineSpec.model_json_schema()
    # What custom validators check, stated for editors too (from the same tables they use).
    defs = schema["$defs"]
    defs["Condition"]["properties"]["operator"]["enum"] = list(OPERATORS)
    mapping = defs["Transformation"]["properties"]["mapping"]["anyOf"][0]
    mapping["propertyNames"] = {
        "anyOf": [{"enum": sorted(SCALAR_FIELDS)}, {"pattern": r"^metadata\.[^\[\]]{1,40}$"}]
    }
    schema["required"].remove("id")  # the loader takes it from the file name
    schema["properties"]["schedule"]["description"] = (
        f"{', '.join(INTERVALS)}, a preset ({', '.join(PRESETS)}), a 5-field cron expression, or null"
    )
    return {
        **schema,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "krenalis-airflow pipeline spec",
    }


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class LoadedSpec:
    """A spec with the file it was loaded from."""

    path: Path
    spec: PipelineSpec


def load_spec(
    path: str | Path, search_path: Sequence[str | Path] | None = None, *, import_references: bool = True
) -> PipelineSpec:
    """Read and validate one spec file; raise ``SpecError`` listing every problem.

    The file name without ``.yaml``/``.yml`` is the pipeline id: ``id`` may be left out, and when
    written must equal it. ``search_path``: where ``python: package.module:function`` references
    are imported from; by default the spec's folder and its parent (``dags/pipelines/`` → ``dags/``).
    ``import_references=False`` checks only their shape (DAG parsing must not run user code).
    """
    path = Path(path)
    if search_path is None:
        search_path = (path.parent.resolve(), path.parent.resolve().parent)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(source, [SpecProblem("", f"cannot read the file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        message = f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}; save it as UTF-8"
        raise SpecError(source, [SpecProblem("", message)]) from exc
    return parse_spec(
        text, source, search_path, name=pipeline_id_of(path), import_references=import_references
    )


def pipeline_id_of(path: str | Path) -> str:
    """The pipeline id a spec file stands for: its name without ``.yaml``/``.yml``."""
    return Path(path).stem


def parse_spec(
    text: str,
    source: str = "<spec>",
    search_path: Sequence[str | Path] = (),
    *,
    name: str | None = None,
    import_references: bool = True,
) -> PipelineSpec:
    """Validate spec text; ``source`` names it in errors.

    ``name``: the pipeline id given by the spec's file name (``load_spec`` passes it); ``id`` then
    defaults to it and, when written, must equal it. Without ``name`` the text must have an ``id``.
    """
    loader = YAML_LOADER(text)
    data: dict[str, Any] = {}
    try:
        node = loader.get_single_node()
        if isinstance(node, yaml.MappingNode):
            data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise SpecError(source, [SpecProblem("", f"not valid YAML: {exc}", line)]) from exc
    finally:
        loader.dispose()
    if node is None or not isinstance(node, yaml.MappingNode):
        raise SpecError(source, [SpecProblem("", "a spec is a YAML mapping (source: …, export: …, …)", 1)])
    lines: dict[tuple[str | int, ...], int] = {}
    duplicates: list[SpecProblem] = []
    if not index_lines(node, (), lines, duplicates, [MAX_SPEC_NODES]):
        message = (
            f"the spec expands to more than {MAX_SPEC_NODES:,} YAML nodes, counting each use of an "
            "alias (*name) in full: write the values out, or use fewer nested aliases"
        )
        raise SpecError(source, [SpecProblem("", message, 1)])
    if duplicates:
        raise SpecError(source, duplicates)
    problems = []
    if name is not None:
        problems = _identity_problems(data, name, source, lines)
        data["id"] = name  # the id is the file name; a written one that differs is reported
    context = {"search_path": tuple(search_path), "import_references": import_references}
    return _validate(data, lines, source, context, problems)


def _validate(
    data: dict[str, Any],
    lines: dict[tuple[str | int, ...], int],
    source: str,
    context: dict[str, Any],
    identity: list[SpecProblem],
) -> PipelineSpec:
    """The model of ``data``, or a SpecError with every problem, ``identity``'s included."""
    problems = list(identity)
    try:
        spec = PipelineSpec.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] == ("transformation", "mapping") and err["type"] == "value_error":
                problems += _mapping_problems(data["transformation"]["mapping"], lines)
            elif not _cascade(err) and not (identity and err["loc"] == ("id",)):
                problems.append(_problem(err, data, lines))
        problems.sort(key=lambda problem: problem.line or 0)  # in file order
        raise SpecError(source, problems) from exc
    if identity:
        raise SpecError(source, identity)
    return spec


def _identity_problems(
    data: dict[str, Any], name: str, source: str, lines: dict[tuple[str | int, ...], int]
) -> list[SpecProblem]:
    """One file, one pipeline: the file name is the id; a written ``id`` must say the same."""
    file_name = Path(source).name
    written = data.get("id")
    key, line = ("id", lines.get(("id",), 1)) if "id" in data else ("", 1)
    if not _is_pipeline_id(name):
        target = written if _is_pipeline_id(written) else _id_like(name)
        message = (
            f"the file name {file_name!r} is the pipeline id, and {name!r} is not one (lowercase "
            f"letters, digits and _, starting with a letter): rename the file, e.g. to {target}.yaml"
        )
        return [SpecProblem(key, message, line)]
    if "id" in data and written != name:
        rename = f" or rename the file to {written}.yaml" if _is_pipeline_id(written) else ""
        message = (
            f"id {written!r} differs from the file name {file_name!r}, which is the pipeline id: "
            f"remove the id line (the pipeline is then {name!r}){rename}"
        )
        return [SpecProblem(key, message, line)]
    return []


def _id_like(name: str) -> str:
    """A pipeline id close to ``name`` (``Eu-Customers`` → ``eu_customers``), to suggest."""
    candidate = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return candidate if _is_pipeline_id(candidate) else f"pipeline_{candidate}".rstrip("_")


def _is_pipeline_id(value: Any) -> bool:
    return isinstance(value, str) and re.match(PIPELINE_ID, value) is not None


def _mapping_problems(mapping: dict[str, Any], lines: dict[tuple[str | int, ...], int]) -> list[SpecProblem]:
    """The mapping's problems one per field, each pointing at the field's own line."""
    return [
        SpecProblem(
            "transformation.mapping" + (f".{path}" if path in mapping else ""),
            message,
            lines.get(("transformation", "mapping", path)) or lines.get(("transformation", "mapping")),
        )
        for path, message in _mapping_messages(mapping)
    ]


def _cascade(err: Any) -> bool:
    """A "too short" error on a list whose items failed themselves repeats what those items say."""
    return err["type"] == "too_short" and isinstance(err.get("input"), list | tuple) and bool(err["input"])


def index_lines(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    duplicates: list[SpecProblem],
    budget: list[int],
) -> bool:
    """Record each key path's line and every key given twice; False (and stop) once more than
    ``budget[0]`` nodes were walked, aliases expanded (see ``MAX_SPEC_NODES``)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                duplicates.append(
                    SpecProblem(_dotted((*path, key)), "key given twice", key_node.start_mark.line + 1)
                )
            seen.add(key)
            if not index_lines(value_node, (*path, key), lines, duplicates, budget):
                return False
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            if not index_lines(item, (*path, index), lines, duplicates, budget):
                return False
    return True


def _problem(err: Any, data: Any, lines: dict[tuple[str | int, ...], int]) -> SpecProblem:
    """Turn one pydantic error into a SpecProblem with the real key path and line."""
    path: list[str | int] = []
    node = data
    loc = err["loc"]
    keyed = (err.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedError):
        loc = (*loc, *keyed.path)
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        # pydantic adds union tags ("condition", "group") that are not keys of the data: skip them.
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif last and err["type"] in ("extra_forbidden", "missing"):
            path.append(part)
    line = None
    for depth in range(len(path), -1, -1):
        if (line := lines.get(tuple(path[:depth]))) is not None:
            break
    return SpecProblem(_dotted(tuple(path)), _message(err), line)


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key; check its spelling against the spec reference in the README"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def discover(
    folder: str | Path,
    *,
    import_references: bool = False,
    elsewhere: Mapping[str, Sequence[Path]] | None = None,
) -> list[LoadedSpec | SpecError]:
    """Load every ``*.yaml``/``*.yml`` directly in ``folder`` (sub-folders are not read), in name order.

    As DAG files call it, Python references are not imported (``load_spec``); the CLI's
    ``validate`` passes ``import_references=True``.

    A bad file yields its SpecError and never hides the others. Pipeline ids are file names, so two
    specs share one only as ``x.yaml`` and ``x.yml``: both are then errors (``unique_ids``), as is
    a spec whose id is a key of ``elsewhere`` (pipeline id → files of other folders: ``shard_ids``).
    """
    files = _spec_files(Path(folder))
    resolved = Path(folder).resolve()
    search_path = (resolved, resolved.parent)  # load_spec's default, resolved once for the folder
    results: list[LoadedSpec | SpecError] = []
    for file in files:
        try:
            spec = load_spec(file, search_path, import_references=import_references)
            results.append(LoadedSpec(file, spec))
        except SpecError as exc:
            results.append(exc)
    return unique_ids(results, elsewhere)


def _spec_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def unique_ids(
    results: Sequence[LoadedSpec | SpecError], elsewhere: Mapping[str, Sequence[Path]] | None = None
) -> list[LoadedSpec | SpecError]:
    """Every spec whose pipeline id another file also has becomes a SpecError naming the others.

    None of them wins, whichever loads and whatever their names sort as: adding a file never
    changes which spec an existing pipeline runs. A broken spec still holds its id (its id is its
    file name); a file given twice (same resolved path) is one file. Checking again is harmless.
    ``elsewhere``: pipeline id → files outside ``results`` that hold it too (other shards).
    """
    files: dict[str, dict[Path, Path]] = {}  # id → resolved path → the path as given
    resolved = [_result_path(result).resolve() for result in results]
    for result, real in zip(results, resolved, strict=True):
        path = _result_path(result)
        files.setdefault(pipeline_id_of(path), {}).setdefault(real, path)
    for pid, paths in (elsewhere or {}).items():
        if pid in files:
            for path in paths:
                files[pid].setdefault(path.resolve(), path)
    checked: list[LoadedSpec | SpecError] = []
    for result, real in zip(results, resolved, strict=True):
        same_id = files[pipeline_id_of(_result_path(result))]
        others = [str(given) for other, given in same_id.items() if other != real]
        checked.append(_id_clash(result, others) if others else result)
    return checked


def shard_folder(pipelines: str | Path, shard: str | None) -> Path:
    """The folder of one shard of the pipelines folder: the sub-folder ``shard``, or the folder
    itself for ``None``. Raises ``ValueError`` for a shard that is not a plain folder name."""
    if shard is None:
        return Path(pipelines)
    if not re.match(PIPELINE_ID, shard):
        raise ValueError(
            f"shard {shard!r} is not a shard name: shards are sub-folders of the pipelines folder named "
            "like pipeline ids (lowercase letters, digits and _, starting with a letter); rename it"
        )
    return Path(pipelines) / shard


def shard_ids(pipelines: str | Path, shard: str | None) -> dict[str, list[Path]]:
    """Pipeline id → spec files of the *other* shards of the pipelines folder ``pipelines``.

    The shards are the folder's own files (``shard`` None) and each of its sub-folders named
    like a pipeline id; every shard is served by DAG files of its own, so a pipeline id must be
    unique across all of them (``discover(..., elsewhere=...)``). Only names are read.
    """
    root = Path(pipelines)
    folders = [root, *sorted(p for p in root.glob("*") if re.match(PIPELINE_ID, p.name) and p.is_dir())]
    mine = shard_folder(root, shard).resolve()
    found: dict[str, list[Path]] = {}
    for folder in folders:
        if folder.resolve() != mine:
            for path in _spec_files(folder):
                found.setdefault(pipeline_id_of(path), []).append(path)
    return found


def _result_path(result: LoadedSpec | SpecError) -> Path:
    return result.path if isinstance(result, LoadedSpec) else Path(result.source)


def _id_clash(result: LoadedSpec | SpecError, others: list[str]) -> SpecError:
    path = _result_path(result)
    clash = f"pipeline id {pipeline_id_of(path)!r} (the file name) is also the id of "
    message = (
        f"{clash}{', '.join(others)}; no spec with that id runs until only one is left: rename or "
        "remove all but one of these files"
    )
    earlier = result.problems if isinstance(result, SpecError) else []
    return SpecError(
        str(path), [SpecProblem("id", message, 1), *(p for p in earlier if clash not in p.message)]
    )
