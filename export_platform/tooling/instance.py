"""The Dagster instance that `export-platform dev`, `health` and the daemon tests share.

Dagster keeps runs, events and schedules in Postgres (dagster-postgres), in a database of its own
beside the application's: `EXPORT_PLATFORM_DAGSTER_DATABASE_URL`, or else a database named
`dagster` on the application's server, created if missing. DAGSTER_HOME is
`$EXPORT_PLATFORM_HOME/dagster`, holding a copy of the top-level dagster.yaml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

from ..resources.database_url import DATABASE_URL_ENV, require_database_url
from .embedded_postgres import ensure_database, platform_home

DAGSTER_DATABASE_URL_ENV = "EXPORT_PLATFORM_DAGSTER_DATABASE_URL"
DAGSTER_DATABASE = "dagster"
INSTANCE_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def dagster_database_url(app_url: str) -> str:
    explicit = os.environ.get(DAGSTER_DATABASE_URL_ENV)
    if explicit:
        url = make_url(explicit)
    else:
        ensure_database(app_url, DAGSTER_DATABASE)
        url = make_url(app_url).set(database=DAGSTER_DATABASE)
    if url.drivername == "postgresql":
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, whose server-side binding breaks
        # dagster-postgres's `NOTIFY run_events, %(id)s`; it is written for psycopg2.
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def prepare_dagster_home(home: Path | None = None, app_url: str | None = None) -> dict[str, str]:
    """Write DAGSTER_HOME and return the environment every Dagster process must run with: the
    application database is `app_url`, else the configured one (never a default)."""
    app_url = app_url or require_database_url()
    home = home or platform_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_YAML, home / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(home),
        DATABASE_URL_ENV: app_url,
        DAGSTER_DATABASE_URL_ENV: dagster_database_url(app_url),
    }


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster-daemon run` for this code location (with its sensor loop shortened, see
    export_platform/tooling/daemon.py), as a child process logging to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "export_platform.tooling.daemon", "run", "-m", "export_platform.definitions"],
            env=env,
            cwd=INSTANCE_YAML.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_workers(
    env: dict[str, str], log: Path, count: int | None = None, max_runs: int | None = None, grace_seconds: float | None = None
) -> subprocess.Popen:
    """The warm run-worker pool (`export-platform workers`) as a child process logging to `log`."""
    options = [
        *(["--count", str(count)] if count else []),
        *(["--max-runs", str(max_runs)] if max_runs else []),
        *(["--grace-period", str(grace_seconds)] if grace_seconds is not None else []),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "export_platform.workers", *options],
            env=env,
            cwd=INSTANCE_YAML.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_workers(instance, process: subprocess.Popen, count: int, timeout: float = 120) -> None:
    """Poll until `count` workers have a fresh heartbeat."""
    deadline = time.monotonic() + timeout
    launcher = instance.run_launcher
    launcher.queue.migrate()
    while launcher.queue.fresh_workers(launcher.heartbeat_timeout_seconds) < count:
        if process.poll() is not None:
            raise RuntimeError(f"the run-worker pool exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} run workers started")
        time.sleep(0.2)


def wait_for_daemon(instance, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until the sensor daemon has sent a heartbeat since `process` started (the daemon is
    then ticking; an earlier daemon's heartbeats stay in the instance storage)."""
    started = psutil.Process(process.pid).create_time()
    deadline = time.monotonic() + timeout
    while (beat := instance.get_daemon_heartbeats().get("SENSOR")) is None or beat.timestamp < started:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-daemon exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("dagster-daemon sent no heartbeat")
        time.sleep(0.2)
