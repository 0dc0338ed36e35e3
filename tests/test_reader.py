"""The reader: DuckDB's Postgres scanner streaming our SELECT in the export's snapshot, exact per
column, filters bound, and its pitfalls (partitioned tables, a killed connection, a cancel); and
the server's own CSV, which must be byte for byte what the writer path writes."""

from __future__ import annotations

import ctypes
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from export_platform.catalog.export_types import REGISTRY
from export_platform.planning.config import ExportOptions
from export_platform.planning.plan import plan_export, plan_request
from export_platform.resources import duckdb_scan
from export_platform.planning.streams import Reading
from export_platform.resources.postgres import ConnectionLost, PostgresResource
from export_platform.sinks.parts import sink_streams
from export_platform.sinks.server_csv import refusal, write_server_csv
from support.readback import database_beside, seeded_beside

ROWS = 200_000


@pytest.fixture(scope="module")
def reader_db(database_url) -> str:
    """200,000 users (enough to be killed mid-stream), a table of the types DuckDB does not read
    exactly by itself, and `users` partitioned in two."""
    url = seeded_beside(database_url, "reader_check", ROWS, ("users",))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS odd_types, users_parts")
        conn.execute(
            "CREATE TABLE odd_types (id bigint, price numeric(10, 2), wide numeric(40, 2), free numeric, "
            "code char(4), at_time timetz)"
        )
        conn.execute(
            "INSERT INTO odd_types VALUES (1, 'NaN', 12345678901234567890123456789012345678.25, "
            "'12345678901234567890.123456789', 'ab', '12:00+02'), (2, 1.25, -1, 'NaN', NULL, NULL)"
        )
        conn.execute("CREATE TABLE users_parts (LIKE users) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE users_parts_a PARTITION OF users_parts FOR VALUES FROM (MINVALUE) TO (1000)")
        conn.execute("CREATE TABLE users_parts_b PARTITION OF users_parts FOR VALUES FROM (1000) TO (MAXVALUE)")
        conn.execute("INSERT INTO users_parts SELECT * FROM users WHERE id <= 5000")
    return url


def _sessions(url: str, name: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()", (name,)
        ).fetchall()


def _wait_until_gone(url: str, name: str, seconds: float = 10) -> list[tuple]:
    deadline = time.monotonic() + seconds
    while (left := _sessions(url, name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_every_stream_imports_the_snapshot_as_its_first_statement(reader_db, capfd):
    plan = plan_export("users", "parquet", {"country_code": "US"}, ["id"], ExportOptions(order="none"))
    database = duckdb_scan.database()
    database.execute("SET GLOBAL pg_debug_show_queries = true")
    try:
        with PostgresResource(url=reader_db).snapshot_stream(plan, "export_platform:show", Reading.of(plan, 2)) as snapshot:
            assert len(snapshot.readers) == 2
            rows = sum(batch.num_rows for reader in snapshot.readers for batch in reader)
    finally:
        database.execute("SET GLOBAL pg_debug_show_queries = false")
    assert rows == snapshot.count > 0
    ctypes.CDLL(None).fflush(None)  # DuckDB prints through C's stdio, buffered when not a terminal
    shown = "".join(capfd.readouterr())
    begins = [part for part in shown.split("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")[1:]]
    assert len(begins) == 2, shown
    for statements in begins:
        first = statements.strip().splitlines()[0]
        assert first.startswith(";") or first.startswith("SET TRANSACTION SNAPSHOT"), statements
        assert "SET TRANSACTION SNAPSHOT" in statements.split("\n\n")[0]
        # The filter's value is bound, never in the text DuckDB sends.
        assert "'US'" not in statements and '"US"' not in statements


def test_columns_duckdb_cannot_read_exactly_are_read_as_postgres_text(reader_db):
    plan = replace(
        plan_export("users", "parquet", columns=["id"]),
        relation="odd_types", columns=("id", "price", "wide", "free", "code", "at_time"), order_by=("id",),
    )
    with PostgresResource(url=reader_db).snapshot_stream(plan, "export_platform:odd", Reading.of(plan)) as snapshot:
        table = pa.Table.from_batches(list(snapshot.readers[0]), snapshot.readers[0].schema)
    assert table.to_pylist() == [
        # A NaN is not 0: the NUMERIC(10, 2) column that holds one is read as text.
        {"id": 1, "price": "NaN", "wide": "12345678901234567890123456789012345678.25",
         "free": "12345678901234567890.123456789", "code": "ab  ", "at_time": "12:00:00+02"},
        {"id": 2, "price": "1.25", "wide": "-1.00", "free": "NaN", "code": None, "at_time": None},
    ]
    assert "price (numeric(10,2)) as text" in snapshot.reading["columns"]
    # Without a NaN, the same column is a decimal.
    only_two = replace(plan, columns=("id", "price"))
    with PostgresResource(url=reader_db).snapshot_stream(only_two, "export_platform:odd", Reading.of(only_two)) as snapshot:
        pass
    with psycopg.connect(reader_db, autocommit=True) as conn:
        conn.execute("UPDATE odd_types SET price = 0.5 WHERE id = 1")
    try:
        with PostgresResource(url=reader_db).snapshot_stream(only_two, "export_platform:odd", Reading.of(only_two)) as snapshot:
            assert [b.column("price").to_pylist() for b in snapshot.readers[0]] == [[Decimal("0.50"), Decimal("1.25")]]
            assert snapshot.readers[0].schema.field("price").type == pa.decimal128(10, 2)
    finally:
        with psycopg.connect(reader_db, autocommit=True) as conn:
            conn.execute("UPDATE odd_types SET price = 'NaN' WHERE id = 1")


def test_a_partitioned_table_is_read_as_one_stream(reader_db):
    plan = replace(plan_export("users", "csv", columns=["id"], options=ExportOptions(order="none")), relation="users_parts")
    with PostgresResource(url=reader_db).snapshot_stream(plan, "export_platform:parts", Reading.of(plan, 4)) as snapshot:
        assert len(snapshot.readers) == 1
        ids = sorted(i for batch in snapshot.readers[0] for i in batch.column("id").to_pylist())
    assert ids == list(range(1, 5001)) and snapshot.count == 5000


def test_a_filter_value_that_looks_like_sql_matches_only_itself(reader_db):
    name = "x'); DROP TABLE users;--"
    with psycopg.connect(reader_db, autocommit=True) as conn:
        conn.execute("UPDATE users SET country_code = 'XX', subscription_tier = %s WHERE id = 3", (name,))
    plan = plan_export("users", "parquet", {"subscription_tier": name}, ["id", "subscription_tier"], ExportOptions(order="none"))
    with PostgresResource(url=reader_db).snapshot_stream(plan, "export_platform:inject", Reading.of(plan)) as snapshot:
        rows = [r for reader in snapshot.readers for batch in reader for r in batch.to_pylist()]
    assert rows == [{"id": 3, "subscription_tier": name}]


def _stream_then(url: str, name: str, act) -> BaseException:
    """Start an export's stream, `act` on it once its COPY is under way, read on: the error raised."""
    plan = plan_export("users", "parquet", options=ExportOptions(order="none"))
    postgres = PostgresResource(url=url, batch_size_hint_bytes=64 * 1024)
    with pytest.raises(Exception) as raised:
        with postgres.snapshot_stream(plan, name, Reading.of(plan, 1)) as snapshot:
            batches = iter(snapshot.readers[0])
            next(batches)
            act(postgres)
            for _ in batches:
                pass
    return raised.value


def _terminate_copy(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'COPY%%'",
            (name,),
        ).fetchall()
    assert killed == [(True,)]


def test_a_killed_stream_is_a_lost_connection(reader_db):
    error = _stream_then(reader_db, "export_platform:kill", lambda _: _terminate_copy(reader_db, "export_platform:kill"))
    assert isinstance(error, ConnectionLost) and error.__cause__ is not None
    assert _wait_until_gone(reader_db, "export_platform:kill") == []


def test_a_cancelled_stream_is_not_retried_and_its_query_ends(reader_db):
    error = _stream_then(reader_db, "export_platform:cancel", lambda pg: pg.cancel_queries("export_platform:cancel"))
    assert not isinstance(error, ConnectionLost)
    assert _wait_until_gone(reader_db, "export_platform:cancel") == []


def test_a_run_stopped_mid_stream_leaves_no_query_behind(reader_db):
    plan = plan_export("users", "parquet", options=ExportOptions(order="none"))
    postgres = PostgresResource(url=reader_db, batch_size_hint_bytes=64 * 1024)
    with pytest.raises(KeyboardInterrupt):
        with postgres.snapshot_stream(plan, "export_platform:stopped", Reading.of(plan, 2)) as snapshot:
            next(iter(snapshot.readers[0]))
            raise KeyboardInterrupt  # what a terminated run raises in its op
    assert _wait_until_gone(reader_db, "export_platform:stopped") == []


# The server's CSV against the writer's, byte for byte, on the sample tables' nasty rows.
CSV_OPTIONS = [
    {},
    {"time_zone": "Asia/Kathmandu", "csv": {"delimiter": ";", "bom": True}, "formula_protection": "off"},
    {"time_zone": "America/New_York", "csv": {"quote_char": "'", "header": False}, "labels": {"id": "Identifier, #"}},
]


@pytest.mark.parametrize("options", CSV_OPTIONS)
@pytest.mark.parametrize("export_type", ["users", "ezpass_transactions", "ledger_postings"])
def test_the_servers_csv_is_the_writers_csv(database_url, tmp_path, export_type, options):
    plan = plan_request(export_type, "csv", {"order": "key", **options})
    postgres = PostgresResource(url=database_url, batch_size_hint_bytes=64 * 1024)
    with postgres.snapshot_stream(plan, "export_platform:csv", Reading.of(plan), server_csv=True) as snapshot:
        assert snapshot.copies and not snapshot.readers
        write_server_csv(snapshot.copies, plan, tmp_path / "server.csv", lambda i: lambda rows: None)
    with postgres.snapshot_stream(plan, "export_platform:csv", Reading.of(plan)) as snapshot:
        sink_streams(snapshot.readers, plan, tmp_path / "writer.csv", lambda i: lambda rows: None)
    assert (tmp_path / "server.csv").read_bytes() == (tmp_path / "writer.csv").read_bytes()


def test_values_outside_the_common_years_are_written_as_the_writer_writes_them(database_url, tmp_path):
    # A zone without daylight saving time: past 2037 Postgres and the writer's zone rules may
    # disagree on the DST hour (docs/reference.md, "csv").
    url = database_beside(database_url, "years_check")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")
        conn.execute("CREATE TABLE users (id bigint, signup_date date, updated_at timestamptz, flag boolean)")
        conn.execute(
            "INSERT INTO users VALUES (1, '0044-03-15 BC', '0001-01-01 00:00+00 BC', true), "
            "(2, '12345-06-07', '12345-06-07 08:09:10.5+00', false), (3, '0999-01-02', '0999-01-02 03:04:05+00', NULL), "
            "(4, '2024-02-29', '2024-02-29 23:59:59.999999+00', true)"
        )
        # A server whose dates print otherwise by default: the CSV must not change with it.
        conn.execute("ALTER DATABASE years_check SET datestyle = 'German, DMY'")
    plan = plan_export("users", "csv", columns=["id", "signup_date", "updated_at"])
    plan = replace(plan, columns=(*plan.columns, "flag"), options=plan.options.model_copy(update={"time_zone": "Asia/Kathmandu"}))
    postgres = PostgresResource(url=url)
    with postgres.snapshot_stream(plan, "export_platform:years", Reading.of(plan), server_csv=True) as snapshot:
        write_server_csv(snapshot.copies, plan, tmp_path / "server.csv", lambda i: lambda rows: None)
    with postgres.snapshot_stream(plan, "export_platform:years", Reading.of(plan)) as snapshot:
        sink_streams(snapshot.readers, plan, tmp_path / "writer.csv", lambda i: lambda rows: None)
    assert (tmp_path / "server.csv").read_text() == (tmp_path / "writer.csv").read_text()


def test_in_no_order_the_server_streams_share_one_file_row_by_row(reader_db, tmp_path):
    plan = plan_request("users", "csv", {"order": "none"})
    postgres = PostgresResource(url=reader_db)
    progress: dict[int, list[int]] = {}

    def on_rows(index):
        return progress.setdefault(index, []).append

    with postgres.snapshot_stream(plan, "export_platform:csv-none", Reading.of(plan, 2), server_csv=True) as snapshot:
        assert len(snapshot.copies) == 2
        write_server_csv(snapshot.copies, plan, tmp_path / "server.csv", on_rows)
    in_order = replace(plan, options=plan.options.model_copy(update={"order": "key"}))
    with postgres.snapshot_stream(in_order, "x", Reading.of(in_order)) as snapshot:
        sink_streams(snapshot.readers, plan, tmp_path / "writer.csv", lambda i: lambda rows: None)
    server, writer = (tmp_path / "server.csv").read_bytes(), (tmp_path / "writer.csv").read_bytes()
    # Rows hold quoted line breaks, so lines are not rows: compare the records Postgres parses.
    assert len(server) == len(writer) and server.split(b"\n")[0] == writer.split(b"\n")[0]
    assert sum(p[-1] for p in progress.values()) == snapshot.count == ROWS


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"csv": {"quote_style": "always"}}, "quote_style always"),
        ({"csv": {"null_value": "NULL"}}, "a null_value of its own"),
        ({"csv": {"bom": True}}, "formula protection"),
        ({"csv": {"date_format": "%d/%m/%Y"}}, "a date or timestamp format"),
        ({"csv": {"line_terminator": "crlf"}}, "line_terminator crlf"),
    ],
)
def test_the_writer_serves_what_the_servers_csv_cannot(database_url, options, reason):
    plan = plan_request("users", "csv", options)
    assert reason in refusal(plan, [])
    with PostgresResource(url=database_url).snapshot_stream(plan, "export_platform:csv", Reading.of(plan), server_csv=True) as snapshot:
        assert snapshot.readers and not snapshot.copies
        assert reason in snapshot.reading["server_csv"]
    assert refusal(plan_request("users", "csv.gz", {}), []) == "csv.gz is compressed"
    assert refusal(plan_request("users", "csv", {}), []) is None
