"""csv, ndjson, json and parquet: Polars writes them, streaming, from the lazy scan."""

from __future__ import annotations

import gzip
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..planning.plan import ExportPlan
from .arrow_source import Pacer, paced_batches
from .columns import (
    ISO_DATE,
    ISO_TIMESTAMP,
    ISO_TIMESTAMPTZ,
    in_time_zone,
    neutralise_formulas,
    neutralised_label,
    relabel,
    temporals_as_text,
)


def _csv_frame(frame: pl.LazyFrame, plan: ExportPlan) -> pl.LazyFrame:
    """The rows as the csv writes them: zoned, formulas neutralised, temporals formatted, labelled."""
    csv, labels = plan.csv, plan.options.labels
    frame = in_time_zone(frame, plan.options.time_zone)
    if plan.protects_formulas:
        frame = neutralise_formulas(frame)
        labels = {name: neutralised_label(plan.label(name)) for name in frame.collect_schema().names()}
    frame = temporals_as_text(
        frame,
        csv.date_format or ISO_DATE,
        csv.timestamp_format or ISO_TIMESTAMPTZ,
        csv.timestamp_format or ISO_TIMESTAMP,
    )
    return relabel(frame, labels)


def _csv_options(plan: ExportPlan) -> dict:
    csv = plan.csv
    return {
        "separator": csv.delimiter,
        "quote_char": csv.quote_char,
        "quote_style": csv.quote_style.value,
        "null_value": csv.null_value,
        "line_terminator": csv.line_terminator.text,
    }


def write_csv(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    _csv_frame(frame, plan).sink_csv(
        path,
        include_header=plan.csv.header,
        include_bom=plan.csv.bom,
        compression=plan.format.compression,
        check_extension=False,
        **_csv_options(plan),
    )


def _compressor(codec: str) -> Callable[[bytes], bytes] | None:
    """Each batch's text compressed on its own: gzip members and zstd frames concatenate into one
    valid stream, so batches compress in parallel (zlib and Arrow release the GIL). gzip at zlib's
    level 6 and zstd at Arrow's level 1, as Polars' sinks."""
    if codec == "gzip":
        return lambda data: gzip.compress(data, compresslevel=6)
    if codec == "zstd":
        zstd = pa.Codec("zstd")
        return lambda data: zstd.compress(data, asbytes=True)
    return None


def write_text_paced(frame: pl.LazyFrame, plan: ExportPlan, path: Path, pacer: Pacer) -> None:
    """csv or ndjson (plain, gzip or zstd) written batch by batch, each batch reported to `pacer`:
    for interleaved page streams, which decode faster than Polars' sinks write and would otherwise
    queue their batches in front of them (Polars gives an IO source no backpressure,
    pola-rs/polars#26432). The same text as the sinks write; compressed batches are compressed on
    the cores' threads, at most one per core in flight."""
    is_csv = plan.format.is_csv
    frame = _csv_frame(frame, plan) if is_csv else _zoned_and_labelled(frame, plan)
    compress = _compressor(plan.format.compression) or (lambda data: data)
    cores = len(os.sched_getaffinity(0))

    def text(batch: pl.DataFrame, first: bool) -> bytes:
        if not is_csv:
            return batch.write_ndjson().encode()
        return batch.write_csv(include_header=first and plan.csv.header, include_bom=first and plan.csv.bom,
                               **_csv_options(plan)).encode()

    with path.open("wb") as out, ThreadPoolExecutor(cores, thread_name_prefix="export-compress") as pool:
        pending: deque = deque()
        first = True
        for batch in paced_batches(frame, pacer):
            pending.append(pool.submit(compress, text(batch, first)))
            first = False
            while len(pending) >= cores:
                out.write(pending.popleft().result())
        if first and is_csv:  # no batch at all: the header alone
            pending.append(pool.submit(compress, text(frame.clear().collect(), True)))
        while pending:
            out.write(pending.popleft().result())


def _zoned_and_labelled(frame: pl.LazyFrame, plan: ExportPlan) -> pl.LazyFrame:
    return relabel(in_time_zone(frame, plan.options.time_zone), plan.options.labels)


def write_ndjson(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    _zoned_and_labelled(frame, plan).sink_ndjson(path, compression=plan.format.compression, check_extension=False)


def write_json(frame: pl.LazyFrame, plan: ExportPlan, path: Path, pacer: Pacer | None = None) -> None:
    """One JSON array, an object per line, written batch by batch (Polars has no streaming JSON sink)."""
    separator = "\n"
    with path.open("w", encoding="utf-8") as out:
        out.write("[")
        for batch in paced_batches(_zoned_and_labelled(frame, plan), pacer):
            if batch.height:
                # JSON text never holds a raw line break, so the lines are exactly the objects.
                out.write(separator + batch.write_ndjson().rstrip("\n").replace("\n", ",\n"))
                separator = ",\n"
        out.write("\n]\n" if separator != "\n" else "]\n")


def write_parquet(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    sink_parquet_as_is(_zoned_and_labelled(frame, plan), plan, path)


def write_parquet_part(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    """One chunk's rows as Arrow IPC, zoned and labelled, for `sink_parquet_as_is` to join: Parquet
    parts cannot be concatenated, and IPC costs next to nothing to write and read back."""
    _zoned_and_labelled(frame, plan).sink_ipc(path)


def sink_parquet_as_is(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    options = plan.options.parquet
    frame.sink_parquet(path, compression=options.compression.value, compression_level=options.compression_level, row_group_size=65536)
