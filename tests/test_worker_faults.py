"""The warm run-worker pool under faults, as an operator meets them: Postgres restarting under a
real daemon and pool, workers killed, frozen (SIGSTOP) or lost at each phase of a run (claimed,
running, recording, after publishing), leftovers in the hand-off tables, recycling under a burst.

Dagster's storage and the app database share one private embedded server here (one Postgres, as
in most deployments), so restarting it disturbs no other test module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psutil
import psycopg
import pytest
from psycopg import sql as pgsql

from support.daemon_stack import (
    export_sessions,
    files_in,
    restart_postgres,
    restartable_daemon_stack,
    runs_for,
    wait_for,
    wait_status,
)
from support.request_rows import insert, row
from export_platform.naming import POOL_TAG
from export_platform.naming import POOL
from export_platform.workers.process_launcher import run_worker
from export_platform.workers.queue import LaunchQueue

pytestmark = pytest.mark.slow

COUNT = 3
DONE = {"COMPLETED", "FAILED", "CANCELLED"}
BIG_USERS = 3_000_000  # still streaming when a test freezes its worker
SEEDS = {"ledger_postings": 3_000, "users": BIG_USERS}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with restartable_daemon_stack(tmp_path_factory.mktemp("pool"), SEEDS, COUNT) as stack:
        yield stack



@pytest.fixture(autouse=True)
def whole_pool(stack):
    """Each test starts with the pool whole, and leaves it running."""
    if stack.workers is None or stack.workers.poll() is not None:
        stack.start_workers(COUNT)
    wait_for(lambda: len(pool_pids(stack)) == COUNT, 180, "the pool whole")
    yield
    if stack.workers is None or stack.workers.poll() is not None:
        stack.start_workers(COUNT)


def queue(stack) -> LaunchQueue:
    return stack.instance.run_launcher.queue


def registry(stack) -> list[tuple]:
    """(worker_id, host, pid, run_id, retiring, seconds since its heartbeat) per registered worker."""
    with queue(stack).connect() as conn:
        return conn.execute(
            "SELECT worker_id, host, pid, run_id, retiring, extract(epoch FROM clock_timestamp() - heartbeat_at) "
            "FROM export_platform_run_workers"
        ).fetchall()


def pool_pids(stack) -> set[int]:
    """Workers that take runs: registered, not retiring, beating, process alive."""
    timeout = stack.instance.run_launcher.heartbeat_timeout_seconds
    return {pid for _, _, pid, _, retiring, age in registry(stack) if not retiring and age < timeout and psutil.pid_exists(pid)}


def queued_runs(stack) -> list[str]:
    with queue(stack).connect() as conn:
        return [r for (r,) in conn.execute("SELECT run_id FROM export_platform_run_queue")]


def hand_off_tables_clean(stack) -> bool:
    """No row for a dead worker (on this host) nor for an ended run."""
    workers_alive = all(psutil.pid_exists(pid) for _, host, pid, *_ in registry(stack) if host == socket.gethostname())
    runs = [stack.instance.get_run_by_id(run_id) for run_id in queued_runs(stack)]
    return workers_alive and all(run is not None and not run.is_finished for run in runs)


def run_of(stack, request_id) -> str:
    return wait_for(lambda: (runs := runs_for(stack.instance, request_id)) and runs[0].dagster_run.run_id, what="the run")


def pid_of(stack, run_id) -> int:
    return wait_for(lambda: run_worker(stack.instance, run_id), 60, "the run's worker pid")[0]


def streaming(app, request_id) -> dict:
    return wait_for(lambda: (r := row(app, request_id))["progress_rows"] and r, what="the export to stream")


def engine_messages(stack, run_id) -> list[str]:
    return [r.dagster_event.message or "" for r in stack.instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]


# --- point 1: a Postgres restart ---

def test_a_postgres_restart_keeps_every_worker_and_the_next_request_finds_one(stack):
    before = pool_pids(stack)
    restart_postgres(stack.postgres)

    # The same processes ride it out: reconnected, still registered, beating; nothing left behind.
    wait_for(lambda: pool_pids(stack) == before, 120, "every worker back after the restart")
    assert {pid for _, _, pid, *_ in registry(stack)} == before
    with psycopg.connect(stack.app_url, autocommit=True) as app:
        final = wait_status(app, insert(app, "ledger_postings", "parquet", user="after-restart@example.com"), DONE)
    assert final["status"] == "COMPLETED", final["error"]
    run = stack.instance.get_run_by_id(final["run_id"])
    assert run.tags[POOL_TAG] == POOL and pid_of(stack, run.run_id) in before


# --- point 8: the supervisor rides out Postgres being away ---

def test_the_supervisor_survives_a_worker_dying_while_postgres_is_down(stack):
    from pgserver.postgres_server import pg_ctl

    pg = stack.postgres
    supervisor = psutil.Process(stack.workers.pid)
    victim = next(iter(pool_pids(stack)))
    # The supervisor is held (SIGSTOP) so that it finds the worker killed only once Postgres is down.
    supervisor.suspend()
    try:
        os.kill(victim, signal.SIGKILL)
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=pg.system_user)
        supervisor.resume()
        # It cannot clean up after the worker and keeps going: it starts another one and stays up.
        replaced = lambda: len(children := [c.pid for c in supervisor.children()]) == COUNT and victim not in children  # noqa: E731
        wait_for(lambda: stack.workers.poll() is not None or replaced(), 60, "the supervisor to replace the killed worker")
        assert stack.workers.poll() is None
    finally:
        supervisor.resume()
        pg.ensure_postgres_running()
    wait_for(lambda: len(pool_pids(stack)) == COUNT and victim not in {p for _, _, p, *_ in registry(stack)}, 180,
             "the pool whole again, without the killed worker's row")
    assert stack.workers.poll() is None


# --- point 3: a worker lost between claiming a run and starting it ---

CLAIMING_WORKER = """
import os, socket, sys, time
from export_platform.workers.queue import LaunchQueue
queue, worker = LaunchQueue(sys.argv[1]), sys.argv[2]
with queue.connect() as conn:
    LaunchQueue.register(conn, worker, socket.gethostname(), os.getpid(), 50)
    while True:  # beats and claims, and never starts what it claimed
        LaunchQueue.beat(conn, worker, None, False)
        LaunchQueue.claim(conn, worker)
        time.sleep(0.1)
"""


def claimed_by_a_worker_that_dies(stack, app, user: str) -> tuple[int, str]:
    """With the pool stopped, a worker process claims the request's run, then is SIGKILLed."""
    stack.stop_workers()
    worker_id = f"{socket.gethostname()}:claimer:{user}"
    claimer = subprocess.Popen([sys.executable, "-c", CLAIMING_WORKER, queue(stack).conninfo, worker_id])
    try:
        wait_for(lambda: worker_id in [w for w, *_ in registry(stack)], 60, "the claiming worker to register")
        request_id = insert(app, "ledger_postings", "csv", user=user)
        run_id = run_of(stack, request_id)
        wait_for(lambda: (h := queue(stack).holder(run_id)) and h.worker_id == worker_id, 60, "the claim")
    finally:
        claimer.kill()
        claimer.wait()
    return request_id, run_id


def test_a_run_claimed_by_a_worker_that_died_before_starting_it_goes_to_another_worker(stack, app):
    request_id, run_id = claimed_by_a_worker_that_dies(stack, app, "claimed@example.com")
    stack.start_workers(COUNT)
    # Well before run monitoring's 180 s start timeout.
    final = wait_status(app, request_id, DONE, timeout=120)
    assert final["status"] == "COMPLETED", final["error"]
    assert len(runs_for(stack.instance, request_id)) == 1
    assert any("Offered to another run worker" in m for m in engine_messages(stack, run_id))
    wait_for(lambda: hand_off_tables_clean(stack), 60, "the hand-off tables clean")


def test_cancelling_a_run_claimed_by_a_dead_worker_ends_it_at_once(stack, app):
    request_id, run_id = claimed_by_a_worker_that_dies(stack, app, "cancel-claimed@example.com")
    app.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    # Not after run monitoring's 180 s cancel timeout: nobody will ever run it.
    assert wait_status(app, request_id, DONE, timeout=60)["status"] == "CANCELLED"
    assert stack.instance.get_run_by_id(run_id).status is dg.DagsterRunStatus.CANCELED
    assert run_id not in queued_runs(stack)


def test_a_worker_whose_supervisor_died_while_it_was_starting_retires_without_taking_a_run(stack, tmp_path):
    """A supervisor SIGKILLed right after spawning a worker: the worker, still loading, must not
    take the parent it is left with (pid 1) for its supervisor and serve on with nobody to stop it
    (in CI one did, and took the next stack's runs)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    log = tmp_path / "orphan.log"
    with log.open("wb") as out:
        orphan = subprocess.Popen(
            [sys.executable, "-m", "export_platform.workers.worker", "--supervisor", str(gone.pid)],
            env=stack.env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        assert orphan.wait(timeout=120) == 0, log.read_text()
    finally:
        orphan.kill()
    assert "retires: its supervisor is gone" in log.read_text()
    assert orphan.pid not in {pid for _, _, pid, *_ in registry(stack)}


# --- points 5 and 9: a frozen worker ---

def test_a_frozen_worker_fails_its_run_saying_so_and_its_session_ends(stack, app):
    exports_before = files_in(stack.exports)
    request_id = insert(app, "users", "csv", user="frozen@example.com")
    run_id = streaming(app, request_id)["run_id"]
    pid = pid_of(stack, run_id)
    os.kill(pid, signal.SIGSTOP)
    try:
        final = wait_status(app, request_id, DONE, timeout=90)
        assert final["status"] == "FAILED"
        # What was observed: it stopped beating, its process is stopped; not "killed".
        observed = "sent no heartbeat for" in final["error"] and "stopped (SIGSTOP)" in final["error"]
        observed = observed and "killed" not in final["error"]
        # A cancel cannot stop a backend blocked writing to a client that does not read; its
        # session must end while the worker is still frozen, its snapshot with it.
        try:
            ended = wait_for(lambda: not export_sessions(app, run_id), 30, "the frozen worker's session to end")
        except TimeoutError:
            ended = False
        assert (observed, ended) == (True, True), final["error"]
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: not psutil.pid_exists(pid) or pid in pool_pids(stack), 120, "the thawed worker to retire or serve")
    assert row(app, request_id)["status"] == "FAILED"
    assert files_in(stack.exports) == exports_before
    assert stack.instance.get_run_by_id(run_id).status is dg.DagsterRunStatus.FAILURE


# --- point 6: a worker lost while recording its result never publishes ---

class Hold:
    """Statements on a table that match a condition wait, inside their transaction, until the test
    lets go: a trigger waits on an advisory lock the test holds."""

    LOCK = 2106

    def __init__(self, conn: psycopg.Connection, holder: psycopg.Connection):
        self.conn, self.holder = conn, holder

    def waiting(self) -> int:
        """The backend that waits."""
        mine = self.holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        query = "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        return wait_for(lambda: (found := self.conn.execute(query, (mine,)).fetchone()) and found[0], what="a statement held")

    def release(self) -> None:
        self.holder.execute("SELECT pg_advisory_unlock_all()")


@contextmanager
def held(url: str, statement: str, table: str, when: pgsql.Composable) -> Iterator[Hold]:
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (Hold.LOCK,))
        conn.execute(
            "CREATE OR REPLACE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_advisory_xact_lock({Hold.LOCK}); RETURN NEW; END $$"
        )
        conn.execute(pgsql.SQL("CREATE TRIGGER test_hold BEFORE {} ON {} FOR EACH ROW WHEN ({}) EXECUTE FUNCTION test_hold()").format(
            pgsql.SQL(statement), pgsql.Identifier(table), when
        ))
        try:
            yield Hold(conn, holder)
        finally:
            holder.execute("SELECT pg_advisory_unlock_all()")
            conn.execute(pgsql.SQL("DROP TRIGGER IF EXISTS test_hold ON {}").format(pgsql.Identifier(table)))


def test_a_worker_frozen_while_recording_its_result_never_publishes(stack, app):
    exports_before = files_in(stack.exports)
    user = "zombie@example.com"
    # The recording transaction waits inside its UPDATE to COMPLETED until the test lets go.
    completing = pgsql.SQL("NEW.status = 'COMPLETED' AND NEW.requested_by = {}").format(pgsql.Literal(user))
    with held(stack.app_url, "UPDATE", "export_requests", completing) as hold:
        request_id = insert(app, "ledger_postings", "csv", user=user)
        hold.waiting()
        run_id = row(app, request_id)["run_id"]
        pid = pid_of(stack, run_id)
        os.kill(pid, signal.SIGSTOP)  # frozen with its UPDATE done and its COMMIT not yet sent
        hold.release()
        try:
            final = wait_status(app, request_id, DONE, timeout=90)
            assert final["status"] == "FAILED", final
            assert "sent no heartbeat for" in final["error"]
            assert stack.instance.get_run_by_id(run_id).status is dg.DagsterRunStatus.FAILURE
        finally:
            os.kill(pid, signal.SIGCONT)
    # Awake again, it must not complete the row nor leave its file.
    wait_for(lambda: not psutil.pid_exists(pid) or pid in pool_pids(stack), 120, "the thawed worker to retire or serve")
    wait_for(lambda: files_in(stack.exports) == exports_before, 60, "the zombie's file to be taken back")
    assert row(app, request_id)["status"] == "FAILED"
    assert row(app, request_id)["file_uri"] is None


# --- point 7: a worker lost after publishing ---

def test_a_worker_lost_after_publishing_leaves_a_run_that_says_the_file_was_delivered(stack, app):
    request_id = insert(app, "users", "csv", user="delivered@example.com")
    run_id = streaming(app, request_id)["run_id"]
    # Dagster's record of the publish step's success waits until the test lets go.
    published = pgsql.SQL(
        "NEW.run_id = {} AND NEW.step_key = 'publish_export' AND NEW.dagster_event_type = 'STEP_SUCCESS'"
    ).format(pgsql.Literal(run_id))
    with held(queue(stack).conninfo, "INSERT", "event_logs", published) as hold:
        recording = hold.waiting()
        assert row(app, request_id)["status"] == "COMPLETED"  # published and recorded
        os.kill(pid_of(stack, run_id), signal.SIGKILL)
        hold.conn.execute("SELECT pg_terminate_backend(%s)", (recording,))  # its connection dies with it

    final = row(app, request_id)
    assert final["status"] == "COMPLETED" and final["error"] is None
    wait_for(lambda: stack.instance.get_run_by_id(run_id).status is dg.DagsterRunStatus.FAILURE, 60, "the run to fail")
    delivered = wait_for(
        lambda: [m for m in engine_messages(stack, run_id) if "The export was delivered before the run failed" in m],
        60, "the run to say that its file was delivered",
    )
    assert final["file_uri"] in delivered[0] and "do not re-execute" in delivered[0]
    assert row(app, request_id)["status"] == "COMPLETED"


# --- point 8: leftovers in the hand-off tables are swept ---

def test_rows_of_ended_runs_and_gone_workers_are_swept(stack, app):
    final = wait_status(app, insert(app, "ledger_postings", "csv", user="sweep@example.com"), DONE)
    ended_run = final["run_id"]
    wait_for(lambda: ended_run not in queued_runs(stack), 60, "its worker to release it")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    with queue(stack).connect() as conn:
        conn.execute("INSERT INTO export_platform_run_queue (run_id, worker_id) VALUES (%s, 'gone')", (ended_run,))
        conn.execute(
            "INSERT INTO export_platform_run_workers (worker_id, host, pid, max_runs) VALUES (%s, %s, %s, 50)",
            (f"{host}:{dead.pid}:dead", host, dead.pid),
        )
        conn.execute(
            "INSERT INTO export_platform_run_workers (worker_id, host, pid, max_runs, heartbeat_at) "
            "VALUES ('lost-host:1:silent', 'lost-host', 1, 50, clock_timestamp() - interval '10 minutes')"
        )
    wait_for(lambda: ended_run not in queued_runs(stack), 60, "the ended run's queue row to go")
    wait_for(
        lambda: not {f"{host}:{dead.pid}:dead", "lost-host:1:silent"} & {w for w, *_ in registry(stack)},
        60, "the gone workers' rows to go",
    )
    assert len(pool_pids(stack)) == COUNT


# --- point 2: recycling never takes the pool down ---

def test_recycling_retires_one_worker_at_a_time(stack, app):
    stack.stop_workers()
    stack.start_workers(COUNT, max_runs=1)
    serving: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            serving.append(len(pool_pids(stack)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for burst in range(3):
            ids = [insert(app, "ledger_postings", "csv", user=f"burst{burst}-{i}@example.com") for i in range(COUNT)]
            finals = [wait_status(app, request_id, DONE, timeout=300) for request_id in ids]
            assert [f["status"] for f in finals] == ["COMPLETED"] * COUNT, [f["error"] for f in finals]
    finally:
        done.set()
        sampler.join()
        stack.stop_workers()
        stack.start_workers(COUNT)
    # Every worker wanted to retire after each run; the pool let one go at a time.
    assert min(serving) >= COUNT - 1, sorted(serving)[:10]


# --- point 2: a launch that fails is retried ---

def test_a_launch_that_cannot_reach_the_code_server_is_retried(stack, app):
    """With the pool stopped runs start as processes through the stack's code server (`dev`'s); while that
    server is frozen, a launch times out (DAGSTER_GRPC_TIMEOUT_SECONDS, 60 s by default, here 20 s)
    and the run goes back to the queue instead of failing; once the server answers it runs."""
    stack.stop_workers()
    stack.stop_daemon()
    stack.env["DAGSTER_GRPC_TIMEOUT_SECONDS"] = "20"  # long enough for a loaded machine to start a run
    stack.start_daemon()
    user = "launch@example.com"  # two runs per user at once (dagster.yaml): a third waits in the queue
    code_server = None
    try:
        with psycopg.connect(stack.app_url) as lock:
            lock.execute("LOCK TABLE ledger_postings IN ACCESS EXCLUSIVE MODE")  # the first two wait on it
            holding = [insert(app, "ledger_postings", "csv", user=user) for _ in range(2)]
            for request_id in holding:
                wait_for(lambda: row(app, request_id)["status"] == "RUNNING", what="a run holding the user's slot")
            one_day = {"filters": {"signup_date_from": "2016-05-01", "signup_date_to": "2016-05-01"}}
            request_id = insert(app, "users", "csv", one_day, user=user)
            run_id = wait_for(
                lambda: (runs := runs_for(stack.instance, request_id)) and runs[0].dagster_run.status is dg.DagsterRunStatus.QUEUED
                and runs[0].dagster_run.run_id,
                what="the third run waiting in the queue",
            )
            code_server = psutil.Process(stack.processes["code-server"].pid)  # the one the daemon launches through
            code_server.suspend()  # SIGSTOP
        # The first two finish; the third's launch meets the frozen code server.
        wait_for(lambda: any("re-submitting the run into the queue" in m for m in engine_messages(stack, run_id)), 180,
                 "the failed launch to put the run back in the queue")
        code_server.resume()
        final = wait_status(app, request_id, DONE, timeout=180)
        assert final["status"] == "COMPLETED", final["error"]
        assert len(runs_for(stack.instance, request_id)) == 1
        assert [row(app, r)["status"] for r in holding] == ["COMPLETED", "COMPLETED"]
    finally:
        if code_server is not None and code_server.is_running():
            code_server.resume()
        stack.stop_daemon()
        del stack.env["DAGSTER_GRPC_TIMEOUT_SECONDS"]
        stack.start_daemon()
