"""Every sample type in every format, read back and compared with the database row by row."""

from __future__ import annotations

import decimal
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_platform.export_types import REGISTRY
from export_platform.formats import ExportFormat
from readback import db_rows, file_rows, published_path, run_job

CASES = [(t.name, f.name) for t in REGISTRY for f in ExportFormat]


@pytest.mark.parametrize(("export_type", "fmt"), CASES)
def test_round_trip_every_type_and_format(db, resources, export_type, fmt):
    spec = REGISTRY.get(export_type)
    result = run_job(export_type, {"format": fmt}, resources)
    assert result.success
    path = published_path(result)
    assert path.name.endswith(ExportFormat[fmt].extension)
    expected = db_rows(db, spec.relation, list(spec.columns))
    assert len(expected) >= 3000
    assert file_rows(db, spec.relation, list(spec.columns), fmt, path) == expected

    published = result.output_for_node("publish_export")
    assert published.rows == len(expected)
    assert published.bytes == path.stat().st_size


def test_numeric_keeps_its_scale_and_timestamps_their_offset(db, resources):
    result = run_job("users", {"format": "csv", "columns": ["id", "lifetime_value", "updated_at"]}, resources)
    lines = published_path(result).read_text().splitlines()
    assert lines[1] == "1,0.00,2024-03-10T06:59:59.500000+00:00"
    assert lines[4] == "4,0.01,1969-07-21T00:17:40.000000+00:00"

    result = run_job("ledger_postings", {"format": "parquet", "columns": ["id", "amount"]}, resources)
    table = pq.read_table(published_path(result))
    assert table.schema.field("amount").type == pa.decimal128(14, 2)
    assert table.column("amount")[0].as_py() == decimal.Decimal("9999999999.99")
    assert table.column("amount")[1].as_py() == decimal.Decimal("-9999999999.99")


def test_null_and_empty_string_stay_distinct(db, resources):
    result = run_job("users", {"format": "csv", "columns": ["id", "name", "email"]}, resources)
    lines = published_path(result).read_text().splitlines()
    assert lines[1].startswith('1,"Comma, Quote ""Q"" O\'Brien",""')  # email is ''
    rows = file_rows(db, "users", ["id", "name", "email"], "csv", published_path(result))
    assert rows[0][2] == "" and rows[1][2] is None


def test_csv_options_and_column_choice(db, resources):
    columns = ["email", "id", "country_code"]
    config = {"format": "csv", "columns": columns, "csv": {"delimiter": ";", "quote_char": "'", "header": False}}
    result = run_job("users", config, resources)
    rows = file_rows(db, "users", columns, "csv", published_path(result), delimiter=";", quote="'", header=False)
    assert rows == db_rows(db, "users", columns)


def test_output_path_replaces_the_file_atomically(db, resources, tmp_path):
    target = tmp_path / "out" / "users.csv"
    target.parent.mkdir()
    target.write_text("old contents")
    result = run_job("users", {"format": "csv", "output_path": str(target), "columns": ["id"]}, resources)
    assert published_path(result) == target
    assert target.read_text().splitlines()[:2] == ["id", "1"]
    assert [p.name for p in target.parent.iterdir()] == ["users.csv"]  # no temp file left beside it


def test_run_reports_rows_bytes_seconds_and_path(resources):
    result = run_job("ledger_postings", {"format": "ndjson"}, resources)
    [output] = [e for e in result.events_for_node("publish_export") if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    path = published_path(result)
    assert metadata["rows"] == 3000
    assert metadata["bytes"] == path.stat().st_size
    assert metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert metadata["path"] == path.as_uri()
    assert metadata["seconds"] > 0 and metadata["rows_per_second"] > 0
