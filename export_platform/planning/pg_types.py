"""How each Postgres column type is read, and whether the server's own CSV writes it as the sinks do.

DuckDB's scanner decodes most types exactly; where it does not, the column is read as Postgres's
own text of it (decided per column, from the types the export's query describes, and shown in the
run's metadata):
- NUMERIC without a declared precision, or wider than 38 digits: DuckDB makes it a DOUBLE. Read
  as text (exact, every digit), kept as text in the file, as before.
- NUMERIC(p, s) is read as DECIMAL(p, s), except that DuckDB reads a NaN as 0: a column that
  holds one in the export's snapshot is read as text instead (the count checks, in the same pass).
- char(n): DuckDB trims the padding (and so does `::text`); read through its output function.
- timetz: DuckDB drops the offset. Read as text.
- Anything DuckDB does not know (enums, domains, money, inet, xml, ranges, ...) as text, which is
  also what DuckDB itself falls back to for most of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sql import CsvText, Read

# pg_type OIDs (fixed for built-in types).
BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, OID, JSON, FLOAT4, FLOAT8 = 16, 17, 19, 20, 21, 23, 25, 26, 114, 700, 701
BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = 1042, 1043, 1082, 1083, 1114, 1184, 1186, 1266
NUMERIC, UUID, JSONB = 1700, 2950, 3802
MAX_DECIMAL_PRECISION = 38

# Decoded by DuckDB exactly as Postgres holds them (NUMERIC and char(n) have rules of their own).
_NATIVE = {BOOL, BYTEA, INT8, INT2, INT4, TEXT, JSON, FLOAT4, FLOAT8, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ,
           INTERVAL, UUID, JSONB, NAME}
# Types whose Postgres text is what the sinks write (so the server's CSV can be used as it is).
_CSV_TEXT = {
    TEXT: CsvText.AS_PRINTED, VARCHAR: CsvText.AS_PRINTED, NAME: CsvText.AS_PRINTED, INT2: CsvText.AS_PRINTED,
    INT4: CsvText.AS_PRINTED, INT8: CsvText.AS_PRINTED, NUMERIC: CsvText.AS_PRINTED, UUID: CsvText.AS_PRINTED,
    BPCHAR: CsvText.PADDED, BOOL: CsvText.BOOLEAN, DATE: CsvText.DATE, TIMESTAMP: CsvText.TIMESTAMP,
    TIMESTAMPTZ: CsvText.TIMESTAMPTZ,
}


@dataclass(frozen=True)
class Declared:
    """A column of the export's query as Postgres describes it."""

    name: str
    oid: int
    display: str  # e.g. numeric(10,2), bpchar(2), or the OID of a type without a built-in name
    precision: int | None = None  # NUMERIC's declared precision and scale, when declared
    scale: int | None = None

    @property
    def is_numeric(self) -> bool:
        return self.oid == NUMERIC

    @property
    def exact_decimal(self) -> bool:
        """A NUMERIC that DuckDB reads as the same DECIMAL(p, s) (NaN aside)."""
        return self.is_numeric and self.precision is not None and 0 < self.precision <= MAX_DECIMAL_PRECISION

    def read(self, has_nan: bool = False) -> Read:
        if self.exact_decimal:
            return Read.TEXT if has_nan else Read.NATIVE
        if self.oid == BPCHAR:
            return Read.PADDED
        return Read.NATIVE if self.oid in _NATIVE else Read.TEXT

    def csv_text(self) -> CsvText | None:
        """How the server's CSV writes this column as the sinks would, or None when it cannot."""
        return _CSV_TEXT.get(self.oid)


def reads(columns: list[Declared], nan: set[str] = frozenset()) -> dict[str, Read]:
    return {c.name: c.read(c.name in nan) for c in columns}


def described(reads_: dict[str, Read], columns: list[Declared]) -> str:
    """The columns not decoded by DuckDB, for the run's metadata: e.g. `notes (numeric) as text`."""
    shown = {Read.TEXT: "as text", Read.PADDED: "as text with its padding"}
    parts = [f"{c.name} ({c.display}) {shown[reads_[c.name]]}" for c in columns if reads_[c.name] is not Read.NATIVE]
    return "; ".join(parts) or "every column decoded by DuckDB"
