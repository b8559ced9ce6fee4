"""The pipeline spec: a typed model of one YAML file, and a loader whose errors point at lines.

Every model forbids unknown keys. ``load_spec`` collects *all* problems of a file into one
``SpecError`` whose lines read ``file:line: key.path: what is wrong; what is allowed``.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
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
from krenalis_airflow.core.fields import SCALAR_FIELDS, matching_problem
from krenalis_airflow.core.model import KeyedError, Model
from krenalis_airflow.core.transform.mapping import mapping_static_problems
from krenalis_airflow.core.transform.python import source_problems as python_problems
from krenalis_airflow.exceptions import SpecError, SpecProblem

PIPELINE_ID = r"^[a-z][a-z0-9_]*$"
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


class Source(Model):
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
    conn_id: str = "stripe_default"


class Matching(Model):
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
        return self.stripe.removeprefix("metadata.") if self.stripe.startswith("metadata.") else None


class Export(Model):
    mode: Literal["create_only", "update_only", "create_and_update"] = "create_and_update"
    matching: Matching
    duplicate_profiles: Literal["reject", "keep_first"] = "reject"
    order_by: str | None = None
    duplicate_customers: Literal["reject", "update_all"] = "reject"
    max_rejected: int | str = "10%"
    give_up_after: int = Field(default=3, ge=1, le=1000)

    @field_validator("max_rejected")
    @classmethod
    def _max_rejected(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value >= 0:
            return value
        if isinstance(value, str) and re.match(r"^\d+(\.\d+)?%$", value) and float(value[:-1]) <= 100:
            return value
        raise ValueError(
            f"{value!r} is not a count (e.g. 50) or a percentage of the extracted profiles (e.g. 5%)"
        )

    def rejection_limit(self, extracted: int) -> int:
        """How many rejected + failed profiles a run tolerates before it fails."""
        if isinstance(self.max_rejected, int):
            return self.max_rejected
        return int(extracted * float(self.max_rejected[:-1]) / 100)

    @field_validator("order_by")
    @classmethod
    def _order_by(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*( (asc|desc))?$", value, re.I):
            raise ValueError(f"{value!r} is not '<column>' or '<column> asc|desc'")
        return value

    @model_validator(mode="after")
    def _id_needs_update_only(self) -> Export:
        if self.matching.stripe == "id" and self.mode != "update_only":
            raise KeyedError(
                ("matching", "stripe"),
                "matching on Stripe 'id' only works with mode: update_only (ids cannot be created)",
            )
        return self

    @property
    def order(self) -> tuple[str, bool] | None:
        """``(column, descending)`` or None for the source key ascending."""
        if self.order_by is None:
            return None
        column, _, direction = self.order_by.partition(" ")
        return column, direction.lower() == "desc"


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
            search_path = (info.context or {}).get("search_path", ())
            if problems := python_problems(value, search_path):
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


class PipelineSpec(Model):
    id: str = Field(pattern=PIPELINE_ID)
    description: str | None = None
    enabled: bool = True
    schedule: str | None = None
    tags: tuple[Annotated[str, StringConstraints(min_length=1, max_length=100)], ...] = ()
    source: Source
    filter: Group | None = None
    destination: Destination = Destination()
    export: Export
    transformation: Transformation
    state: State = State()

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
        matched = self.export.matching.stripe
        mapping = self.transformation.mapping or {}
        if matched != "id" and matched in mapping:
            raise KeyedError(
                ("transformation", "mapping", matched),
                f"transformation.mapping writes {matched!r}, the matched Stripe field; it is set "
                f"from '{self.export.matching.property}' automatically — remove it from the mapping",
            )
        return self

    @property
    def state_conn_id(self) -> str:
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
    path: Path
    spec: PipelineSpec


def load_spec(path: str | Path, search_path: Sequence[str | Path] | None = None) -> PipelineSpec:
    """Read and validate one spec file; raise ``SpecError`` listing every problem.

    ``search_path``: where ``python: package.module:function`` references are imported from;
    by default the spec's folder and its parent (``dags/pipelines/`` → ``dags/``).
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
    return parse_spec(text, source, search_path)


def parse_spec(text: str, source: str = "<spec>", search_path: Sequence[str | Path] = ()) -> PipelineSpec:
    """Validate spec text; ``source`` names it in errors."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise SpecError(source, [SpecProblem("", f"not valid YAML: {exc}", line)]) from exc
    if node is None or not isinstance(node, yaml.MappingNode):
        raise SpecError(source, [SpecProblem("", "a spec is a YAML mapping (id: …, source: …, …)", 1)])
    lines: dict[tuple[str | int, ...], int] = {}
    duplicates: list[SpecProblem] = []
    _index_lines(node, (), lines, duplicates)
    if duplicates:
        raise SpecError(source, duplicates)
    data = yaml.safe_load(text)
    try:
        return PipelineSpec.model_validate(data, context={"search_path": tuple(search_path)})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["loc"] == ("transformation", "mapping") and err["type"] == "value_error":
                problems += _mapping_problems(data["transformation"]["mapping"], lines)
            elif not _cascade(err):
                problems.append(_problem(err, data, lines))
        problems.sort(key=lambda problem: problem.line or 0)  # in file order
        raise SpecError(source, problems) from exc


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


def _index_lines(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    duplicates: list[SpecProblem],
) -> None:
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
            _index_lines(value_node, (*path, key), lines, duplicates)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, duplicates)


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


def discover(folder: str | Path) -> list[LoadedSpec | SpecError]:
    """Load every ``*.yaml``/``*.yml`` in ``folder``; a bad file yields its SpecError, never hides others.

    Pipeline ids must be unique: every file that repeats an id already taken by an earlier file
    (in name order) becomes a SpecError too.
    """
    results: list[LoadedSpec | SpecError] = []
    owners: dict[str, Path] = {}
    files = sorted(p for p in Path(folder).glob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    for file in files:
        try:
            spec = load_spec(file)
        except SpecError as exc:
            results.append(exc)
            continue
        if spec.id in owners:
            message = f"pipeline id {spec.id!r} is already used by {owners[spec.id].name}; ids must be unique"
            results.append(SpecError(str(file), [SpecProblem("id", message, 1)]))
            continue
        owners[spec.id] = file
        results.append(LoadedSpec(file, spec))
    return results
