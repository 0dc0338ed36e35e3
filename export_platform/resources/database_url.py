"""The export database's address: `EXPORT_PLATFORM_DATABASE_URL`, required wherever the code runs.

Never defaulted: a process that loaded the code location without it (a pod missing its secret)
would otherwise export from a database that is not the application's. The embedded Postgres is
for demo, dev and tests, and those choose it explicitly (`tooling/embedded_postgres.py`,
`local_database_url`), by setting this variable for themselves and every process they start.
"""

from __future__ import annotations

import os

from ..errors import ConfigurationError

DATABASE_URL_ENV = "EXPORT_PLATFORM_DATABASE_URL"


class DatabaseUrlMissing(ConfigurationError):
    """No export database is configured for this process."""


def require_database_url() -> str:
    """The configured URL; DatabaseUrlMissing, saying what to set, when there is none."""
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise DatabaseUrlMissing(
            f"{DATABASE_URL_ENV} is not set: set it to the libpq URL of the Postgres that holds the data to "
            "export and export_requests (e.g. postgresql://user:password@host:5432/app). The embedded Postgres "
            "is only for a local checkout: `export-platform demo`, `dev`, `run`, `request` and `status` use it "
            f"when {DATABASE_URL_ENV} is unset (`export-platform db url` prints its URL)."
        )
    return url
