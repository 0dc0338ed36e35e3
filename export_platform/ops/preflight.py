"""Before any row is read: check a planned export against what its format can hold, and say
what was decided (the plan op shows it in the run's metadata).

- pdf holds at most `PDF_ROW_LIMIT` rows: a larger request is refused, naming the count.
- xlsx continues past 1,048,575 rows on further sheets: the number of sheets is reported.
- xlsx cells hold doubles (15 significant digits): a NUMERIC whose declared precision is larger,
  or that has none, is written as exact text rather than refused; so is an integer of 16 or
  more digits. Parquet holds NUMERIC(p, s) up to 38 digits as decimal128, the rest as text.
"""

from __future__ import annotations

import pyarrow as pa

from ..catalog.formats import ExportFormat
from ..planning.plan import ExportPlan, RequestError
from ..resources.postgres import PostgresResource
from ..sinks import polars_schema
from ..sinks.arrow_source import is_numeric, numeric_declaration, numeric_type
from ..sinks.xlsx import EXCEL_DIGITS, writes_number

_SCHEMA_FORMATS = (ExportFormat.xlsx, ExportFormat.parquet)


def _row_decisions(fmt: ExportFormat, rows: int) -> dict[str, str]:
    if fmt.row_limit is not None and rows > fmt.row_limit:
        raise RequestError(
            "format",
            f"{fmt.value} holds at most {fmt.row_limit:,} rows and this request matches {rows:,}: "
            "narrow it with filters, or choose csv or xlsx",
        )
    decisions = {"rows": f"{rows:,}"}
    if fmt.row_limit is not None:
        decisions["row_limit"] = f"within the {fmt.value} limit of {fmt.row_limit:,} rows"
    if fmt.rows_per_sheet is not None:
        sheets = max(1, -(-rows // fmt.rows_per_sheet))
        decisions["sheets"] = f"{sheets} (at most {fmt.rows_per_sheet:,} rows per sheet, header repeated)"
    return decisions


def _xlsx_cell(field: pa.Field) -> str:
    dtype = polars_schema(pa.schema([field]))[field.name]
    if not is_numeric(field):
        return f"number; values of {EXCEL_DIGITS + 1} or more digits as text"
    if writes_number(dtype):
        return f"number ({numeric_declaration(field)} fits Excel's {EXCEL_DIGITS} significant digits)"
    return f"text ({numeric_declaration(field)} can exceed Excel's {EXCEL_DIGITS} significant digits; exact digits kept)"


def _numeric_decisions(fmt: ExportFormat, schema: pa.Schema) -> dict[str, str]:
    if fmt is ExportFormat.xlsx:
        integers = [f for f in schema if pa.types.is_integer(f.type) or is_numeric(f)]
        return {f"number:{f.name}": _xlsx_cell(f) for f in integers}
    decisions = {}
    for field in filter(is_numeric, schema):
        exact = numeric_type(field)
        decisions[f"number:{field.name}"] = str(exact) if exact else f"string ({numeric_declaration(field)})"
    return decisions


_TIME_ZONE_USE = {
    "csv": "timestamptz written with the offset of {}",
    "json": "timestamptz written with the offset of {}",
    "ndjson": "timestamptz written with the offset of {}",
    "xlsx": "timestamptz written as wall-clock time in {}",
    "pdf": "timestamptz written as wall-clock time in {}",
    "parquet": "timestamptz stored as instants tagged {}",
}


def decide(plan: ExportPlan, rows: int | None, schema: pa.Schema | None) -> dict[str, str]:
    """The checks that need the row count or the column types; raises `RequestError` to refuse."""
    fmt = plan.format
    decisions = _row_decisions(fmt, rows) if rows is not None else {}
    if schema is not None:
        decisions.update(_numeric_decisions(fmt, schema))
    decisions["time_zone"] = _TIME_ZONE_USE[fmt.family].format(plan.options.time_zone)
    if fmt.is_csv or fmt is ExportFormat.xlsx:
        mode = plan.options.formula_protection.value
        decisions["formula_protection"] = f"{'on' if plan.protects_formulas else 'off'} (formula_protection: {mode})"
    return decisions


def preflight(plan: ExportPlan, postgres: PostgresResource, session_name: str) -> dict[str, str]:
    """Ask the database only what the format needs: a count for a row limit or sheet split,
    the column types for a format with limited numbers."""
    counts = plan.format.row_limit is not None or plan.format.rows_per_sheet is not None
    if not (counts or plan.format in _SCHEMA_FORMATS):
        return decide(plan, None, None)
    rows, schema = postgres.preflight_facts(plan, session_name, counts)
    return decide(plan, rows, schema if plan.format in _SCHEMA_FORMATS else None)
