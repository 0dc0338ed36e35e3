"""CSV written by the server: `COPY (SELECT ...) TO STDOUT (FORMAT csv)` moved into the file.

Measured (benchmarks/RESULTS.md, issue 23): the server formatting its own CSV and a C loop moving
the bytes costs the client almost nothing, where decoding the rows and formatting them again in
the client (DuckDB → Polars `sink_csv`) costs several CPU-seconds per 10M rows on the cores the
server needs too. So a csv export takes this path whenever the server's text is exactly what the
Polars writer would write, and the writer path serves every other request (`refusal` says why,
and the run's metadata shows it):
- plain csv (no gzip or zstd), quoting only where necessary, `\\n` line ends, NULL written as an
  empty field, no custom date or timestamp format, no formula protection, a one-byte delimiter
  and quote (COPY's own limits);
- every column of a type whose text is the writers' (text, integers, NUMERIC, char(n) with its
  padding, uuid, boolean as true/false, dates and timestamps formatted in SQL as the writers'
  ISO formats, timestamptz in the export's time zone).
The header (labels, BOM) is written by Polars, as the writer path writes it; the rows then come
from the server. tests/test_server_csv.py compares both paths byte for byte.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import polars as pl

from ..planning.config import LineTerminator, QuoteStyle
from ..planning.pg_types import Declared
from ..planning.plan import ExportPlan
from ..planning.sql import CsvText
from .parts import StreamStopped, join_parts, part_path, run_streams

_WRITE_BUFFER = 1 << 20


class CsvCopy(Protocol):
    """One stream of the export as the server's CSV, without a header (resources/server_copy.py's
    `CsvCopy`; the sink only writes what it is given)."""

    def run(self, write: Callable[[bytes], None]) -> int:
        """Writes whole rows through `write`; returns the stream's row count."""


def refusal(plan: ExportPlan, columns: list[Declared]) -> str | None:
    """Why the server's CSV cannot be this export's file, or None when it can."""
    csv = plan.csv
    checks = [
        (plan.format.compression != "uncompressed", f"{plan.format.value} is compressed"),
        (csv.quote_style is not QuoteStyle.necessary, f"quote_style {csv.quote_style.value}"),
        (csv.line_terminator is not LineTerminator.lf, f"line_terminator {csv.line_terminator.value}"),
        (csv.null_value != "", "a null_value of its own"),
        (csv.date_format is not None or csv.timestamp_format is not None, "a date or timestamp format"),
        (plan.protects_formulas, "formula protection"),
        (not all(len(c.encode()) == 1 and c not in "\r\n" for c in (csv.delimiter, csv.quote_char)),
         "a delimiter or quote that is not one byte"),
    ]
    reasons = [reason for failed, reason in checks if failed]
    others = [f"{c.name} ({c.display})" for c in columns if c.csv_text() is None]
    if others:
        reasons.append("columns the server writes otherwise: " + ", ".join(others))
    return "; ".join(reasons) or None


def texts(columns: list[Declared]) -> dict[str, CsvText]:
    return {c.name: c.csv_text() for c in columns}


def _header(plan: ExportPlan) -> bytes:
    """The header line (and BOM) exactly as the writer path writes it."""
    csv = plan.csv
    if not csv.header and not csv.bom:
        return b""
    labels = [plan.label(c) for c in plan.columns]
    empty = pl.DataFrame(schema={label: pl.String for label in labels})
    text = empty.write_csv(
        separator=csv.delimiter, quote_char=csv.quote_char, quote_style=csv.quote_style.value,
        include_header=csv.header, include_bom=csv.bom, line_terminator=csv.line_terminator.text,
    )
    return text.encode()


def _copy_into(copy: CsvCopy, out, lock: threading.Lock | None, stop: threading.Event, report: Callable[[int], None]) -> int:
    lines = 0

    def write(data: bytes) -> None:
        nonlocal lines
        if stop.is_set():
            raise StreamStopped("another stream of this export failed")
        if lock is None:
            out.write(data)
        else:
            with lock:
                out.write(data)
        # Line ends, for progress only (a quoted line break counts too); the count is the server's.
        lines += data.count(b"\n")
        report(lines)

    rows = copy.run(write)
    report(rows)
    return rows


def write_server_csv(
    copies: list[CsvCopy], plan: ExportPlan, path: Path, on_rows: Callable[[int], Callable[[int], None]]
) -> None:
    """The streams' CSV in `path`, after the header: in no order, all streams into the one file
    (whole rows at a time); in key order, each range into a part, joined in order."""
    stop = threading.Event()
    if len(copies) == 1 or not plan.ordered:
        lock = threading.Lock() if len(copies) > 1 else None
        with path.open("wb", buffering=_WRITE_BUFFER) as out:
            out.write(_header(plan))
            run_streams([lambda i=i, c=c: _copy_into(c, out, lock, stop, on_rows(i)) for i, c in enumerate(copies)], stop)
        return
    parts = [path, *(part_path(path, i) for i in range(1, len(copies)))]

    def part(index: int, copy: CsvCopy) -> int:
        with parts[index].open("wb", buffering=_WRITE_BUFFER) as out:
            if index == 0:
                out.write(_header(plan))
            return _copy_into(copy, out, None, stop, on_rows(index))

    run_streams([lambda i=i, c=c: part(i, c) for i, c in enumerate(copies)], stop)
    join_parts(plan, parts, path)
