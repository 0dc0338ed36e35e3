"""Turn a request (export type, format, filters, columns, options) into a checked `ExportPlan`.

Everything a user typed is checked here against the registry before any SQL exists: names must
be declared, values must parse as their declared type, ranges must not be reversed. An error
names the field so that a person can fix the request.

A plan has one canonical form, `ExportPlan.config`: the run config of its type's plan op
(planning/config.py). The sensor, the schedules and the CLI plan a request once (`plan_request`)
and launch its run with that form; the plan op checks what it is given, the same form or a
Launchpad user's edit of it, with `plan_config`, which gives back an equal plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..catalog.export_types import REGISTRY
from ..catalog.formats import ExportFormat
from ..catalog.registry import ExportType, RowOrder
from .config import CsvOptions, ExportOptions, FormulaProtection
from .filters import Condition, check_filters
from .options import check_options
from .values import RequestError, cut, shown

__all__ = ["Condition", "ExportPlan", "Incremental", "RequestError", "plan_config", "plan_export", "plan_request"]

# Each chunk holds a database connection (and, across processes, a step): a bound on the load
# one export may put on the source database.
MAX_CHUNKS = 16


@dataclass(frozen=True)
class Incremental:
    column: str
    key: str
    lower: str | None  # the last high-water mark (inclusive lower bound); None on the first run


@dataclass(frozen=True)
class ExportPlan:
    export_type: str
    relation: str
    format: ExportFormat
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    conditions: tuple[Condition, ...]
    filters: dict[str, Any]
    options: ExportOptions
    output_path: str | None = None
    incremental: Incremental | None = None
    chunks: int = 1
    chunk_key: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The plan's canonical form: the run config of its type's plan op, from which `plan_config`
        rebuilds this plan (less an incremental run's lower mark, which the run reads when it starts).
        Options are written out whole; output_path, chunks and incremental only when set."""
        incremental = self.incremental and {"column": self.incremental.column, "key": self.incremental.key}
        optional = {"output_path": self.output_path, "chunks": self.chunks if self.chunks != 1 else None,
                    "incremental": incremental}
        return {
            "format": self.format.name,  # Dagster's config takes enum names
            "filters": self.filters,
            "columns": list(self.columns),
            **self.options.model_dump(mode="json"),
            **{k: v for k, v in optional.items() if v is not None},
        }

    @property
    def order(self) -> RowOrder:
        return self.options.order or RowOrder.key

    @property
    def ordered(self) -> bool:
        return self.order is RowOrder.key

    @property
    def csv(self) -> CsvOptions:
        return self.options.csv

    def label(self, column: str) -> str:
        return self.options.labels.get(column, column)

    @property
    def protects_formulas(self) -> bool:
        """Whether text that a spreadsheet would run as a formula is neutralised (csv and xlsx only)."""
        protection = self.options.formula_protection
        if protection is FormulaProtection.off or not (self.format.is_csv or self.format is ExportFormat.xlsx):
            return False
        return protection is FormulaProtection.on or self.format is ExportFormat.xlsx or self.csv.bom


def export_type_named(name: Any) -> ExportType:
    export_type = REGISTRY.get(name) if isinstance(name, str) else None
    if export_type is None:
        raise RequestError("export_type", f"unknown export type {shown(name)}; known: {', '.join(REGISTRY.names())}")
    return export_type


def parse_format(value: Any) -> ExportFormat:
    if isinstance(value, ExportFormat):
        return value
    try:
        return ExportFormat.parse(value) if isinstance(value, str) else ExportFormat.parse("")
    except ValueError:
        known = ", ".join(f.value for f in ExportFormat)
        raise RequestError("format", f"unknown format {shown(value)}; known: {known}") from None


def check_chunks(export_type: ExportType, export_format: ExportFormat, chunks: Any, order: RowOrder) -> int:
    if isinstance(chunks, bool) or not isinstance(chunks, int):
        raise RequestError("chunks", f"expected a whole number of chunks, got {chunks!r}")
    if not 1 <= chunks <= MAX_CHUNKS:
        raise RequestError("chunks", f"expected 1 to {MAX_CHUNKS} chunks, got {chunks}")
    if order is RowOrder.none:  # streams over pages, merged into one writer: any type, any format
        return chunks
    if chunks > 1 and export_type.chunk_key is None:
        raise RequestError("chunks", f"{export_type.name} declares no chunk key: it is exported as one stream")
    if chunks > 1 and not export_format.chunkable:
        raise RequestError(
            "chunks", f"{export_format.value} is written as one stream; use chunks: 1, or csv, ndjson or parquet"
        )
    return chunks


def check_columns(export_type: ExportType, columns: Any) -> tuple[str, ...]:
    if not columns:
        return export_type.default_columns or export_type.columns
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError("columns", "expected a list of column names")
    for column in columns:
        if column not in export_type.columns:
            raise RequestError(
                "columns", f"unknown column {shown(column)} for {export_type.name}; known: {', '.join(export_type.columns)}"
            )
    if len(set(columns)) != len(columns):
        raise RequestError("columns", "a column is listed twice")
    return tuple(columns)


PARAM_KEYS = ("filters", "columns", *ExportOptions.model_fields)
# A request row's params are the canonical form less what only the CLI, a schedule or the
# Launchpad sets.
CONFIG_KEYS = ("format", *PARAM_KEYS, "output_path", "chunks", "incremental")


def _options_from(config: Mapping[str, Any]) -> ExportOptions:
    try:
        return ExportOptions.model_validate(
            {k: v for k, v in config.items() if k in ExportOptions.model_fields and v is not None}
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise RequestError(".".join(map(str, first["loc"])), first["msg"]) from None


def plan_request(
    export_type_name: Any,
    format: Any,
    params: Any,
    output_path: str | None = None,
    chunks: Any = 1,
    incremental: Incremental | None = None,
) -> ExportPlan:
    """Check a request row (`params` as the application stored it) and plan it; `output_path` and
    `chunks` are the command line's, `incremental` a recurring entry's (a request row can ask for
    none of them). JSON null is refused like any other non-object: an application that meant
    "everything" writes `{}`, and a null that slipped through must not export a whole table."""
    if not isinstance(params, Mapping):
        raise RequestError(
            "params", f"expected a JSON object with {', '.join(PARAM_KEYS)} (use {{}} for all rows), got {shown(params)}"
        )
    unknown = [k for k in params if k not in PARAM_KEYS]
    if unknown:
        raise RequestError(f"params.{cut(unknown[0])}", f"unknown option; known: {', '.join(PARAM_KEYS)}")
    marked = incremental and {"column": incremental.column, "key": incremental.key}
    config = {**params, "format": format, "output_path": output_path, "chunks": chunks, "incremental": marked}
    return plan_config(export_type_name, config, incremental.lower if incremental else None)


def plan_config(export_type_name: Any, config: Mapping[str, Any], high_water: str | None = None) -> ExportPlan:
    """Check an export in its canonical form (`ExportPlan.config`, or a Launchpad user's edit of
    it) and plan it; `high_water` is an incremental run's lower mark."""
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if unknown:
        raise RequestError(cut(str(unknown[0])), f"unknown field; known: {', '.join(CONFIG_KEYS)}")
    marked = config.get("incremental")
    return plan_export(
        export_type_name,
        config.get("format", ExportFormat.csv),
        config.get("filters"),
        config.get("columns"),
        _options_from(config),
        config.get("output_path"),
        Incremental(marked["column"], marked["key"], high_water) if marked else None,
        1 if config.get("chunks") is None else config["chunks"],
    )


def plan_export(
    export_type_name: str,
    format: Any,
    filters: Any = None,
    columns: Any = None,
    options: ExportOptions | None = None,
    output_path: str | None = None,
    incremental: Incremental | None = None,
    chunks: Any = 1,
) -> ExportPlan:
    """The checks every plan passes, from its parts (tests and benchmarks build plans this way)."""
    export_type = export_type_named(export_type_name)
    if incremental is not None and incremental.column not in export_type.columns:
        raise RequestError("incremental.column", f"unknown column {incremental.column!r} for {export_type.name}")
    export_format = parse_format(format)
    normalised, conditions = check_filters(export_type, filters)
    chosen = check_columns(export_type, columns)
    options = check_options(options or ExportOptions(), chosen)
    order = options.order or export_type.order
    options = options.model_copy(update={"order": order})
    return ExportPlan(
        export_type=export_type.name,
        relation=export_type.relation,
        format=export_format,
        columns=chosen,
        order_by=export_type.order_by,
        conditions=conditions,
        filters=normalised,
        options=options,
        output_path=output_path,
        incremental=incremental,
        chunks=check_chunks(export_type, export_format, chunks, order),
        chunk_key=export_type.chunk_key,
    )
