"""The launch queue's statements on a real Postgres, without a daemon: leases, who may take them
back, the pool's one retirement at a time. (The pool end to end: test_workers.py,
test_worker_faults.py, test_worker_drain.py.)"""

from __future__ import annotations

import pytest

from sqlalchemy.engine import make_url

from export_platform.tooling.embedded_postgres import ensure_database
from export_platform.workers.queue import LaunchQueue


@pytest.fixture
def queue(database_url) -> LaunchQueue:
    ensure_database(database_url, "launch_queue_check")
    queue = LaunchQueue(make_url(database_url).set(database="launch_queue_check").render_as_string(hide_password=False))
    queue.migrate()
    with queue.connect() as conn:
        conn.execute("TRUNCATE export_platform_run_queue, export_platform_run_workers")
    return queue


def registered(queue: LaunchQueue, *workers: str):
    conn = queue.connect()
    for i, worker in enumerate(workers):
        LaunchQueue.register(conn, worker, "here", 1000 + i, 50)
    return conn


def enqueue(queue: LaunchQueue, run_id: str) -> None:
    assert queue.enqueue_if_capacity(run_id, 5, lambda runs: [])


def test_a_lease_is_taken_back_only_from_the_worker_that_holds_it(queue):
    with registered(queue, "a", "b") as conn:
        enqueue(queue, "r1")
        claimer = LaunchQueue.claim(conn, "a") and "a"
        assert claimer == "a" and queue.holds("r1", "a", 5) and not queue.holds("r1", "b", 5)
        assert not queue.revoke("r1", "b") and not queue.reoffer("r1", "b")
        assert queue.reoffer("r1", "a")  # before it started: back to the others
        assert queue.holder("r1").worker_id is None and LaunchQueue.claim(conn, "b") == "r1"
        # The first worker, awake again, releases what it no longer holds: the lease stays b's.
        LaunchQueue.release(conn, "a", "r1", retire=False, at_once=False)
        assert queue.holds("r1", "b", 5)
        assert queue.revoke("r1", "b") and queue.holder("r1") is None


def test_a_silent_worker_no_longer_holds_its_lease(queue):
    with registered(queue, "a") as conn:
        enqueue(queue, "r1")
        LaunchQueue.claim(conn, "a")
        conn.execute("UPDATE export_platform_run_workers SET heartbeat_at = clock_timestamp() - interval '1 hour'")
        # The restart grace: silence counts from the server's start at the earliest.
        started = conn.execute("SELECT extract(epoch FROM clock_timestamp() - pg_postmaster_start_time())").fetchone()[0]
        assert queue.holder("r1").silent_seconds == pytest.approx(min(3600, float(started)), abs=5)
        assert queue.holds("r1", "a", None)  # still named: it may record what it did
        assert not queue.holds("r1", "a", min(3600, float(started)) - 10)
        beat = LaunchQueue.beat(conn, "a", "r1", False)
        assert beat.registered and beat.holds and queue.holds("r1", "a", 5)


def test_the_pool_retires_one_worker_at_a_time(queue):
    with registered(queue, "a", "b", "c") as conn:
        for run_id, worker in (("r1", "a"), ("r2", "b"), ("r3", "c")):
            enqueue(queue, run_id)
            assert LaunchQueue.claim(conn, worker) == run_id
        assert LaunchQueue.release(conn, "a", "r1", retire=True, at_once=False)
        assert not LaunchQueue.release(conn, "b", "r2", retire=True, at_once=False)  # keeps serving
        assert not LaunchQueue.retire(conn, "b")
        assert LaunchQueue.release(conn, "c", "r3", retire=True, at_once=True)  # above its memory limit: now
        queue.deregister("a")
        queue.deregister("c")  # their replacements are ready
        assert LaunchQueue.retire(conn, "b")
        assert queue.fresh_workers(5) == 0
