"""The file formats an export can be written in."""

from __future__ import annotations

from enum import Enum


class ExportFormat(str, Enum):
    # Member names are what the Launchpad shows and run config takes (Dagster config uses enum
    # names); values are the file extensions and what request rows may also say.
    csv = "csv"
    csv_gz = "csv.gz"
    parquet = "parquet"
    ndjson = "ndjson"

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
    def is_csv(self) -> bool:
        return self in (ExportFormat.csv, ExportFormat.csv_gz)
