"""csv, ndjson, json and parquet: Polars writes them, streaming, from the lazy scan."""

from __future__ import annotations

from pathlib import Path

import polars as pl

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


def write_csv(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
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
    relabel(frame, labels).sink_csv(
        path,
        separator=csv.delimiter,
        quote_char=csv.quote_char,
        quote_style=csv.quote_style.value,
        include_header=csv.header,
        include_bom=csv.bom,
        null_value=csv.null_value,
        line_terminator=csv.line_terminator.text,
        compression=plan.format.compression,
        check_extension=False,
    )


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
