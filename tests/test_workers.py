"""Warm run workers, end to end: a real `dagster-daemon`, the real pool (`python -m
export_platform.workers`), real Postgres for the requests, Dagster's storage and the launch queue."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import dagster as dg
import psutil
import pytest

from support.daemon_stack import daemon_stack, export_sessions, files_in, runs_for, wait_for, wait_status
from support.request_rows import insert, row
from export_platform.catalog.export_types import REGISTRY
from export_platform.jobs import build_export_job
from export_platform.naming import ISOLATED_TAG, POOL_TAG, REQUEST_ID_TAG
from export_platform.workers.process_launcher import run_worker
from export_platform.naming import POOL
from export_platform.workers.queue import LaunchQueue
from support.readback import db_rows, file_rows

pytestmark = pytest.mark.slow

BIG_USERS = 3_000_000  # still streaming when the test cancels or kills its worker


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    seeds = {"ledger_postings": 3_000, "users": BIG_USERS}
    with daemon_stack(database_url, tmp_path_factory.mktemp("workers"), seeds) as stack:
        yield stack


def worker_pids(stack) -> set[int]:
    """The pool's live workers: registered, heartbeat fresh, process alive (a worker that died
    between runs leaves its row behind until it goes stale)."""
    fresh = stack.instance.run_launcher.heartbeat_timeout_seconds
    with stack.instance.run_launcher.queue.connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM export_platform_run_workers WHERE heartbeat_at > clock_timestamp() - make_interval(secs => %s)",
            (fresh,),
        )
        return {pid for (pid,) in rows if psutil.pid_exists(pid)}


def pid_of(stack, run_id) -> int:
    return wait_for(lambda: run_worker(stack.instance, run_id), 30, "the run's worker pid")[0]


def finished_run(stack, run_id) -> dg.DagsterRun:
    return wait_for(lambda: (r := stack.instance.get_run_by_id(run_id)).is_finished and r, 60, f"run {run_id} to finish")


def ledger_request(app, day: int, fmt="csv") -> int:
    return insert(app, "ledger_postings", fmt, {"filters": {"from_posting_date": f"2023-01-{day:02d}", "to_posting_date": f"2023-01-{day:02d}"}})


def test_a_request_runs_in_a_warm_worker(stack, app):
    pool = worker_pids(stack)
    request_id = insert(app, "ledger_postings", "parquet", {"columns": ["id", "amount"]})
    final = wait_status(app, request_id, {"COMPLETED", "FAILED"})
    assert final["status"] == "COMPLETED", final["error"]
    run = finished_run(stack, final["run_id"])
    assert run.status is dg.DagsterRunStatus.SUCCESS and run.tags[POOL_TAG] == POOL
    assert pid_of(stack, run.run_id) in pool  # executed by a worker that was already running
    path = Path(final["file_uri"].removeprefix("file://"))
    assert file_rows(app, "ledger_postings", ["id", "amount"], "parquet", path) == db_rows(app, "ledger_postings", ["id", "amount"])


def test_a_hundred_requests_at_once_each_run_exactly_once(stack, app):
    ids = [insert(app, "ledger_postings", "csv", {"columns": ["id", "amount"]}, user=f"u{i % 10}") for i in range(100)]
    for request_id in ids:
        final = wait_status(app, request_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=600)
        assert final["status"] == "COMPLETED" and final["row_count"] == 3_000, final["error"]
    records = [r for request_id in ids for r in runs_for(stack.instance, request_id)]
    assert Counter(r.dagster_run.tags[REQUEST_ID_TAG] for r in records) == Counter(map(str, ids))
    for record in records:
        finished_run(stack, record.dagster_run.run_id)
        starts = stack.instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_START)
        assert len(starts) == 1, record.dagster_run.run_id
    # The pool carried the burst: most runs went to warm workers, not run processes.
    by_path = Counter(r.dagster_run.tags.get(POOL_TAG) for r in (stack.instance.get_run_record_by_id(r.dagster_run.run_id) for r in records))
    assert by_path[POOL] > 50, by_path


def test_cancelling_a_running_export_stops_it_and_replaces_its_worker(stack, app):
    exports_before = files_in(stack.exports)
    request_id = insert(app, "users", "csv")
    running = wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")
    pid = pid_of(stack, running["run_id"])
    assert pid in worker_pids(stack)
    app.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))

    assert wait_status(app, request_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=60)["status"] == "CANCELLED"
    run = finished_run(stack, running["run_id"])
    assert run.status is dg.DagsterRunStatus.CANCELED
    assert wait_for(lambda: not export_sessions(app, run.run_id), 30, "the export query to stop")
    assert files_in(stack.exports) == exports_before
    wait_for(lambda: not psutil.pid_exists(pid), 60, "the worker that ran it to retire")
    wait_for(lambda: len(worker_pids(stack)) == stack.instance.run_launcher.workers, 120, "a replacement worker")


def test_a_killed_worker_fails_its_run_and_a_new_worker_takes_the_next(stack, app):
    exports_before = files_in(stack.exports)
    request_id = insert(app, "users", "csv", user="victim")
    running = wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")
    pid = pid_of(stack, running["run_id"])
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would

    final = wait_status(app, request_id, {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
    assert final["status"] == "FAILED"
    assert f"the run worker process (pid {pid}) is gone" in final["error"]
    assert finished_run(stack, running["run_id"]).status is dg.DagsterRunStatus.FAILURE
    assert wait_for(lambda: not export_sessions(app, running["run_id"]), 30, "the orphaned query to stop")
    assert files_in(stack.exports) == exports_before

    wait_for(lambda: len(worker_pids(stack)) == stack.instance.run_launcher.workers, 120, "a replacement worker")
    next_id = ledger_request(app, 3)
    final = wait_status(app, next_id, {"COMPLETED", "FAILED"})
    assert final["status"] == "COMPLETED", final["error"]
    next_pid = pid_of(stack, final["run_id"])
    assert next_pid != pid and stack.instance.get_run_by_id(final["run_id"]).tags[POOL_TAG] == POOL


def test_cancelling_a_run_that_no_worker_has_taken_yet(stack, app):
    """A worker that beats but never claims holds the run in the launch queue; cancelling the
    request takes it out of the queue and ends it CANCELLED without any worker."""
    stack.stop_workers()
    queue = stack.instance.run_launcher.queue
    stalled, stop = "elsewhere:1:stalled", threading.Event()

    def beat() -> None:
        with queue.connect() as conn:
            LaunchQueue.register(conn, stalled, "elsewhere", 1, 50)
            while not stop.wait(0.5):
                LaunchQueue.beat(conn, stalled, None, False)
        queue.deregister(stalled)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        request_id = ledger_request(app, 10)
        run_id = wait_for(lambda: (runs := runs_for(stack.instance, request_id)) and runs[0].dagster_run.run_id, what="the run")
        entry = wait_for(lambda: queue.holder(run_id), what="the run in the launch queue")
        assert entry.worker_id is None
        app.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
        assert wait_status(app, request_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=60)["status"] == "CANCELLED"
        assert finished_run(stack, run_id).status is dg.DagsterRunStatus.CANCELED
        assert queue.holder(run_id) is None
        assert not stack.instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    finally:
        stop.set()
        beating.join()
        stack.start_workers()


def test_with_no_worker_alive_a_run_process_runs_the_request(stack, app):
    stack.stop_workers()
    try:
        request_id = ledger_request(app, 4, "ndjson")
        final = wait_status(app, request_id, {"COMPLETED", "FAILED"})
        assert final["status"] == "COMPLETED", final["error"]
        assert finished_run(stack, final["run_id"]).tags[POOL_TAG] == "process"
    finally:
        stack.start_workers()


def test_a_worker_is_replaced_after_its_maximum_runs(stack, app):
    stack.stop_workers()
    stack.start_workers(count=1, max_runs=2)
    try:
        pids = []
        for day in (5, 6, 7, 8):
            wait_for(lambda: len(worker_pids(stack)) == 1, 120, "the pool's one worker")
            final = wait_status(app, ledger_request(app, day), {"COMPLETED", "FAILED"})
            assert final["status"] == "COMPLETED", final["error"]
            assert finished_run(stack, final["run_id"]).tags[POOL_TAG] == POOL
            pids.append(pid_of(stack, final["run_id"]))
            if len(pids) % 2 == 0:
                wait_for(lambda: not psutil.pid_exists(pids[-1]), 60, "the worker to retire")
        assert pids[0] == pids[1] != pids[2] == pids[3]
    finally:
        stack.stop_workers()
        stack.start_workers()


def test_an_isolated_export_type_tags_its_runs_for_a_process_of_their_own():
    spec = REGISTRY.get("users")
    assert ISOLATED_TAG not in build_export_job(spec).tags
    isolated = build_export_job(dataclasses.replace(spec, isolated=True))
    assert isolated.tags[ISOLATED_TAG] == "true"
