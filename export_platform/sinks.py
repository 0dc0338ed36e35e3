"""Arrow record batches from Postgres → a lazy Polars scan → a Polars sink writing one file.

Nothing here collects a frame: `scan_batches` wraps the driver's batch reader as a Polars IO
source, and the `sink_*` calls stream it to disk, so memory stays flat whatever the row count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from polars.io.plugins import register_io_source

from .formats import ExportFormat
from .planning import ExportPlan

# ISO 8601 with the offset written out; timestamptz columns arrive in UTC, so this is +00:00.
TIMESTAMPTZ_FORMAT = "%Y-%m-%dT%H:%M:%S%.6f%:z"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.6f"
_MAX_DECIMAL_PRECISION = 38


def _numeric_type(field: pa.Field) -> pa.DataType | None:
    """The exact decimal for a Postgres NUMERIC(p, s), or None when unconstrained (kept as text).

    The ADBC driver hands NUMERIC over as an opaque extension type with string storage.
    """
    metadata = field.metadata or {}
    if metadata.get(b"ADBC:postgresql:typname") != b"numeric":
        return None
    typmod = int(metadata.get(b"POSTGRESQL:typmod", b"-1"))
    if typmod < 4:
        return None
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    return pa.decimal128(precision, scale) if precision <= _MAX_DECIMAL_PRECISION else None


def _column_converter(field: pa.Field) -> Callable[[pa.Array], pa.Array] | None:
    if not isinstance(field.type, pa.BaseExtensionType):
        return None
    decimal = _numeric_type(field)
    if decimal is not None:
        return lambda array: pc.cast(array.storage, decimal)
    return lambda array: array.storage


def _target_type(field: pa.Field) -> pa.DataType:
    if isinstance(field.type, pa.BaseExtensionType):
        return _numeric_type(field) or field.type.storage_type
    return field.type


def polars_schema(arrow_schema: pa.Schema) -> pl.Schema:
    plain = pa.schema([pa.field(f.name, _target_type(f)) for f in arrow_schema])
    return pl.Schema(pl.from_arrow(plain.empty_table()).schema)


def scan_batches(reader: pa.RecordBatchReader, on_rows: Callable[[int], None]) -> pl.LazyFrame:
    """A LazyFrame over the reader's batches; `on_rows(total_so_far)` is called after each batch."""
    fields = list(reader.schema)
    converters = [_column_converter(f) for f in fields]
    names = [f.name for f in fields]

    def to_frame(batch: pa.RecordBatch) -> pl.DataFrame:
        arrays = [convert(col) if convert else col for convert, col in zip(converters, batch.columns)]
        return pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=names))

    def source(with_columns, predicate, n_rows, _batch_size) -> Iterator[pl.DataFrame]:
        total = 0
        for batch in reader:
            frame = to_frame(batch)
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            if n_rows is not None and total + frame.height >= n_rows:
                frame = frame.head(n_rows - total)
            total += frame.height
            on_rows(total)
            yield frame
            if n_rows is not None and total >= n_rows:
                return

    return register_io_source(source, schema=polars_schema(reader.schema), explain_name="postgres")


def _text_timestamps(frame: pl.LazyFrame) -> tuple[pl.LazyFrame, str]:
    """Naive timestamps are written without an offset; aware ones use the sink's format with one."""
    naive = [name for name, dtype in frame.collect_schema().items() if dtype == pl.Datetime and dtype.time_zone is None]
    if naive:
        frame = frame.with_columns(pl.col(naive).dt.to_string(TIMESTAMP_FORMAT))
    return frame, TIMESTAMPTZ_FORMAT


def sink(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    """Stream `frame` into `path` in the plan's format."""
    fmt = plan.format
    if fmt.is_csv:
        frame, datetime_format = _text_timestamps(frame)
        frame.sink_csv(
            path,
            separator=plan.csv.delimiter,
            quote_char=plan.csv.quote_char,
            include_header=plan.csv.header,
            datetime_format=datetime_format,
            compression="gzip" if fmt is ExportFormat.csv_gz else "uncompressed",
            check_extension=False,
        )
    elif fmt is ExportFormat.parquet:
        frame.sink_parquet(path, compression="zstd")
    elif fmt is ExportFormat.ndjson:
        frame.sink_ndjson(path, check_extension=False)
    else:  # a format added to ExportFormat without a writer here
        raise NotImplementedError(fmt)
