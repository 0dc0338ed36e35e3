"""Warm run workers, end to end: a real `dagster-daemon`, the real pool (`python -m
export_platform.workers`), real Postgres for the requests, Dagster's storage and the launch queue."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import dagster as dg
import psutil
import psycopg
import pytest

from daemon_stack import daemon_stack, export_sessions, files_in, insert, row, runs_for, wait_for, wait_status
from export_platform.export_types import REGISTRY
from export_platform.jobs import build_export_job
from export_platform.resources.requests import REQUEST_ID_TAG
from export_platform.run_launcher import run_worker
from export_platform.workers.launcher import ISOLATED_TAG, POOL, POOL_TAG
from readback import db_rows, file_rows

pytestmark = pytest.mark.slow

BIG_USERS = 3_000_000  # still streaming when the test cancels or kills its worker


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    seeds = {"ledger_postings": 3_000, "users": BIG_USERS}
    with daemon_stack(database_url, tmp_path_factory.mktemp("workers"), seeds) as stack:
        yield stack


def worker_pids(stack) -> set[int]:
    with stack.instance.run_launcher.queue.connect() as conn:
        return {pid for (pid,) in conn.execute("SELECT pid FROM export_platform_run_workers")}


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
