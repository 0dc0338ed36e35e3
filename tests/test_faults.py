"""Faults with real parts: a connection killed mid-stream, storage that cannot be written or is full."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import psycopg
import pytest

from export_platform.run_failures import root_message
from export_platform.ops.extract import EXTRACT_RETRIES
from export_platform.resources.postgres import PostgresResource
from export_platform.resources.storage import LocalStorage
from support.readback import db_rows, file_rows, published_path, run_job, seeded_beside

pytestmark = pytest.mark.slow
BIG = 1_000_000


@pytest.fixture(scope="module")
def big_db(database_url) -> str:
    return seeded_beside(database_url, "fault_check", BIG, ("users",))


def kill_exports(url: str, times: int, stop: threading.Event) -> list[int]:
    """Terminate each export session once its COPY is under way, `times` times. Looked for every
    10 ms: on a quiet machine the whole 1M-row COPY of two columns takes well under a second."""
    killed: list[int] = []

    def loop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while len(killed) < times and not stop.is_set():
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'export_platform:%%' "
                    "AND datname = current_database() AND state = 'active' AND query LIKE 'COPY%%' "
                    "AND now() - query_start > interval '20 milliseconds' AND pid <> pg_backend_pid()"
                ).fetchall()
                # A terminated backend stays in pg_stat_activity for a moment: one kill per session.
                for pid in [pid for (pid,) in rows if pid not in killed][:1]:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    killed.append(pid)
                time.sleep(0.01)

    threading.Thread(target=loop, daemon=True).start()
    return killed


def resources_for(url: str, root) -> dict:
    # Small batches keep the export streaming long enough to be hit mid-stream.
    return {"postgres": PostgresResource(url=url, batch_size_hint_bytes=64 * 1024), "storage": LocalStorage(root=str(root))}


def test_a_killed_connection_is_retried_and_the_file_is_complete(big_db, resources, tmp_path):
    stop = threading.Event()
    killed = kill_exports(big_db, 1, stop)
    columns = ["id", "email"]
    result = run_job("users", {"format": "csv", "columns": columns}, {**resources, **resources_for(big_db, tmp_path)})
    stop.set()
    assert len(killed) == 1
    assert result.success
    assert [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    with psycopg.connect(big_db) as conn:
        assert file_rows(conn, "users", columns, "csv", published_path(result)) == db_rows(conn, "users", columns)
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_a_connection_killed_on_every_attempt_fails_naming_the_cause(big_db, resources, tmp_path):
    stop = threading.Event()
    killed = kill_exports(big_db, EXTRACT_RETRIES + 1, stop)
    result = run_job("users", {"format": "parquet"}, {**resources, **resources_for(big_db, tmp_path)})
    stop.set()
    assert len(killed) == EXTRACT_RETRIES + 1 and not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = root_message(failure.step_failure_data.error)
    prefix = f"lost the database connection on all {EXTRACT_RETRIES + 1} attempts: "
    assert message.startswith(prefix) and len(message) > len(prefix) + 10  # the driver's own account follows
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing published, no temp left


def test_unwritable_storage_fails_with_a_clear_error(resources, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = run_job("ledger_postings", {"format": "csv"}, {**resources, "storage": LocalStorage(root=str(blocker / "exports"))})
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = root_message(failure.step_failure_data.error)
    assert message.startswith("NotADirectoryError") and "not-a-folder" in message
    assert blocker.read_text() == ""


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 1 MiB filesystem (tmpfs). Mounting needs root (CAP_SYS_ADMIN); elsewhere the test is skipped."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.mark.parametrize("fmt", ["csv", "csv_gz", "csv_zst", "parquet", "ndjson", "ndjson_gz", "json", "xlsx"])
def test_a_full_filesystem_fails_with_a_clear_error_and_leaves_the_disk_as_it_found_it(
    big_db, resources, tiny_filesystem, fmt
):
    columns = ["id", "email", "name"]
    used = shutil.disk_usage(tiny_filesystem).used
    result = run_job("users", {"format": fmt, "columns": columns}, {**resources, **resources_for(big_db, tiny_filesystem)})
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "No space left on device" in root_message(failure.step_failure_data.error)
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [p for p in tiny_filesystem.rglob("*") if p.is_file()] == []
    assert shutil.disk_usage(tiny_filesystem).used <= used + 16 * 1024  # the space is given back (folders aside)
    # ... so that the next, small export fits.
    small = run_job("ledger_postings", {"format": fmt, "columns": ["id"]}, {**resources, "storage": LocalStorage(root=str(tiny_filesystem))})
    assert small.success
