"""Applications insert rows; a real `dagster-daemon` (and, for the Launchpad's API, a real
`dagster-webserver`) turns them into runs against a real Postgres instance storage."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import psutil
import psycopg
import pytest

from support.daemon_stack import daemon_stack, export_sessions, files_in, runs_for, wait_for, wait_status
from support.request_rows import insert, row
from export_platform.catalog.export_types import REGISTRY
from export_platform.naming import EXPORT_TYPE_TAG, MAX_RUNTIME_TAG, REQUEST_ID_TAG, REQUESTED_BY_TAG
from export_platform.workers.process_launcher import run_worker
from support.readback import db_rows, file_rows

pytestmark = pytest.mark.slow

BIG_USERS = 4_000_000  # large enough that an export is still streaming when a cancel arrives


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    seeds = {"ezpass_transactions": 3_000, "ledger_postings": 3_000, "users": BIG_USERS}
    with daemon_stack(database_url, tmp_path_factory.mktemp("daemon"), seeds) as stack:
        yield stack


def error_traces(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The run's ERROR events that carry a stack trace: a requested stop must read as a stop."""
    found = []
    for record in instance.all_logs(run_id):
        data = record.dagster_event.event_specific_data if record.dagster_event else None
        error = getattr(data, "error", None) or getattr(data, "error_info", None)
        if record.level >= logging.ERROR and ((error and error.stack) or "Traceback" in record.user_message):
            found.append(record.user_message)
    return found


def max_overlap(intervals) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def one_day(day: str) -> dict:
    return {"signup_date_from": day, "signup_date_to": day}


def db_columns(app, export_type) -> list[str]:
    return list(REGISTRY.get(export_type).columns)


def users_where(params: dict) -> tuple[str, tuple]:
    if not params:
        return "", ()
    f = params["filters"]
    return "WHERE signup_date BETWEEN %s AND %s", (f["signup_date_from"], f["signup_date_to"])


def test_twenty_requests_complete_once_each_within_the_queue_limits(stack, app):
    instance = stack.instance
    requests = []
    for i in range(20):
        export_type = ("ezpass_transactions", "ledger_postings", "users")[i % 3]
        params = {"filters": one_day(f"2016-03-{i + 1:02d}")} if export_type == "users" else {}
        fmt = ("csv", "parquet", "ndjson", "csv.gz")[i % 4]
        user = "burst" if i < 10 else f"user{i % 3}"
        requests.append((insert(app, export_type, fmt, params, user), export_type, fmt, params))
    # A double-clicked insert with the same key is no second request.
    keyed = "INSERT INTO export_requests (export_type, requested_by, idempotency_key) " \
            "VALUES ('ledger_postings', 'carol', 'k-1') ON CONFLICT DO NOTHING RETURNING id"
    [(keyed_id,)] = app.execute(keyed).fetchall()
    assert app.execute(keyed).fetchall() == []

    for request_id, export_type, fmt, params in requests:
        final = wait_status(app, request_id, {"COMPLETED", "FAILED"})
        assert final["status"] == "COMPLETED", final["error"]
        columns = db_columns(app, export_type)
        where, args = users_where(params)
        expected = db_rows(app, export_type, columns, where, args)
        path = Path(final["file_uri"].removeprefix("file://"))
        assert final["row_count"] == len(expected) > 0
        assert file_rows(app, export_type, columns, fmt, path) == expected
        assert final["queued_at"] <= final["started_at"] <= final["finished_at"]
    assert wait_status(app, keyed_id, {"COMPLETED"})["row_count"] == 3000

    records = [r for request_id, *_ in requests for r in runs_for(instance, request_id)]
    assert Counter(r.dagster_run.tags[REQUEST_ID_TAG] for r in records) == Counter(
        str(request_id) for request_id, *_ in requests
    )  # exactly one run per request
    assert len(runs_for(instance, keyed_id)) == 1
    spans = [(r.start_time, r.end_time, r.dagster_run.tags) for r in records]
    # The limits as dagster.yaml sets them (5 at once, 4 per export type, 2 per user).
    queue = instance.run_coordinator.get_run_queue_config()
    assert max_overlap([(s, e) for s, e, _ in spans]) <= queue.max_concurrent_runs
    limits = {limit["key"]: limit["limit"] for limit in queue.tag_concurrency_limits}
    assert limits[EXPORT_TYPE_TAG] < queue.max_concurrent_runs  # one type never takes every slot
    for key in (EXPORT_TYPE_TAG, REQUESTED_BY_TAG):
        for value in {tags[key] for *_, tags in spans}:
            assert max_overlap([(s, e) for s, e, tags in spans if tags[key] == value]) <= limits[key], (key, value)


def test_an_invalid_request_fails_with_its_message_and_no_run(stack, app):
    bad = insert(app, "users", "csv", {"filters": {"lifetime_value_min": "lots"}})
    unknown = insert(app, "invoices")
    good = insert(app, "ledger_postings", "csv", {"columns": ["id", "amount"]})
    assert "filters.lifetime_value_min: expected a decimal number" in wait_status(app, bad, {"FAILED"})["error"]
    assert "export_type: unknown export type 'invoices'" in wait_status(app, unknown, {"FAILED"})["error"]
    assert wait_status(app, good, {"COMPLETED", "FAILED"})["status"] == "COMPLETED"
    assert runs_for(stack.instance, bad) == [] and runs_for(stack.instance, unknown) == []


def test_cancel_during_a_large_export_stops_run_query_and_file(stack, app):
    exports_before = files_in(stack.exports)
    request_id = insert(app, "users", "csv")
    running = wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")
    assert running["status"] == "RUNNING" and running["total_rows"] == BIG_USERS
    assert 0 < running["progress_rows"] < BIG_USERS
    app.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))

    final = wait_status(app, request_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=60)
    assert final["status"] == "CANCELLED"
    run_id = final["run_id"]
    assert wait_for(lambda: not export_sessions(app, run_id), 30, "the export query to stop")
    run = wait_for(
        lambda: (r := stack.instance.get_run_by_id(run_id)).is_finished and r, 60, "the run to finish"
    )
    assert run.status is dg.DagsterRunStatus.CANCELED
    assert error_traces(stack.instance, run_id) == []  # a cancel, not a crash (was two interrupt stack traces)
    assert len(runs_for(stack.instance, request_id)) == 1  # not retried
    assert files_in(stack.exports) == exports_before  # neither a partial file nor a temp file


@pytest.mark.parametrize("with_code_server", [False, True], ids=["worker", "worker and code server"])
def test_a_killed_run_worker_fails_its_request_and_stops_its_query(stack, app, with_code_server):
    """The worker's parent (the code server of a run process; the supervisor of a warm worker)
    notices it dying; with the parent killed first, only run monitoring (asking the launcher
    whether the worker's pid is alive) can."""
    exports_before = files_in(stack.exports)
    instance = stack.instance
    request_id = insert(app, "users", "csv", user="victim")
    running = wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")
    pid, _ = wait_for(lambda: run_worker(instance, running["run_id"]), 30, "the worker's pid")
    if with_code_server:
        os.kill(psutil.Process(pid).ppid(), signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would

    # Run monitoring polls every 5 s; the bound here is a fraction of the 3600 s maximum runtime.
    final = wait_status(app, request_id, {"FAILED", "COMPLETED", "CANCELLED"}, timeout=60)
    assert final["status"] == "FAILED"
    by_monitoring = f"the run worker process (pid {pid}) is gone"
    if with_code_server:
        assert by_monitoring in final["error"]
    else:  # whichever noticed first
        assert "terminated by signal 9 (SIGKILL)" in final["error"] or by_monitoring in final["error"]
    assert instance.get_run_by_id(running["run_id"]).status == dg.DagsterRunStatus.FAILURE
    assert wait_for(lambda: not export_sessions(app, running["run_id"]), 30, "the orphaned query to stop")
    assert len(runs_for(instance, request_id)) == 1
    assert files_in(stack.exports) == exports_before  # the killed worker's temp file is removed
    if with_code_server:  # on the warm pool, the worker's parent is the pool's supervisor
        stack.start_workers()


def test_launchpad_run_through_graphql(stack, app, graphql):
    config = {"format": "parquet", "filters": {"currency": ["EUR"]}}
    run_id = graphql.submit_job_execution(
        REGISTRY.get("ledger_postings").job_name, run_config={"ops": {"plan_ledger_postings": {"config": config}}}
    )
    wait_for(lambda: graphql.get_run_status(run_id) == dg.DagsterRunStatus.SUCCESS, what="the Launchpad run")
    published = stack.instance.get_run_by_id(run_id)
    [path] = [p for p in files_in(stack.exports) if run_id[:8] in p.name]
    columns = db_columns(app, "ledger_postings")
    assert file_rows(app, "ledger_postings", columns, "parquet", path) == db_rows(
        app, "ledger_postings", columns, "WHERE currency = 'EUR'"
    )
    assert published.tags.get(REQUEST_ID_TAG) is None


def test_terminating_from_the_ui_ends_the_request_cancelled(stack, app, graphql):
    request_id = insert(app, "users", "parquet")
    running = wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")
    graphql.terminate_run(running["run_id"])
    assert wait_status(app, request_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=60)["status"] == "CANCELLED"
    wait_for(lambda: stack.instance.get_run_by_id(running["run_id"]).is_finished, 60, "the run to finish")
    assert error_traces(stack.instance, running["run_id"]) == []
    assert wait_for(lambda: not export_sessions(app, running["run_id"]), 30, "the export query to stop")
    assert not [p for p in files_in(stack.exports) if running["run_id"] in p.name or running["run_id"][:8] in p.name]


def test_a_failing_run_leaves_its_request_failed_with_the_error(stack, app, graphql):
    request_id = insert(app, "users", status="QUEUED")  # as if the sensor had queued it
    config = {"filters": {"lifetime_value_min": "10", "lifetime_value_max": "1"}}
    graphql.submit_job_execution(
        REGISTRY.get("users").job_name,
        run_config={"ops": {"plan_users": {"config": config}}},
        tags={REQUEST_ID_TAG: str(request_id)},
    )
    final = wait_status(app, request_id, {"FAILED", "COMPLETED", "CANCELLED"})
    assert final["status"] == "FAILED"
    assert "filters.lifetime_value_max: reversed range" in final["error"]


def test_requests_inserted_across_a_daemon_restart_all_complete_exactly_once(stack, app):
    """The daemon is stopped while an application is inserting 100 requests and started again
    before it has finished: none is lost and none runs twice."""
    ids: list[int] = []

    def application() -> None:
        with psycopg.connect(stack.app_url, autocommit=True) as conn:
            for i in range(100):
                ids.append(insert(conn, "ledger_postings", "csv", {"columns": ["id", "amount"]}, f"restart{i % 5}"))
                # An application's steady trickle, so that the stop and the restart fall mid-stream.
                time.sleep(0.15)

    inserter = threading.Thread(target=application)
    inserter.start()
    try:
        wait_for(lambda: len(ids) >= 20, 60, "the first requests")
        stack.stop_daemon()
        assert len(ids) < 100, "the daemon stopped only after every request was in"
        stack.start_daemon()
    finally:
        inserter.join()
    assert len(ids) == 100

    expected = db_rows(app, "ledger_postings", ["id", "amount"])
    for request_id in ids:
        final = wait_status(app, request_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=600)
        assert final["status"] == "COMPLETED", final["error"]
        assert final["row_count"] == len(expected)
    for request_id in ids[::10]:
        path = Path(row(app, request_id)["file_uri"].removeprefix("file://"))
        assert file_rows(app, "ledger_postings", ["id", "amount"], "csv", path) == expected
    runs = Counter(r.dagster_run.tags[REQUEST_ID_TAG] for i in ids for r in runs_for(stack.instance, i))
    assert runs == Counter(str(i) for i in ids)  # exactly one run each
    published = [p for p in files_in(stack.exports) if p.parent.name.startswith("restart")]
    assert len(published) == 100


def test_a_run_past_its_maximum_runtime_ends_the_request_failed(stack, app, graphql):
    request_id = insert(app, "users", status="QUEUED")  # as if the sensor had queued it
    run_id = graphql.submit_job_execution(
        REGISTRY.get("users").job_name,
        run_config={"ops": {"plan_users": {"config": {"format": "csv"}}}},
        # The export types' own limit is an hour; a 4M-row export outlives a 1 s one.
        tags={REQUEST_ID_TAG: str(request_id), MAX_RUNTIME_TAG: "1"},
    )
    final = wait_status(app, request_id, {"FAILED", "COMPLETED", "CANCELLED"}, timeout=120)
    assert final["status"] == "FAILED", final
    assert "exceeding maximum runtime of 1 seconds" in final["error"]
    assert wait_for(lambda: not export_sessions(app, run_id), 30, "the export query to stop")
    assert not [p for p in files_in(stack.exports) if run_id[:8] in p.name]
