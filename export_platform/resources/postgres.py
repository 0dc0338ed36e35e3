"""The Postgres that holds the data to export (and, later, the request table).

How an export reads (docs/design.md, "The reader"): a control connection (psycopg) fixes the
incremental bound, opens the export's REPEATABLE READ READ ONLY transaction, exports its snapshot
and counts the rows; every stream (DuckDB's Postgres scanner, one DuckDB connection each, or the
server's own CSV for a csv export it can serve, `sinks/server_csv.py`) imports that snapshot as
its first statement and reads its own range. So the count, every stream and the bound are one
point in time.

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

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import dagster as dg
import psycopg
import pyarrow as pa
from pydantic import Field

from ..errors import ExportFailed, Refused
from ..planning import pg_types, sql
from ..planning.key_ranges import KeyRange
from ..planning.pg_types import Declared
from ..planning.plan import ExportPlan
from ..planning.streams import MAX_STREAMS, Need, Reading, Shown
from . import duckdb_scan
from .lost import ConnectionLost, is_connection_error
from .server_copy import CsvCopy

__all__ = [
    "ConnectionLost", "Extent", "GuardedReader", "IncrementalRefused", "PostgresResource", "Snapshot", "is_connection_error"
]


class StreamClosed(ExportFailed):
    """A batch was asked for after the export's transaction ended."""


def _ended(conn: psycopg.Connection) -> bool:
    """End the control connection's read-only transaction; False when the connection is gone."""
    try:
        conn.execute("ROLLBACK")  # read-only: nothing to commit
        return True
    except (psycopg.Error, OSError):
        return False


class IncrementalRefused(Refused):
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


# Polars queues the batches its writer has not taken yet, with no backpressure on the source
# (pola-rs/polars#26432), and two or more page streams decode faster than its writers take them,
# so that queue, not the batch in hand, sets such an export's memory: page streams read smaller
# batches (benchmarks/RESULTS.md, issue 12). One stream never outpaces its writer.
PAGE_STREAM_BATCH_BYTES = 1 << 20


def batch_bytes(hint: int, plan: ExportPlan, streams: int) -> int:
    """The batch size hint of an export's readers: `hint`, or less for page streams."""
    if streams > 1 and not plan.ordered:
        return min(hint, PAGE_STREAM_BATCH_BYTES)
    return hint


# Bytes a value takes in an Arrow batch, to turn the byte hint into DuckDB's rows per batch; text
# is taken at 24 bytes (an e-mail address and its offset).
_FIXED_WIDTH = {pg_types.BOOL: 1, pg_types.INT2: 2, pg_types.INT4: 4, pg_types.DATE: 4, pg_types.FLOAT4: 4,
                pg_types.NUMERIC: 16, pg_types.INTERVAL: 16, pg_types.UUID: 36}
_VECTOR_ROWS = 2048  # DuckDB's vector: a batch of fewer rows costs as much


def batch_rows(hint_bytes: int, columns: list[Declared]) -> int:
    width = sum(_FIXED_WIDTH.get(c.oid, 8 if c.oid in (pg_types.INT8, pg_types.FLOAT8, pg_types.TIMESTAMP,
                                                       pg_types.TIMESTAMPTZ, pg_types.TIME) else 24) for c in columns)
    return max(_VECTOR_ROWS, hint_bytes // max(width, 1))


@dataclass
class Snapshot:
    count: int
    readers: list[GuardedReader]  # one per key range, in key order (or per page range, in no order)
    high_water: str | None
    copies: list[CsvCopy] = field(default_factory=list)  # the server's CSV instead of readers
    reading: dict[str, str] = field(default_factory=dict)  # how it is read, for the run's metadata


@dataclass(frozen=True)
class Extent:
    """The rows to export, their chunk key's extent and the incremental bound, fixed in one snapshot."""

    count: int
    low: int | None
    high: int | None
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
        default=MAX_STREAMS,
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
    server_csv: bool = Field(
        default=True,
        description="Let the server write a csv export's rows itself (COPY ... FORMAT csv) in no order, whenever "
        "its text is what the writer would write; off: every csv is formatted by the writer (Polars). A csv in "
        "key order is always the writer's: it measured faster there.",
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

    def control(self, session_name: str) -> psycopg.Connection:
        """An autocommit connection named `session_name` (a cancel finds it by that name), whose
        statements take $1, $2, ... placeholders."""
        return self.connect(autocommit=True, application_name=session_name, cursor_factory=psycopg.RawCursor)

    def incremental_bound(self, conn: psycopg.Connection) -> str:
        """The upper bound of an incremental export whose snapshot this connection takes next.

        Refuses (IncrementalRefused) where sessions' transaction starts cannot be seen: without
        them a bound can pass rows a transaction in flight will still commit."""
        sees_every_session, on_standby, prepared, bound = conn.execute(
            sql.INCREMENTAL_BOUND, (self.incremental_margin_seconds,)
        ).fetchone()
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
        with self.control("export_platform:check") as conn:
            self.incremental_bound(conn)

    @contextmanager
    def _snapshot(
        self, plan: ExportPlan, session_name: str, high_water: str | None = None, key_range: KeyRange | None = None
    ) -> Iterator[tuple[psycopg.Connection, str | None]]:
        """The control connection inside the export's REPEATABLE READ READ ONLY transaction, the
        plan's parameters and `key_range` bound, and for an incremental plan its upper bound:
        `high_water` when the export was planned elsewhere, else fixed here just before the
        transaction began. A failure whose connection cannot end its transaction is ConnectionLost."""
        with self.control(session_name) as conn:
            fix_bound = plan.incremental is not None and high_water is None
            high_water = self.incremental_bound(conn) if fix_bound else high_water
            conn.execute(sql.BEGIN_SNAPSHOT)
            try:
                conn.execute(sql.SET_UTC)
                upper = high_water if plan.incremental else None
                if bind := sql.bind_statement(plan, key_range, upper):
                    conn.execute(bind, sql.parameters(plan, key_range, upper))
                yield conn, high_water
            except Exception as error:
                if not _ended(conn) and not isinstance(error, ConnectionLost):
                    raise ConnectionLost(f"lost the database connection: {error}") from error
                raise
            except BaseException:
                _ended(conn)
                raise
            else:
                _ended(conn)

    @staticmethod
    def _declared(conn: psycopg.Connection, plan: ExportPlan) -> list[Declared]:
        """The export's columns as Postgres describes them (no row is read)."""
        cursor = conn.execute(sql.columns_statement(plan))
        return [Declared(c.name, c.type_code, c.type_display, c.precision, c.scale) for c in cursor.description]

    @staticmethod
    def _shown(conn: psycopg.Connection, plan: ExportPlan, reading: Reading, decimals: list[str]) -> tuple[Shown, set[str]]:
        """What `reading` needs to cut its ranges, and which of the `decimals` hold a NaN, in one pass."""
        if reading.needs is Need.EXTENT:
            count, low, high, *nan = conn.execute(sql.extent_statement(plan, decimals)).fetchone()
            shown = Shown(count, low, high)
        else:
            limits = conn.execute(sql.stream_limits_statement(plan)).fetchone() if reading.needs is Need.LIMITS else ()
            count, *nan = conn.execute(sql.count_statement(plan, reading.key_range, decimals)).fetchone()
            shown = Shown(count, None, None, *limits)
        return shown, {c for c, has in zip(decimals, nan) if has}

    @staticmethod
    def _annotated(schema: pa.Schema, columns: list[Declared]) -> pa.Schema:
        """DuckDB's schema with each column's Postgres type in its metadata (for the preflight's
        decisions and messages)."""
        types = {c.name: c.display for c in columns}
        return pa.schema([f.with_metadata({b"postgres:type": types[f.name].encode()}) for f in schema])

    def _stream(
        self, stack: ExitStack, alias: str, plan: ExportPlan, snapshot_id: str, key_range: sql.Range | None,
        upper: str | None, statement: str, rows: int, lost: threading.Event,
    ) -> pa.RecordBatchReader:
        """A DuckDB stream in the snapshot `snapshot_id`, reading `statement` with its range bound;
        ended when `stack` closes, setting `lost` if its connection is gone by then."""
        stream = duckdb_scan.Stream(alias)
        stack.callback(lambda: stream.end() or lost.set())
        stream.execute(f"{sql.import_snapshot(snapshot_id)}; {sql.SET_UTC}")
        if bind := sql.bind_statement(plan, key_range, upper):
            stream.bind(bind, sql.parameters(plan, key_range, upper))
        return stream.reader(statement, rows)

    @contextmanager
    def snapshot_stream(
        self,
        plan: ExportPlan,
        session_name: str,
        reading: Reading,
        high_water: str | None = None,
        on_exported: Callable[[], None] | None = None,
        server_csv: bool = False,
    ) -> Iterator[Snapshot]:
        """Count the plan's rows (within a chunk's key range) and stream them from one snapshot, over
        the ranges `reading` decides from what the snapshot shows (planning/streams.py), each on its
        own connection; with `server_csv`, as the server's CSV instead (`Snapshot.copies`) when it
        is what the writer would write (sinks/server_csv.py).

        The count and the readers see the same snapshot, so the count is exactly the number of rows
        the readers will produce: the control transaction exports its snapshot and every stream
        imports it before it reads (`on_exported` runs in between; tests use it to commit a
        concurrent write). `high_water` is the incremental bound this export reaches.
        """
        from ..sinks import server_csv as server

        with self._snapshot(plan, session_name, high_water, reading.key_range) as (conn, high_water):
            (snapshot_id,) = conn.execute(sql.EXPORT_SNAPSHOT).fetchone()
            columns = self._declared(conn, plan)
            decimals = [c.name for c in columns if c.exact_decimal]
            shown, nan = self._shown(conn, plan, reading, decimals)
            count, ranges = shown.count, reading.ranges(shown)
            if on_exported is not None:
                on_exported()
            upper = high_water if plan.incremental else None
            kind = reading.describe(len(ranges))
            refused = server.refusal(plan, columns) if server_csv and plan.format.is_csv else "not asked"
            if server_csv and refused is None:
                texts = server.texts(columns)
                copies = [
                    CsvCopy(self.resolved_url(), session_name, snapshot_id, sql.bind_statement(plan, r, upper),
                            sql.parameters(plan, r, upper), plan.options.time_zone, sql.csv_statement(plan, texts, r),
                            plan.csv.delimiter, plan.csv.quote_char)
                    for r in ranges
                ]
                yield Snapshot(count, [], high_water, copies, {"reader": f"the server's CSV (COPY), {kind}"})
                return
            reads = pg_types.reads(columns, nan)
            reading = {"reader": f"{duckdb_scan.version()}, {kind}", "columns": pg_types.described(reads, columns)}
            if plan.format.is_csv and server_csv:
                reading["server_csv"] = f"not used: {refused}"
            rows = batch_rows(batch_bytes(self.batch_size_hint_bytes, plan, len(ranges)), columns)
            lost = threading.Event()
            with ExitStack() as stack:
                alias = stack.enter_context(duckdb_scan.attached(self.resolved_url(), session_name))
                try:
                    # Every stream adopts the snapshot before any starts streaming.
                    drivers = [
                        self._stream(stack, alias, plan, snapshot_id, r, upper, sql.select_statement(plan, r, reads), rows, lost)
                        for r in ranges
                    ]
                    schema = self._annotated(drivers[0].schema, columns)
                    readers = [GuardedReader(d, schema) for d in drivers]
                    try:
                        yield Snapshot(count, readers, high_water, reading=reading)
                    finally:
                        for reader in readers:
                            reader.close()
                except Exception as error:
                    stack.close()  # ends every stream, noting any whose connection is gone
                    if lost.is_set() and not isinstance(error, ConnectionLost):
                        raise ConnectionLost(f"lost the database connection: {error}") from error
                    raise

    def extent(self, plan: ExportPlan, session_name: str) -> Extent:
        """The plan's row count and its chunk key's extent, with the incremental bound, all fixed in
        one snapshot: what the chunked job's split cuts its key ranges from."""
        with self._snapshot(plan, session_name) as (conn, high_water):
            count, low, high = conn.execute(sql.extent_statement(plan)).fetchone()
            return Extent(count, low, high, high_water)

    def preflight_facts(self, plan: ExportPlan, session_name: str, count: bool) -> tuple[int | None, pa.Schema]:
        """What a format check needs before any row is read: the row count (when `count`) and
        the columns' Arrow types as the export will see them (as DuckDB reads them, no rows)."""
        with self._snapshot(plan, session_name) as (conn, _):
            rows = conn.execute(sql.count_statement(plan)).fetchone()[0] if count else None
            columns = self._declared(conn, plan)
        with duckdb_scan.attached(self.resolved_url(), session_name) as alias:
            stream = duckdb_scan.Stream(alias)
            try:
                schema = stream.reader(sql.columns_statement(plan, pg_types.reads(columns)), _VECTOR_ROWS).schema
            finally:
                stream.end()
        return rows, self._annotated(schema, columns)
