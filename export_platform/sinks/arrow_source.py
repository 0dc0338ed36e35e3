"""Arrow record batches from Postgres → a lazy Polars scan, with NUMERIC mapped exactly.

Nothing here collects a frame: `scan_batches` wraps the reader's batches as a Polars IO source
that the writers stream from, so memory stays flat whatever the row count. The reader (DuckDB's
scanner, resources/duckdb_scan.py) delivers NUMERIC(p, s) as decimal128(p, s) and every NUMERIC
it cannot hold exactly as Postgres's text; each field carries its Postgres type in its metadata.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import polars as pl
import pyarrow as pa
from polars.io.plugins import register_io_source

_POSTGRES_TYPE = b"postgres:type"


def postgres_type(field: pa.Field) -> str:
    return (field.metadata or {}).get(_POSTGRES_TYPE, b"").decode()


def is_numeric(field: pa.Field) -> bool:
    return postgres_type(field).startswith("numeric")


def numeric_declaration(field: pa.Field) -> str:
    """How the column is declared in Postgres, e.g. NUMERIC(10,2); for messages."""
    return postgres_type(field).upper()


def numeric_type(field: pa.Field) -> pa.DataType | None:
    """The exact decimal a NUMERIC column is read as, or None when it is kept as text (no declared
    precision, more than 38 digits, or a NaN among its values)."""
    return field.type if is_numeric(field) and pa.types.is_decimal(field.type) else None


def _column_converter(field: pa.Field) -> Callable[[pa.Array], pa.Array] | None:
    """How a column's arrays become what the writers take: timestamptz instants are tagged UTC
    (DuckDB may name the zone Etc/UTC; the instants are the same)."""
    target = _target_type(field)
    return None if target == field.type else (lambda array: array.cast(target))


def _target_type(field: pa.Field) -> pa.DataType:
    if pa.types.is_timestamp(field.type) and field.type.tz is not None:
        return pa.timestamp(field.type.unit, "UTC")
    return field.type


def polars_schema(arrow_schema: pa.Schema) -> pl.Schema:
    plain = pa.schema([pa.field(f.name, _target_type(f)) for f in arrow_schema])
    return pl.Schema(pl.from_arrow(plain.empty_table()).schema)


class Pacer:
    """Keeps the scan at most `ahead` rows in front of a Python writer.

    Polars pulls the source on its own threads; while a slow writer (xlsx, pdf, json) releases
    the GIL, the source would otherwise read on and queue the whole result in memory. The writer
    reports each batch it has written; the source waits while it is too far ahead, and after
    `stall_seconds` without progress reads on anyway, so a Polars plan that needs more input
    before it emits can never deadlock. `on_written(total)` reports the rows written so far: the
    export's progress, since the scan runs up to `ahead` rows in front.
    """

    def __init__(
        self, ahead: int = 100_000, stall_seconds: float = 30.0, on_written: Callable[[int], None] | None = None
    ):
        self.ahead, self.stall_seconds, self.on_written = ahead, stall_seconds, on_written
        self.written = 0
        self._changed = threading.Condition()

    def wait_for_room(self, read: int) -> None:
        with self._changed:
            while read - self.written > self.ahead:
                if not self._changed.wait(self.stall_seconds):
                    return

    def wrote(self, rows: int) -> None:
        with self._changed:
            self.written += rows
            written = self.written
            self._changed.notify_all()
        if self.on_written is not None:
            self.on_written(written)


class BatchSource(Protocol):
    """A record batch reader: the driver's, or one guarded by its snapshot."""

    schema: pa.Schema

    def __iter__(self) -> Iterator[pa.RecordBatch]: ...


class Interleaved:
    """The batches of several readers, in whatever order they arrive: one source for one writer,
    for an export that needs no row order. Each reader is drained on a thread of its own (the
    driver decodes with the GIL released), at most `depth` batches queued for the writer per reader
    (and one more in hand), so memory stays that of a few batches per stream.

    `close` stops the threads; the snapshot's readers must stay open until it has returned.
    """

    def __init__(self, readers: list[BatchSource], depth: int = 1):
        self.schema = readers[0].schema
        self._readers, self._queue = readers, queue.Queue(maxsize=depth * len(readers))
        self._stopped, self._threads = threading.Event(), []

    def _put(self, item: object) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _drain(self, reader: BatchSource) -> None:
        try:
            for batch in reader:
                if self._stopped.is_set():
                    return
                self._put(batch)
            self._put(None)
        except BaseException as error:  # raised in the writer's thread, which reports it
            self._put(error)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        self._threads = [
            threading.Thread(target=self._drain, args=(r,), name="export-stream", daemon=True) for r in self._readers
        ]
        for thread in self._threads:
            thread.start()
        remaining = len(self._threads)
        while remaining:
            item = self._queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def close(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join()


def scan_batches(
    reader: BatchSource, on_rows: Callable[[int], None], pacer: Pacer | None = None
) -> pl.LazyFrame:
    """A LazyFrame over the reader's batches; `on_rows(total_so_far)` is called after each batch.
    With a `pacer`, reading waits for the writer (see `Pacer`)."""
    fields = list(reader.schema)
    converters = [_column_converter(f) for f in fields]
    names = [f.name for f in fields]

    def to_frame(batch: pa.RecordBatch) -> pl.DataFrame:
        arrays = [convert(col) if convert else col for convert, col in zip(converters, batch.columns)]
        return pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=names))

    def source(with_columns, predicate, n_rows, _batch_size) -> Iterator[pl.DataFrame]:
        total = last = 0
        for batch in reader:
            if pacer is not None:
                # Not counting the last frame: Polars may hold it back until it has this one, and
                # waiting for the writer to take it would stall until `stall_seconds`.
                pacer.wait_for_room(total - last)
            frame = to_frame(batch)
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            if n_rows is not None and total + frame.height >= n_rows:
                frame = frame.head(n_rows - total)
            total, last = total + frame.height, frame.height
            on_rows(total)
            yield frame
            if n_rows is not None and total >= n_rows:
                return

    return register_io_source(source, schema=polars_schema(reader.schema), explain_name="postgres")


FIRST_SLICE_ROWS = 5_000  # what xlsx and pdf measure their column widths on
SLICE_SECONDS = 0.25


def paced_batches(frame: pl.LazyFrame, pacer: Pacer | None) -> Iterator[pl.DataFrame]:
    """The frame's rows for a Python writer, telling the pacer as each slice has been written.

    A scan batch can hold 100,000 rows, which xlsx takes seconds to write: the batches are cut
    into slices sized from the writer's measured speed to take about SLICE_SECONDS each, so that
    progress moves about once a second however fast the writer (or the machine) is.
    """
    rows = FIRST_SLICE_ROWS
    for batch in frame.collect_batches():
        if batch.height == 0:
            yield batch
            continue
        start = 0
        while start < batch.height:
            piece = batch.slice(start, rows)
            began = time.monotonic()
            yield piece  # the writer handles it before asking for the next
            took = time.monotonic() - began
            start += piece.height
            if pacer is not None:
                pacer.wrote(piece.height)
            if took > 0:
                rows = max(100, min(100_000, int(piece.height * SLICE_SECONDS / took)))
