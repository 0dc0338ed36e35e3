"""Column transformations the writers share, all lazy expressions evaluated batch by batch."""

from __future__ import annotations

import re

import polars as pl

ISO_DATE = "%Y-%m-%d"
# ISO 8601 with the offset written out, so the instant is unambiguous in any time zone.
ISO_TIMESTAMPTZ = "%Y-%m-%dT%H:%M:%S%.6f%:z"
ISO_TIMESTAMP = "%Y-%m-%dT%H:%M:%S%.6f"

# What a spreadsheet may take for the start of a formula (OWASP's list for CSV injection).
_FORMULA_START = r"^[=+\-@\t\r]"
# A value that is just a number (e.g. "-5", "+1.5e3") is not a formula: it stays as is.
_PLAIN_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _names(frame: pl.LazyFrame, keep) -> list[str]:
    return [name for name, dtype in frame.collect_schema().items() if keep(dtype)]


def _is_aware(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Datetime) and dtype.time_zone is not None


def in_time_zone(frame: pl.LazyFrame, time_zone: str) -> pl.LazyFrame:
    """timestamptz columns shown in `time_zone` (the same instants)."""
    return frame.with_columns(pl.col(_names(frame, _is_aware)).dt.convert_time_zone(time_zone))


def neutralise_formulas(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Put a ' before text a spreadsheet would run as a formula; numbers are never touched."""
    text = _names(frame, lambda dtype: dtype == pl.String)
    risky = pl.col(text).str.contains(_FORMULA_START) & ~pl.col(text).str.contains(_PLAIN_NUMBER)
    return frame.with_columns(pl.when(risky).then(pl.lit("'") + pl.col(text)).otherwise(pl.col(text)).name.keep())


def neutralised_label(label: str) -> str:
    """A header as `neutralise_formulas` treats values: a spreadsheet reads the header line too."""
    risky = re.search(_FORMULA_START, label) and not re.search(_PLAIN_NUMBER, label)
    return f"'{label}" if risky else label


def temporals_as_text(
    frame: pl.LazyFrame, date_format: str, timestamptz_format: str, timestamp_format: str
) -> pl.LazyFrame:
    naive = _names(frame, lambda dtype: isinstance(dtype, pl.Datetime) and dtype.time_zone is None)
    return frame.with_columns(
        pl.col(_names(frame, lambda dtype: dtype == pl.Date)).dt.to_string(date_format),
        pl.col(_names(frame, _is_aware)).dt.to_string(timestamptz_format),
        pl.col(naive).dt.to_string(timestamp_format),
    )


def relabel(frame: pl.LazyFrame, labels: dict[str, str]) -> pl.LazyFrame:
    return frame.rename(labels) if labels else frame
