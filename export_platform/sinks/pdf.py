"""pdf: a printable table for people: title, generation time, filters, page numbers, the header
row repeated on every page. Planning refuses more than `PDF_ROW_LIMIT` rows, because fpdf2 lays
the whole table out in memory.

Text is drawn in the bundled DejaVu Sans Condensed. A character the font has no glyph for (CJK,
most emoji, control characters such as tab) is written as its code point, `[U+674E]`, so that
nothing disappears from the page silently. Line breaks start a new line in the cell; NULL and
the empty string both show as an empty cell.
"""

from __future__ import annotations

import datetime as dt
from itertools import chain
from pathlib import Path

import polars as pl
from fpdf import FPDF
from fpdf.fonts import FontFace

from ..planning.plan import ExportPlan
from .arrow_source import Pacer, paced_batches
from .columns import ISO_DATE, in_time_zone, temporals_as_text

FONT = "DejaVuSansCondensed"
_FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"
# `%.f` writes only the fractional digits a value has (none, 3, 6 or 9).
PDF_TIMESTAMPTZ = "%Y-%m-%d %H:%M:%S%.f%:z"
PDF_TIMESTAMP = "%Y-%m-%d %H:%M:%S%.f"
_MAX_CHARS = 40  # a wider column wraps its text instead
_CELL_PADDING = 3  # mm: both sides' padding and a margin for the bold heading
TABLE_FONT_SIZE = 7
_HEADINGS = FontFace(emphasis="BOLD", fill_color=(225, 230, 240))


class _Report(FPDF):
    def __init__(self, plan: ExportPlan, generated: str):
        super().__init__(orientation=plan.options.pdf.orientation.value, format="A4")
        self.title_text = plan.options.pdf.title or f"{plan.export_type} export"
        self.generated = generated
        self.add_font(FONT, "", _FONT_DIR / f"{FONT}.ttf")
        self.add_font(FONT, "B", _FONT_DIR / f"{FONT}-Bold.ttf")
        self.set_margins(10, 10, 10)
        self.set_auto_page_break(True, margin=14)
        self.glyphs = frozenset(chr(code) for code in self.fonts[FONT.lower()].cmap)

    def footer(self) -> None:
        self.set_y(-11)
        self.set_font(FONT, size=6)
        self.cell(0, 5, f"{self.title_text} · generated {self.generated} · page {self.page_no()} of {{nb}}", align="C")

    def title_block(self, filters: str, time_zone: str) -> None:
        self.add_page()
        self.set_font(FONT, "B", 13)
        self.multi_cell(0, 7, self.printable(self.title_text), new_x="LMARGIN", new_y="NEXT")
        self.set_font(FONT, size=8)
        for line in (f"Generated {self.generated}. Times are shown in {time_zone}.", f"Filters: {filters}"):
            self.multi_cell(0, 4.5, self.printable(line), new_x="LMARGIN", new_y="NEXT")
        self.ln(2)

    def printable(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.glyphs.issuperset(text.replace("\n", "")):
            return text
        return "".join(ch if ch in self.glyphs or ch == "\n" else f"[U+{ord(ch):04X}]" for ch in text)


def _filters_text(filters: dict) -> str:
    if not filters:
        return "none"
    return "; ".join(f"{name} = {', '.join(map(str, v)) if isinstance(v, list) else v}" for name, v in filters.items())


def _now(time_zone: str) -> str:
    now = pl.Series([dt.datetime.now(dt.timezone.utc)]).dt.convert_time_zone(time_zone)
    return now.dt.to_string("%Y-%m-%d %H:%M:%S %Z").item()


def _widths(pdf: _Report, labels: list[str], batch: pl.DataFrame) -> list[float]:
    """Column widths: every heading fits; the room left goes to the columns whose values (in the
    first batch, up to a cap) are wider than their heading."""
    longest = batch.select(pl.all().str.len_chars().max()).row(0) if batch.height else [0] * len(labels)
    pdf.set_font(FONT, "B", TABLE_FONT_SIZE)
    minimum = [pdf.get_string_width(pdf.printable(label)) + _CELL_PADDING for label in labels]
    pdf.set_font(FONT, size=TABLE_FONT_SIZE)
    char = pdf.get_string_width("0")
    wanted = [max(low, min(_MAX_CHARS, n or 0) * char + _CELL_PADDING) for low, n in zip(minimum, longest)]
    room, growth = pdf.epw - sum(minimum), sum(wanted) - sum(minimum)
    if room <= 0 or growth <= room:
        return wanted if room > 0 else minimum
    return [low + (want - low) * room / growth for low, want in zip(minimum, wanted)]


def write_pdf(frame: pl.LazyFrame, plan: ExportPlan, path: Path, pacer: Pacer | None = None) -> None:
    frame = in_time_zone(frame, plan.options.time_zone)
    schema = frame.collect_schema()
    aligns = tuple("RIGHT" if dtype.is_numeric() else "LEFT" for dtype in schema.values())
    labels = [plan.label(name) for name in schema]
    text = temporals_as_text(frame, ISO_DATE, PDF_TIMESTAMPTZ, PDF_TIMESTAMP).select(
        pl.all().cast(pl.String).fill_null("")
    )
    pdf = _Report(plan, _now(plan.options.time_zone))
    pdf.title_block(_filters_text(plan.filters), plan.options.time_zone)
    pdf.set_font(FONT, size=TABLE_FONT_SIZE)
    batches = paced_batches(text, pacer)
    first = next(iter(batches), pl.DataFrame(schema={name: pl.String for name in schema}))
    table_options = {"text_align": aligns, "line_height": 3.6, "headings_style": _HEADINGS, "padding": (0.6, 1)}
    with pdf.table(col_widths=_widths(pdf, labels, first), **table_options) as table:
        heading = table.row()
        for label in labels:  # left-aligned whatever the column, so a heading marks where its column starts
            heading.cell(pdf.printable(label), align="LEFT")
        for batch in chain([first], batches):
            for values in batch.iter_rows():
                table.row([pdf.printable(value) for value in values])
    pdf.output(str(path))
