"""Run configuration of the export jobs: what the Launchpad shows, with descriptions and defaults.

`ExportConfig` holds what every export type shares; `config_class_for` adds a `filters` section
typed from the export type's declaration, so the Launchpad offers exactly that type's filters.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Dict, List, Optional

import dagster as dg
from pydantic import ConfigDict, Field, create_model

from ..catalog.formats import ExportFormat
from ..catalog.registry import ExportType, Filter, RowOrder, ValueType


class QuoteStyle(str, Enum):
    necessary = "necessary"
    always = "always"
    non_numeric = "non_numeric"
    never = "never"


class LineTerminator(str, Enum):
    lf = "lf"
    crlf = "crlf"

    @property
    def text(self) -> str:
        return "\r\n" if self is LineTerminator.crlf else "\n"


class FormulaProtection(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class ParquetCompression(str, Enum):
    zstd = "zstd"
    snappy = "snappy"
    gzip = "gzip"
    lz4 = "lz4"
    brotli = "brotli"
    uncompressed = "uncompressed"


class PdfOrientation(str, Enum):
    landscape = "landscape"
    portrait = "portrait"


class _Options(dg.Config):
    # Dagster's config check refuses unknown keys in run config; this does the same for request
    # params, which are validated by pydantic alone.
    model_config = ConfigDict(extra="forbid")


class CsvOptions(_Options):
    delimiter: str = Field(default=",", description="Field delimiter: one character, e.g. ',' ';' '|' or a tab.")
    quote_char: str = Field(default='"', description="Quote character: one character, different from the delimiter.")
    quote_style: QuoteStyle = Field(
        default=QuoteStyle.necessary,
        description="When to quote a field: necessary (only when it holds the delimiter, the quote, a line break, "
        "or is an empty string), always, non_numeric (every field that is not a number), never (no quoting: only "
        "for data known to hold none of those).",
    )
    header: bool = Field(default=True, description="Write a header row with the column names (or labels).")
    null_value: str = Field(
        default="", description="Text written for NULL. Default: an empty field (an empty string is written as \"\")."
    )
    line_terminator: LineTerminator = Field(default=LineTerminator.lf, description="Line ending: lf or crlf.")
    bom: bool = Field(
        default=False,
        description="Start the file with a UTF-8 byte-order mark, so that Excel opens it as UTF-8. Turns formula "
        "protection on unless formula_protection is off.",
    )
    date_format: Optional[str] = Field(
        default=None, description="strftime-style format for dates, e.g. '%d/%m/%Y'. Default: ISO 8601 (2024-01-31)."
    )
    timestamp_format: Optional[str] = Field(
        default=None,
        description="strftime-style format for timestamps, e.g. '%Y-%m-%d %H:%M:%S%z' (in time_zone). Default: "
        "ISO 8601 with microseconds and, for timestamptz, the offset (2024-01-31T09:30:00.000000+00:00).",
    )


class ParquetOptions(_Options):
    compression: ParquetCompression = Field(
        default=ParquetCompression.zstd, description="Compression codec: zstd, snappy, gzip, lz4, brotli or uncompressed."
    )
    compression_level: Optional[int] = Field(
        default=None, description="Codec level: zstd 1-22, gzip 0-9, brotli 0-11; unset: the codec's default."
    )


class XlsxOptions(_Options):
    sheet_name: Optional[str] = Field(
        default=None,
        description="Name of the first sheet (at most 31 characters, none of []:*?/\\). Default: the export type. "
        "Rows past Excel's 1,048,575 per sheet continue on 'NAME (2)', 'NAME (3)', ...",
    )


class PdfOptions(_Options):
    title: Optional[str] = Field(default=None, description="Title printed on the first page. Default: '<type> export'.")
    orientation: PdfOrientation = Field(default=PdfOrientation.landscape, description="Page orientation (A4).")


class IncrementalConfig(dg.Config):
    column: str = Field(
        description="timestamptz column that writers set to now() (e.g. updated_at); rows above the last "
        "successful run's high-water mark are exported."
    )
    key: str = Field(description="Name under which the high-water mark is kept, one per recurring export.")


ORDER_HELP = (
    "Row order of the file: key (by the type's order_by columns: the same rows always give the same file, "
    "read as one ordered stream or, with chunks, key ranges) or none (as the table stores them, read by several "
    "parallel streams over the table's pages: the fastest; views are read as one stream)."
)


class ExportOptions(_Options):
    """How the file is written: everything but what is exported (format, columns, filters)."""

    labels: Dict[str, str] = Field(
        default_factory=dict,
        description="Header names for columns, e.g. {email: 'E-mail address'}: the header row of csv, xlsx and pdf, "
        "the keys of json and ndjson, the column names of parquet. Unlisted columns keep their names.",
    )
    time_zone: str = Field(
        default="UTC",
        description="IANA time zone (e.g. Europe/Paris) that timestamptz values are written in: with their offset "
        "in csv, json and ndjson, as wall-clock time in xlsx and pdf; parquet keeps the instants, tagged with "
        "this zone.",
    )
    formula_protection: FormulaProtection = Field(
        default=FormulaProtection.auto,
        description="Neutralise text starting with = + - @ tab or CR (a ' is put before it) in csv and xlsx, so "
        "that a spreadsheet cannot run it as a formula. auto: on for xlsx and for csv with a BOM; on; off (the "
        "raw text, for systems that need it). Numbers are never changed.",
    )
    order: Optional[RowOrder] = Field(default=None, description=f"{ORDER_HELP} Unset: the export type's default.")
    csv: CsvOptions = Field(default_factory=CsvOptions, description="Options for csv, csv_gz and csv_zst.")
    parquet: ParquetOptions = Field(default_factory=ParquetOptions, description="Options for parquet.")
    xlsx: XlsxOptions = Field(default_factory=XlsxOptions, description="Options for xlsx.")
    pdf: PdfOptions = Field(default_factory=PdfOptions, description="Options for pdf.")


FORMATS_HELP = (
    "File format: csv, csv_gz / csv_zst (gzip / zstd-compressed CSV), parquet, ndjson (one JSON object per line; "
    "ndjson_gz, ndjson_zst compressed), json (one JSON array), xlsx (Excel) or pdf (a printable table, at most "
    "10,000 rows)."
)


class ExportConfig(ExportOptions):
    format: ExportFormat = Field(default=ExportFormat.csv, description=FORMATS_HELP)
    columns: List[str] = Field(
        default_factory=list,
        description="Columns to export, in this order. Empty: every exportable column.",
    )
    output_path: Optional[str] = Field(
        default=None,
        description="Write the file to this local path instead of the storage folder (atomically replaced).",
    )
    incremental: Optional[IncrementalConfig] = Field(
        default=None, description="Export only rows changed since the last successful run with the same key."
    )
    chunks: int = Field(
        default=1,
        description="With order key: split the type's key range into this many chunks read in parallel (1 to 16; "
        "csv, ndjson and parquet only), each over its own database connection. In export_<type> they are streams in "
        "one process sharing one snapshot; in export_<type>_chunked they are steps, each retried alone. 1: one "
        "stream. With order none: this many parallel streams over the table's pages, any format; 1: as many as the "
        "machine and the database allow (docs/reference.md).",
    )


_SCALAR = {ValueType.TEXT: str, ValueType.INTEGER: int, ValueType.NUMERIC: str, ValueType.DATE: str}
_HINT = {
    ValueType.TEXT: "text",
    ValueType.INTEGER: "whole number",
    ValueType.NUMERIC: "exact decimal, written as a string such as \"12.50\"",
    ValueType.DATE: "date as YYYY-MM-DD",
}


def _filter_field(f: Filter) -> tuple[Any, Any]:
    if f.multi:
        # One value or a list, as in a request row. Dagster's config types have no "one value or a
        # list of them", so the Launchpad takes any value here and planning checks it, naming the filter.
        kind = f"{_HINT[f.value_type]}: one value, or a list matching any of its values"
        return Any, Field(default=None, description=f"{f.description} ({kind}).")
    return Optional[_SCALAR[f.value_type]], Field(default=None, description=f"{f.description} ({_HINT[f.value_type]}).")


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
        order=(
            RowOrder,
            Field(default=export_type.order, description=f"{ORDER_HELP} Default for {export_type.name}: {export_type.order.value}."),
        ),
    )
