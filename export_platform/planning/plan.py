"""Turn a request (export type, format, filters, columns, options) into a checked `ExportPlan`.

Everything a user typed is checked here against the registry before any SQL exists: names must
be declared, values must parse as their declared type, ranges must not be reversed. An error
names the field so that a person can fix the request.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import polars as pl
from pydantic import ValidationError

from .config import CsvOptions, ExportOptions, FormulaProtection, ParquetCompression
from ..errors import BadInput
from ..catalog.export_types import REGISTRY
from ..catalog.formats import ExportFormat
from ..catalog.registry import ExportType, Filter, Operator, RowOrder, ValueType

MAX_LIST_VALUES = 10_000
# Each chunk holds a database connection (and, across processes, a step): a bound on the load
# one export may put on the source database.
MAX_CHUNKS = 16
MAX_TEXT_LENGTH = 1_000
_BIGINT = 2**63
# ASCII digits only: str.isdigit() also takes "²" and "٣", and int() takes "+-5"'s cousins.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
# JSON numbers longer than this are refused while params are decoded (Python refuses 4,300+ digits).
MAX_NUMBER_DIGITS = 100
_SHOWN = 60


class RequestError(BadInput, ValueError):
    """A request that cannot be exported as asked; `field` says which part is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Condition:
    column: str
    op: Operator
    value_type: ValueType
    values: tuple[str, ...]  # canonical text, bound as parameters and cast in SQL
    multi: bool


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


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    return _cut(repr(value))


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise RequestError("params", f"holds a number of {len(text):,} digits; at most {MAX_NUMBER_DIGITS} are read")
    return int(text)


def decode_params(text: str | None) -> Any:
    """A request row's params from their JSON text, with an error naming `params` for JSON that
    Postgres stores but Python cannot read."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise RequestError("params", "nested too deeply to read") from None


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


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"expected text, got {type(value).__name__} {shown(value)}")
    if len(value) > MAX_TEXT_LENGTH:
        raise RequestError(field, f"value longer than {MAX_TEXT_LENGTH} characters")
    if "\x00" in value:
        raise RequestError(field, "value contains a NUL character")
    return value


def _integer(field: str, value: Any) -> str:
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not -_BIGINT <= value < _BIGINT:
        raise RequestError(field, f"expected a whole number (64-bit), got {shown(value)}")
    return str(value)


def _numeric(field: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise RequestError(field, f"expected a decimal number, got {type(value).__name__} {shown(value)}")
    text = str(value).strip()
    try:
        if not text.isascii() or len(text) > MAX_NUMBER_DIGITS:
            raise InvalidOperation
        number = Decimal(text)
    except InvalidOperation:
        raise RequestError(field, f"expected a decimal number, got {shown(value)}") from None
    if not number.is_finite() or abs(number.adjusted()) > 100:
        raise RequestError(field, f"expected a finite decimal number, got {shown(value)}")
    return str(number)


def _date(field: str, value: Any) -> str:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    try:
        if isinstance(value, str) and len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise RequestError(field, f"expected a date as YYYY-MM-DD, got {shown(value)}")


_PARSERS = {ValueType.TEXT: _text, ValueType.INTEGER: _integer, ValueType.NUMERIC: _numeric, ValueType.DATE: _date}


def _filter_values(f: Filter, raw: Any) -> tuple[str, ...]:
    field = f"filters.{f.name}"
    if f.multi:
        if isinstance(raw, str) and raw.startswith("["):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise RequestError(field, "looks like a JSON list but does not parse") from None
        if isinstance(raw, str):
            raw = raw.split(",")  # the comma-separated form the systems this replaces accepted
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise RequestError(field, "empty list: give at least one value")
        if len(items) > MAX_LIST_VALUES:
            raise RequestError(field, f"more than {MAX_LIST_VALUES} values")
    elif isinstance(raw, (list, dict)):
        raise RequestError(field, "takes a single value, not a list")
    else:
        items = [raw]
    parse = _PARSERS[f.value_type]
    return tuple(parse(field, item) for item in items)


def _sort_key(value_type: ValueType, text: str) -> Any:
    return Decimal(text) if value_type in (ValueType.NUMERIC, ValueType.INTEGER) else text


def _check_ranges(export_type: ExportType, normalised: dict[str, Any]) -> None:
    lower = {f.column: f for f in export_type.filters if f.op is Operator.MIN and f.name in normalised}
    for high in export_type.filters:
        low = lower.get(high.column)
        if low is None or not high.is_range or high.op is Operator.MIN or high.name not in normalised:
            continue
        low_value, high_value = str(normalised[low.name]), str(normalised[high.name])
        if _sort_key(low.value_type, low_value) > _sort_key(high.value_type, high_value):
            raise RequestError(
                f"filters.{high.name}", f"reversed range: {low.name}={low_value} is after {high.name}={high_value}"
            )


def check_filters(export_type: ExportType, filters: Any) -> tuple[dict[str, Any], tuple[Condition, ...]]:
    """Validate raw filters; return them normalised (for display and run config) and as conditions."""
    if filters is None:
        filters = {}
    if not isinstance(filters, Mapping):
        raise RequestError("filters", f"expected an object of filter names to values, got {type(filters).__name__}")
    normalised: dict[str, Any] = {}
    conditions: list[Condition] = []
    for name, raw in filters.items():
        f = export_type.filter(name) if isinstance(name, str) else None
        if f is None:
            known = ", ".join(x.name for x in export_type.filters)
            raise RequestError(f"filters.{_cut(name)}", f"unknown filter for {export_type.name}; known: {known}")
        if raw is None:
            continue
        values = _filter_values(f, raw)
        typed = [int(v) for v in values] if f.value_type is ValueType.INTEGER else list(values)
        normalised[name] = typed if f.multi else typed[0]
        conditions.append(Condition(f.column, f.op, f.value_type, values, f.multi))
    _check_ranges(export_type, normalised)
    return normalised, tuple(conditions)


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


def _one_character(field: str, value: str) -> None:
    # The CSV writer splits and quotes on single bytes: "é" or "€" would be two or three.
    if len(value.encode()) != 1 or value in "\r\n":
        raise RequestError(field, f"must be exactly one character (ASCII), other than a line break, got {shown(value)}")


def _strftime(field: str, pattern: str | None, kind: str) -> None:
    if pattern is None:
        return
    _text(field, pattern)
    try:
        _sample(kind).dt.to_string(pattern)
    except pl.exceptions.PolarsError:
        raise RequestError(field, f"not a valid strftime format: {pattern!r}") from None


# Built on first use: nothing runs Polars at import (it would slow every process's start).
@functools.cache
def _sample(kind: str) -> pl.Series:
    if kind == "date":
        return pl.Series([dt.date(2024, 1, 31)])
    return pl.Series([dt.datetime(2024, 1, 31, 9, 30, tzinfo=dt.timezone.utc)])


def check_csv_options(options: CsvOptions) -> CsvOptions:
    _one_character("csv.delimiter", options.delimiter)
    _one_character("csv.quote_char", options.quote_char)
    if options.delimiter == options.quote_char:
        raise RequestError("csv.quote_char", "must differ from the delimiter")
    _text("csv.null_value", options.null_value)
    if any(c in options.null_value for c in (options.delimiter, options.quote_char, "\r", "\n")):
        raise RequestError("csv.null_value", "must not contain the delimiter, the quote character or a line break")
    _strftime("csv.date_format", options.date_format, "date")
    _strftime("csv.timestamp_format", options.timestamp_format, "timestamp")
    return options


def _check_labels(labels: dict[str, str], columns: tuple[str, ...]) -> None:
    for column, label in labels.items():
        if column not in columns:
            raise RequestError(f"labels.{_cut(column)}", f"not an exported column; exported: {', '.join(columns)}")
        if not _text(f"labels.{column}", label).strip():
            raise RequestError(f"labels.{column}", "a label cannot be blank")
    names = [labels.get(c, c) for c in columns]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise RequestError("labels", f"two columns would both be called {twice!r}")


def _check_time_zone(name: str) -> None:
    try:
        _sample("timestamp").dt.convert_time_zone(_text("time_zone", name))
    except pl.exceptions.PolarsError:
        raise RequestError("time_zone", f"unknown time zone {shown(name)}; use an IANA name such as Europe/Paris") from None


_LEVELS = {ParquetCompression.zstd: (1, 22), ParquetCompression.gzip: (0, 9), ParquetCompression.brotli: (0, 11)}
_SHEET_NAME_FORBIDDEN = set("[]:*?/\\")
MAX_SHEET_NAME = 31


def _check_format_options(options: ExportOptions) -> None:
    level, levels = options.parquet.compression_level, _LEVELS.get(options.parquet.compression)
    if level is not None and levels is None:
        raise RequestError("parquet.compression_level", f"{options.parquet.compression.value} takes no level")
    if level is not None and not levels[0] <= level <= levels[1]:
        raise RequestError(
            "parquet.compression_level",
            f"{options.parquet.compression.value} levels are {levels[0]} to {levels[1]}, got {level}",
        )
    name = options.xlsx.sheet_name
    if name is not None and (
        not name.strip() or len(name) > MAX_SHEET_NAME or _SHEET_NAME_FORBIDDEN & set(name) or "'" in (name[0], name[-1])
    ):
        raise RequestError(
            "xlsx.sheet_name",
            f"Excel sheet names have 1 to 31 characters, none of []:*?/\\, and do not start or end with ' ; "
            f"got {shown(name)}",
        )
    if options.pdf.title is not None:
        _text("pdf.title", options.pdf.title)


def check_options(options: ExportOptions, columns: tuple[str, ...]) -> ExportOptions:
    check_csv_options(options.csv)
    _check_labels(options.labels, columns)
    _check_time_zone(options.time_zone)
    _check_format_options(options)
    return options


PARAM_KEYS = ("filters", "columns", *ExportOptions.model_fields)


def _options_from_params(params: Mapping[str, Any]) -> ExportOptions:
    try:
        return ExportOptions.model_validate({k: v for k, v in params.items() if k in ExportOptions.model_fields})
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
        raise RequestError(f"params.{_cut(unknown[0])}", f"unknown option; known: {', '.join(PARAM_KEYS)}")
    options = _options_from_params({k: v for k, v in params.items() if v is not None})
    return plan_export(
        export_type_name,
        format,
        params.get("filters"),
        params.get("columns"),
        options,
        output_path,
        incremental=incremental,
        chunks=chunks,
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
