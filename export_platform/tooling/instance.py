"""Which Dagster instance a command runs on.

`demo` and `dev` (and the tests and benchmarks) prepare one of their own: DAGSTER_HOME is
`$EXPORT_PLATFORM_HOME/dagster`, holding a copy of the packaged dagster.yaml (this folder's; the
top-level dagster.yaml links to it), with Dagster's runs, events and schedules in Postgres
(dagster-postgres), in a database of its own beside the application's:
`EXPORT_PLATFORM_DAGSTER_DATABASE_URL`, or else a database named `dagster` on the application's
server, created if missing.

The deployed commands (`workers`, `cleanup`, `health`) use the instance they are given, as every
Dagster process does: DAGSTER_HOME with the deployment's dagster.yaml. They prepare nothing and
create no database.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from sqlalchemy.engine import make_url

from ..errors import ConfigurationError
from ..resources.database_url import DATABASE_URL_ENV, require_database_url
from ..home import platform_home
from .embedded_postgres import ensure_database

DAGSTER_DATABASE_URL_ENV = "EXPORT_PLATFORM_DAGSTER_DATABASE_URL"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
DAGSTER_DATABASE = "dagster"
# Package data, so that an installed (not editable) copy has it too.
INSTANCE_YAML = files(__package__).joinpath("dagster.yaml")


class InstanceMissing(ConfigurationError):
    """DAGSTER_HOME does not name a Dagster instance for a deployed command."""


def _psycopg2(url: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, whose server-side binding breaks
    # dagster-postgres's `NOTIFY run_events, %(id)s`; it is written for psycopg2.
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def dagster_database_url(app_url: str) -> str:
    explicit = os.environ.get(DAGSTER_DATABASE_URL_ENV)
    if explicit:
        return _psycopg2(explicit)
    ensure_database(app_url, DAGSTER_DATABASE)
    return _psycopg2(make_url(app_url).set(database=DAGSTER_DATABASE).render_as_string(hide_password=False))


def prepare_dagster_home(home: Path | None = None, app_url: str | None = None) -> dict[str, str]:
    """For `demo`, `dev`, tests and benchmarks only: write a DAGSTER_HOME of their own and return
    the environment every Dagster process must run with: the application database is `app_url`,
    else the configured one (never a default)."""
    app_url = app_url or require_database_url()
    home = home or platform_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    return {
        DAGSTER_HOME_ENV: str(home),
        DATABASE_URL_ENV: app_url,
        DAGSTER_DATABASE_URL_ENV: dagster_database_url(app_url),
    }


def use_local_instance() -> None:
    """On the embedded database (a checkout): DAGSTER_HOME if set, else the instance `dev` and `demo`
    prepared, if they have; never a new one (use_deployed_instance then says what to do)."""
    home = platform_home() / "dagster"
    if os.environ.get(DAGSTER_HOME_ENV) or not (home / "dagster.yaml").is_file():
        return
    os.environ[DAGSTER_HOME_ENV] = str(home)
    os.environ.setdefault(DAGSTER_DATABASE_URL_ENV, dagster_database_url(require_database_url()))


def use_deployed_instance() -> Path:
    """The DAGSTER_HOME a deployed command (`workers`, `cleanup`, `health`) runs on: the one it is
    given, with its dagster.yaml, as for every Dagster process of the deployment; refused when
    unset rather than replaced by an instance of its own."""
    home = os.environ.get(DAGSTER_HOME_ENV)
    if not home:
        raise InstanceMissing(
            f"{DAGSTER_HOME_ENV} is not set: point it at the folder holding the deployment's dagster.yaml (for "
            f"the instance `export-platform dev` prepares: {DAGSTER_HOME_ENV}={platform_home() / 'dagster'})"
        )
    if not (Path(home) / "dagster.yaml").is_file():
        raise InstanceMissing(
            f"{DAGSTER_HOME_ENV}={home} has no dagster.yaml: Dagster would make up an empty instance there"
        )
    if explicit := os.environ.get(DAGSTER_DATABASE_URL_ENV):
        os.environ[DAGSTER_DATABASE_URL_ENV] = _psycopg2(explicit)
    return Path(home)
