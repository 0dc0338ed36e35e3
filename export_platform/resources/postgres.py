"""The Postgres that holds the data to export (and, later, the request table)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import adbc_driver_postgresql.dbapi as adbc
import dagster as dg
import psycopg
import pyarrow as pa
from pydantic import Field

from .. import sql
from ..embedded_postgres import database_url
from ..planning import ExportPlan


@dataclass
class Snapshot:
    count: int
    reader: pa.RecordBatchReader
    high_water: str | None


class PostgresResource(dg.ConfigurableResource):
    url: str | None = Field(
        default=None,
        description="libpq URL of the source database. Unset: EXPORT_PLATFORM_DATABASE_URL, "
        "else the embedded Postgres under .export_platform/.",
    )
    batch_size_hint_bytes: int = Field(
        default=4 * 1024 * 1024,
        description="Approximate size of each Arrow batch streamed from Postgres; bounds memory per batch.",
    )

    def resolved_url(self) -> str:
        return self.url or database_url()

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.resolved_url(), **kwargs)

    def cancel_queries(self, session_name: str) -> int:
        """Stop the queries of an export's session (its run may be gone); returns how many."""
        with self.connect(autocommit=True) as conn:
            return len(conn.execute(sql.CANCEL_SESSION, (session_name,)).fetchall())

    @contextmanager
    def _snapshot(self, plan: ExportPlan, session_name: str) -> Iterator[tuple[adbc.Cursor, str | None]]:
        """A cursor inside one REPEATABLE READ READ ONLY transaction with the plan's parameters bound,
        and, for an incremental plan, the upper bound fixed in that snapshot.

        `session_name` becomes the connection's application_name, by which a cancel finds the query.
        """
        with adbc.connect(self.resolved_url(), autocommit=True) as conn, conn.cursor() as cursor:
            cursor.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(self.batch_size_hint_bytes)}
            )
            cursor.execute(sql.SET_APPLICATION_NAME, parameters=(session_name,))
            cursor.fetchall()
            cursor.execute(sql.BEGIN_SNAPSHOT)
            try:
                cursor.execute(sql.SET_UTC)
                high_water = None
                if plan.incremental is not None:
                    cursor.execute(sql.SET_UPPER_BOUND)
                    (high_water,) = cursor.fetchone()
                bind = sql.bind_statement(plan)
                if bind:
                    cursor.execute(bind, parameters=sql.parameters(plan))
                    cursor.fetchall()
                yield cursor, high_water
            finally:
                try:
                    cursor.execute("ROLLBACK")  # read-only: nothing to commit
                except adbc.Error:
                    pass  # the connection is gone; the error that ended the export is the one to raise

    @staticmethod
    def _count(cursor: adbc.Cursor, plan: ExportPlan) -> int:
        cursor.execute(sql.count_statement(plan))
        (count,) = cursor.fetchone()
        return count

    @contextmanager
    def snapshot_stream(self, plan: ExportPlan, session_name: str) -> Iterator[Snapshot]:
        """Count and stream the plan's rows inside one snapshot.

        The count and the reader see the same snapshot, so the count is exactly the number of rows
        the reader will produce; `high_water` is the incremental bound this export reaches.
        """
        with self._snapshot(plan, session_name) as (cursor, high_water):
            count = self._count(cursor, plan)
            cursor.execute(sql.select_statement(plan))
            yield Snapshot(count, cursor.fetch_record_batch(), high_water)

    def preflight_facts(self, plan: ExportPlan, session_name: str, count: bool) -> tuple[int | None, pa.Schema]:
        """What a format check needs before any row is read: the row count (when `count`) and
        the columns' Arrow types as the export will see them."""
        with self._snapshot(plan, session_name) as (cursor, _):
            rows = self._count(cursor, plan) if count else None
            cursor.execute(sql.columns_statement(plan))
            return rows, cursor.fetch_arrow_table().schema
