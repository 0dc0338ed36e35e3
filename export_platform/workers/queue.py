"""The launch queue and the worker registry: two small tables in Dagster's own Postgres.

`export_platform_run_queue` holds one row per run handed to the pool, from launch until the run
ends; a worker claims the oldest unclaimed row with `FOR UPDATE SKIP LOCKED`, so a run goes to
exactly one worker however many are waiting, on however many hosts. `NOTIFY` wakes them (they
also poll once a second, so a lost notification only costs that). `export_platform_run_workers`
is where each worker beats, says which run it holds and whether it will retire after it.
All statements are static SQL with bound parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from sqlalchemy.engine import make_url

CHANNEL = "export_platform_run_queue"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_platform_run_queue (
    run_id text PRIMARY KEY,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    worker_id text,
    claimed_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS export_platform_run_workers (
    worker_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id text,
    runs_done integer NOT NULL DEFAULT 0,
    max_runs integer NOT NULL,
    retiring boolean NOT NULL DEFAULT false
);
"""
# Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog; serialise them.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('export_platform_run_queue'))"

_CAPACITY = """
SELECT
    (SELECT count(*) FROM export_platform_run_queue WHERE worker_id IS NULL) AS waiting,
    coalesce(array_agg(w.run_id) FILTER (WHERE w.run_id IS NOT NULL AND w.runs_done + 1 < w.max_runs), '{}') AS busy_runs,
    count(*) FILTER (WHERE w.run_id IS NULL) AS idle
FROM export_platform_run_workers w
WHERE w.heartbeat_at > clock_timestamp() - make_interval(secs => %(fresh)s) AND NOT w.retiring
"""

_CLAIM = """
WITH next AS (
    SELECT run_id FROM export_platform_run_queue
    WHERE worker_id IS NULL ORDER BY enqueued_at LIMIT 1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE export_platform_run_queue q SET worker_id = %(worker)s, claimed_at = clock_timestamp()
    FROM next WHERE q.run_id = next.run_id RETURNING q.run_id
)
UPDATE export_platform_run_workers w SET run_id = claimed.run_id, heartbeat_at = clock_timestamp()
FROM claimed WHERE w.worker_id = %(worker)s RETURNING w.run_id
"""

_BEAT = """
UPDATE export_platform_run_workers w SET heartbeat_at = clock_timestamp()
WHERE w.worker_id = %(worker)s
RETURNING w.run_id, (SELECT q.cancel_requested FROM export_platform_run_queue q WHERE q.run_id = w.run_id)
"""

_ENTRY = """
SELECT q.worker_id, q.cancel_requested, w.host, w.pid,
       w.heartbeat_at > clock_timestamp() - make_interval(secs => %(fresh)s) AS fresh
FROM export_platform_run_queue q LEFT JOIN export_platform_run_workers w ON w.worker_id = q.worker_id
WHERE q.run_id = %(run_id)s
"""


@dataclass(frozen=True)
class QueueEntry:
    worker_id: str | None  # None: not claimed yet
    cancel_requested: bool
    host: str | None  # None (with a worker_id): that worker is no longer registered
    pid: int | None
    fresh: bool


@dataclass(frozen=True)
class Capacity:
    waiting: int
    busy_runs: list[str]
    idle: int


class LaunchQueue:
    """The two tables, reached through `url` (Dagster's storage database)."""

    def __init__(self, url: str):
        # dagster.yaml's URL names SQLAlchemy's psycopg2 driver; libpq wants the bare scheme.
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=autocommit, application_name="export_platform:run_queue")

    def migrate(self) -> None:
        with self.connect(autocommit=False) as conn:
            conn.execute(_SCHEMA_LOCK)
            conn.execute(_SCHEMA)

    # --- the launcher's side ---
    def enqueue_if_capacity(self, run_id: str, fresh_seconds: float, finished) -> bool:
        """Queue `run_id` if a fresh, non-retiring worker will be free for it: idle, or holding a
        run that has finished (`finished(run_ids)` says which) and not retiring after it, beyond
        the runs already waiting. One launcher at a time decides, so two launches in flight
        cannot both count the same free worker."""
        with self.connect(autocommit=False) as conn:
            conn.execute(_SCHEMA_LOCK)
            waiting, busy_runs, idle = conn.execute(_CAPACITY, {"fresh": fresh_seconds}).fetchone()
            free = idle + (len(finished(busy_runs)) if busy_runs else 0) - waiting
            if free <= 0:
                return False
            conn.execute("INSERT INTO export_platform_run_queue (run_id) VALUES (%s)", (run_id,))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))
        return True

    def entry(self, run_id: str, fresh_seconds: float) -> QueueEntry | None:
        with self.connect() as conn:
            found = conn.execute(_ENTRY, {"run_id": run_id, "fresh": fresh_seconds}).fetchone()
        return QueueEntry(*found) if found else None

    def withdraw(self, run_id: str) -> bool:
        """Removes a run no worker has claimed; False if a worker already holds it."""
        with self.connect() as conn:
            return conn.execute(
                "DELETE FROM export_platform_run_queue WHERE run_id = %s AND worker_id IS NULL", (run_id,)
            ).rowcount == 1

    def request_cancel(self, run_id: str) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE export_platform_run_queue SET cancel_requested = true WHERE run_id = %s", (run_id,))

    def forget(self, run_id: str) -> None:
        with self.connect() as conn:
            conn.execute("DELETE FROM export_platform_run_queue WHERE run_id = %s", (run_id,))

    def fresh_workers(self, fresh_seconds: float) -> int:
        with self.connect() as conn:
            return conn.execute(
                "SELECT count(*) FROM export_platform_run_workers "
                "WHERE heartbeat_at > clock_timestamp() - make_interval(secs => %s)",
                (fresh_seconds,),
            ).fetchone()[0]

    # --- a worker's side (on the worker's own connections) ---
    @staticmethod
    def register(conn: psycopg.Connection, worker_id: str, host: str, pid: int, max_runs: int) -> None:
        conn.execute(
            "INSERT INTO export_platform_run_workers (worker_id, host, pid, max_runs) VALUES (%s, %s, %s, %s)",
            (worker_id, host, pid, max_runs),
        )

    @staticmethod
    def claim(conn: psycopg.Connection, worker_id: str) -> str | None:
        found = conn.execute(_CLAIM, {"worker": worker_id}).fetchone()
        return found[0] if found else None

    @staticmethod
    def beat(conn: psycopg.Connection, worker_id: str) -> tuple[str | None, bool]:
        """Heartbeat; returns (the run this worker holds, whether its cancel was requested)."""
        found = conn.execute(_BEAT, {"worker": worker_id}).fetchone()
        return (found[0], bool(found[1])) if found else (None, False)

    @staticmethod
    def release(conn: psycopg.Connection, worker_id: str, run_id: str, retiring: bool) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM export_platform_run_queue WHERE run_id = %s", (run_id,))
            conn.execute(
                "UPDATE export_platform_run_workers SET run_id = NULL, runs_done = runs_done + 1, retiring = %s "
                "WHERE worker_id = %s",
                (retiring, worker_id),
            )

    @staticmethod
    def deregister(conn: psycopg.Connection, worker_id: str) -> None:
        conn.execute("DELETE FROM export_platform_run_workers WHERE worker_id = %s", (worker_id,))
