"""The server's own CSV of one stream, moved into the export's file by asyncpg's C loop.

Why asyncpg: libpq hands over COPY's output one row per call, so a Python client built on it pays
a Python call per row (psycopg 3's `Copy.read()`), or binds filter values on the client
(psycopg2's `copy_expert`, whose loop is in C, interpolates parameters into the text). asyncpg
binds `set_config($1, ...)` server-side and gives COPY's output to the writer in buffers of whole
rows (every CopyData message it has received), ~14 KB at a time.

Each stream opens its own connection named like the export's other sessions (a cancel finds it),
imports the export's snapshot as its first statement, binds the filters, sets the time zone the
CSV is written in, and copies. COPY takes its options (delimiter, quote) only as literals:
asyncpg quotes them as standard SQL strings, which the transaction makes sure the server reads
as such (`standard_conforming_strings`); they are single characters the export's options validated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict

from ..planning import sql
from .lost import ConnectionLost, is_connection_error


def _connect_arguments(url: str, session_name: str) -> dict:
    """asyncpg.connect's arguments for a libpq URL or key=value string."""
    info = conninfo_to_dict(url)
    arguments = {"server_settings": {"application_name": session_name}}
    for libpq, asyncpg_name in (("host", "host"), ("port", "port"), ("user", "user"), ("password", "password"),
                                ("dbname", "database"), ("sslmode", "ssl"), ("passfile", "passfile")):
        if info.get(libpq) not in (None, ""):
            arguments[asyncpg_name] = info[libpq]
    if "port" in arguments:
        arguments["port"] = int(arguments["port"])
    return arguments


@dataclass(frozen=True)
class CsvCopy:
    """One stream of the export as the server's CSV (no header: the writer writes the labels)."""

    url: str
    session_name: str
    snapshot_id: str
    bind: str | None  # sql.bind_statement, its values bound to $1, $2, ...
    values: Sequence[str]
    time_zone: str
    statement: str  # sql.csv_statement
    delimiter: str
    quote: str

    def run(self, write: Callable[[bytes], None]) -> int:
        """Write the stream's CSV through `write` (whole rows each call); returns its row count.
        An error on a connection that is gone by then is ConnectionLost."""
        return asyncio.run(self._copy(write))

    async def _copy(self, write: Callable[[bytes], None]) -> int:
        import asyncpg

        connection = await asyncpg.connect(**_connect_arguments(self.url, self.session_name))
        try:
            await connection.execute(f"{sql.BEGIN_SNAPSHOT}; {sql.import_snapshot(self.snapshot_id)}")
            if self.bind:
                await connection.fetch(self.bind, *self.values)
            await connection.fetch(sql.SET_CSV_SESSION, self.time_zone)

            async def sink(data: bytes) -> None:
                write(data)

            status = await connection.copy_from_query(
                self.statement, output=sink, format="csv", delimiter=self.delimiter, quote=self.quote
            )
            await connection.execute("ROLLBACK")  # read-only: nothing to commit
            return int(status.split()[-1])
        except Exception as error:
            if connection.is_closed() or is_connection_error(error):
                raise ConnectionLost(f"lost the database connection: {error}") from error
            raise
        finally:
            # A COPY stopped half-way leaves the connection mid-protocol: closing its socket ends
            # the server's side of it too.
            connection.terminate()
