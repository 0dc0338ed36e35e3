"""Postgres types through the export's reader (DuckDB's scanner) → Polars → files: exact decimals,
explicit time zones, NULLs."""

from __future__ import annotations

import decimal

import datetime as dt
import json
from dataclasses import replace
from decimal import Decimal

import openpyxl
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from contextlib import contextmanager

import psycopg
from psycopg import sql as pgsql

from export_platform.planning import pg_types
from export_platform.planning.pg_types import Declared
from export_platform.planning.plan import plan_request
from export_platform.planning.sql import read_column
from export_platform.resources import duckdb_scan
from export_platform.resources.postgres import GuardedReader, PostgresResource
from export_platform.sinks import Pacer, pacer_for, scan_batches, sink
from export_platform.sinks.xlsx import write_xlsx
from support.readback import xlsx_sheets

QUERY = """
SELECT 1.50::numeric(5, 2) AS exact,
       12345678901234567890.123456789::numeric AS unconstrained,
       'ab'::char(4) AS padded,
       timestamp '2024-01-02 03:04:05.678' AS naive,
       timestamptz '2024-01-02 03:04:05.678+05:30' AS aware,
       NULL::numeric(5, 2) AS missing,
       ''::text AS empty
"""


@contextmanager
def read(database_url: str, query: str, batch_rows: int = 2048):
    """`query`'s rows as the export reads them: each column as its type is read (pg_types), by
    DuckDB, in a transaction whose time zone is UTC."""
    with psycopg.connect(database_url) as conn:
        description = conn.execute(query).description
    columns = [Declared(c.name, c.type_code, c.type_display, c.precision, c.scale) for c in description]
    reads = pg_types.reads(columns)
    statement = pgsql.SQL("SELECT {} FROM ({}) AS q").format(
        pgsql.SQL(", ").join(read_column(c.name, reads[c.name]) for c in columns), pgsql.SQL(query)
    ).as_string()
    with duckdb_scan.attached(database_url, "export_platform:sinks-test") as alias:
        stream = duckdb_scan.Stream(alias)
        try:
            stream.execute("SET LOCAL TIME ZONE 'UTC'")
            reader = stream.reader(statement, batch_rows)
            yield GuardedReader(reader, PostgresResource._annotated(reader.schema, columns))
        finally:
            stream.end()


def stream(database_url: str, query: str, fmt: str, path, options=None, writer=sink):
    """Write `query`'s rows through a plan for `fmt` with `options` (labels may name the query's columns)."""
    options = dict(options or {})
    labels = options.pop("labels", {})
    plan = plan_request("users", fmt, options)
    plan = replace(plan, options=plan.options.model_copy(update={"labels": labels}))
    rows = []
    with read(database_url, query) as reader:
        writer(scan_batches(reader, rows.append), plan, path)
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
    with read(database_url, query) as reader:
        seen = []
        sink(scan_batches(reader, seen.append), plan_request("users", "parquet", {}), path)
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] == 200000
    assert pl.read_parquet(path)["id"].to_list() == list(range(1, 200001))


@pytest.mark.parametrize(("fmt", "text"), [("csv", "id\n"), ("ndjson", ""), ("json", "[]\n")])
def test_empty_result_still_writes_a_valid_file(database_url, tmp_path, fmt, text):
    path = tmp_path / f"empty.{fmt}"
    stream(database_url, "SELECT 1 AS id WHERE false", fmt, path)
    assert path.read_text() == text


def test_empty_xlsx_has_its_header(database_url, tmp_path):
    path = tmp_path / "empty.xlsx"
    stream(database_url, "SELECT 1 AS id, 'x' AS name WHERE false", "xlsx", path)
    assert xlsx_sheets(path, ["id", "name"]) == {"users": []}


def test_json_is_one_array_with_times_in_the_chosen_zone(database_url, tmp_path):
    path = tmp_path / "types.json"
    stream(database_url, QUERY, "json", path, {"time_zone": "Asia/Kolkata", "labels": {"exact": "Exact value"}})
    [row] = json.loads(path.read_text())
    assert row["Exact value"] == "1.50" and row["unconstrained"] == "12345678901234567890.123456789"
    assert row["aware"] == "2024-01-02T03:04:05.678+05:30" and row["missing"] is None and row["empty"] == ""


def test_csv_formats_dates_and_timestamps_in_the_chosen_zone(database_url, tmp_path):
    path = tmp_path / "types.csv"
    options = {
        "time_zone": "America/New_York",
        "csv": {"date_format": "%d/%m/%Y", "timestamp_format": "%d/%m/%Y %H:%M:%S %z", "null_value": "NULL"},
    }
    query = "SELECT date '2024-01-31' AS d, timestamptz '2024-07-01 12:00:00+00' AS summer, NULL::int AS n"
    stream(database_url, query, "csv", path, options)
    assert path.read_text().splitlines() == ["d,summer,n", "31/01/2024,01/07/2024 08:00:00 -0400,NULL"]


XLSX_QUERY = """
SELECT 1.50::numeric(5, 2) AS exact,
       (-12345678901234.5)::numeric(15, 1) AS widest_number,
       123456789012345678.12::numeric(20, 2) AS too_precise,
       12345678901234567890.123456789::numeric AS unconstrained,
       999999999999999::bigint AS big, 1000000000000000::bigint AS bigger,
       date '1900-03-01' AS after_phantom, date '1900-02-28' AS before_phantom, date '1899-12-31' AS undatable,
       timestamptz '2024-01-02 03:04:05.678+05:30' AS aware, timestamp '2024-01-02 03:04:05' AS naive,
       true AS yes, '=1+1'::text AS formula, '-5'::text AS number_text, ''::text AS empty, NULL::text AS missing
"""


def test_xlsx_cells_are_typed_and_never_rounded(database_url, tmp_path):
    path = tmp_path / "types.xlsx"
    stream(database_url, XLSX_QUERY, "xlsx", path)
    header = [
        "exact", "widest_number", "too_precise", "unconstrained", "big", "bigger", "after_phantom", "before_phantom",
        "undatable", "aware", "naive", "yes", "formula", "number_text", "empty", "missing",
    ]
    [row] = xlsx_sheets(path, header)["users"]
    assert row == (
        Decimal("1.5"), Decimal("-12345678901234.5"), "123456789012345678.12", "12345678901234567890.123456789",
        999999999999999, "1000000000000000",
        dt.datetime(1900, 3, 1), dt.datetime(1900, 2, 28), "1899-12-31",
        dt.datetime(2024, 1, 1, 21, 34, 5, 678000), dt.datetime(2024, 1, 2, 3, 4, 5),
        True, "'=1+1", "-5", "", None,
    )
    sheet = openpyxl.load_workbook(path).active
    assert sheet.freeze_panes == "A2" and all(cell.font.b for cell in sheet[1])
    assert [sheet.cell(2, c).number_format for c in (1, 2, 7, 10)] == [
        "0.00", "0.0", "yyyy-mm-dd", "yyyy-mm-dd hh:mm:ss.000"
    ]
    assert sheet.column_dimensions["D"].width > len("12345678901234567890.123456789")


def test_xlsx_continues_on_new_sheets_with_the_header_repeated(database_url, tmp_path):
    path = tmp_path / "many.xlsx"
    query = "SELECT g AS id, 'row ' || g AS label FROM generate_series(1, 2500) g"

    def write(frame, plan, target):
        write_xlsx(frame, plan, target, rows_per_sheet=1000)

    seen = stream(database_url, query, "xlsx", path, {"xlsx": {"sheet_name": "Rows"}, "labels": {"label": "Label"}},
                  writer=write)
    sheets = xlsx_sheets(path, ["id", "Label"])
    assert list(sheets) == ["Rows", "Rows (2)", "Rows (3)"]
    assert [len(rows) for rows in sheets.values()] == [1000, 1000, 500]
    assert [row for rows in sheets.values() for row in rows] == [(g, f"row {g}") for g in range(1, 2501)]
    assert seen[-1] == 2500


BATCH_ROWS, BATCHES = 100, 40
ID_SCHEMA = pa.schema([("id", pa.int64())])


class WatchedSource:
    """Batches of ids that record, as each is handed to the scan, how far the scan is ahead of
    what the writer has reported written."""

    schema = ID_SCHEMA

    def __init__(self, pacer: Pacer | None):
        self.pacer, self.leads = pacer, []

    def __iter__(self):
        for i in range(BATCHES):
            self.leads.append(i * BATCH_ROWS - (self.pacer.written if self.pacer else 0))
            yield pa.record_batch([pa.array(range(i * BATCH_ROWS, (i + 1) * BATCH_ROWS), pa.int64())], schema=ID_SCHEMA)


def export_watched(fmt: str, path, ahead: int | None = None) -> tuple[Pacer | None, WatchedSource, list[int]]:
    """Export BATCHES batches in `fmt` as the extract op does: the format's pacer (with `ahead`), its progress."""
    plan, progress = plan_request("users", fmt, {}), []
    pacer = pacer_for(plan, progress.append)
    if pacer is not None and ahead is not None:
        pacer.ahead = ahead
    source = WatchedSource(pacer)
    sink(scan_batches(source, lambda rows: None, pacer), plan, path, pacer)
    return pacer, source, progress


@pytest.mark.parametrize("fmt", ["json", "xlsx", "pdf"])
def test_a_python_writer_holds_the_scan_back_and_reports_what_it_wrote(fmt, tmp_path):
    # Without it the scan reads to the end while the writer is still at the start (the whole result in
    # memory). A pacer one batch ahead shows it even for writers as fast as json's.
    ahead = BATCH_ROWS
    pacer, source, progress = export_watched(fmt, tmp_path / f"out.{fmt}", ahead)
    # A batch passes the pacer once the one before it has room, so two may be in hand beyond `ahead`.
    assert max(source.leads) <= ahead + 2 * BATCH_ROWS
    assert len(progress) > 1 and progress == sorted(progress) and progress[-1] == BATCHES * BATCH_ROWS


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet", "ndjson"])
def test_a_polars_sink_is_never_paced_by_a_pacer_it_cannot_report_to(fmt, tmp_path):
    # Polars' sinks report nothing while they write: a pacer given to one would stall the scan
    # `stall_seconds` at a time.
    pacer, source, _ = export_watched(fmt, tmp_path / f"out.{fmt}")
    assert pacer is None or pacer.written == BATCHES * BATCH_ROWS
    assert len(source.leads) == BATCHES


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "csv.zst", "ndjson"])
def test_interleaved_page_streams_are_held_back_by_the_text_writer(fmt, tmp_path, monkeypatch):
    # Page streams decode faster than Polars' sinks write, which give a source no backpressure: the
    # text writer of an export in no order reports each batch written, and the streams wait for it.
    from export_platform.sinks import parts

    pacers = []

    def small_pacer(**kwargs):
        pacers.append(Pacer(ahead=BATCH_ROWS, **kwargs))
        return pacers[-1]

    monkeypatch.setattr(parts, "Pacer", small_pacer)
    plan = plan_request("users", fmt, {"order": "none"})

    class Stream(WatchedSource):
        def __init__(self, offset: int):
            super().__init__(None)
            self.offset = offset

        def __iter__(self):
            for i in range(BATCHES):
                self.leads.append(sum(s.handed for s in streams) - pacers[0].written)
                self.handed = (i + 1) * BATCH_ROWS
                start = self.offset + i * BATCH_ROWS
                yield pa.record_batch([pa.array(range(start, start + BATCH_ROWS), pa.int64())], schema=ID_SCHEMA)

    streams = [Stream(0), Stream(BATCHES * BATCH_ROWS)]
    for stream in streams:
        stream.handed = 0
    progress = []
    parts.sink_streams(streams, plan, tmp_path / f"out.{fmt}", lambda i: progress.append)
    # The pacer's lead, plus what the two stream threads and the scan hold in hand.
    assert max(max(s.leads) for s in streams) <= BATCH_ROWS + 6 * BATCH_ROWS
    assert progress[-1] == 2 * BATCHES * BATCH_ROWS
    text = file_text(tmp_path / f"out.{fmt}")
    ids = sorted(int(line.strip('{}"id: ')) for line in text.splitlines()[(1 if fmt.startswith("csv") else 0):])
    assert ids == list(range(2 * BATCHES * BATCH_ROWS))


def file_text(path) -> str:
    with pa.input_stream(str(path), compression="detect") as stream:
        return stream.read().decode()
