"""What counts as a lost database connection: worth another attempt from a fresh snapshot."""

from __future__ import annotations

from ..errors import DatabaseError


class ConnectionLost(DatabaseError):
    """The export's connection to Postgres broke (a restart, a failover, pg_terminate_backend), or
    the snapshot it was to adopt went with another connection: worth another attempt from a fresh
    snapshot. Decided from the connection itself and SQLSTATEs, never from message text, which
    follows the server's (and libpq's) language."""


# Class 08 (connection exception); admin shutdown, crash shutdown, cannot connect now.
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")


def is_connection_error(error: BaseException) -> bool:
    """Whether a driver error (psycopg, asyncpg) carries the SQLSTATE of a lost connection."""
    state = getattr(error, "sqlstate", None) or ""
    return state.startswith("08") or state in _LOST_SQLSTATES
