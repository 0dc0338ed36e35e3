"""What the commands share: the database a local command uses, its request client, error text as
a person reads it. The standard library only at import: `--help` must not wait for Dagster."""

from __future__ import annotations

import os
import re
import sys

from ...errors import BadInput

# The command prints its own result or error; Dagster's event log stays in the run record.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# "psycopg.errors.UndefinedTable: ..." → "UndefinedTable: ..."; Dagster's qualified "…events.Failure: x" → "x".
_CLASS_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?P<name>[A-Za-z_]\w*): ")


def plain(message: str) -> str:
    """An error message as a person reads it: without the Python module path of its class (a bare
    class name stays where it says something, e.g. "UndefinedTable: relation ... does not exist")."""
    match = _CLASS_PATH.match(message)
    if match is None:
        return message.strip()
    rest = message[match.end():].strip()
    return rest if match["name"] in ("Failure", "DagsterError") else f"{match['name']}: {rest}"


def bad_option(field: str, message: str, hint: str | None = None) -> BadInput:
    """A command-line value that cannot be used, named as a request's field is (`field: message`)."""
    return BadInput(f"{field}: {message}", hint=hint)


def quiet_dagster_warnings() -> None:
    """Dagster marks some APIs beta or superseded; a user of this command cannot act on that."""
    import warnings

    from dagster_shared.utils.warnings import BetaWarning, PreviewWarning, SupersessionWarning

    for category in (BetaWarning, PreviewWarning, SupersessionWarning):
        warnings.simplefilter("ignore", category)


def local_database() -> str:
    from ..embedded_postgres import local_database_url

    return local_database_url()


def use_local_database(command: str) -> bool:
    """For a command whose code reads EXPORT_PLATFORM_DATABASE_URL itself (serve, health): the
    configured database, else the embedded one, as for every local command; said on stderr, since
    these two also run deployed, where a missing variable is a mistake to see at once. True when
    it fell back to the embedded one."""
    from ...resources.database_url import DATABASE_URL_ENV

    if os.environ.get(DATABASE_URL_ENV):
        return False
    os.environ[DATABASE_URL_ENV] = local_database()
    print(f"{command}: {DATABASE_URL_ENV} is not set: using the embedded Postgres "
          f"({os.environ[DATABASE_URL_ENV]}), as the local commands do", file=sys.stderr, flush=True)
    return True


def request_client():
    """The request table of a local command's database."""
    from ...requests.client import ExportClient

    return ExportClient(local_database())
