"""Check every column a pipeline spec names against the source's real columns and types.

What only the warehouse can tell: a key, matching property, filter property, ``order_by``,
``transformation.inputs`` entry or mapping variable that is not a column; a filter value that
does not convert to its column's type (or an operator that does not apply to it); a matching
property that is not a text, integer or UUID column. ``check_source`` probes the source once
(``extract.probe_source``: a query returning no rows, plus the column types) and raises one
``SpecError`` listing every problem at its ``file:line``. ``krenalis-airflow validate --connect``
and the extract step both call it, so a run fails before it reads a row, with the message
``validate --connect`` prints. Everything else here is pure: it never touches a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from krenalis_airflow.core.conditions import Kind
from krenalis_airflow.core.extract import SourceColumns, filter_columns, probe_source, source_problems
from krenalis_airflow.core.filters import POSTGRESQL, SQLITE, filter_problems, unknown_column_message
from krenalis_airflow.core.filters import value_problems as filter_value_problems
from krenalis_airflow.core.spec import MAX_SPEC_NODES, PipelineSpec, Transformation, index_lines
from krenalis_airflow.core.transform.mapping import variables
from krenalis_airflow.exceptions import SpecError, SpecProblem

Lines = dict[tuple[str | int, ...], int]

# What a matching property may be, as in Krenalis. OTHER: a type the probe cannot name (citext,
# or any column of a database other than SQLite and PostgreSQL), compared by its text.
MATCHABLE = frozenset({Kind.TEXT, Kind.INTEGER, Kind.UUID, Kind.OTHER})
_UNMATCHABLE = {
    Kind.BOOLEAN: "a boolean has two values, so profiles would share them and all be rejected as "
    "duplicates; match on a column that identifies one customer (email, customer_id)",
    Kind.NUMBER: "decimal and floating-point values have several spellings (1, 1.0, 1.00) and do "
    "not compare exactly; match on an integer or text column, or CAST it to one in source.query",
    Kind.DATE: "a date does not identify a customer; match on a column that does (email, customer_id)",
    Kind.JSON: "a JSON value is not one text; select the key you need as a text column in source.query",
}
_MATCHING = "export.matching.property"
_MAPPING = "transformation.mapping"


def check_source(
    cursor: Any, spec: PipelineSpec, spec_file: str, *, dialect: str | None, placeholder: str
) -> SourceColumns:
    """Probe the spec's source through ``cursor`` and check every column the spec names.

    ``dialect`` and ``placeholder`` are the hook's. Returns the probe (for ``prepare_extraction``'s
    ``probed=``); raises ``SpecError`` with every problem at its line of ``spec_file``.
    """
    probed = probe_source(
        cursor, spec.source, dialect=dialect, placeholder=placeholder, typed=typed_columns(spec)
    )
    if problems := column_problems(spec, probed):
        raise spec_error(spec_file, problems)
    return probed


def typed_columns(spec: PipelineSpec) -> list[str]:
    """The columns whose types matter: what the filter reads, and the matching property."""
    return [*filter_columns(spec.filter), spec.export.matching.property]


def column_problems(spec: PipelineSpec, probed: SourceColumns) -> list[SpecProblem]:
    """Every problem of ``spec`` with the source ``probed`` (paths only; ``spec_error`` adds lines)."""
    names = probed.names
    return [
        *source_problems(spec.source, names, spec.export.order),
        *matching_problems(spec.export.matching.property, probed),
        *_filter_problems(spec, probed),
        *input_problems(spec.transformation, names),
        *mapping_problems(spec.transformation, names),
    ]


def matching_problems(name: str, probed: SourceColumns) -> list[SpecProblem]:
    """The matching property must be a column of the source, of a text, integer or UUID type."""
    if "." in name:
        return [SpecProblem(_MATCHING, _json_path_message(name, probed.dialect))]
    if name not in probed.names:
        return [SpecProblem(_MATCHING, unknown_column_message(name, probed.names))]
    kind = probed.kinds.get(name, Kind.OTHER)
    if kind in MATCHABLE:
        return []
    why = _UNMATCHABLE.get(kind, _UNMATCHABLE[Kind.DATE])
    message = f"column {name} is {kind}; the matching property must be a text, integer or UUID column: {why}"
    return [SpecProblem(_MATCHING, message)]


def _json_path_message(name: str, dialect: str) -> str:
    column, *keys = name.split(".")
    alias = "_".join([column, *keys])
    if dialect == POSTGRESQL:
        read = column + "".join(f"->'{key}'" for key in keys[:-1]) + f"->>'{keys[-1]}'"
    elif dialect == SQLITE:
        read = f"json_extract({column}, '$.{'.'.join(keys)}')"
    else:
        read = f"<the value at {'.'.join(keys)} in {column}>"
    return (
        f"{name!r} is a JSON path; the matching property must be a column (text, integer or UUID): "
        f"select the value as a column in source.query (SELECT *, {read} AS {alias} FROM …) "
        f"and match on {alias}"
    )


def _filter_problems(spec: PipelineSpec, probed: SourceColumns) -> list[SpecProblem]:
    """Unknown filter columns, then what the others' types refuse (operators, values)."""
    unknown = filter_problems(spec.filter, probed.names)
    skipped = {problem.path.rpartition(".")[0] for problem in unknown}  # those conditions' paths
    typed = filter_value_problems(spec.filter, probed.dialect, probed.kinds)
    return unknown + [problem for problem in typed if problem.path.rpartition(".")[0] not in skipped]


def input_problems(transformation: Transformation, names: Sequence[str]) -> list[SpecProblem]:
    """``transformation.inputs`` entries that are not columns."""
    return [
        SpecProblem(f"transformation.inputs[{index}]", unknown_column_message(name, names))
        for index, name in enumerate(transformation.inputs or ())
        if name not in names
    ]


def mapping_problems(transformation: Transformation, names: Sequence[str]) -> list[SpecProblem]:
    """Each variable a mapping expression reads that is not a column (a JSON path reads its column)."""
    return [
        SpecProblem(f"{_MAPPING}.{field}", unknown_column_message(name, names))
        for field, read in variables(transformation.mapping or {}).items()
        for name in sorted(read)
        if name not in names
    ]


# --------------------------------------------------------------------------------------------
# Lines


def spec_error(spec_file: str, problems: Iterable[SpecProblem]) -> SpecError:
    """A ``SpecError`` whose problems carry their line in ``spec_file``, in file order."""
    return SpecError(spec_file, with_lines(problems, spec_lines(spec_file)))


def spec_lines(spec_file: str | Path) -> Lines:
    """The line of every key path of the spec file (empty when it cannot be read or parsed)."""
    try:
        node = yaml.compose(Path(spec_file).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    lines: Lines = {}
    if node is not None:
        index_lines(node, (), lines, [], [MAX_SPEC_NODES])
    return lines


def with_lines(problems: Iterable[SpecProblem], lines: Lines) -> list[SpecProblem]:
    """``problems`` with the line of their key path (or of its closest parent), sorted by line."""
    located = [
        problem if problem.line else SpecProblem(problem.path, problem.message, line_of(problem.path, lines))
        for problem in problems
    ]
    return sorted(located, key=lambda problem: problem.line or 0)


def line_of(path: str, lines: Lines) -> int | None:
    """The line of ``path`` in the spec, or of its nearest parent that has one."""
    keys = key_path(path)
    for depth in range(len(keys), 0, -1):
        if (line := lines.get(keys[:depth])) is not None:
            return line
    return None


def key_path(path: str) -> tuple[str | int, ...]:
    """``filter.conditions[1].values[0]`` → ``("filter", "conditions", 1, "values", 0)``; a mapping
    field is one key, dots and all (``transformation.mapping.address.city``)."""
    if path.startswith(f"{_MAPPING}."):
        return ("transformation", "mapping", path.removeprefix(f"{_MAPPING}."))
    keys: list[str | int] = []
    for part in path.split("."):
        name, *indexes = part.replace("]", "").split("[")
        keys += [name, *map(int, indexes)]
    return tuple(keys)
