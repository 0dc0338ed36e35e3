"""The request table's connection, shared by the sensors and the runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from . import api_keys
from . import table as rt


class RequestStore(dg.ConfigurableResource):
    url: str = Field(
        description="libpq URL of the database holding export_requests (definitions.py: the export source's, "
        "EXPORT_PLATFORM_DATABASE_URL)."
    )
    statement_timeout_ms: int = Field(
        default=10_000, description="Upper bound for any statement on the request table (keeps sensor ticks short)."
    )

    _engine: sa.Engine | None = PrivateAttr(default=None)
    _checked: bool = PrivateAttr(default=False)

    def _pool(self) -> sa.Engine:
        if self._engine is None:
            url, timeout = self.url, self.statement_timeout_ms
            # `creator` accepts any libpq URL or keyword string, as psycopg does.
            self._engine = sa.create_engine(
                "postgresql+psycopg://",
                creator=lambda: psycopg.connect(url, options=f"-c statement_timeout={timeout}"),
                pool_size=2,
                max_overflow=2,
                pool_pre_ping=True,
            )
        return self._engine

    def engine(self) -> sa.Engine:
        """The pool, once the table's schema is known to be this release's (a single read: Dagster
        builds this resource afresh for every tick and run, so it never migrates)."""
        engine = self._pool()
        if not self._checked:
            with engine.connect() as conn:
                rt.check_version(conn)
            self._checked = True
        return engine

    def migrate(self) -> int:
        """Create or upgrade export_requests and the HTTP API's tables beside it (an explicit deploy
        step); returns export_requests' schema version."""
        with self._pool().begin() as conn:
            version = rt.migrate(conn)
            api_keys.migrate(conn)
        self._checked = True
        return version

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        with self.engine().begin() as conn:
            yield conn

    def run(self, statement: sa.Executable) -> sa.CursorResult:
        with self.transaction() as conn:
            return conn.execute(statement)
