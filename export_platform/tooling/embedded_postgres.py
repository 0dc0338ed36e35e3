"""The embedded Postgres (PyPI `pgserver`) of a local checkout, for the commands that choose it.

The local commands (`demo`, `dev`, `seed`, `run`, `request`, `status`, ...; see tooling/cli/) call
`local_database_url`: `EXPORT_PLATFORM_DATABASE_URL` when set, else this server, whose URL it then
puts into the variable, so that the code location the command loads and every process it starts
(daemon, webserver, run workers, runs) use the same database. Nothing else starts it: the code
location itself requires the variable (resources/database_url.py).

The server lives under `$EXPORT_PLATFORM_HOME/pgdata` (default `.export_platform/` in the working
directory), keeps running after the command that started it, and is reused by every later
command until `export-platform db stop`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from ..home import platform_home
from ..resources.database_url import DATABASE_URL_ENV

APP_DATABASE = "export_platform"



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


def local_database_url() -> str:
    """`EXPORT_PLATFORM_DATABASE_URL`, else the embedded server's URL (started if needed), which
    this process's environment then carries to everything it loads and starts."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        url = os.environ[DATABASE_URL_ENV] = start_embedded(platform_home() / "pgdata")
    return url
