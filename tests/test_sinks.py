"""Postgres types through ADBC → Polars → files: exact decimals, explicit time zones, NULLs."""

from __future__ import annotations

import decimal

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import pyarrow.parquet as pq
import pytest

from export_platform.planning import plan_export
from export_platform.sinks import scan_batches, sink

QUERY = """
SELECT 1.50::numeric(5, 2) AS exact,
       12345678901234567890.123456789::numeric AS unconstrained,
       'ab'::char(4) AS padded,
       timestamp '2024-01-02 03:04:05.678' AS naive,
       timestamptz '2024-01-02 03:04:05.678+05:30' AS aware,
       NULL::numeric(5, 2) AS missing,
       ''::text AS empty
"""


def stream(database_url: str, query: str, fmt: str, path):
    rows = []
    with adbc.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.execute(query)
        reader = cursor.fetch_record_batch()
        sink(scan_batches(reader, rows.append), plan_export("users", fmt), path)
    return rows


def test_types_in_csv(database_url, tmp_path):
    path = tmp_path / "types.csv"
    assert stream(database_url, QUERY, "csv", path) == [1]
    assert path.read_text().splitlines() == [
        "exact,unconstrained,padded,naive,aware,missing,empty",
        '1.50,12345678901234567890.123456789,ab  ,2024-01-02T03:04:05.678000,2024-01-01T21:34:05.678000+00:00,,""',
    ]


def test_types_in_parquet(database_url, tmp_path):
    path = tmp_path / "types.parquet"
    stream(database_url, QUERY, "parquet", path)
    table = pq.read_table(path)
    row = table.to_pylist()[0]
    assert str(table.schema.field("exact").type) == "decimal128(5, 2)"
    assert row["exact"] == decimal.Decimal("1.50")
    # NUMERIC without a declared scale cannot be a fixed decimal: it is kept exact, as text.
    assert row["unconstrained"] == "12345678901234567890.123456789"
    assert str(table.schema.field("aware").type) == "timestamp[us, tz=UTC]"
    assert row["missing"] is None and row["empty"] == ""


def test_progress_is_reported_per_batch_and_rows_are_all_there(database_url, tmp_path):
    path = tmp_path / "many.parquet"
    query = "SELECT g AS id, repeat('x', 100) AS filler FROM generate_series(1, 200000) g"
    with adbc.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": "65536"})
        cursor.execute(query)
        seen = []
        sink(scan_batches(cursor.fetch_record_batch(), seen.append), plan_export("users", "parquet"), path)
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] == 200000
    assert pl.read_parquet(path)["id"].to_list() == list(range(1, 200001))


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_empty_result_still_writes_a_valid_file(database_url, tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    stream(database_url, "SELECT 1 AS id WHERE false", fmt, path)
    assert path.read_text() == ("id\n" if fmt == "csv" else "")
