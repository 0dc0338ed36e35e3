"""Exports in no row order (`order: none`): the table read as parallel page ranges in one snapshot
and interleaved into one writer. Files are read back and compared with the database as sets of
rows; the file's digest is the one taken while it was written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from dataclasses import replace

import dagster as dg
import psycopg
import pyarrow as pa
import pytest

from export_platform.catalog.export_types import REGISTRY
from export_platform.catalog.formats import ExportFormat
from export_platform.catalog.registry import RowOrder
from export_platform.definitions import defs
from export_platform.jobs import run_config_for
from export_platform.planning.config import ExportOptions
from export_platform.planning.key_ranges import KeyRange, PageRange, split_pages
from export_platform.planning.plan import RequestError, plan_export, plan_request
from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.planning.streams import PAGES_PER_STREAM, Reading, stream_count
from export_platform.resources.postgres import PAGE_STREAM_BATCH_BYTES, PostgresResource, batch_bytes
from export_platform.sinks.arrow_source import Interleaved
from export_platform.sinks.digest import WrittenDigest, file_digest
from export_platform.home import HOME_ENV
from support.readback import database_beside, db_rows, file_rows, published_path, run_job, xlsx_mismatches, xlsx_rows

USERS = list(REGISTRY.get("users").columns)
UNORDERED = [f.name for f in ExportFormat if f is not ExportFormat.pdf]


def _metadata(result, node: str) -> dict:
    [output] = [e for e in result.events_for_node(node) if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


@pytest.mark.parametrize("fmt", UNORDERED)
def test_every_format_in_no_order_holds_the_table_as_a_set(db, resources, fmt):
    result = run_job("users", {"format": fmt, "order": "none", "chunks": 3}, resources)
    assert result.success
    assert _metadata(result, "extract_export")["streams"] == 3
    path = published_path(result)
    expected = db_rows(db, "users", USERS)
    if fmt == "xlsx":
        actual = xlsx_rows(path, USERS)
        assert len(actual) == len(expected)
        assert xlsx_mismatches(sorted(actual, key=lambda r: r[0]), expected) == []
    else:
        actual = file_rows(db, "users", USERS, fmt, path)
        assert len(actual) == len(expected) and sorted(actual) == expected
    published = result.output_for_node("publish_export")
    assert (published.rows, published.bytes) == (len(expected), path.stat().st_size)
    assert published.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_streams_come_from_the_machine_and_the_database_when_not_asked(db, resources):
    result = run_job("users", {"format": "csv", "order": "none", "columns": ["id"]}, resources)
    assert result.success
    pages = db.execute("SELECT pg_relation_size('users') / current_setting('block_size')::int").fetchone()[0]
    # The test table is smaller than one stream's share: one stream, whatever the cores.
    assert pages < PAGES_PER_STREAM and _metadata(result, "extract_export")["streams"] == 1
    lines = published_path(result).read_text().splitlines()
    assert sorted(map(int, lines[1:])) == [r[0] for r in db_rows(db, "users", ["id"])]


def test_filters_and_columns_apply_to_every_page_stream(db, resources):
    config = {"format": "csv", "order": "none", "chunks": 4, "columns": ["id", "country_code"],
              "filters": {"country_code": ["US", "DE"]}}
    result = run_job("users", config, resources)
    assert result.success
    expected = db_rows(db, "users", ["id", "country_code"], "WHERE country_code IN ('US', 'DE')")
    assert 0 < len(expected) and sorted(file_rows(db, "users", ["id", "country_code"], "csv", published_path(result))) == expected


def test_key_order_stays_the_default_and_is_the_order_by(db, resources):
    result = run_job("ledger_postings", {"format": "csv", "columns": ["id"]}, resources)
    ids = [int(line) for line in published_path(result).read_text().splitlines()[1:]]
    assert ids == sorted(ids) and len(ids) == len(db_rows(db, "ledger_postings", ["id"]))


def test_page_streams_share_one_snapshot(database_url):
    """A write committed after the snapshot is exported and before the other streams import it is
    in no stream, although a new transaction already sees it."""
    url = database_beside(database_url, "order_check")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO users SELECT i, repeat('x', 200) FROM generate_series(1, 3000) i")
    postgres = PostgresResource(url=url, batch_size_hint_bytes=64 * 1024)
    plan = plan_export("users", "csv", columns=["id", "name"], options=ExportOptions(order="none"), chunks=3)
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()

        def concurrent_writer() -> None:
            with conn.transaction():
                conn.execute("INSERT INTO users VALUES (3001, 'late')")
                conn.execute("UPDATE users SET name = 'changed' WHERE id = 2999")
                conn.execute("DELETE FROM users WHERE id = 3000")

        with postgres.snapshot_stream(plan, "order-test", Reading.of(plan, 3), on_exported=concurrent_writer) as snapshot:
            assert len(snapshot.readers) == 3
            per_stream = [[row for batch in reader for row in _rows(batch)] for reader in snapshot.readers]
        assert conn.execute("SELECT count(*) FROM users WHERE name IN ('late', 'changed')").fetchone() == (2,)
    rows = [row for stream in per_stream for row in stream]
    assert all(per_stream) and snapshot.count == len(before)
    assert sorted(rows) == before  # each row once, as it was in the snapshot


def test_a_view_is_read_as_one_stream(db, database_url):
    db.execute("CREATE OR REPLACE VIEW users_view AS SELECT * FROM users")
    postgres = PostgresResource(url=database_url)
    plan = replace(plan_export("users", "csv", columns=["id"], options=ExportOptions(order="none"), chunks=4),
                   relation="users_view")
    with postgres.snapshot_stream(plan, "view-test", Reading.of(plan, 4)) as snapshot:
        assert len(snapshot.readers) == 1
        ids = [row[0] for batch in snapshot.readers[0] for row in _rows(batch)]
    assert sorted(ids) == [r[0] for r in db_rows(db, "users", ["id"])] and snapshot.count == len(ids)


def test_a_chunk_of_the_chunked_job_reads_its_key_range_alone(db, database_url):
    postgres = PostgresResource(url=database_url)
    plan = plan_export("users", "csv", columns=["id"], options=ExportOptions(order="none"), chunks=3)
    with postgres.snapshot_stream(plan, "chunk-test", Reading.of(plan, key_range=KeyRange("100", "200"))) as snapshot:
        ids = [row[0] for reader in snapshot.readers for batch in reader for row in _rows(batch)]
    assert sorted(ids) == list(range(100, 200)) and snapshot.count == 100


def _rows(batch) -> list[tuple]:
    return list(zip(*(column.to_pylist() for column in batch.columns)))


def test_page_ranges_cover_every_page_once():
    for pages, streams in [(0, 3), (1, 3), (10, 3), (1000, 7), (132905, 2)]:
        ranges = split_pages(pages, streams)
        assert ranges[0].lower is None and ranges[-1].upper is None  # rows past the measured pages too
        assert len(ranges) == max(1, min(streams, pages))
        assert all(a.upper == b.lower for a, b in zip(ranges, ranges[1:]))
        assert all(r.lower is None or r.upper is None or r.lower < r.upper for r in ranges)
    assert split_pages(10, 3) == [PageRange(None, 3), PageRange(3, 6), PageRange(6, None)]


@pytest.mark.parametrize(
    ("limits", "streams"),
    [
        ((2, 10**6, 3, 100, 8), 2),  # this machine's cores
        ((16, 10**6, 3, 100, 8), 3),  # max_parallel_workers_per_gather 2, plus the leader
        ((16, 10**6, 17, 100, 8), 8),  # the resource's cap
        ((16, 10**6, 17, 5, 8), 2),  # half the free connections
        ((16, 10**6, 1, 100, 8), 1),  # parallel query switched off by the administrator
        ((16, 2500, 17, 100, 8), 2),  # a small table
        ((16, None, 17, 100, 8), 1),  # a view
        ((16, 10**6, 17, 0, 8), 1),  # never none
    ],
)
def test_the_stream_count_keeps_within_every_limit(limits, streams):
    cores, pages, per_query, free, cap = limits
    assert stream_count(cores, pages, per_query, free, cap) == streams


@pytest.mark.parametrize(
    ("fmt", "order", "streams", "smaller"),
    [
        ("csv", "none", 2, True),
        ("ndjson.gz", "none", 4, True),
        ("parquet", "none", 2, True),
        ("csv", "none", 1, False),  # one stream never outpaces its writer
        ("parquet", "key", 2, False),  # key ranges are parts, each with its own writer
    ],
)
def test_only_page_streams_read_smaller_batches(fmt, order, streams, smaller):
    """Polars queues what its writer has not taken yet, with no backpressure on the source."""
    plan = plan_request("users", fmt, {"order": order})
    hint = 4 * PAGE_STREAM_BATCH_BYTES
    assert batch_bytes(hint, plan, streams) == (PAGE_STREAM_BATCH_BYTES if smaller else hint)
    assert batch_bytes(64 * 1024, plan, streams) == 64 * 1024  # never larger than the configured hint


def test_a_failing_stream_stops_the_others_and_raises_its_error():
    schema = pa.schema([("n", pa.int64())])
    release = threading.Event()

    class Endless:
        def __init__(self):
            self.schema = schema

        def __iter__(self):
            while True:
                yield pa.record_batch([pa.array([1])], schema=schema)

    class Failing(Endless):
        def __iter__(self):
            release.wait(10)
            raise OSError("the disk is full")
            yield

    interleaved = Interleaved([Endless(), Failing(), Endless()])
    batches = iter(interleaved)
    next(batches)
    release.set()
    with pytest.raises(OSError, match="the disk is full"):
        for _ in batches:
            pass
    interleaved.close()
    assert [t for t in threading.enumerate() if t.name == "export-stream"] == []


def test_a_file_is_hashed_as_it_is_written(tmp_path):
    path = tmp_path / "export.csv"
    pieces = [os.urandom(n) for n in (0, 1, 4096, 3 << 20, 17)]
    written = threading.Event()

    def writer():
        with path.open("wb") as out:
            for piece in pieces:
                out.write(piece)
                out.flush()
                written.wait(0.05)

    with WrittenDigest(path, follow=True) as digest:
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
    assert (digest.sha256, digest.size) == file_digest(path) == (hashlib.sha256(b"".join(pieces)).hexdigest(), path.stat().st_size)


def test_a_writer_that_goes_back_is_caught(tmp_path):
    path = tmp_path / "export.xlsx"
    with pytest.raises(RuntimeError, match="changed behind its digest"):
        with WrittenDigest(path, follow=True) as digest:
            path.write_bytes(b"x" * 100_000)
            while digest.size < 100_000:  # hashed so far
                threading.Event().wait(0.01)
            path.write_bytes(b"short")  # truncated and rewritten, as a zip writer could


def test_the_order_option_in_request_params_and_the_launchpad():
    assert plan_request("users", "csv", {"order": "none"}).order is RowOrder.none
    assert plan_request("users", "csv", {}).order is RowOrder.key  # the type's default
    with pytest.raises(RequestError) as refused:
        plan_request("users", "csv", {"order": "random"})
    assert refused.value.field == "order"
    job = defs.resolve_job_def(REGISTRY.get("users").job_name)
    assert dg.validate_run_config(job, run_config_for(plan_request("users", "parquet", {"order": "none"})))
    fields = job.graph.node_named("plan_users").definition.config_schema.as_field().config_type.fields
    assert fields["order"].default_value == "key" and "none" in fields["order"].description


def test_cli_order_none(db, database_url, storage_root, tmp_path):
    out = tmp_path / "users.parquet"
    env = {**os.environ, DATABASE_URL_ENV: database_url, HOME_ENV: str(storage_root)}
    done = subprocess.run(
        [sys.executable, "-m", "export_platform.tooling.cli", "run", "users", "--format", "parquet", "--order", "none",
         "--chunks", "2", "--output", str(out)], capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(file_rows(db, "users", USERS, "parquet", out)) == db_rows(db, "users", USERS)
