"""xlsx through xlsxwriter's constant_memory mode: each row goes to disk once the next one starts,
so memory stays flat; the batches come from the lazy scan one at a time.

Cells are typed: numbers, booleans, text, and dates and timestamps as Excel date cells (a day
count with a date format). Excel holds a number as a double, so only what it stores exactly is
written as a number; the rest is written as text, never rounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..catalog.formats import XLSX_ROWS_PER_SHEET
from ..planning.plan import ExportPlan
from .arrow_source import Pacer, paced_batches
from .columns import ISO_DATE, ISO_TIMESTAMP, in_time_zone, neutralise_formulas

if TYPE_CHECKING:  # xlsxwriter is imported by the xlsx export that needs it, not by every run
    import xlsxwriter
    from xlsxwriter.format import Format
    from xlsxwriter.worksheet import Worksheet

EXCEL_DIGITS = 15  # significant digits a double holds exactly
_LARGEST_EXACT = 10**EXCEL_DIGITS
MAX_CELL_TEXT = 32_767
_UNIX_EPOCH_SERIAL = 25_569  # 1970-01-01 as an Excel day number (1900 date system)
# Excel counts a 29 February 1900 that never was, so days before 1 March 1900 are one lower.
_FIRST_SERIAL_AFTER_PHANTOM_DAY = 61
_US_PER_DAY = 86_400_000_000
_MIN_WIDTH, _MAX_WIDTH = 8, 60

CellWriter = Callable[[int, int, Any], Any]


def writes_number(dtype: pl.DataType) -> bool:
    """Whether Excel can hold this column's values as numbers (integers: those below 10**15)."""
    if isinstance(dtype, pl.Decimal):
        return dtype.precision <= EXCEL_DIGITS
    return dtype.is_float() or dtype.is_integer()


def _serial(days: pl.Expr, as_text: pl.Expr) -> list[pl.Expr]:
    """Excel day numbers, and ISO text for what Excel cannot date (before 1900)."""
    serial = days + _UNIX_EPOCH_SERIAL
    serial = pl.when(serial < _FIRST_SERIAL_AFTER_PHANTOM_DAY).then(serial - 1).otherwise(serial)
    return [pl.when(serial >= 1).then(serial), pl.when(serial < 1).then(as_text)]


@dataclass(frozen=True)
class _Column:
    label: str
    expressions: list[pl.Expr]  # one values column, or a number and a text column
    number_format: str | None
    kind: str  # number, integer, boolean, text or serial
    width: int | None = None  # fixed width; None: from the data

    def writer(self, sheet: Worksheet, cell_format: Format | None) -> CellWriter:
        if self.kind == "number":
            return lambda r, c, v: sheet.write_number(r, c, v, cell_format)
        if self.kind == "integer":
            return lambda r, c, v: (
                sheet.write_number(r, c, v) if -_LARGEST_EXACT < v < _LARGEST_EXACT else sheet.write_string(r, c, str(v))
            )
        if self.kind == "boolean":
            return sheet.write_boolean
        if self.kind == "serial":
            return lambda r, c, v: (
                sheet.write_number(r, c, v, cell_format) if isinstance(v, float) else sheet.write_string(r, c, v)
            )
        return sheet.write_string


def _column(name: str, dtype: pl.DataType, label: str) -> _Column:
    col = pl.col(name)
    if isinstance(dtype, pl.Decimal) and writes_number(dtype):
        scale = f"0.{'0' * dtype.scale}" if dtype.scale else "0"
        return _Column(label, [col.cast(pl.Float64)], scale, "number")
    if dtype.is_integer():
        return _Column(label, [col], None, "integer")
    if dtype.is_float():
        return _Column(label, [col], None, "number")
    if dtype == pl.Boolean:
        return _Column(label, [col], None, "boolean")
    if dtype == pl.Date:
        days = col.cast(pl.Int32).cast(pl.Float64)
        return _Column(label, _serial(days, col.dt.to_string(ISO_DATE)), "yyyy-mm-dd", "serial", 12)
    if isinstance(dtype, pl.Datetime):
        wall = col.dt.replace_time_zone(None) if dtype.time_zone else col
        days = wall.dt.epoch("us") / _US_PER_DAY
        as_text = wall.dt.to_string(ISO_TIMESTAMP)
        return _Column(label, _serial(days, as_text), "yyyy-mm-dd hh:mm:ss.000", "serial", 24)
    return _Column(label, [col.cast(pl.String)], None, "text")


def _values(columns: list[_Column], batch: pl.DataFrame) -> list[list[Any]]:
    prepared = batch.select([e.alias(f"{i}.{j}") for i, c in enumerate(columns) for j, e in enumerate(c.expressions)])
    lists, series = [], iter(prepared.get_columns())
    for column in columns:
        first = next(series).to_list()
        if len(column.expressions) == 2:
            first = [n if n is not None else t for n, t in zip(first, next(series).to_list())]
        lists.append(first)
    return lists


def _check_text_fits(batch: pl.DataFrame, names: list[str]) -> None:
    longest = batch.select(pl.col(names).str.len_chars().max()).row(0, named=True) if names else {}
    for name, length in longest.items():
        if length is not None and length > MAX_CELL_TEXT:
            raise ValueError(
                f"xlsx: a value in column {name!r} has {length:,} characters, more than the {MAX_CELL_TEXT:,} an "
                "Excel cell holds; export it as csv instead"
            )


class _Sheets:
    """Writes rows across as many sheets as Excel's row limit requires, header repeated on each."""

    def __init__(self, workbook: xlsxwriter.Workbook, columns: list[_Column], base_name: str, rows_per_sheet: int):
        self.workbook, self.columns, self.base_name = workbook, columns, base_name
        self.rows_per_sheet = rows_per_sheet
        self.header_format = workbook.add_format({"bold": True})
        self.formats = [workbook.add_format({"num_format": c.number_format}) if c.number_format else None for c in columns]
        self.widths: list[int] | None = None
        self.count, self.row = 0, rows_per_sheet
        self.writers: list[CellWriter] = []

    def _sheet_name(self) -> str:
        if self.count == 1:
            return self.base_name
        suffix = f" ({self.count})"
        return self.base_name[: 31 - len(suffix)] + suffix

    def _new_sheet(self) -> None:
        self.count += 1
        sheet = self.workbook.add_worksheet(self._sheet_name())
        sheet.freeze_panes(1, 0)
        for c, (column, width) in enumerate(zip(self.columns, self.widths or [None] * len(self.columns))):
            sheet.set_column(c, c, width or max(_MIN_WIDTH, len(column.label) + 2))
            sheet.write_string(0, c, column.label, self.header_format)
        self.writers = [c.writer(sheet, f) for c, f in zip(self.columns, self.formats)]
        self.row = 0

    def _measure(self, batch: pl.DataFrame) -> list[int]:
        lengths = batch.select(pl.all().cast(pl.String).str.len_chars().max()).row(0)
        return [
            c.width or min(_MAX_WIDTH, max(_MIN_WIDTH, len(c.label) + 2, (n or 0) + 2))
            for c, n in zip(self.columns, lengths)
        ]

    def append(self, batch: pl.DataFrame) -> None:
        if self.widths is None:
            self.widths = self._measure(batch)
        start = 0
        while start < batch.height:
            if self.row == self.rows_per_sheet:
                self._new_sheet()
            take = min(batch.height - start, self.rows_per_sheet - self.row)
            self._write_rows(_values(self.columns, batch.slice(start, take)))
            start += take

    def _write_rows(self, lists: list[list[Any]]) -> None:
        writers, row = self.writers, self.row + 1  # row 0 is the header
        for values in zip(*lists):
            for c, value in enumerate(values):
                if value is not None:  # NULL: an empty cell
                    writers[c](row, c, value)
            row += 1
        self.row = row - 1

    def finish(self) -> None:
        if self.count == 0:  # no rows: still a sheet with the header
            self._new_sheet()


def write_xlsx(
    frame: pl.LazyFrame,
    plan: ExportPlan,
    path: Path,
    pacer: Pacer | None = None,
    rows_per_sheet: int = XLSX_ROWS_PER_SHEET,
) -> None:
    frame = in_time_zone(frame, plan.options.time_zone)
    if plan.protects_formulas:
        frame = neutralise_formulas(frame)
    schema = frame.collect_schema()
    columns = [_column(name, dtype, plan.label(name)) for name, dtype in schema.items()]
    text = [name for name, dtype in schema.items() if dtype == pl.String]
    # tmpdir: constant_memory spools each sheet to a temp file; keep it beside the export, not in /tmp.
    import xlsxwriter

    workbook = xlsxwriter.Workbook(
        str(path), {"constant_memory": True, "tmpdir": str(path.parent), "nan_inf_to_errors": True}
    )
    try:
        sheets = _Sheets(workbook, columns, plan.options.xlsx.sheet_name or plan.export_type[:31], rows_per_sheet)
        for batch in paced_batches(frame, pacer):
            _check_text_fits(batch, text)
            sheets.append(batch)
        sheets.finish()
        workbook.close()
    except BaseException:
        _discard_spools(workbook)
        raise


def _discard_spools(workbook: xlsxwriter.Workbook) -> None:
    """Close and delete the sheets' spool files, which xlsxwriter removes only on a successful close
    (left open, they would also keep a full disk full)."""
    for sheet in workbook.worksheets():
        if sheet.row_data_fh is not None and not sheet.row_data_fh.closed:
            sheet.row_data_fh.close()
        if getattr(sheet, "row_data_filename", None):
            Path(sheet.row_data_filename).unlink(missing_ok=True)
