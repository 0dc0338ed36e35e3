"""DuckDB's Postgres scanner as the export's reader: one DuckDB connection per stream, each in its
own Postgres transaction that imports the export's snapshot, reading our own SELECT with
`postgres_query` (binary COPY, decoded by DuckDB into Arrow).

- The extension is the binary that the PyPI package `duckdb-extension-postgres-scanner` installs,
  LOADed from its path before any `pg_` setting is touched (a setting first makes DuckDB try to
  download it); nothing is fetched at run time.
- One in-memory DuckDB per process (its extension loaded once; a warm worker keeps it); each
  export ATTACHes the database under a name of its own, with the run's application_name (so a
  cancel finds every stream's session), and DETACHes it at the end, closing its connections.
- A stream's first statement in Postgres is `SET TRANSACTION SNAPSHOT` (checked with
  `pg_debug_show_queries` in tests/test_postgres.py): DuckDB opens the Postgres transaction with
  `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY` (the database is attached READ_ONLY) on the
  statement's own message.
- Filter values are bound: `postgres_query(..., params := {...})` sends them as real parameters
  (PQexecParams) when DuckDB reads with its text protocol, which is switched on for that one
  statement only (binary COPY, which reads the rows, takes no parameters).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg.conninfo import make_conninfo

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

_database: duckdb.DuckDBPyConnection | None = None
_lock = threading.Lock()


def extension_path() -> Path:
    import duckdb
    import duckdb_extension_postgres_scanner

    folder = Path(duckdb_extension_postgres_scanner.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    return folder / "postgres_scanner.duckdb_extension"


def _literal(text: str) -> str:
    """A DuckDB string literal (ATTACH takes its connection string only as one)."""
    return "'" + text.replace("'", "''") + "'"


def database() -> duckdb.DuckDBPyConnection:
    """The process's DuckDB, with the scanner loaded; streams are cursors of it."""
    global _database
    with _lock:
        if _database is None:
            import duckdb  # here, not at import: the code location loads without it (~0.3 s)

            config = {
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "threads": 1,
            }
            connection = duckdb.connect(config=config)
            connection.execute(f"LOAD {_literal(str(extension_path()))}")
            _database = connection
        return _database


def version() -> str:
    import duckdb

    return f"DuckDB {duckdb.__version__} postgres scanner"


@contextmanager
def attached(url: str, session_name: str) -> Iterator[str]:
    """The database at `url` attached read-only under a fresh name, its sessions named
    `session_name`; detached (its connections closed) on exit."""
    alias = f"export_{uuid.uuid4().hex}"
    dsn = make_conninfo(url, application_name=session_name)
    db = database()
    db.cursor().execute(f"ATTACH {_literal(dsn)} AS {alias} (TYPE postgres, READ_ONLY)")
    try:
        yield alias
    finally:
        db.cursor().execute(f"DETACH {alias}")


class Stream:
    """One DuckDB connection reading in one Postgres transaction of the attached database."""

    def __init__(self, alias: str):
        self.alias, self.cursor = alias, database().cursor()
        self.cursor.execute("BEGIN")

    def execute(self, statement: str) -> None:
        """A statement without result in the stream's Postgres transaction (the first one opens it)."""
        self.cursor.execute("CALL postgres_execute(?, ?)", [self.alias, statement])

    def bind(self, statement: str, values: Sequence[str]) -> None:
        """Run `statement` with `values` bound to $1, $2, ... (never written into its text)."""
        # Only this statement: a failure ends the stream (and closes this cursor) anyway.
        self.cursor.execute("SET SESSION pg_use_text_protocol = true")
        params = {f"p{i}": value for i, value in enumerate(values)}
        self.cursor.execute("SELECT * FROM postgres_query(?, ?, params := ?)", [self.alias, statement, params])
        self.cursor.fetchall()
        self.cursor.execute("RESET SESSION pg_use_text_protocol")

    def reader(self, statement: str, batch_rows: int) -> pa.RecordBatchReader:
        """`statement`'s rows, streamed as Arrow batches of `batch_rows` rows."""
        result = self.cursor.execute("SELECT * FROM postgres_query(?, ?)", [self.alias, statement])
        return result.to_arrow_reader(batch_rows)

    def end(self) -> bool:
        """Roll the transaction back (it only read); False when its connection is gone. A stream
        stopped mid-COPY is interrupted first."""
        import duckdb

        try:
            self.cursor.interrupt()
            self.cursor.execute("ROLLBACK")
            return True
        except duckdb.Error:
            return False
        finally:
            self.cursor.close()
