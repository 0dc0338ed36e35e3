"""The application's Postgres restarts between requests: the request sensor's ticks fail while
it is down, and a later tick picks up new requests as if nothing had happened.

The app database is on a private embedded server (so that restarting it disturbs no other test);
Dagster's own storage stays on the session's server.
"""

from __future__ import annotations

import time

import dagster as dg
import pgserver
import psycopg
import pytest
from pgserver.postgres_server import pg_ctl

from support.daemon_stack import daemon_stack, runs_for, wait_for, wait_status
from support.request_rows import insert, row
from export_platform.dagster_compat import InstigatorType, TickStatus
from export_platform.naming import REQUEST_SENSOR
from export_platform.tooling.embedded_postgres import start_embedded
from support.readback import db_rows, file_rows

pytestmark = pytest.mark.slow

DONE = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    pgdata = tmp_path_factory.mktemp("restartable") / "pgdata"
    url = start_embedded(pgdata, cleanup_mode="delete")
    return pgserver.get_server(pgdata), url


@pytest.fixture(scope="module")
def stack(app_server, database_url, tmp_path_factory):
    _, url = app_server
    with daemon_stack(url, tmp_path_factory.mktemp("daemon"), {"ledger_postings": 3_000}, database_url) as stack:
        yield stack


def request_sensor_ticks(instance: dg.DagsterInstance) -> list:
    [state] = [
        s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.name == REQUEST_SENSOR
    ]
    return instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)


def completes(stack, request_id: int) -> dict:
    with psycopg.connect(stack.app_url, autocommit=True) as app:
        final = wait_status(app, request_id, DONE)
        assert final["status"] == "COMPLETED", final["error"]
        assert len(runs_for(stack.instance, request_id)) == 1
        columns = ["id", "amount"]
        path = final["file_uri"].removeprefix("file://")
        assert file_rows(app, "ledger_postings", columns, final["format"], path) == db_rows(app, "ledger_postings", columns)
        return final


def test_the_request_sensor_recovers_after_a_postgres_restart(stack, app_server):
    server, url = app_server
    params = {"columns": ["id", "amount"]}
    with psycopg.connect(stack.app_url, autocommit=True) as app:
        before = insert(app, "ledger_postings", "csv", params)
    completes(stack, before)

    stopped_at = time.time()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    failed = wait_for(
        lambda: [t for t in request_sensor_ticks(stack.instance) if t.status is TickStatus.FAILURE and t.timestamp > stopped_at],
        60,
        "a sensor tick to fail while Postgres is down",
    )
    cause = failed[0].error
    while cause.cause is not None:
        cause = cause.cause
    assert cause.cls_name == "OperationalError"  # the driver's connection error, not a bug of ours
    server.ensure_postgres_running()
    assert server.get_uri("export_platform") == url  # applications reconnect with the same URL

    with psycopg.connect(stack.app_url, autocommit=True) as app:
        after = insert(app, "ledger_postings", "parquet", params)
        assert completes(stack, after)["row_count"] == 3_000
        assert row(app, before)["status"] == "COMPLETED"
    assert len(runs_for(stack.instance, before)) == 1
    assert stack.daemon.poll() is None  # the daemon rode it out
