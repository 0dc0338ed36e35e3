"""The file formats an export can be written in, and what each can hold."""

from __future__ import annotations

from enum import Enum

PDF_ROW_LIMIT = 10_000
# Excel's 1,048,576 rows per sheet, less the header row.
XLSX_ROWS_PER_SHEET = 1_048_575


class ExportFormat(str, Enum):
    # Member names are what the Launchpad shows and run config takes (Dagster config uses enum
    # names); values are the file extensions and what request rows may also say.
    csv = "csv"
    csv_gz = "csv.gz"
    csv_zst = "csv.zst"
    parquet = "parquet"
    ndjson = "ndjson"
    ndjson_gz = "ndjson.gz"
    ndjson_zst = "ndjson.zst"
    json = "json"
    xlsx = "xlsx"
    pdf = "pdf"

    @classmethod
    def parse(cls, text: str) -> ExportFormat:
        """Accept either spelling: `csv_gz` (config) or `csv.gz` (extension)."""
        for member in cls:
            if text in (member.name, member.value):
                return member
        raise ValueError(text)

    @property
    def extension(self) -> str:
        return self.value

    @property
    def family(self) -> str:
        """The writer: `csv`, `ndjson`, `json`, `parquet`, `xlsx` or `pdf`."""
        return self.value.split(".")[0]

    @property
    def is_csv(self) -> bool:
        return self.family == "csv"

    @property
    def chunkable(self) -> bool:
        """Whether parts written in parallel can be joined into one file: text lines (gzip and zstd
        frames concatenate) and Parquet. A json array, a workbook or a pdf are written as one stream."""
        return self.family in ("csv", "ndjson", "parquet")

    @property
    def compression(self) -> str:
        """What Polars' text sinks call the codec: `uncompressed`, `gzip` or `zstd`."""
        suffix = self.value.partition(".")[2]
        return {"": "uncompressed", "gz": "gzip", "zst": "zstd"}[suffix]

    @property
    def row_limit(self) -> int | None:
        """Most rows one file may hold; a larger request is refused before any data is read."""
        return PDF_ROW_LIMIT if self is ExportFormat.pdf else None

    @property
    def rows_per_sheet(self) -> int | None:
        return XLSX_ROWS_PER_SHEET if self is ExportFormat.xlsx else None
