"""A real Dagster deployment for end-to-end tests: an app database with the request table, a fresh
Dagster database, DAGSTER_HOME from the top-level dagster.yaml, and the processes `dev` runs
(export_platform/processes.py): the run-worker pool, the code server and `dagster-daemon`, each of
which can be stopped and started again (a `dagster-webserver` too, for the Launchpad's API). Plus
the small helpers those tests poll with."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy.engine import make_url

from export_platform import processes
from export_platform.naming import REQUEST_ID_TAG, session_name
from export_platform.processes import LOG_LEVEL, ProcessSpec, Processes, free_port
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import STORAGE_URL_ENV
from export_platform.tooling.embedded_postgres import ensure_database, start_embedded
from export_platform.tooling.instance import DAGSTER_DATABASE_URL_ENV, prepare_dagster_home
from export_platform.tooling.sample_data import seed

from .request_rows import row

TIMEOUT = 180


def fresh_database(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))
    ensure_database(url, name)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def logged(spec: ProcessSpec) -> ProcessSpec:
    """`spec` with what `dev` shows in the terminal in a file in DAGSTER_HOME instead (pytest's
    capture would otherwise hand it to whichever test runs)."""
    return spec if spec.log is not None else dataclasses.replace(spec, log=Path(spec.env["DAGSTER_HOME"]) / f"{spec.name}.log")


def daemon_stack_specs(env: dict[str, str], code_port: int, workers: int) -> list[ProcessSpec]:
    """The processes of the daemon stack: `dev`'s own (export_platform/processes.py), without the UI
    and `serve`, output in files."""
    return [logged(spec) for spec in processes.stack_specs(env, code_port, workers, LOG_LEVEL)]


@dataclass
class Stack:
    env: dict[str, str]
    instance: dg.DagsterInstance
    app_url: str
    exports: Path
    tmp: Path
    processes: Processes
    code_port: int
    postgres: object | None = None  # the pgserver a test may restart (restartable_daemon_stack)

    @property
    def daemon(self) -> subprocess.Popen | None:
        return self.processes.running.get("dagster-daemon", (None, None))[1]

    @property
    def workers(self) -> subprocess.Popen | None:
        """The pool's supervisor."""
        return self.processes.running.get("workers", (None, None))[1]

    def workspace(self) -> Path:
        """The workspace file on the stack's code server (written again: the same)."""
        return processes.workspace(self.env, self.code_port)

    def start_process(self, spec: ProcessSpec) -> None:
        """`spec` started; returns once it is up."""
        self.processes.start(logged(spec))
        self.processes.wait_ready(spec.name)

    def start(self, workers: int | None = None) -> None:
        """The pool, the code server and the daemon, as `dev` starts them; returns once all are up."""
        specs = daemon_stack_specs(self.env, self.code_port, workers or self.instance.run_launcher.workers)
        self.processes.start_all(specs)
        for spec in specs:
            self.processes.wait_ready(spec.name)

    def start_daemon(self) -> None:
        self.start_process(processes.daemon(self.env, self.workspace()))

    def stop_daemon(self) -> None:
        self.processes.stop("dagster-daemon")

    def start_workers(self, count: int | None = None, max_runs: int | None = None, grace_seconds: float | None = None) -> None:
        """`count` workers, by default dagster.yaml's (one per run the queue lets through at once)."""
        self.start_process(processes.worker_pool(self.env, count or self.instance.run_launcher.workers, max_runs, grace_seconds))

    def stop_workers(self) -> None:
        """Stops the pool (a drain: its workers finish their runs first, within the grace period)."""
        self.processes.stop("workers")


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
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        stack = Stack(env, instance, app_url, tmp / "exports", tmp, Processes(instance), free_port())
        try:
            stack.start(workers)
            yield stack
        finally:
            stack.processes.stop()
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


def webserver_spec(env: dict[str, str], code_port: int, port: int) -> ProcessSpec:
    """`dev`'s webserver on the stack's code server."""
    return processes.webserver(env, processes.workspace(env, code_port), "127.0.0.1", port)


@contextmanager
def running_webserver(stack: Stack) -> Iterator:
    """`dev`'s `dagster-webserver` on the stack's code server; yields a GraphQL client of it (the Launchpad's API)."""
    from dagster_graphql import DagsterGraphQLClient

    port = free_port()
    try:
        stack.start_process(webserver_spec(stack.env, stack.code_port, port))
        yield DagsterGraphQLClient("127.0.0.1", port_number=port)
    finally:
        stack.processes.stop("dagster-webserver")


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
