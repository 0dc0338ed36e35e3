"""A chunked export's parts: one per key range, written in parallel, then joined into one file.

Text parts are joined by appending bytes: only the first part has the header (and BOM), and gzip
members and zstd frames concatenate into a valid stream. Parquet parts are Arrow IPC files that
one Parquet sink reads back in order, since Parquet files cannot be concatenated.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import polars as pl
import pyarrow as pa

from ..errors import ExportFailed
from ..planning.config import FormulaProtection
from ..planning.plan import ExportPlan
from . import pacer_for, scan_batches, sink
from .arrow_source import BatchSource, Interleaved, Pacer
from .polars_writers import sink_parquet_as_is, write_parquet_part, write_text_paced

# Written batch by batch, paced, when page streams are interleaved into them (see write_text_paced).
PACED_TEXT = ("csv", "ndjson")


class StreamStopped(ExportFailed):
    """Raised in a chunk's stream when another chunk has failed: its error is the one reported."""


def _is_parquet(plan: ExportPlan) -> bool:
    return plan.format.family == "parquet"


def part_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.part{index}")


def _part_paths(plan: ExportPlan, path: Path, count: int) -> list[Path]:
    # A text file grows from its first part; Parquet is written from all the parts at the end.
    parts = [part_path(path, i) for i in range(count)]
    return parts if _is_parquet(plan) else [path, *parts[1:]]


def _part_plan(plan: ExportPlan, index: int) -> ExportPlan:
    if index == 0 or not plan.format.is_csv:
        return plan
    # Formula protection defaults to on when there is a BOM: keep the first part's decision.
    protection = FormulaProtection.on if plan.protects_formulas else FormulaProtection.off
    csv = plan.csv.model_copy(update={"header": False, "bom": False})
    return replace(plan, options=plan.options.model_copy(update={"csv": csv, "formula_protection": protection}))


def write_part(frame: pl.LazyFrame, plan: ExportPlan, path: Path, index: int) -> None:
    """Chunk `index`'s rows into `path`, ready to be joined after the chunks before it."""
    if _is_parquet(plan):
        write_parquet_part(frame, plan, path)
    else:
        sink(frame, _part_plan(plan, index), path)


def _append(target: Path, part: Path) -> None:
    with target.open("ab") as out, part.open("rb") as source:
        start = out.tell()
        try:
            # In the kernel, without passing the bytes through this process.
            while os.copy_file_range(source.fileno(), out.fileno(), 1 << 30):
                pass
        except OSError:  # a filesystem (or pair of them) without it: start over through this process
            out.truncate(start)
            source.seek(0)
            shutil.copyfileobj(source, out, 1 << 20)


def _read_in_order(parts: list[Path]) -> pa.RecordBatchReader:
    # Read, not memory-mapped (as pl.scan_ipc does), and one batch at a time: mapped parts count
    # in the process's RSS (1.2 GB at 10M rows), these stay at the size of a batch.
    def batches() -> Iterator[pa.RecordBatch]:
        for part in parts:
            with pa.OSFile(str(part)) as source:
                ipc = pa.ipc.open_file(source)
                for index in range(ipc.num_record_batches):
                    yield ipc.get_batch(index)

    with pa.OSFile(str(parts[0])) as first:
        schema = pa.ipc.open_file(first).schema
    return pa.RecordBatchReader.from_batches(schema, batches())


def join_parts(plan: ExportPlan, parts: list[Path], path: Path) -> None:
    """The parts, in order, as the one file `path`; the parts are removed."""
    if _is_parquet(plan):
        sink_parquet_as_is(scan_batches(_read_in_order(parts), lambda rows: None), plan, path)
    else:
        for part in parts[1:]:
            _append(parts[0], part)
        shutil.move(parts[0], path)  # a rename, unless an output path is on another filesystem
    for part in parts:
        if part != path:
            part.unlink(missing_ok=True)


def _sink_one(reader: BatchSource, plan: ExportPlan, path: Path, report: Callable[[int], None]) -> None:
    # A Python writer's progress is the rows it has written, since the scan runs ahead of it.
    pacer = pacer_for(plan, report)
    sink(scan_batches(reader, report if pacer is None else lambda rows: None, pacer), plan, path, pacer)


def sink_streams(
    readers: list[BatchSource], plan: ExportPlan, path: Path, on_rows: Callable[[int], Callable[[int], None]]
) -> None:
    """Write the readers into `path` in the plan's format, in parallel.

    `on_rows(i)` is stream i's progress callback. One reader is the plain streaming path, with
    the pacer the Python writers need. Readers in no order are interleaved into that one writer.
    Readers of consecutive key ranges are written as parts on threads and joined; when one stream
    fails the others stop at their next batch, and the first error is raised.
    """
    if len(readers) == 1:
        _sink_one(readers[0], plan, path, on_rows(0))
        return
    if not plan.ordered:
        interleaved = Interleaved(readers)
        try:
            if plan.format.family in PACED_TEXT:
                pacer = Pacer(on_written=on_rows(0))
                write_text_paced(scan_batches(interleaved, lambda rows: None, pacer), plan, path, pacer)
            else:
                _sink_one(interleaved, plan, path, on_rows(0))
        finally:
            interleaved.close()
        return
    parts, stop = _part_paths(plan, path, len(readers)), threading.Event()

    def stoppable(index: int) -> Callable[[int], None]:
        report = on_rows(index)

        def on_rows_unless_stopped(rows: int) -> None:
            if stop.is_set():
                raise StreamStopped("another chunk of this export failed")
            report(rows)

        return on_rows_unless_stopped

    run_streams(
        [lambda i=i, r=r: write_part(scan_batches(r, stoppable(i)), plan, parts[i], i) for i, r in enumerate(readers)],
        stop,
    )
    join_parts(plan, parts, path)


def run_streams(jobs: list[Callable[[], object]], stop: threading.Event) -> None:
    """Run each stream's job on a thread of its own. When one fails, `stop` is set (the others stop
    at their next batch), the others are waited for, and the first error is raised."""
    with ThreadPoolExecutor(len(jobs), thread_name_prefix="export-stream") as pool:
        futures = [pool.submit(job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            stop.set()
            wait(futures)
            raise failed.exception()
