"""A real Dagster deployment for end-to-end tests: an app database with the request table, a fresh
Dagster database, DAGSTER_HOME from the top-level dagster.yaml, and a running `dagster-daemon`
that can be stopped and started again (a `dagster-webserver` too, for the Launchpad's API). Plus
the small helpers those tests poll with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy.engine import make_url

from export_platform.tooling.embedded_postgres import ensure_database, start_embedded
from export_platform.tooling.instance import (
    DAGSTER_DATABASE_URL_ENV,
    prepare_dagster_home,
    start_daemon,
    start_workers,
    wait_for_daemon,
    wait_for_workers,
)
from export_platform.naming import REQUEST_ID_TAG, session_name
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import STORAGE_URL_ENV
from export_platform.tooling.sample_data import seed
from export_platform.workers.supervisor import STOP_MARGIN_SECONDS

from .ports import free_port
from .request_rows import row

TIMEOUT = 180


def fresh_database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))
    ensure_database(url, name)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@dataclass
class Stack:
    env: dict[str, str]
    instance: dg.DagsterInstance
    app_url: str
    exports: Path
    tmp: Path
    daemon: subprocess.Popen | None = None
    workers: subprocess.Popen | None = None
    postgres: object | None = None  # the pgserver a test may restart (restartable_daemon_stack)

    def start_daemon(self) -> None:
        self.daemon = start_daemon(self.env, self.tmp / "daemon.log")
        wait_for_daemon(self.instance, self.daemon)

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            self.daemon.wait(timeout=60)
        self.daemon = None

    def start_workers(self, count: int | None = None, max_runs: int | None = None, grace_seconds: float | None = None) -> None:
        """`count` workers, by default dagster.yaml's (one per run the queue lets through at once)."""
        count = count or self.instance.run_launcher.workers
        self.workers = start_workers(self.env, self.tmp / "workers.log", count, max_runs, grace_seconds)
        wait_for_workers(self.instance, self.workers, count)

    def stop_workers(self) -> None:
        """Stops the pool (a drain: its workers finish their runs first, within the grace period)."""
        if self.workers is not None and self.workers.poll() is None:
            self.workers.terminate()
            self.workers.wait(timeout=self.instance.run_launcher.grace_period_seconds + STOP_MARGIN_SECONDS + 30)
        self.workers = None


@contextmanager
def daemon_stack(
    server_url: str, tmp: Path, seeds: dict[str, int], dagster_server_url: str | None = None, workers: int | None = None
) -> Iterator[Stack]:
    """`seeds` maps sample export types to their row counts. Dagster's storage goes on
    `dagster_server_url` if given, else beside the app database. `workers`: the pool's size
    (default dagster.yaml's)."""
    app_url = fresh_database(server_url, "daemon_app")
    with psycopg.connect(app_url, autocommit=True) as conn:
        for export_type, rows in seeds.items():
            seed(conn, rows, (export_type,))
    RequestStore(url=app_url).migrate()  # deployed before applications insert
    dagster_url = make_url(fresh_database(dagster_server_url or server_url, "daemon_dagster")).set(drivername="postgresql+psycopg2")
    # The tests' own process opens the instance too: it reads Dagster's URL from the environment.
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(DAGSTER_DATABASE_URL_ENV, dagster_url.render_as_string(hide_password=False))
        env = {**os.environ, **prepare_dagster_home(tmp / "dagster_home", app_url), STORAGE_URL_ENV: str(tmp / "exports")}
        stack = Stack(env, dg.DagsterInstance.from_config(env["DAGSTER_HOME"]), app_url, tmp / "exports", tmp)
        try:
            stack.start_workers(workers)
            stack.start_daemon()
            yield stack
        finally:
            stack.stop_daemon()
            stack.stop_workers()
            stack.instance.dispose()


@contextmanager
def restartable_daemon_stack(tmp: Path, seeds: dict[str, int], workers: int | None = None) -> Iterator[Stack]:
    """A daemon stack whose app database and Dagster's storage share one private embedded Postgres
    (one server, as in most deployments), which its tests may restart (`restart_postgres(stack.postgres)`)
    without disturbing any other module's."""
    server, url = restartable_postgres(tmp / "pgdata")
    with daemon_stack(url, tmp, seeds, url, workers) as stack:
        stack.postgres = server
        yield stack


@contextmanager
def running_webserver(stack: Stack) -> Iterator:
    """A `dagster-webserver` on the stack's instance; yields a GraphQL client of it (the Launchpad's API)."""
    from dagster_graphql import DagsterGraphQLClient

    port = free_port()
    webserver = Path(sys.executable).with_name("dagster-webserver")
    with (stack.tmp / "webserver.log").open("ab") as log:
        process = subprocess.Popen(
            [str(webserver), "-m", "export_platform.definitions", "-h", "127.0.0.1", "-p", str(port)],
            # In DAGSTER_HOME, as `dev` starts it: Dagster warns of a dagster.yaml in its working folder.
            env=stack.env, cwd=stack.env["DAGSTER_HOME"], stdout=log, stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200
        except OSError:
            assert process.poll() is None, "dagster-webserver exited"
            return False

    try:
        wait_for(ready, 120, "dagster-webserver")
        yield DagsterGraphQLClient("127.0.0.1", port_number=port)
    finally:
        process.terminate()
        process.wait(timeout=60)


def restartable_postgres(pgdata: Path) -> tuple[object, str]:
    """A private embedded Postgres (removed with the test session) that a test may restart
    without disturbing the session's server; returns the server and its admin URL."""
    import pgserver

    start_embedded(pgdata, cleanup_mode="delete")
    server = pgserver.get_server(pgdata)
    return server, server.get_uri()


def restart_postgres(server) -> None:
    """Stop an embedded Postgres (pgserver) as an operator's restart does (fast shutdown: sessions
    are ended) and start it again on the same data and address."""
    from pgserver.postgres_server import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    server.ensure_postgres_running()


def wait_for(predicate: Callable, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def wait_status(app, request_id, statuses, timeout=TIMEOUT) -> dict:
    return wait_for(
        lambda: (r := row(app, request_id))["status"] in statuses and r,
        timeout,
        f"request {request_id} to reach {statuses} (now {row(app, request_id)['status']})",
    )


def runs_for(instance, request_id) -> list:
    return instance.get_run_records(dg.RunsFilter(tags={REQUEST_ID_TAG: str(request_id)}))


def files_in(folder: Path) -> list[Path]:
    """Every file under `folder` but those of the recurring schedules, which the daemon runs on
    their own clock whatever a test is doing."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and "schedules" not in p.relative_to(folder).parts)


def export_sessions(app, run_id) -> list:
    return app.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (session_name(run_id),)
    ).fetchall()
