"""The `export-platform` command: try the platform locally, request exports, follow them.

Only the standard library, the (dependency-free) registry and the error family are imported before
the arguments are parsed, so `--help` and mistakes answer at once; each command imports what it
needs. parser.py declares the commands; exports.py (run, request, seed, demo), follow.py (status,
list, cancel, url, delete), keys.py (api-key) and operate.py (db, serve, dev, workers, health,
cleanup) carry them out.

The local commands (demo, dev, seed, db url, run, request, status, list, cancel, url, delete, api-key,
serve, health) use the embedded Postgres when EXPORT_PLATFORM_DATABASE_URL is unset: a checkout needs
nothing set. The operator commands (db migrate, cleanup, workers) change a deployment and need the
variable, so that a missing one is an error rather than an empty database of their own.

Errors print their message, never a Python traceback or class path: an `ExportPlatformError` as its
class says (errors.py: label and exit code); anything else as `error: message`, exit 1
(EXPORT_PLATFORM_TRACEBACK=1 shows the traceback of such an unexpected one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ...errors import DatabaseUnreachable, ExportPlatformError
from .common import plain
from .follow import PENDING_HINT_SECONDS, PROGRESS_LINE_SECONDS
from .parser import build_parser

__all__ = ["PENDING_HINT_SECONDS", "PROGRESS_LINE_SECONDS", "build_parser", "main"]

TRACEBACK_ENV = "EXPORT_PLATFORM_TRACEBACK"


def _as_family(error: Exception) -> ExportPlatformError | None:
    """The family's name for a driver's error a person can act on, also where SQLAlchemy wraps it
    (`orig`). psycopg is looked up, not imported: one of its errors means a command imported it."""
    psycopg = sys.modules.get("psycopg")
    cause = getattr(error, "orig", error)
    if psycopg is not None and isinstance(cause, psycopg.OperationalError):
        return DatabaseUnreachable(f"cannot reach the database: {plain(str(cause))}")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:
        known = error if isinstance(error, ExportPlatformError) else _as_family(error)
        if known is not None:
            print(known.shown(), file=sys.stderr)
            return known.exit_code
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {plain(str(error)) or type(error).__name__} ({TRACEBACK_ENV}=1 shows where)", file=sys.stderr)
        return 1
