"""Arrow record batches from Postgres → a lazy Polars scan → one writer per format family.

`sink(frame, plan, path)` is the single entry point the extract op calls. Polars' own sinks
write csv, ndjson and parquet; json, xlsx and pdf take the scan's batches one at a time
(`LazyFrame.collect_batches`), so no writer ever holds the whole result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from ..planning import ExportPlan
from .arrow_source import polars_schema, scan_batches
from .pdf import write_pdf
from .text import write_csv, write_json, write_ndjson, write_parquet
from .xlsx import write_xlsx

__all__ = ["polars_schema", "scan_batches", "sink"]

Writer = Callable[[pl.LazyFrame, ExportPlan, Path], None]
WRITERS: dict[str, Writer] = {
    "csv": write_csv,
    "ndjson": write_ndjson,
    "json": write_json,
    "parquet": write_parquet,
    "xlsx": write_xlsx,
    "pdf": write_pdf,
}


def sink(frame: pl.LazyFrame, plan: ExportPlan, path: Path) -> None:
    """Stream `frame` into `path` in the plan's format."""
    WRITERS[plan.format.family](frame, plan, path)
