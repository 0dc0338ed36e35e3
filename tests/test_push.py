"""`serve`'s one LISTEN connection (delivery/push.py) and ExportClient.wait, against notifications
that any role able to connect can send: a payload that is not the trigger's JSON is logged and
skipped, and the next good one still wakes its listeners."""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg

from export_platform.delivery.push import Notifications
from export_platform.requests.client import ExportClient
from support.request_rows import insert

BAD_PAYLOADS = [
    "not json",
    "",
    "[1]",
    '"id"',
    "null",
    '{"no id": 1}',
    '{"id": "7"}',
    '{"id": [1]}',
    '{"id": {"id": 1}}',
    '{"id": 1e999}',
    '{"id": 1.5}',
    '{"id": true}',
    '{"id": ' + "9" * 5_000 + "}",
    "[" * 7_000,
    "\x7f\u00e9\U0001f600",
]
WAIT = 30


def notify(conn: psycopg.Connection, payload: str) -> None:
    conn.execute("SELECT pg_notify('export_requests', %s)", (payload,))


def test_a_bad_notification_is_logged_and_skipped_and_the_listener_lives_on(database_url, db, caplog):
    request_id = insert(db, "users", user="olga")

    async def scenario() -> None:
        notifications = Notifications(database_url)
        notifications.start()
        try:
            woken = notifications.subscribe(request_id)
            await asyncio.wait_for(woken.wait(), WAIT)  # listening: a (re)connect wakes every stream
            woken.clear()
            for payload in BAD_PAYLOADS:
                notify(db, payload)
            db.execute("UPDATE export_requests SET status = 'QUEUED' WHERE id = %s", (request_id,))
            await asyncio.wait_for(woken.wait(), WAIT)
            assert not notifications._task.done()
        finally:
            await notifications.stop()

    with caplog.at_level(logging.WARNING, logger="export_platform.delivery.push"):
        asyncio.run(scenario())
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == len(BAD_PAYLOADS)
    assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]  # skipped, not a lost connection


def test_wait_survives_a_bad_notification(database_url, db):
    request_id = insert(db, "users", user="pia")
    client = ExportClient(database_url)
    seen: list[str] = []
    listening = threading.Event()

    def on_update(row: dict) -> None:
        seen.append(row["status"])
        listening.set()

    outcome: dict = {}
    waiter = threading.Thread(
        target=lambda: outcome.update(row=client.wait(request_id, timeout=WAIT, on_update=on_update, poll_seconds=WAIT))
    )
    waiter.start()
    assert listening.wait(WAIT)
    for payload in BAD_PAYLOADS:
        notify(db, payload)
    db.execute("UPDATE export_requests SET status = 'FAILED', error = 'stopped' WHERE id = %s", (request_id,))
    waiter.join(WAIT)
    assert outcome["row"]["status"] == "FAILED"
