"""The incremental bound against writers going flat out (thousands of bounds, zero rows lost), and
its refusal while a prepared transaction is pending.

Each iteration does what an incremental export does, on the real bound statement: fix the bound
(PostgresResource.incremental_bound), begin the snapshot, read the rows in [previous bound,
bound). Writers of every shape stamp rows with their now() meanwhile. Every committed row must
be read exactly once. The margin is 0 here, so the sessions read from pg_stat_activity alone
must hold the bound back: no writer is covered by the margin.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import datetime

import psycopg
import pytest

from export_platform.planning import sql
from export_platform.resources.postgres import IncrementalRefused, PostgresResource
from support.readback import database_beside

BOUNDS = 3_000

# One statement per shape; each keeps its transaction open for a few milliseconds at most.
WRITERS = {
    # A single-statement autocommit insert: now() is the statement's start.
    "autocommit": ["INSERT INTO race (shape) VALUES ('autocommit')"],
    # A transaction that takes its xid at once and commits later.
    "long": ["BEGIN", "INSERT INTO race (shape) VALUES ('long')", "SELECT pg_sleep({pause})", "COMMIT"],
    # One that only reads first (no xid yet, but its now() is already fixed), then writes.
    "read_then_write": [
        "BEGIN",
        "SELECT count(*) FROM race WHERE id < 0",
        "SELECT pg_sleep({pause})",
        "INSERT INTO race (shape) VALUES ('read_then_write')",
        "COMMIT",
    ],
    # Several transactions in one message: the last one's now() is the message's start, and
    # between two of them the session is in no transaction at all.
    "one_message": ["SELECT pg_sleep({pause}); COMMIT; INSERT INTO race (shape) VALUES ('one_message')"],
}


@pytest.fixture
def race_url(database_url) -> str:
    url = database_beside(database_url, "incremental_race")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS race")
        conn.execute(
            "CREATE TABLE race (id bigserial PRIMARY KEY, shape text NOT NULL, stamped timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("CREATE INDEX ON race (stamped)")
    return url


def write(url: str, statements: list[str], stop: threading.Event, failures: list) -> None:
    pace = random.Random(statements[0])
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                pause = pace.uniform(0, 0.004)
                for statement in statements:
                    conn.execute(statement.format(pause=pause))
    except Exception as error:  # the test fails on it rather than on a silently stopped writer
        failures.append(error)


def read_since(conn: psycopg.Connection, lower: str | None, postgres: PostgresResource) -> tuple[str, list[int]]:
    """One export's worth: the bound, then the snapshot, then the rows in [lower, bound)."""
    bound = postgres.incremental_bound(conn)
    conn.execute(sql.BEGIN_SNAPSHOT)
    try:
        if lower is None:
            rows = conn.execute("SELECT id FROM race WHERE stamped < $1::timestamptz", (bound,))
        else:
            query = "SELECT id FROM race WHERE stamped >= $1::timestamptz AND stamped < $2::timestamptz"
            rows = conn.execute(query, (lower, bound))
        ids = [row[0] for row in rows.fetchall()]
    finally:
        conn.execute("ROLLBACK")
    return bound, ids


@pytest.mark.slow
def test_thousands_of_bounds_against_every_writer_shape_lose_no_row(race_url):
    postgres = PostgresResource(url=race_url, incremental_margin_seconds=0)
    stop, failures = threading.Event(), []
    writers = [
        threading.Thread(target=write, args=(race_url, statements, stop, failures), name=shape)
        for shape, statements in WRITERS.items()
    ]
    exported: list[int] = []
    lower = None
    with postgres.control("export_platform:race") as conn:  # the connection an export fixes its bound on
        for writer in writers:
            writer.start()
        try:
            for _ in range(BOUNDS):
                bound, ids = read_since(conn, lower, postgres)
                exported += ids
                if lower is None or datetime.fromisoformat(bound) > datetime.fromisoformat(lower):
                    lower = bound  # as the mark: it never moves back
        finally:
            stop.set()
            for writer in writers:
                writer.join()
        # The writers are done: a last export reaches past every row.
        bound, ids = read_since(conn, lower, postgres)
        exported += ids

    assert not failures
    with psycopg.connect(race_url) as conn:
        committed = conn.execute("SELECT shape, count(*) FROM race GROUP BY shape").fetchall()
        stamped_after = conn.execute("SELECT count(*) FROM race WHERE stamped >= %s", (bound,)).fetchone()[0]
        all_ids = sorted(r[0] for r in conn.execute("SELECT id FROM race"))
    assert stamped_after == 0
    assert {shape for shape, count in committed if count > 50} == set(WRITERS)  # every shape wrote a lot
    duplicates = [i for i, n in Counter(exported).items() if n > 1]
    lost = sorted(set(all_ids) - set(exported))
    assert (duplicates, lost) == ([], [])
    assert len(exported) == len(all_ids)


@pytest.fixture
def two_phase_url(tmp_path_factory) -> str:
    """A Postgres of its own that allows prepared transactions (a restart-only setting)."""
    import pgserver

    pgdata = tmp_path_factory.mktemp("two_phase") / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_prepared_transactions = 2")
    server.cleanup()
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def test_a_pending_prepared_transaction_refuses_the_bound(two_phase_url):
    # Its rows may be stamped at any earlier time, and pg_stat_activity no longer shows it.
    postgres = PostgresResource(url=two_phase_url, incremental_margin_seconds=0)
    with psycopg.connect(two_phase_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE stamped (at timestamptz DEFAULT now())")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO stamped DEFAULT VALUES")
        conn.execute("PREPARE TRANSACTION 'pending_writer'")
        with pytest.raises(IncrementalRefused, match=r"prepared transactions \(pending_writer\)"):
            postgres.check_incremental()
        conn.execute("COMMIT PREPARED 'pending_writer'")
    postgres.check_incremental()
