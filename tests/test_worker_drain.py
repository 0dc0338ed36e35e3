"""Stopping the warm run-worker pool (a deploy's SIGTERM, Ctrl-C) drains it: the workers take no
more runs, finish the export they run within the grace period, then exit; past the grace period
the export is stopped and its request says so. Then the operator's whole day at once: Postgres
restarts and deploys under a stream of requests.

Dagster's storage and the app database share one private embedded server (restarted by the soak).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
import psutil
import psycopg
import pytest

from support.daemon_stack import files_in, restart_postgres, restartable_daemon_stack, wait_for, wait_status
from support.request_rows import insert, row
from export_platform.naming import POOL_TAG, REQUEST_ID_TAG
from export_platform.naming import POOL

pytestmark = pytest.mark.slow

COUNT = 2
DONE = {"COMPLETED", "FAILED", "CANCELLED"}
BIG_USERS = 3_000_000  # an export still streaming when the pool is told to stop
SEEDS = {"ledger_postings": 3_000, "ezpass_transactions": 3_000, "users": BIG_USERS}
GRACE = "grace period"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with restartable_daemon_stack(tmp_path_factory.mktemp("drain"), SEEDS, COUNT) as stack:
        yield stack



def registry(stack) -> list[tuple[str, str, int]]:
    with stack.instance.run_launcher.queue.connect() as conn:
        return conn.execute("SELECT worker_id, host, pid FROM export_platform_run_workers").fetchall()


def queued_runs(stack) -> list[str]:
    with stack.instance.run_launcher.queue.connect() as conn:
        return [r for (r,) in conn.execute("SELECT run_id FROM export_platform_run_queue")]


def hand_off_tables_clean(stack) -> bool:
    """No row for a dead worker (on this host) nor for an ended run."""
    here = socket.gethostname()
    runs = [stack.instance.get_run_by_id(run_id) for run_id in queued_runs(stack)]
    return all(psutil.pid_exists(pid) for _, host, pid in registry(stack) if host == here) and all(
        run is not None and not run.is_finished for run in runs
    )


def streaming(app, request_id) -> dict:
    return wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")


def stop_pool(stack, signum: int) -> subprocess.Popen:
    """Send the supervisor `signum` as a deploy (SIGTERM) or a terminal (SIGINT) does; the stack
    no longer counts it as running."""
    supervisor = stack.processes.forget("workers")
    supervisor.send_signal(signum)
    return supervisor


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_the_pool_lets_the_running_export_finish(stack, app, signum):
    if stack.workers is None:
        stack.start_workers(COUNT)
    workers = [p.pid for p in psutil.Process(stack.workers.pid).children()]
    # A terminal's Ctrl-C reaches the supervisor's process group only: the workers have their own.
    own_groups = all(os.getpgid(pid) != os.getpgid(stack.workers.pid) for pid in workers)
    request_id = insert(app, "users", "csv", user=f"deploy-{signum}@example.com")
    run_id = streaming(app, request_id)["run_id"]
    supervisor = stop_pool(stack, signum)

    # The pool takes no more runs: one requested meanwhile starts in a run process of its own.
    meanwhile = wait_status(app, insert(app, "ledger_postings", "csv", user="meanwhile@example.com"), DONE, timeout=300)
    assert meanwhile["status"] == "COMPLETED", meanwhile["error"]
    assert stack.instance.get_run_by_id(meanwhile["run_id"]).tags[POOL_TAG] == "process"

    final = wait_status(app, request_id, DONE, timeout=300)
    assert final["status"] == "COMPLETED", final["error"]
    assert final["row_count"] == BIG_USERS
    assert stack.instance.get_run_by_id(run_id).tags[POOL_TAG] == POOL
    assert supervisor.wait(timeout=120) == 0
    assert not [pid for pid in workers if psutil.pid_exists(pid)]
    assert registry(stack) == [] and queued_runs(stack) == []
    assert own_groups
    stack.start_workers(COUNT)


def test_an_export_past_the_grace_period_is_stopped_and_says_so(stack, app):
    if stack.workers is not None:
        stack.stop_workers()
    stack.start_workers(COUNT, grace_seconds=0)
    exports_before = files_in(stack.exports)
    request_id = insert(app, "users", "csv", user="overran@example.com")
    run_id = streaming(app, request_id)["run_id"]
    supervisor = stop_pool(stack, signal.SIGTERM)

    final = wait_status(app, request_id, DONE, timeout=120)
    assert final["status"] == "FAILED"
    assert final["error"].startswith("the platform stopped the export") and GRACE in final["error"], final["error"]
    assert stack.instance.get_run_by_id(run_id).status is dg.DagsterRunStatus.FAILURE
    assert supervisor.wait(timeout=120) == 0
    assert files_in(stack.exports) == exports_before
    wait_for(lambda: registry(stack) == [] and queued_runs(stack) == [], 60, "the hand-off tables empty")
    stack.start_workers(COUNT)


def test_restarts_and_deploys_under_load_lose_no_request(stack):
    """The issue's soak: 60 mixed requests while Postgres restarts 3 times and the pool is stopped
    (SIGTERM) and started again twice. Every request ends terminal with one run and a cause if it
    failed; an export running at a SIGTERM finished, or failed past the grace period saying so;
    the hand-off tables keep no row of a dead worker or an ended run."""
    if stack.workers is not None:
        stack.stop_workers()
    stack.start_workers(COUNT, grace_seconds=20)
    pg = stack.postgres
    requests: dict[int, tuple[str, str, dict]] = {}
    cut_off: set[int] = set()
    running_at_sigterm: set[int] = set()

    def running(app) -> dict[int, str]:
        """The requests running now; waits until there is one (the load the step hits)."""
        return wait_for(
            lambda: {r: f["run_id"] for r in requests if (f := row(app, r))["status"] == "RUNNING"}, 120, "an export running"
        )

    def request(app, i: int) -> None:
        kind = i % 6
        if kind == 5 and i % 12 == 5:  # now and then a big one, still running when something happens
            spec = ("users", "csv", {})
        elif kind in (3, 5):
            day = f"2016-04-{i % 28 + 1:02d}"
            spec = ("users", ("parquet", "csv")[i % 2], {"filters": {"signup_date_from": day, "signup_date_to": day}})
        elif kind == 4:
            spec = ("ezpass_transactions", "ndjson", {})
        else:
            spec = ("ledger_postings", ("csv", "parquet", "csv.gz")[kind], {})
        requests[insert(app, spec[0], spec[1], spec[2], user=f"soak{i % 7}@example.com")] = spec

    def restart() -> None:
        with psycopg.connect(stack.app_url, autocommit=True) as app:
            running(app)
            # Whatever has not ended may meet the restart (a run starting as the server stops).
            cut_off.update(r for r in requests if row(app, r)["status"] not in DONE)
        restart_postgres(pg)

    def deploy() -> None:
        with psycopg.connect(stack.app_url, autocommit=True) as app:
            # What the last restart may have cut off ends first (retried, or failed saying the
            # database went away), so that what the SIGTERM finds running is judged on the drain alone.
            for request_id in cut_off:
                wait_status(app, request_id, DONE, timeout=300)
            now = running(app)
        on_pool = {r for r, run_id in now.items() if stack.instance.get_run_by_id(run_id).tags.get(POOL_TAG) == POOL}
        running_at_sigterm.update(on_pool)
        stop_pool(stack, signal.SIGTERM).wait(timeout=120)
        stack.start_workers(COUNT, grace_seconds=20)

    steps = [restart, deploy, restart, deploy, restart]
    for batch, step in enumerate(steps):
        with psycopg.connect(stack.app_url, autocommit=True) as app:
            for i in range(batch * 12, batch * 12 + 12):
                request(app, i)
        step()

    with psycopg.connect(stack.app_url, autocommit=True) as app:
        finals = {r: wait_status(app, r, DONE, timeout=600) for r in requests}
        assert len(finals) == 60
        # Runs by the tags in their own record: a restart can cut Dagster's run creation between the
        # run and its rows in `run_tags` (not one transaction), which then a tag filter misses.
        runs = Counter(run.tags.get(REQUEST_ID_TAG) for run in stack.instance.get_runs())
        for request_id, final in finals.items():
            assert runs[str(request_id)] == 1, request_id
            if final["status"] == "FAILED":
                assert final["error"] and "marked as failed from outside" not in final["error"], (request_id, final["error"])
            if request_id in running_at_sigterm:  # finished, or stopped past the grace period saying so
                assert final["status"] == "COMPLETED" or GRACE in final["error"], (request_id, final["error"])
            if final["status"] == "COMPLETED":
                export_type, fmt, params = requests[request_id]
                assert final["row_count"] == expected_rows(app, export_type, params), request_id
                assert Path(unquote(urlparse(final["file_uri"]).path)).stat().st_size > 0, request_id
    print("soak outcomes:", Counter(f["status"] for f in finals.values()), "running at a SIGTERM:", len(running_at_sigterm))
    assert Counter(f["status"] for f in finals.values())["COMPLETED"] >= 40
    wait_for(lambda: hand_off_tables_clean(stack), 60, "the hand-off tables clean")


def expected_rows(app, export_type: str, params: dict) -> int:
    filters = params.get("filters")
    if not filters:
        return app.execute(f"SELECT count(*) FROM {export_type}").fetchone()[0]  # a registry name, not input
    return app.execute(
        "SELECT count(*) FROM users WHERE signup_date BETWEEN %s AND %s", (filters["signup_date_from"], filters["signup_date_to"])
    ).fetchone()[0]
