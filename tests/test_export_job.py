"""Every sample type in every format, read back and compared with the database row by row."""

from __future__ import annotations

import csv
import decimal
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_platform.catalog.export_types import REGISTRY
from export_platform.catalog.formats import ExportFormat
from export_platform.resources.storage import OUTPUT_FOLDERS_ENV
from export_platform.sinks.pdf import TABLE_FONT_SIZE
from export_platform.units import human_bytes
from support.readback import (
    as_pdf_text, csv_rows, db_rows, file_bytes, file_rows, neutralised, parquet_rows, pdf_rows, published_path, run_job,
    xlsx_mismatches, xlsx_rows,
)

CASES = [(t.name, f.name) for t in REGISTRY for f in ExportFormat if f is not ExportFormat.pdf]
# pdf is for people and slow to lay out: its round trip uses a small export holding the nasty rows.
SMALL = {
    "users": ({"signup_date_to": "2015-01-10"}, "WHERE signup_date <= '2015-01-10'"),
    "ezpass_transactions": ({"transaction_id": [900000000 + 3 * i for i in range(1, 6)]}, "WHERE id <= 5"),
    "ledger_postings": ({"journal_id": [1, 2]}, "WHERE journal_id <= 2"),
}


def _check_published(result, expected_rows: int):
    path = published_path(result)
    published = result.output_for_node("publish_export")
    assert published.rows == expected_rows
    assert published.bytes == path.stat().st_size
    assert published.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # hashed while written


@pytest.mark.parametrize(("export_type", "fmt"), CASES)
def test_round_trip_every_type_and_format(db, resources, export_type, fmt):
    spec = REGISTRY.get(export_type)
    result = run_job(export_type, {"format": fmt}, resources)
    assert result.success
    path = published_path(result)
    assert path.name.endswith(ExportFormat[fmt].extension)
    columns = list(spec.columns)
    expected = db_rows(db, spec.relation, columns)
    assert len(expected) >= 3000
    if fmt == "xlsx":
        assert xlsx_mismatches(xlsx_rows(path, columns), expected) == []
    else:
        assert file_rows(db, spec.relation, columns, fmt, path) == expected
    _check_published(result, len(expected))


@pytest.mark.parametrize("export_type", list(SMALL))
def test_round_trip_pdf_text(db, resources, export_type):
    spec, (filters, where) = REGISTRY.get(export_type), SMALL[export_type]
    result = run_job(export_type, {"format": "pdf", "filters": filters}, resources)
    assert result.success
    columns = list(spec.columns)
    expected = db_rows(db, spec.relation, columns, where)
    assert 4 <= len(expected) < 50
    rows = pdf_rows(published_path(result), columns, TABLE_FONT_SIZE)
    assert rows == [tuple(as_pdf_text(v) for v in row) for row in expected]
    _check_published(result, len(expected))


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


def test_output_path_replaces_the_file_atomically(db, resources, tmp_path, monkeypatch):
    target = tmp_path / "out" / "users.csv"
    target.parent.mkdir()
    monkeypatch.setenv(OUTPUT_FOLDERS_ENV, str(target.parent))  # a folder the worker host lets runs write into
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
    assert metadata["size"] == human_bytes(path.stat().st_size) and metadata["size"].endswith(" KiB")
    assert "high_water" not in metadata  # only incremental exports have one
    assert metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert metadata["path"] == str(path)
    assert metadata["seconds"] > 0 and metadata["rows_per_second"] > 0


def _metadata(result, node: str) -> dict:
    [output] = [e for e in result.events_for_node(node) if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_csv_for_excel_bom_crlf_labels_null_and_quoting_round_trip(db, resources):
    columns = ["id", "name", "email", "lifetime_value", "updated_at"]
    csv = {"delimiter": ";", "quote_style": "non_numeric", "null_value": "<null>", "line_terminator": "crlf", "bom": True}
    labels = {"name": "Full name", "email": "E-mail"}
    result = run_job("users", {"format": "csv_zst", "columns": columns, "csv": csv, "labels": labels}, resources)
    data = file_bytes(published_path(result))
    assert data.startswith(b'\xef\xbb\xbf"id";"Full name";"E-mail";"lifetime_value";"updated_at"\r\n')
    rows = csv_rows(db, "users", columns, published_path(result), delimiter=";", null="<null>", bom=True,
                    labels=["id", "Full name", "E-mail", "lifetime_value", "updated_at"])
    # A BOM means Excel: formula protection is on by default.
    assert rows == [tuple(neutralised(v) for v in row) for row in db_rows(db, "users", columns)]
    assert rows[4][1:3] == ("'=cmd|' /C calc'!A0", "'+1@example.com") and rows[4][3] == decimal.Decimal("-0.01")


@pytest.mark.parametrize(("config", "protected"), [({}, False), ({"formula_protection": "on"}, True)])
def test_plain_csv_keeps_raw_text_unless_protection_is_asked_for(db, resources, config, protected):
    columns = ["id", "name", "email", "lifetime_value"]
    result = run_job("users", {"format": "csv", "columns": columns, **config}, resources)
    expected = db_rows(db, "users", columns)
    rows = file_rows(db, "users", columns, "csv", published_path(result))
    assert rows == ([tuple(neutralised(v) for v in row) for row in expected] if protected else expected)


@pytest.mark.parametrize(("config", "protected"), [({}, False), ({"formula_protection": "on"}, True)])
def test_csv_headers_are_protected_like_values(resources, config, protected):
    labels = {"name": "=cmd|' /C calc'!A0", "email": "@SUM(1+1)", "lifetime_value": "-5"}
    columns = ["id", "name", "email", "lifetime_value"]
    result = run_job("users", {"format": "csv", "columns": columns, "labels": labels, **config}, resources)
    header = published_path(result).read_text(encoding="utf-8").split("\n", 1)[0]
    expected = ["id", "'=cmd|' /C calc'!A0", "'@SUM(1+1)", "-5"] if protected else ["id", *list(labels.values())]
    assert next(csv.reader([header])) == expected


def test_xlsx_opt_out_writes_the_raw_text(db, resources):
    result = run_job("ezpass_transactions", {"format": "xlsx", "columns": ["id", "plate_number", "entry_plaza"],
                                             "formula_protection": "off"}, resources)
    expected = db_rows(db, "ezpass_transactions", ["id", "plate_number", "entry_plaza"])
    assert expected[4] == (5, "-5", "=SUM(A1:A2)")
    rows = xlsx_rows(published_path(result), ["id", "plate_number", "entry_plaza"])
    assert xlsx_mismatches(rows, expected, protect=False) == []


def test_parquet_codec_level_labels_and_time_zone(db, resources):
    config = {"format": "parquet", "columns": ["id", "amount", "posted_at"], "labels": {"amount": "Amount"},
              "time_zone": "Europe/Paris", "parquet": {"compression": "gzip", "compression_level": 9}}
    result = run_job("ledger_postings", config, resources)
    path = published_path(result)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.row_group(0).column(1).compression == "GZIP"
    assert str(pq.read_schema(path).field("posted_at").type) == "timestamp[us, tz=Europe/Paris]"
    assert parquet_rows(path, ["id", "Amount", "posted_at"]) == db_rows(db, "ledger_postings", ["id", "amount", "posted_at"])


def test_preflight_decisions_are_in_the_plan_metadata(resources):
    result = run_job("ledger_postings", {"format": "xlsx", "columns": ["id", "amount", "memo"]}, resources)
    preflight = _metadata(result, "plan_ledger_postings")["preflight"]
    assert preflight["rows"] == "3,000" and preflight["sheets"].startswith("1 (at most 1,048,575 rows per sheet")
    assert preflight["number:amount"].startswith("number (NUMERIC(14,2) fits")
    assert preflight["formula_protection"] == "on (formula_protection: auto)"
    assert preflight["time_zone"] == "timestamptz written as wall-clock time in UTC"

    result = run_job("users", {"format": "pdf", "filters": SMALL["users"][0]}, resources)
    assert _metadata(result, "plan_users")["preflight"]["row_limit"] == "within the pdf limit of 10,000 rows"
    result = run_job("users", {"format": "csv"}, resources)
    assert "rows" not in _metadata(result, "plan_users")["preflight"]  # no limit: the plan op does not count
