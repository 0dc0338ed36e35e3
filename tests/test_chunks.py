"""Chunked exports, in one op (streams sharing one snapshot) and across processes (the
`export_<type>_chunked` job on the multiprocess executor): files read back and compared with the
database row by row and in order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_platform.requests import table as rt
from export_platform.planning import sql
from export_platform.planning.key_ranges import NO_KEYS, KeyRange, split_range
from export_platform.catalog.export_types import REGISTRY
from export_platform.naming import INCREMENTAL_TAG, REQUEST_ID_TAG, session_name
from export_platform.ops.plan import plan_op_name
from export_platform.planning.plan import MAX_CHUNKS, plan_export
from export_platform.planning.streams import Reading
from export_platform.resources.postgres import PostgresResource
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import LocalStorage
from export_platform.tooling.sample_data import seed
from support.readback import database_beside, db_rows, file_bytes, file_rows, published_path, run_job

USERS = list(REGISTRY.get("users").columns)
TEXT_FORMATS = ["csv", "csv_gz", "csv_zst", "ndjson", "ndjson_zst"]


@pytest.fixture(scope="module")
def skewed_db(database_url) -> str:
    """users with gaps and a skewed key: ids 1-2,990, then ten ids past a billion, so equal-width
    chunks are mostly empty and one holds nearly everything."""
    url = database_beside(database_url, "chunk_check")
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, 3_000, ("users",))
        conn.execute("DELETE FROM users WHERE id % 7 = 3")
        conn.execute("UPDATE users SET id = id + 1000000000 WHERE id > 2990")
    return url


def _streams(result) -> int:
    [output] = [e for e in result.events_for_node("extract_export") if e.event_type_value == "STEP_OUTPUT"]
    return output.step_output_data.metadata["streams"].value


@pytest.mark.parametrize("fmt", [*TEXT_FORMATS, "parquet"])
def test_chunked_file_is_the_table_in_order(db, resources, fmt):
    result = run_job("users", {"format": fmt, "chunks": 3}, resources)
    assert result.success
    assert _streams(result) == 3
    path = published_path(result)
    expected = db_rows(db, "users", USERS)
    assert file_rows(db, "users", USERS, fmt, path) == expected
    assert result.output_for_node("publish_export").rows == len(expected)
    if fmt.startswith("csv"):
        assert file_bytes(path).decode().splitlines().count(",".join(USERS)) == 1  # one header
    assert [p for p in path.parent.parent.joinpath(".tmp").iterdir() if result.run_id in p.name] == []


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_chunks_write_the_same_bytes_as_one_stream(resources, fmt):
    one = published_path(run_job("users", {"format": fmt}, resources)).read_bytes()
    assert published_path(run_job("users", {"format": fmt, "chunks": 1}, resources)).read_bytes() == one
    assert published_path(run_job("users", {"format": fmt, "chunks": 4}, resources)).read_bytes() == one


def test_csv_options_hold_in_every_chunk(db, resources):
    # The BOM and header only once; formula protection (on by default with a BOM) in every chunk.
    config = {"format": "csv", "chunks": 3, "csv": {"bom": True, "delimiter": ";"}, "columns": ["id", "name", "email"]}
    path = published_path(run_job("users", config, resources))
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfid;name;email\n") and data.count(b"\xef\xbb\xbf") == 1
    single = {**config, "chunks": 1}
    assert published_path(run_job("users", single, resources)).read_bytes() == data


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_filters_apply_to_every_chunk(db, resources, fmt):
    filters = {"country_code": ["US", "GB"], "lifetime_value_min": "1000.00"}
    result = run_job("users", {"format": fmt, "chunks": 4, "filters": filters}, resources)
    expected = db_rows(db, "users", USERS, "WHERE country_code IN ('US', 'GB') AND lifetime_value >= 1000")
    assert 100 < len(expected) < 3000
    assert file_rows(db, "users", USERS, fmt, published_path(result)) == expected


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_empty_result_and_fewer_rows_than_chunks(db, resources, fmt):
    empty = run_job("users", {"format": fmt, "chunks": 4, "filters": {"subscription_tier": ["none"]}}, resources)
    assert empty.success and file_rows(db, "users", USERS, fmt, published_path(empty)) == []
    if fmt == "csv":
        assert published_path(empty).read_text() == ",".join(USERS) + "\n"
    few = run_job("ledger_postings", {"format": fmt, "chunks": 8, "filters": {"journal_id": [1]}}, resources)
    columns = list(REGISTRY.get("ledger_postings").columns)
    expected = db_rows(db, "ledger_postings", columns, "WHERE journal_id = 1")
    assert 0 < len(expected) < 8
    assert file_rows(db, "ledger_postings", columns, fmt, published_path(few)) == expected


@pytest.mark.parametrize("fmt", ["csv_gz", "parquet"])
def test_a_key_with_gaps_and_skew(skewed_db, resources, tmp_path, fmt):
    postgres = PostgresResource(url=skewed_db, batch_size_hint_bytes=64 * 1024)
    result = run_job("users", {"format": fmt, "chunks": 5}, {**resources, "postgres": postgres})
    with psycopg.connect(skewed_db) as conn:
        expected = db_rows(conn, "users", USERS)
        assert len(expected) < 3000 and expected[-1][0] > 1_000_000_000
        assert file_rows(conn, "users", USERS, fmt, published_path(result)) == expected


@pytest.mark.parametrize("fmt", ["json", "xlsx", "pdf"])
def test_formats_written_as_one_stream_refuse_chunks(resources, storage_root, fmt):
    before = sorted(storage_root.rglob("*"))
    result = run_job("users", {"format": fmt, "chunks": 2}, resources)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "plan_users"
    assert f"chunks: {fmt} is written as one stream" in failure.step_failure_data.error.message
    assert sorted(storage_root.rglob("*")) == before


@pytest.mark.parametrize("chunks", [0, -1, MAX_CHUNKS + 1, 10**9])
def test_a_bad_chunk_count_is_refused_naming_the_field(resources, storage_root, chunks):
    before = sorted(storage_root.rglob("*"))
    result = run_job("users", {"format": "csv", "chunks": chunks}, resources)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert f"chunks: expected 1 to {MAX_CHUNKS} chunks, got {chunks}" in failure.step_failure_data.error.message
    assert sorted(storage_root.rglob("*")) == before


def test_cli_chunks(db, database_url, storage_root, tmp_path):
    cli = [sys.executable, "-m", "export_platform.tooling.cli", "run", "ledger_postings"]
    bad = subprocess.run([*cli, "--chunks", "0", "--output", str(tmp_path / "x.csv")], capture_output=True, text=True,
                         env=os.environ, timeout=120)
    assert bad.returncode == 2 and "error: chunks: expected 1 to 16 chunks, got 0" in bad.stderr
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "ledger.csv.zst"
    done = subprocess.run([*cli, "--format", "csv.zst", "--chunks", "2", "--output", str(out)], capture_output=True,
                          text=True, env=os.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    columns = list(REGISTRY.get("ledger_postings").columns)
    assert file_rows(db, "ledger_postings", columns, "csv_zst", out) == db_rows(db, "ledger_postings", columns)


def test_chunks_share_one_snapshot(skewed_db):
    """A write committed after the snapshot is exported and before the other chunks' connections
    import it is in no chunk, although a new transaction already sees it."""
    postgres = PostgresResource(url=skewed_db, batch_size_hint_bytes=64 * 1024)
    plan = plan_export("users", "csv", columns=["id", "name"], chunks=3)
    with psycopg.connect(skewed_db, autocommit=True) as conn:
        before = conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()
        gone, high = before[-2], before[-1][0]  # both in the last chunk, read by an importing connection
        seen_after: list = []

        def concurrent_writer() -> None:
            with conn.transaction():
                conn.execute("INSERT INTO users (id, name) VALUES (%s, 'late')", (high + 1,))
                conn.execute("UPDATE users SET name = 'changed' WHERE id = %s", (high,))
                conn.execute("DELETE FROM users WHERE id = %s", (gone[0],))
            seen_after.extend(conn.execute("SELECT count(*) FROM users WHERE name IN ('late', 'changed')").fetchone())

        try:
            with postgres.snapshot_stream(plan, "chunk-test", Reading.of(plan, 3), on_exported=concurrent_writer) as snapshot:
                assert len(snapshot.readers) == 3
                rows = [row for reader in snapshot.readers for batch in reader for row in _rows(batch)]
        finally:
            conn.execute("DELETE FROM users WHERE id = %s", (high + 1,))
            conn.execute("UPDATE users SET name = %s WHERE id = %s", (before[-1][1], high))
            conn.execute("INSERT INTO users (id, name) VALUES (%s, %s)", gone)
    assert seen_after == [2]
    assert snapshot.count == len(before)
    assert rows == before


def _rows(table) -> list[tuple]:
    return list(zip(*(table.column(name).to_pylist() for name in table.column_names)))


# The chunked job, run as Dagster runs it in production: a step per chunk, each in its own process.


def chunked_users_job() -> dg.JobDefinition:
    from export_platform.definitions import defs

    return defs.resolve_job_def(REGISTRY.get("users").chunked_job_name)


def _run_chunked(instance, config: dict, database: str, tags=None) -> dg.ExecuteJobResult:
    run_config = {
        "ops": {plan_op_name("users"): {"config": config}},
        "resources": {"postgres": {"config": {"url": database, "batch_size_hint_bytes": 64 * 1024}}},
        "execution": {"config": {"max_concurrent": 2}},
    }
    # Each step's process imports this module to rebuild the job.
    job = dg.build_reconstructable_job(
        __name__, chunked_users_job.__name__, reconstructor_working_directory=str(Path(__file__).parent)
    )
    return dg.execute_job(job, instance, run_config=run_config, tags=tags)


def _step_events(result, kind: str) -> list[str]:
    return sorted(e.step_key for e in result.all_events if e.event_type_value == kind)


@pytest.mark.slow
def test_chunked_job_runs_a_process_per_chunk(skewed_db, database_url, instance, storage_root):  # steps read the storage URL
    fmt, store = "parquet", RequestStore(url=database_url)
    request_id = store.run(rt.insert("users", fmt, {}, "chunk-test", None)).scalar()
    config = {"format": fmt, "chunks": 3, "filters": {"country_code": ["US"]}}
    with _run_chunked(instance, config, skewed_db, tags={REQUEST_ID_TAG: str(request_id)}) as result:
        assert result.success
        chunk_steps = [k for k in _step_events(result, "STEP_SUCCESS") if k.startswith("extract_chunk")]
        assert chunk_steps == ["extract_chunk[chunk_0]", "extract_chunk[chunk_1]", "extract_chunk[chunk_2]"]
        published = result.output_for_node("publish_export")
        metadata = [
            {k: v.value for k, v in e.step_output_data.metadata.items()}
            for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key in chunk_steps
        ]
    with psycopg.connect(skewed_db) as conn:
        expected = db_rows(conn, "users", USERS, "WHERE country_code = 'US'")
        path = Path(published.uri.removeprefix("file://"))
        assert file_rows(conn, "users", USERS, fmt, path) == expected
    assert published.rows == len(expected) == sum(m["rows"] for m in metadata)
    assert [m["chunk"] for m in sorted(metadata, key=lambda m: m["chunk"])] == [0, 1, 2]
    row = store.run(rt.by_id(request_id)).mappings().one()
    assert (row["status"], row["total_rows"], row["row_count"]) == ("COMPLETED", len(expected), len(expected))


@pytest.fixture(scope="module")
def big_db(database_url) -> str:
    url = database_beside(database_url, "chunk_fault_check")
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, 600_000, ("users",))
    return url


def terminate_one_chunk(url: str, stop: threading.Event) -> list[int]:
    """Terminate the first chunk backend seen streaming, once."""
    killed: list[int] = []

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not killed and not stop.wait(0.05):
                pid = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s "
                    "AND state = 'active' AND query LIKE 'COPY%%ORDER BY%%' AND datname = current_database() "
                    "AND pid <> pg_backend_pid() LIMIT 1",
                    (session_name("%"),),
                ).fetchone()
                if pid and conn.execute("SELECT pg_terminate_backend(%s)", pid).fetchone()[0]:
                    killed.append(pid[0])

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.mark.slow
def test_a_killed_stream_restarts_the_extract_from_a_fresh_snapshot(big_db, resources, tmp_path):
    stop = threading.Event()
    killed = terminate_one_chunk(big_db, stop)
    postgres = PostgresResource(url=big_db, batch_size_hint_bytes=64 * 1024)
    config = {"format": "parquet", "chunks": 3, "columns": ["id", "email", "lifetime_value"]}
    try:
        result = run_job("users", config, {**resources, "postgres": postgres, "storage": LocalStorage(root=str(tmp_path))})
    finally:
        stop.set()
    assert len(killed) == 1 and result.success
    assert _step_events(result, "STEP_UP_FOR_RETRY") == ["extract_export"]
    with psycopg.connect(big_db) as conn:
        expected = db_rows(conn, "users", config["columns"])
    assert file_rows(None, "users", config["columns"], "parquet", published_path(result)) == expected
    assert list((tmp_path / ".tmp").iterdir()) == []


@pytest.mark.slow
def test_a_chunk_whose_connection_is_killed_is_retried_alone(big_db, instance, storage_root):
    stop = threading.Event()
    killed = terminate_one_chunk(big_db, stop)
    try:
        with _run_chunked(instance, {"format": "csv_gz", "chunks": 3, "columns": ["id", "email"]}, big_db) as result:
            assert result.success
            retried = _step_events(result, "STEP_UP_FOR_RETRY")
            started = _step_events(result, "STEP_START")
            published = result.output_for_node("publish_export")
    finally:
        stop.set()
    assert len(killed) == 1 and len(retried) == 1 and retried[0].startswith("extract_chunk[")
    # Only the killed chunk ran twice; the plan, the split and the other chunks once.
    assert _step_events(result, "STEP_RESTARTED") == retried
    assert len(started) == len(set(started)) == 7
    with psycopg.connect(big_db) as conn:
        path = Path(published.uri.removeprefix("file://"))
        assert file_rows(conn, "users", ["id", "email"], "csv_gz", path) == db_rows(conn, "users", ["id", "email"])
    assert list((storage_root / ".tmp").glob(f"{result.run_id}*")) == []


def test_key_ranges_cover_the_extent_once():
    assert split_range(1, 10, 3, closed=True) == [
        KeyRange("1", "4"), KeyRange("4", "7"), KeyRange("7", "10", upper_inclusive=True)
    ]
    assert split_range(1, 10, 2, closed=False) == [KeyRange(None, "6"), KeyRange("6", None)]
    assert split_range(5, 6, 8, closed=True) == [KeyRange("5", "6"), KeyRange("6", "6", upper_inclusive=True)]
    assert split_range(None, None, 4, closed=False) == [KeyRange()]
    assert split_range(None, None, 4, closed=True) == [NO_KEYS]


def test_range_bounds_are_bound_not_written():
    plan = plan_export("users", "csv", {"country_code": "US"}, chunks=2)
    key_range = KeyRange("12345", "67890")
    statement = sql.select_statement(plan, key_range)
    assert "12345" not in statement and "67890" not in statement
    assert "\"id\" >= current_setting('export_platform.key_lower')::bigint" in statement
    assert sql.parameters(plan, key_range) == ('["US"]', "12345", "67890")
    assert sql.bind_statement(plan, key_range).count("set_config") == 3
    with pytest.raises(ValueError, match="not a snapshot id"):
        sql.import_snapshot("x'; DROP TABLE users;--")


def test_the_request_row_shows_the_total_of_all_chunks(database_url, resources):
    store = RequestStore(url=database_url)
    request_id = store.run(rt.insert("users", "csv", {}, "chunk-test", None)).scalar()
    result = run_job("users", {"format": "csv", "chunks": 3}, resources, tags={REQUEST_ID_TAG: str(request_id)})
    row = store.run(rt.by_id(request_id)).mappings().one()
    assert (row["status"], row["total_rows"], row["row_count"]) == ("COMPLETED", 3000, 3000)
    assert row["file_uri"] == result.output_for_node("publish_export").uri

    # The chunked job's steps add their rows; a chunk that fails takes back what it had added.
    running = store.run(rt.insert("users", "csv", {}, "chunk-test", None)).scalar()
    store.run(rt.mark_running(running, "run"))
    store.run(rt.set_total(running, 1000))
    for rows in (300, 450, -300, 550):
        store.run(rt.add_progress(running, rows))
    row = store.run(rt.by_id(running)).mappings().one()
    assert (row["progress_rows"], float(row["progress_pct"])) == (1000, 100.0)
    store.run(rt.add_progress(running, -250))
    assert float(store.run(rt.by_id(running)).mappings().one()["progress_pct"]) == 75.0


@pytest.mark.parametrize("order", ["key", "none"])
def test_incremental_bounds_hold_in_every_chunk(skewed_db, resources, order):
    store = RequestStore(url=skewed_db)
    store.migrate()
    postgres = PostgresResource(url=skewed_db, batch_size_hint_bytes=64 * 1024, incremental_margin_seconds=0)
    overrides = {"postgres": postgres, "requests": store}
    key = f"chunks-{order}"
    config = {"format": "csv", "columns": ["id"], "chunks": 3, "order": order,
              "incremental": {"column": "updated_at", "key": key}}
    tags = {INCREMENTAL_TAG: key}
    late = 2_000_000_000
    with psycopg.connect(skewed_db) as slow_writer, psycopg.connect(skewed_db, autocommit=True) as app:
        try:
            slow_writer.execute("INSERT INTO users (id, name, updated_at) VALUES (%s, 'late', now())", (late,))
            first = run_job("users", config, {**resources, **overrides}, tags=tags)
            slow_writer.commit()
            second = run_job("users", config, {**resources, **overrides}, tags=tags)
            # NULL and future (2099) marks are never exported.
            expected = [r[0] for r in app.execute("SELECT id FROM users WHERE updated_at < now() ORDER BY id")]
        finally:
            app.execute("DELETE FROM users WHERE id = %s", (late,))
    ids = [sorted(int(line) for line in published_path(r).read_text().splitlines()[1:]) for r in (first, second)]
    assert ids == [expected[:-1], [late]]
