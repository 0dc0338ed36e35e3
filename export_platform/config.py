"""Run configuration of the export jobs: what the Launchpad shows, with descriptions and defaults.

`ExportConfig` holds what every export type shares; `config_class_for` adds a `filters` section
typed from the export type's declaration, so the Launchpad offers exactly that type's filters.
"""

from __future__ import annotations

from typing import Any, List, Optional

import dagster as dg
from pydantic import Field, create_model

from .formats import ExportFormat
from .registry import ExportType, Filter, ValueType


class CsvOptions(dg.Config):
    delimiter: str = Field(default=",", description="Field delimiter: one character, e.g. ',' ';' '|' or a tab.")
    quote_char: str = Field(default='"', description="Quote character: one character, different from the delimiter.")
    header: bool = Field(default=True, description="Write a header row with the column names.")


class IncrementalConfig(dg.Config):
    column: str = Field(
        description="timestamptz column that writers set to now() (e.g. updated_at); rows above the last "
        "successful run's high-water mark are exported."
    )
    key: str = Field(description="Name under which the high-water mark is kept, one per recurring export.")


class ExportConfig(dg.Config):
    format: ExportFormat = Field(
        default=ExportFormat.csv,
        description="File format: csv, csv_gz (gzip-compressed CSV), parquet or ndjson (one JSON object per line).",
    )
    columns: List[str] = Field(
        default_factory=list,
        description="Columns to export, in this order. Empty: every exportable column.",
    )
    csv: CsvOptions = Field(default_factory=CsvOptions, description="Options for csv and csv_gz.")
    output_path: Optional[str] = Field(
        default=None,
        description="Write the file to this local path instead of the storage folder (atomically replaced).",
    )
    incremental: Optional[IncrementalConfig] = Field(
        default=None, description="Export only rows changed since the last successful run with the same key."
    )


_SCALAR = {ValueType.TEXT: str, ValueType.INTEGER: int, ValueType.NUMERIC: str, ValueType.DATE: str}
_HINT = {
    ValueType.TEXT: "text",
    ValueType.INTEGER: "whole number",
    ValueType.NUMERIC: "exact decimal, written as a string such as \"12.50\"",
    ValueType.DATE: "date as YYYY-MM-DD",
}


def _filter_field(f: Filter) -> tuple[Any, Any]:
    scalar = _SCALAR[f.value_type]
    kind = f"{_HINT[f.value_type]}{'; a list matches any of its values' if f.multi else ''}"
    annotation = Optional[List[scalar]] if f.multi else Optional[scalar]
    return annotation, Field(default=None, description=f"{f.description} ({kind}).")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def config_class_for(export_type: ExportType) -> type[ExportConfig]:
    filters_class = create_model(
        f"{_camel(export_type.name)}Filters",
        __base__=dg.Config,
        **{f.name: _filter_field(f) for f in export_type.filters},
    )
    return create_model(
        f"{_camel(export_type.name)}ExportConfig",
        __base__=ExportConfig,
        filters=(
            filters_class,
            Field(default_factory=filters_class, description="Row filters; unset filters do not apply."),
        ),
        columns=(
            List[str],
            Field(
                default_factory=list,
                description=f"Columns to export, in this order. Empty: all of {', '.join(export_type.columns)}.",
            ),
        ),
    )
