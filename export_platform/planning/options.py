"""How the file is written (`ExportOptions`: CSV dialect, labels, time zone, codec, sheet name,
title), checked beyond what pydantic's types say: single characters, valid strftime patterns and
time zones, labels of exported columns, codec levels, Excel's sheet-name rules."""

from __future__ import annotations

import datetime as dt
import functools

import polars as pl

from .config import CsvOptions, ExportOptions, ParquetCompression
from .values import RequestError, cut, shown, text


def _one_character(field: str, value: str) -> None:
    # The CSV writer splits and quotes on single bytes: "é" or "€" would be two or three.
    if len(value.encode()) != 1 or value in "\r\n":
        raise RequestError(field, f"must be exactly one character (ASCII), other than a line break, got {shown(value)}")


def _strftime(field: str, pattern: str | None, kind: str) -> None:
    if pattern is None:
        return
    text(field, pattern)
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
    text("csv.null_value", options.null_value)
    if any(c in options.null_value for c in (options.delimiter, options.quote_char, "\r", "\n")):
        raise RequestError("csv.null_value", "must not contain the delimiter, the quote character or a line break")
    _strftime("csv.date_format", options.date_format, "date")
    _strftime("csv.timestamp_format", options.timestamp_format, "timestamp")
    return options


def _check_labels(labels: dict[str, str], columns: tuple[str, ...]) -> None:
    for column, label in labels.items():
        if column not in columns:
            raise RequestError(f"labels.{cut(column)}", f"not an exported column; exported: {', '.join(columns)}")
        if not text(f"labels.{column}", label).strip():
            raise RequestError(f"labels.{column}", "a label cannot be blank")
    names = [labels.get(c, c) for c in columns]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise RequestError("labels", f"two columns would both be called {twice!r}")


def _check_time_zone(name: str) -> None:
    try:
        _sample("timestamp").dt.convert_time_zone(text("time_zone", name))
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
        text("pdf.title", options.pdf.title)


def check_options(options: ExportOptions, columns: tuple[str, ...]) -> ExportOptions:
    check_csv_options(options.csv)
    _check_labels(options.labels, columns)
    _check_time_zone(options.time_zone)
    _check_format_options(options)
    return options
