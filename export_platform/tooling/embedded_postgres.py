"""Which Postgres to use: `EXPORT_PLATFORM_DATABASE_URL`, or an embedded one from PyPI `pgserver`.

The embedded server lives under `$EXPORT_PLATFORM_HOME/pgdata` (default `.export_platform/` in
the working directory), keeps running after the command that started it, and is reused by every
later command, the Dagster daemon and the webserver, until `export-platform db stop`.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

DATABASE_URL_ENV = "EXPORT_PLATFORM_DATABASE_URL"
HOME_ENV = "EXPORT_PLATFORM_HOME"
APP_DATABASE = "export_platform"


def platform_home() -> Path:
    return Path(os.environ.get(HOME_ENV, ".export_platform")).resolve()


def start_embedded(pgdata: Path, *, cleanup_mode: str | None = None, database: str = APP_DATABASE) -> str:
    """Start (or attach to) a pgserver data directory and return a URL for `database`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pgserver

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    ensure_database(server.get_uri(), database)
    return server.get_uri(database)


def stop_embedded(pgdata: Path | None = None) -> bool:
    """Stop the embedded server (fast: open sessions are ended); False when it was not running."""
    pgdata = pgdata or platform_home() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in start_embedded
        from pgserver import pg_ctl

    # As pgserver starts it: under a `pgserver` system user when run as root.
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user="pgserver" if os.geteuid() == 0 else None)
    return True


def ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


@functools.cache
def _embedded_url(pgdata: Path) -> str:
    return start_embedded(pgdata)


def database_url() -> str:
    return os.environ.get(DATABASE_URL_ENV) or _embedded_url(platform_home() / "pgdata")
