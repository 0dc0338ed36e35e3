"""Dagster's Postgres storage (dagster-postgres) holding its connections instead of opening one per statement.

`DagsterPostgresStorage` uses SQLAlchemy's NullPool outside the webserver: every event a run
writes, every run and tick the daemon reads, is a new Postgres connection, and so a new server
process. Measured with 10 requests at once (benchmarks/RESULTS.md, 2 Dec 2026): ~2,800
connections to Dagster's database in one benchmark, and Postgres used 15 s of CPU in a 16 s burst
while the run workers used 3 s; on a 2-core machine that queue of connections, not the exports, set
the latency. Here each of the three storages keeps one connection open, plus up to
`MAX_OVERFLOW` short-lived ones while threads (the daemon's, a run's) need more at once: the pool
`dagster-webserver` switches to (`optimize_for_webserver`), with a ping before each use, so that a
connection the server dropped (a restart of Dagster's database) is replaced instead of failing the
statement, and no statement timeout, as before. Configured in dagster.yaml under `storage: custom:`.
"""

from __future__ import annotations

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

from ..dagster_compat import ConfigurableClassData, set_storage_engine

# A pooled connection older than this is replaced (e.g. after a proxy's idle cut-off).
POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 8


class PooledPostgresStorage(DagsterPostgresStorage):
    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider=None,
    ):
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data, token_provider=token_provider)
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            engine = create_pg_engine(
                postgres_url,
                token_provider,
                isolation_level="AUTOCOMMIT",  # as dagster-postgres's own engines
                pool_size=1,
                max_overflow=MAX_OVERFLOW,
                pool_recycle=POOL_RECYCLE_SECONDS,
                pool_pre_ping=True,
            )
            set_storage_engine(storage, engine)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
