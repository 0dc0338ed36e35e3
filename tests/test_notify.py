"""Push: every change of a request's status or progress is a `NOTIFY export_requests` with
{"id", "status", "progress_pct"}; ExportClient.wait is woken by it; older tables get the trigger
through the upgrade step."""

from __future__ import annotations

import json
import threading

import psycopg
import sqlalchemy as sa

from export_platform.requests import schema
from export_platform.requests import table as rt
from export_platform.requests.client import ExportClient
from export_platform.requests.store import RequestStore
from support.readback import database_beside
from support.request_rows import insert


def listener(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("LISTEN export_requests")
    return conn


def notices(conn: psycopg.Connection, app: psycopg.Connection, request_id: int) -> list[dict]:
    """Every notification about `request_id` so far: a marker row inserted now is announced after
    them (Postgres delivers notifications in commit order), so the list ends at the marker's."""
    marker = insert(app, "marker")
    seen = []
    for notice in conn.notifies(timeout=60):
        payload = json.loads(notice.payload)
        assert notice.channel == "export_requests"
        if payload["id"] == marker:
            return seen
        if payload["id"] == request_id:
            seen.append(payload)
    raise AssertionError(f"no notification for the marker row; saw {seen}")


def test_each_status_and_progress_change_is_notified(database_url, db):
    store = RequestStore(url=database_url)
    with listener(database_url) as conn:
        request_id = insert(db, "users")
        for statement in (
            rt.mark_queued(request_id),
            rt.set_run_id(request_id, "run-1"),  # neither status nor progress: no notification
            rt.mark_running(request_id, "run-1"),
            rt.set_total(request_id, 200),
            rt.set_progress(request_id, 50, 25.0),
            rt.set_progress(request_id, 50, 25.0),  # no change: none either
            rt.set_progress(request_id, 100, 50.0),
            rt.mark_failed(request_id, "disk full"),
        ):
            store.run(statement)
        assert notices(conn, db, request_id) == [
            {"id": request_id, "status": "PENDING", "progress_pct": None},
            {"id": request_id, "status": "QUEUED", "progress_pct": None},
            {"id": request_id, "status": "RUNNING", "progress_pct": None},
            {"id": request_id, "status": "RUNNING", "progress_pct": 0},
            {"id": request_id, "status": "RUNNING", "progress_pct": 25.00},
            {"id": request_id, "status": "RUNNING", "progress_pct": 50.00},
            {"id": request_id, "status": "FAILED", "progress_pct": 50.00},
        ]


def test_wait_is_woken_by_the_notification(database_url, db):
    request_id = insert(db, "users")
    store = RequestStore(url=database_url)
    store.run(rt.mark_running(request_id, "run-2"))
    seen: list[str] = []
    result: dict = {}
    updated = threading.Event()

    def on_update(row: dict) -> None:
        seen.append(row["status"])
        updated.set()

    # With an hour between reads of the row, only a notification can end this wait in time.
    waiter = threading.Thread(
        target=lambda: result.update(ExportClient(database_url).wait(request_id, on_update=on_update, poll_seconds=3600))
    )
    waiter.start()
    assert updated.wait(60)  # it has read the row once, after its LISTEN
    store.run(rt.mark_failed(request_id, "stopped by the test"))
    waiter.join(60)
    assert not waiter.is_alive() and result["status"] == "FAILED" and seen == ["RUNNING", "FAILED"]


def test_an_older_table_gets_the_trigger_on_upgrade(database_url):
    url = database_beside(database_url, "notify_upgrade")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS export_api_requests, export_requests, export_platform_schema, export_watermarks")
    store = RequestStore(url=url)
    store.migrate()
    before = rt.UPGRADES.index(schema._v4_notify_and_file_index) + 1  # the version that step upgrades from
    with store.transaction() as conn:  # as the release before the trigger left it
        conn.execute(sa.text("DROP TRIGGER export_requests_notify ON export_requests"))
        conn.execute(sa.text("ALTER TABLE export_requests DROP COLUMN file_key"))  # and its index
        conn.execute(sa.text("UPDATE export_platform_schema SET version = :v WHERE component = 'export_requests'"), {"v": before})
    assert store.migrate() == rt.SCHEMA_VERSION
    with listener(url) as conn, psycopg.connect(url, autocommit=True) as app:
        request_id = insert(app, "users")
        assert notices(conn, app, request_id) == [{"id": request_id, "status": "PENDING", "progress_pct": None}]
        assert app.execute("SELECT to_regclass('export_requests_by_file_key') IS NOT NULL").fetchone()[0]
    store.engine().dispose()
