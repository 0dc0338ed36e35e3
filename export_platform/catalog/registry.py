"""The export-type model: what can be exported, which columns, which filters.

An export type is plain data. The job factory (`jobs.py`), the SQL builder (`planning/sql.py`) and the
request validation (`planning/plan.py`) read these declarations; none of them know any type by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ValueType(str, Enum):
    """How a filter value is validated in Python and cast in SQL."""

    TEXT = "text"
    INTEGER = "integer"
    NUMERIC = "numeric"
    DATE = "date"


class RowOrder(str, Enum):
    """The file's row order."""

    key = "key"  # by `order_by`: the same rows always give the same file
    none = "none"  # as the table stores them, read by parallel streams: the fastest


class Operator(str, Enum):
    EQ = "eq"  # equality; with `multi` a list of values means IN
    MIN = "min"  # column >= value (inclusive lower bound)
    MAX = "max"  # column <= value (inclusive upper bound)
    # For a timestamp column filtered by a date: everything up to the end of that day (UTC).
    MAX_DATE_END = "max_date_end"


@dataclass(frozen=True)
class Filter:
    name: str
    column: str
    value_type: ValueType
    op: Operator = Operator.EQ
    multi: bool = False
    description: str = ""

    @property
    def is_range(self) -> bool:
        return self.op is not Operator.EQ


@dataclass(frozen=True)
class ExportType:
    """One exportable dataset.

    `relation` is a table or view (optionally schema-qualified as `schema.name`); a source
    defined by a query is declared as a view so that the platform only ever selects from
    registry-checked identifiers.
    """

    name: str
    relation: str
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    filters: tuple[Filter, ...] = ()
    description: str = ""
    default_columns: tuple[str, ...] = field(default=())
    # Run monitoring ends a run that takes longer (a hung export); its request ends FAILED.
    max_runtime_seconds: int = 3600
    # Run each export in a process of its own instead of a warm run worker (docs/deploy.md): for
    # types whose exports are huge, or that should not share a warm process with others.
    isolated: bool = False
    # The row order of an export that does not choose one (its `order` option).
    order: RowOrder = RowOrder.key
    # An integer, NOT NULL column that leads `order_by`: chunked exports split its range so that
    # the chunks, concatenated in key order, are the file's row order. None: never chunked.
    chunk_key: str | None = None
    # Who answers for the type's files, shown in Dagster's Asset Catalog: e-mail addresses or
    # "team:name", as Dagster's `owners` takes them.
    owners: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in (*self.order_by, *self.default_columns) if c not in self.columns]
        unknown += [f.column for f in self.filters if f.column not in self.columns]
        if unknown:
            raise ValueError(f"export type {self.name!r} refers to undeclared columns {unknown}")
        if self.chunk_key is not None and self.order_by[:1] != (self.chunk_key,):
            raise ValueError(f"export type {self.name!r}: chunk_key must be the first order_by column")
        names = [f.name for f in self.filters]
        if len(set(names)) != len(names):
            raise ValueError(f"export type {self.name!r} declares a filter twice")

    def filter(self, name: str) -> Filter | None:
        return next((f for f in self.filters if f.name == name), None)

    @property
    def job_name(self) -> str:
        return f"export_{self.name}"

    @property
    def chunked_job_name(self) -> str:
        return f"export_{self.name}_chunked"


class Registry:
    def __init__(self, export_types: list[ExportType]):
        self._types = {t.name: t for t in export_types}
        if len(self._types) != len(export_types):
            raise ValueError("two export types share a name")

    def __iter__(self):
        return iter(self._types.values())

    def names(self) -> list[str]:
        return sorted(self._types)

    def get(self, name: str) -> ExportType | None:
        return self._types.get(name)
