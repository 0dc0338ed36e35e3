"""Arrow record batches from Postgres → a lazy Polars scan → one writer per format family.

`sink(frame, plan, path)` is the single entry point the extract op calls. Polars' own sinks
write csv, ndjson and parquet; json, xlsx and pdf take the scan's batches one at a time
(`LazyFrame.collect_batches`), so no writer ever holds the whole result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from ..planning.plan import ExportPlan
from .arrow_source import Pacer, polars_schema, scan_batches
from .digest import WrittenDigest
from .polars_writers import write_csv, write_json, write_ndjson, write_parquet
from .xlsx import write_xlsx

__all__ = ["Pacer", "WrittenDigest", "digest_of", "pacer_for", "polars_schema", "scan_batches", "sink"]

POLARS_WRITERS: dict[str, Callable[[pl.LazyFrame, ExportPlan, Path], None]] = {
    "csv": write_csv,
    "ndjson": write_ndjson,
    "parquet": write_parquet,
}
def _write_pdf(frame: pl.LazyFrame, plan: ExportPlan, path: Path, pacer: Pacer | None) -> None:
    # Imported here: fpdf2 adds ~0.4 s to the start of every run (each run is a new process), and
    # only pdf exports need it.
    from .pdf import write_pdf

    write_pdf(frame, plan, path, pacer)


PYTHON_WRITERS: dict[str, Callable[[pl.LazyFrame, ExportPlan, Path, Pacer | None], None]] = {
    "json": write_json,
    "xlsx": write_xlsx,
    "pdf": _write_pdf,
}


# The writers that only ever append to their file, which can therefore be hashed as it grows.
APPENDING = {"csv", "ndjson", "parquet", "json"}


def digest_of(plan: ExportPlan, path: Path) -> WrittenDigest:
    """`with digest_of(plan, path) as digest:` around the writer: the file's sha256 and size."""
    return WrittenDigest(path, follow=plan.format.family in APPENDING)


def pacer_for(plan: ExportPlan, on_written: Callable[[int], None] | None = None) -> Pacer | None:
    """A pacer for the Python writers, which are slower than the scan; Polars' own sinks pull at
    their own pace and never report to a pacer (one would stall the scan every 100,000 rows)."""
    return Pacer(on_written=on_written) if plan.format.family in PYTHON_WRITERS else None


def sink(frame: pl.LazyFrame, plan: ExportPlan, path: Path, pacer: Pacer | None = None) -> None:
    """Stream `frame` into `path` in the plan's format. Pass the `pacer` given to `scan_batches`,
    so that a writer slower than Postgres holds back the scan instead of queueing its rows."""
    family = plan.format.family
    if family in POLARS_WRITERS:
        POLARS_WRITERS[family](frame, plan, path)
    else:
        PYTHON_WRITERS[family](frame, plan, path, pacer)
