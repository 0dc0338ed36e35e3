"""The launch queue and the worker registry: two small tables in Dagster's own Postgres.

`export_platform_run_queue` holds one row per run handed to the pool, from launch until the run
ends; a worker claims the oldest unclaimed row with `FOR UPDATE SKIP LOCKED`, so a run goes to
exactly one worker however many are waiting, on however many hosts. `NOTIFY` wakes them (they
also poll once a second, so a lost notification only costs that). `export_platform_run_workers`
is where each worker beats, says which run it holds and whether it will retire after it.

A claimed queue row is the run's *lease*: the worker it names may run and publish the run for as
long as the row names it and the worker's heartbeat is fresh. Whoever decides that a worker is
gone revokes the lease first (deletes or unclaims the row, naming that worker), and only then
fails or re-offers the run, so a worker that was only frozen finds its lease gone when it wakes.
All statements are static SQL with bound parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from sqlalchemy.engine import make_url

CHANNEL = "export_platform_run_queue"
APPLICATION_NAME = "export_platform:run_queue"
# Statements of the heartbeat and the supervisors never wait longer than this (a lock, a server
# that stopped answering): a heartbeat must fail, be counted as missed and be retried, not hang.
STATEMENT_TIMEOUT_MS = 5_000
CONNECT_TIMEOUT_SECONDS = 5

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
# Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog; serialise them. The same
# lock orders capacity decisions (enqueue) and retirements, so neither counts a worker twice.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('export_platform_run_queue'))"

# A heartbeat is fresh (the worker gets runs) if younger than the timeout.
_FRESH = "w.heartbeat_at > clock_timestamp() - make_interval(secs => %(fresh)s)"
# A worker is *silent* (its lease may be revoked) once it has missed the timeout since its last
# beat or since this server started, whichever is later: after a Postgres restart every worker
# gets the timeout to reconnect before anyone declares it gone.
_SILENT_SECONDS = "extract(epoch FROM clock_timestamp() - greatest(w.heartbeat_at, pg_postmaster_start_time()))::float8"

_CAPACITY = f"""
SELECT
    (SELECT count(*) FROM export_platform_run_queue WHERE worker_id IS NULL) AS waiting,
    coalesce(array_agg(w.run_id) FILTER (WHERE w.run_id IS NOT NULL AND w.runs_done + 1 < w.max_runs), '{{}}') AS busy_runs,
    count(*) FILTER (WHERE w.run_id IS NULL) AS idle
FROM export_platform_run_workers w
WHERE {_FRESH} AND NOT w.retiring
"""

_CLAIM = """
WITH next AS (
    SELECT run_id FROM export_platform_run_queue
    WHERE worker_id IS NULL ORDER BY enqueued_at LIMIT 1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE export_platform_run_queue q SET worker_id = %(worker)s, claimed_at = clock_timestamp()
    FROM next WHERE q.run_id = next.run_id RETURNING q.run_id
), mine AS (
    UPDATE export_platform_run_workers w SET run_id = claimed.run_id, heartbeat_at = clock_timestamp()
    FROM claimed WHERE w.worker_id = %(worker)s
)
SELECT run_id FROM claimed
"""

_REGISTER = """
INSERT INTO export_platform_run_workers (worker_id, host, pid, max_runs) VALUES (%(worker)s, %(host)s, %(pid)s, %(max_runs)s)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = clock_timestamp(), run_id = NULL
"""

_BEAT = """
WITH me AS (
    UPDATE export_platform_run_workers SET heartbeat_at = clock_timestamp(), retiring = retiring OR %(draining)s
    WHERE worker_id = %(worker)s RETURNING worker_id
)
SELECT EXISTS (SELECT FROM me), q.worker_id IS NOT DISTINCT FROM %(worker)s, coalesce(q.cancel_requested, false)
FROM (SELECT) AS one LEFT JOIN export_platform_run_queue q ON q.run_id = %(run)s
"""

_HOLDER = f"""
SELECT q.run_id, q.worker_id, q.cancel_requested, w.host, w.pid, {_SILENT_SECONDS} AS silent
FROM export_platform_run_queue q LEFT JOIN export_platform_run_workers w ON w.worker_id = q.worker_id
"""

# The oldest retiring worker younger than this still holds the pool's one retirement: a retired
# worker's row stays (a tombstone) until its replacement is ready, which under load took up to a
# minute. Past this, a replacement that never came no longer blocks the next retirement.
RETIRE_SLOT_SECONDS = 120
_RETIRING_ELSEWHERE = """
EXISTS (SELECT FROM export_platform_run_workers o
        WHERE o.retiring AND o.worker_id <> %(worker)s
          AND o.heartbeat_at > clock_timestamp() - make_interval(secs => %(slot)s))
"""


@dataclass(frozen=True)
class Holder:
    """A queue row and the worker its lease names."""

    run_id: str
    worker_id: str | None  # None: not claimed yet
    cancel_requested: bool
    host: str | None  # None (with a worker_id): that worker is no longer registered
    pid: int | None
    silent_seconds: float | None  # seconds since its last heartbeat (or this server's start)

    @property
    def worker_pid(self) -> str:
        """The pid, also for a worker no longer registered (worker ids are host:pid:nonce)."""
        return str(self.pid) if self.pid is not None else (self.worker_id or "?:?").rsplit(":", 2)[1]


@dataclass(frozen=True)
class Beat:
    registered: bool  # False: the worker's row is gone (swept while it was frozen, or never written)
    holds: bool  # the run it is executing still names it
    cancel_requested: bool


@dataclass(frozen=True)
class WorkerRow:
    worker_id: str
    host: str
    pid: int
    run_id: str | None
    retiring: bool
    silent_seconds: float


class LaunchQueue:
    """The two tables, reached through `url` (Dagster's storage database)."""

    def __init__(self, url: str):
        # dagster.yaml's URL names SQLAlchemy's psycopg2 driver; libpq wants the bare scheme.
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    def connect(self, autocommit: bool = True, bounded: bool = False) -> psycopg.Connection:
        """`bounded`: every statement times out and a dead peer is noticed (TCP keepalives), for
        connections that must never hang (heartbeats, supervisors, the publish check)."""
        options = {}
        if bounded:
            options = {
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            }
        return psycopg.connect(
            self.conninfo, autocommit=autocommit, application_name=APPLICATION_NAME,
            connect_timeout=CONNECT_TIMEOUT_SECONDS, **options,
        )

    def migrate(self) -> None:
        with self.connect(autocommit=False) as conn:
            conn.execute(_SCHEMA_LOCK)
            conn.execute(_SCHEMA)

    # --- the launcher's side ---
    def enqueue_if_capacity(self, run_id: str, fresh_seconds: float, finished: Callable[[list[str]], list[str]]) -> bool:
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

    def holder(self, run_id: str) -> Holder | None:
        with self.connect(bounded=True) as conn:
            found = conn.execute(_HOLDER + " WHERE q.run_id = %s", (run_id,)).fetchone()
        return Holder(*found) if found else None

    def holders(self) -> list[Holder]:
        """Every queue row, for the sweep."""
        with self.connect(bounded=True) as conn:
            return [Holder(*row) for row in conn.execute(_HOLDER)]

    def withdraw(self, run_id: str) -> bool:
        """Removes a run no worker has claimed; False if a worker already holds it."""
        with self.connect() as conn:
            return conn.execute(
                "DELETE FROM export_platform_run_queue WHERE run_id = %s AND worker_id IS NULL", (run_id,)
            ).rowcount == 1

    def request_cancel(self, run_id: str) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE export_platform_run_queue SET cancel_requested = true WHERE run_id = %s", (run_id,))

    def revoke(self, run_id: str, worker_id: str) -> bool:
        """Take the run's lease from `worker_id`; False if the row no longer names that worker."""
        with self.connect(bounded=True) as conn:
            return conn.execute(
                "DELETE FROM export_platform_run_queue WHERE run_id = %s AND worker_id = %s", (run_id, worker_id)
            ).rowcount == 1

    def reoffer(self, run_id: str, worker_id: str) -> bool:
        """Take back a claim from a worker that is gone before it started the run, and wake the
        others; False if the row no longer names that worker."""
        with self.connect(bounded=True) as conn:
            reoffered = conn.execute(
                "UPDATE export_platform_run_queue SET worker_id = NULL, claimed_at = NULL "
                "WHERE run_id = %s AND worker_id = %s",
                (run_id, worker_id),
            ).rowcount == 1
            if reoffered:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))
        return reoffered

    def forget_runs(self, run_ids: list[str]) -> int:
        """Drop the queue rows of runs that have ended."""
        with self.connect(bounded=True) as conn:
            return conn.execute("DELETE FROM export_platform_run_queue WHERE run_id = ANY(%s)", (run_ids,)).rowcount

    def fresh_workers(self, fresh_seconds: float) -> int:
        with self.connect() as conn:
            return conn.execute(
                f"SELECT count(*) FROM export_platform_run_workers w WHERE {_FRESH} AND NOT w.retiring",
                {"fresh": fresh_seconds},
            ).fetchone()[0]

    # --- the lease, checked where a run publishes ---
    def holds(self, run_id: str, worker_id: str | None, fresh_seconds: float | None) -> bool:
        """Whether the run's lease is held by `worker_id` (by any worker if None), not silent for
        longer than `fresh_seconds` (if given; as `silent_seconds` counts): the worker may still
        publish it, and nobody may yet revoke it."""
        with self.connect(bounded=True) as conn:
            return conn.execute(
                "SELECT EXISTS (SELECT FROM export_platform_run_queue q "
                "JOIN export_platform_run_workers w ON w.worker_id = q.worker_id "
                "WHERE q.run_id = %(run)s AND (%(worker)s::text IS NULL OR q.worker_id = %(worker)s) "
                f"AND (%(fresh)s::float8 IS NULL OR {_SILENT_SECONDS} <= %(fresh)s))",
                {"run": run_id, "worker": worker_id, "fresh": fresh_seconds},
            ).fetchone()[0]

    # --- the supervisors' side ---
    def workers(self) -> list[WorkerRow]:
        with self.connect(bounded=True) as conn:
            return [
                WorkerRow(*row) for row in conn.execute(
                    f"SELECT w.worker_id, w.host, w.pid, w.run_id, w.retiring, {_SILENT_SECONDS} "
                    "FROM export_platform_run_workers w"
                )
            ]

    def deregister(self, worker_id: str) -> None:
        with self.connect(bounded=True) as conn:
            conn.execute("DELETE FROM export_platform_run_workers WHERE worker_id = %s", (worker_id,))

    # --- a worker's side (on the worker's own connections) ---
    @staticmethod
    def register(conn: psycopg.Connection, worker_id: str, host: str, pid: int, max_runs: int) -> None:
        conn.execute(_REGISTER, {"worker": worker_id, "host": host, "pid": pid, "max_runs": max_runs})

    @staticmethod
    def claim(conn: psycopg.Connection, worker_id: str) -> str | None:
        found = conn.execute(_CLAIM, {"worker": worker_id}).fetchone()
        return found[0] if found else None

    @staticmethod
    def beat(conn: psycopg.Connection, worker_id: str, run_id: str | None, draining: bool) -> Beat:
        """Heartbeat (a draining worker also stops counting as capacity); says whether the worker
        is still registered, and whether `run_id` (the run it executes) is still its own and
        should be cancelled."""
        return Beat(*conn.execute(_BEAT, {"worker": worker_id, "run": run_id, "draining": draining}).fetchone())

    @staticmethod
    def release(conn: psycopg.Connection, worker_id: str, run_id: str, retire: bool, at_once: bool) -> bool:
        """The worker is done with `run_id` (its queue row goes, if still its own). With `retire`
        it retires after it, if no other worker is retiring (or `at_once`); returns whether it does."""
        with conn.transaction():
            conn.execute(_SCHEMA_LOCK)
            conn.execute(
                "DELETE FROM export_platform_run_queue WHERE run_id = %s AND worker_id = %s", (run_id, worker_id)
            )
            return conn.execute(
                "UPDATE export_platform_run_workers SET run_id = NULL, runs_done = runs_done + 1, "
                f"retiring = retiring OR (%(retire)s AND (%(at_once)s OR NOT {_RETIRING_ELSEWHERE})) "
                "WHERE worker_id = %(worker)s RETURNING retiring",
                {"worker": worker_id, "retire": retire, "at_once": at_once, "slot": RETIRE_SLOT_SECONDS},
            ).fetchone() == (True,)

    @staticmethod
    def retire(conn: psycopg.Connection, worker_id: str) -> bool:
        """An idle worker whose retirement was deferred takes the pool's retirement if it is free."""
        with conn.transaction():
            conn.execute(_SCHEMA_LOCK)
            return conn.execute(
                f"UPDATE export_platform_run_workers SET retiring = true WHERE worker_id = %(worker)s "
                f"AND run_id IS NULL AND NOT {_RETIRING_ELSEWHERE} RETURNING worker_id",
                {"worker": worker_id, "slot": RETIRE_SLOT_SECONDS},
            ).rowcount == 1
