"""The Postgres that holds the data to export (and, later, the request table).

An incremental export's upper bound is fixed on the connection that then takes the snapshot, in
autocommit and just before `BEGIN` (`incremental_bound`): the earliest of the clock minus a
margin, the `xact_start` of every session of the database in a transaction (with or without a
transaction id) and the `query_start` of every running statement. Read in that order, every
writer that stamps a row with its `now()` below the bound has committed before the snapshot, so
the rows of `[mark, bound)` are complete when they are read; the argument, its contract (writers
use the server's clock, the role sees every session through pg_read_all_stats, no prepared
transactions) and its tests are in docs/design.md, "Incremental exports: exactly once".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg
import psycopg
import pyarrow as pa
from pydantic import Field

from ..planning import sql
from ..planning.key_ranges import KeyRange, split_pages, split_range
from ..planning.plan import ExportPlan
from ..sinks.arrow_source import numeric_type

if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc


def _dbapi():
    """ADBC's DB-API, imported by the run that streams, not by every process that loads the code
    location: it pulls in pyarrow.dataset (~0.6 s)."""
    import adbc_driver_postgresql.dbapi

    return adbc_driver_postgresql.dbapi


class StreamClosed(RuntimeError):
    """A batch was asked for after the export's transaction ended."""


class ConnectionLost(RuntimeError):
    """The export's connection to Postgres broke (a restart, a failover, pg_terminate_backend), or
    the snapshot it was to adopt went with another connection: worth another attempt from a fresh
    snapshot. Decided from the connection itself and SQLSTATEs, never from message text, which
    follows the server's (and libpq's) language."""


# Class 08 (connection exception); admin shutdown, crash shutdown, cannot connect now.
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")
# "invalid snapshot identifier": the transaction that exported the snapshot has ended.
_INVALID_PARAMETER_VALUE = "22023"


def is_connection_error(error: BaseException) -> bool:
    """Whether a driver error (ADBC or psycopg) carries the SQLSTATE of a lost connection."""
    state = getattr(error, "sqlstate", None) or ""
    return state.startswith("08") or state in _LOST_SQLSTATES


def _ended(cursor: adbc.Cursor) -> bool:
    """End the read-only transaction; False when its connection is gone."""
    try:
        cursor.execute("ROLLBACK")  # read-only: nothing to commit
        return True
    except (_dbapi().Error, OSError):
        return False


class IncrementalRefused(RuntimeError):
    """The database does not show what the incremental bound needs, so no safe bound exists."""


class GuardedReader:
    """The driver's batch reader, which its snapshot can close from another thread.

    Polars pulls batches on its own threads. When a writer fails, those threads may still be
    reading while the transaction ends, and one libpq connection used from two threads at once
    crashes the process (seen as a segfault when a disk filled up mid-xlsx). `close` waits for a
    read in flight; every read after it raises.
    """

    def __init__(self, reader: pa.RecordBatchReader, schema: pa.Schema | None = None):
        self._reader, self._lock, self._closed = reader, threading.Lock(), False
        self.schema = schema or reader.schema

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            with self._lock:
                if self._closed:
                    raise StreamClosed("the export's database transaction has already ended")
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    return
            yield batch

    def close(self) -> None:
        self._closed = True  # before waiting, so that no new read can start ahead of this one
        with self._lock:
            pass


# A page stream reads at least this many heap pages (8 MiB at the default block size), as DuckDB's
# Postgres scanner does: a smaller table is not worth another connection.
PAGES_PER_STREAM = 1000


def stream_count(cores: int, pages: int | None, per_query: int, free_connections: int, cap: int) -> int:
    """How many page streams an export in no order reads in parallel: no more than this machine's
    cores, the processes the database lets one query use (max_parallel_workers_per_gather + 1:
    its administrator's limit on one query's share of the server), half the connections still
    free, `cap`, and one per PAGES_PER_STREAM of the table; one for a view."""
    if pages is None:
        return 1
    return max(1, min(cores, per_query, free_connections // 2, cap, pages // PAGES_PER_STREAM))


# Polars queues the batches its writer has not taken yet, with no backpressure on the source
# (pola-rs/polars#26432), and two or more page streams decode faster than its writers take them,
# so that queue, not the batch in hand, sets such an export's memory. 10M `users` rows in no order,
# through the CLI: csv peaked at 314-561 MB with 4 MiB batches and at 255-263 MB with these, as
# fast; parquet at 320-331 MB and 293-298 MB, 5-8 % slower (benchmarks/RESULTS.md). One stream
# never outpaces its writer, and keeps the configured size (smaller batches made it 10-15 % slower).
PAGE_STREAM_BATCH_BYTES = 1 << 20


def batch_bytes(hint: int, plan: ExportPlan, streams: int) -> int:
    """The batch size hint of an export's readers: `hint`, or less for page streams."""
    if streams > 1 and not plan.ordered:
        return min(hint, PAGE_STREAM_BATCH_BYTES)
    return hint


@dataclass
class Snapshot:
    count: int
    readers: list[GuardedReader]  # one per key range, in key order (or per page range, in no order)
    high_water: str | None


@dataclass(frozen=True)
class Split:
    """Key ranges fixed in one snapshot, for chunks that each read in their own transaction."""

    count: int
    ranges: list[KeyRange]
    high_water: str | None


class PostgresResource(dg.ConfigurableResource):
    url: str = Field(description="libpq URL of the source database (definitions.py: EXPORT_PLATFORM_DATABASE_URL).")
    batch_size_hint_bytes: int = Field(
        default=4 * 1024 * 1024,
        description="Approximate size of each Arrow batch streamed from Postgres; bounds memory per batch. "
        "Parallel page streams (order: none) read batches of at most 1 MiB: the writer falls behind them "
        "and queues what it has not written yet.",
    )
    max_streams: int = Field(
        default=8,
        ge=1,
        description="Most parallel streams (connections) an export in no order (order: none) reads with; fewer "
        "when the machine has fewer cores, the database allows one query fewer processes "
        "(max_parallel_workers_per_gather + 1) or has few connections free, or the table is small.",
    )
    incremental_margin_seconds: float = Field(
        default=1.0,
        ge=0,
        description="An incremental export's upper bound stays this far behind the database clock: "
        "longer than a writer's backend can be kept off the CPU between reading the clock for its "
        "now() and showing its statement in pg_stat_activity. Rows this recent go to the next run.",
    )

    def resolved_url(self) -> str:
        return self.url

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.resolved_url(), **kwargs)

    def cancel_queries(self, session_name: str) -> int:
        """Stop the queries of an export's session (its run may be gone); returns how many."""
        with self.connect(autocommit=True) as conn:
            return len(conn.execute(sql.CANCEL_SESSION, (session_name,)).fetchall())

    def end_sessions(self, session_name: str) -> int:
        """End an export's sessions, whatever they are doing (its run has ended); returns how many."""
        with self.connect(autocommit=True) as conn:
            return len(conn.execute(sql.TERMINATE_SESSION, (session_name,)).fetchall())

    def incremental_bound(self, cursor: adbc.Cursor) -> str:
        """The upper bound of an incremental export whose snapshot this connection takes next.

        Refuses (IncrementalRefused) where sessions' transaction starts cannot be seen: without
        them a bound can pass rows a transaction in flight will still commit."""
        cursor.execute(sql.INCREMENTAL_BOUND, parameters=(self.incremental_margin_seconds,))
        sees_every_session, on_standby, prepared, bound = cursor.fetchone()
        if not sees_every_session:
            raise IncrementalRefused(
                "incremental export refused: the database role cannot see other sessions' xact_start in "
                "pg_stat_activity; grant it pg_read_all_stats (GRANT pg_read_all_stats TO <role>) or use a superuser"
            )
        if on_standby:
            raise IncrementalRefused(
                "incremental export refused: the database is a standby, whose pg_stat_activity does not show "
                "the primary's writers; read incremental exports from the primary"
            )
        if prepared:
            raise IncrementalRefused(
                f"incremental export refused: prepared transactions ({prepared}) may commit rows stamped at any "
                "earlier time; COMMIT PREPARED or ROLLBACK PREPARED them first"
            )
        return bound

    def check_incremental(self) -> None:
        """Raise IncrementalRefused now, before any work, where an incremental bound cannot be fixed."""
        with _dbapi().connect(self.resolved_url(), autocommit=True) as conn, conn.cursor() as cursor:
            self.incremental_bound(cursor)

    @contextmanager
    def _transaction(
        self, session_name: str, snapshot_id: str | None, fix_bound: bool = False
    ) -> Iterator[tuple[adbc.Cursor, str | None]]:
        """A cursor inside one REPEATABLE READ READ ONLY transaction, in the snapshot `snapshot_id`
        exported by another transaction when given; with `fix_bound`, the incremental bound fixed
        just before that transaction began.

        `session_name` becomes the connection's application_name, by which a cancel finds the query.
        """
        with _dbapi().connect(self.resolved_url(), autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(sql.SET_APPLICATION_NAME, parameters=(session_name,))
            cursor.fetchall()
            bound = self.incremental_bound(cursor) if fix_bound else None
            cursor.execute(sql.BEGIN_SNAPSHOT)
            try:
                if snapshot_id is not None:
                    self._import_snapshot(cursor, snapshot_id)
                cursor.execute(sql.SET_UTC)
                yield cursor, bound
            except Exception as error:
                if not _ended(cursor) and not isinstance(error, ConnectionLost):
                    raise ConnectionLost(f"lost the database connection: {error}") from error
                raise
            except BaseException:
                _ended(cursor)
                raise
            else:
                _ended(cursor)

    @staticmethod
    def _import_snapshot(cursor: adbc.Cursor, snapshot_id: str) -> None:
        try:
            cursor.execute(sql.import_snapshot(snapshot_id))
        except _dbapi().Error as error:
            if getattr(error, "sqlstate", None) == _INVALID_PARAMETER_VALUE:
                raise ConnectionLost(f"the connection that exported the snapshot is gone: {error}") from error
            raise

    @staticmethod
    def _bind(cursor: adbc.Cursor, plan: ExportPlan, key_range: sql.Range | None = None, upper: str | None = None):
        bind = sql.bind_statement(plan, key_range, upper)
        if bind:
            cursor.execute(bind, parameters=sql.parameters(plan, key_range, upper))
            cursor.fetchall()

    @contextmanager
    def _snapshot(
        self,
        plan: ExportPlan,
        session_name: str,
        high_water: str | None = None,
        snapshot_id: str | None = None,
        key_range: KeyRange | None = None,
    ) -> Iterator[tuple[adbc.Cursor, str | None]]:
        """A snapshot with the plan's parameters and `key_range` bound, and, for an incremental plan,
        its upper bound: `high_water` when the export was planned elsewhere, else fixed here."""
        fix_bound = plan.incremental is not None and high_water is None
        with self._transaction(session_name, snapshot_id, fix_bound) as (cursor, bound):
            high_water = bound or high_water
            self._bind(cursor, plan, key_range, upper=high_water if plan.incremental else None)
            yield cursor, high_water

    @staticmethod
    def _count(cursor: adbc.Cursor, plan: ExportPlan, key_range: KeyRange | None = None) -> int:
        cursor.execute(sql.count_statement(plan, key_range))
        (count,) = cursor.fetchone()
        return count

    @staticmethod
    def _extent(cursor: adbc.Cursor, plan: ExportPlan) -> tuple[int, int | None, int | None]:
        cursor.execute(sql.extent_statement(plan))
        return cursor.fetchone()

    def _ranges(
        self, cursor: adbc.Cursor, plan: ExportPlan, streams: int, key_range: KeyRange | None
    ) -> tuple[int, list[sql.Range | None]]:
        """The count and the ranges the streams read: key ranges in key order or within a chunk's
        `key_range`, else page ranges, as many as asked or, when `streams` is 1, as the machine
        and the database allow."""
        if plan.ordered or key_range is not None:
            if streams == 1:
                return self._count(cursor, plan, key_range), [key_range]
            count, low, high = self._extent(cursor, plan)
            return count, split_range(low, high, streams, closed=False)
        cursor.execute(sql.stream_limits_statement(plan))
        pages, per_query, free = cursor.fetchone()
        if streams == 1:
            streams = stream_count(len(os.sched_getaffinity(0)), pages, per_query, free, self.max_streams)
        return self._count(cursor, plan), split_pages(pages, streams) if pages is not None else [None]

    @staticmethod
    def _declared(cursor: adbc.Cursor, plan: ExportPlan) -> tuple[pa.Schema, tuple[str, ...]]:
        """The columns as declared, and those read as text: exact NUMERICs, which Postgres prints
        as text far faster than the driver turns their binary form into text (10M rows of one
        NUMERIC(10,2): 6 s of the client's CPU); the text keeps every digit, and the declared
        type, carried on the reader's schema, still makes each a decimal."""
        cursor.execute(sql.columns_statement(plan))
        declared = cursor.fetch_arrow_table().schema
        as_text = tuple(f.name for f in declared if numeric_type(f) is not None)
        schema = pa.schema([pa.field(f.name, pa.string(), metadata=f.metadata) if f.name in as_text else f for f in declared])
        return schema, as_text

    @staticmethod
    def _reader(
        cursor: adbc.Cursor, plan: ExportPlan, key_range: sql.Range | None, as_text: tuple[str, ...], batch: int
    ) -> pa.RecordBatchReader:
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(batch)})
        cursor.execute(sql.select_statement(plan, key_range, as_text))
        return cursor.fetch_record_batch()

    @contextmanager
    def snapshot_stream(
        self,
        plan: ExportPlan,
        session_name: str,
        streams: int = 1,
        key_range: KeyRange | None = None,
        high_water: str | None = None,
        on_exported: Callable[[], None] | None = None,
    ) -> Iterator[Snapshot]:
        """Count the plan's rows (within `key_range`) and stream them from one snapshot, as up to
        `streams` readers over consecutive key ranges (page ranges for a plan in no order, see
        `_ranges`), each on its own connection.

        The count and the readers see the same snapshot, so the count is exactly the number of rows
        the readers will produce: the first transaction exports its snapshot and the others import
        it before they read (`on_exported` runs in between; tests use it to commit a concurrent
        write). `high_water` is the incremental bound this export reaches.
        """
        with self._snapshot(plan, session_name, high_water, key_range=key_range) as (cursor, high_water):
            snapshot_id = None
            if streams > 1 or not plan.ordered:
                cursor.execute(sql.EXPORT_SNAPSHOT)
                (snapshot_id,) = cursor.fetchone()
            count, ranges = self._ranges(cursor, plan, streams, key_range)
            schema, as_text = self._declared(cursor, plan)
            if len(ranges) > 1:
                self._bind(cursor, plan, ranges[0])
                if on_exported is not None:
                    on_exported()
            with ExitStack() as others:
                # Every connection adopts the snapshot before any starts streaming.
                cursors = [cursor] + [
                    others.enter_context(self._snapshot(plan, session_name, high_water, snapshot_id, r))[0]
                    for r in ranges[1:]
                ]
                batch = batch_bytes(self.batch_size_hint_bytes, plan, len(ranges))
                readers = [
                    GuardedReader(self._reader(c, plan, r, as_text, batch), schema) for c, r in zip(cursors, ranges)
                ]
                try:
                    yield Snapshot(count, readers, high_water)
                finally:
                    for reader in readers:
                        reader.close()

    def split(self, plan: ExportPlan, session_name: str) -> Split:
        """The plan's row count and `plan.chunks` closed key ranges over its key's extent, with the
        incremental bound, all fixed in one snapshot."""
        with self._snapshot(plan, session_name) as (cursor, high_water):
            count, low, high = self._extent(cursor, plan)
            return Split(count, split_range(low, high, plan.chunks, closed=True), high_water)

    def preflight_facts(self, plan: ExportPlan, session_name: str, count: bool) -> tuple[int | None, pa.Schema]:
        """What a format check needs before any row is read: the row count (when `count`) and
        the columns' Arrow types as the export will see them."""
        with self._snapshot(plan, session_name) as (cursor, _):
            rows = self._count(cursor, plan) if count else None
            cursor.execute(sql.columns_statement(plan))
            return rows, cursor.fetch_arrow_table().schema
