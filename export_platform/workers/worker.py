"""One warm run worker: `python -m export_platform.workers.worker` (the supervisor starts it).

It is a fresh interpreter, never a fork: Polars starts threads at import, and a process forked
after that can deadlock. At start it imports Dagster and the code location and opens the
instance, once; then it claims runs from the launch queue one at a time and executes each on its
main thread exactly as `dagster api execute_run` does, so Dagster's interrupt handling (cancel,
maximum runtime) works as in a run process.

- It retires (and the supervisor starts a fresh one) after the launcher's `max_runs_per_worker`
  runs or after any run that did not succeed (a cancelled or failed run may leave threads or
  memory behind), but only while no other worker of the pool is retiring: otherwise it keeps
  serving and retires once that one's replacement is ready. Above `max_rss_mb` it retires at once.
- SIGTERM (or SIGINT when idle) drains it: it takes no more runs, finishes the one it runs within
  the grace period, then exits. Past the grace period it interrupts the run (and stops its
  queries, so that the interrupt lands), having written on it that the platform stopped it.
- It rides out a restart of Dagster's Postgres: its connections reconnect, it stays registered.
- It stops a run whose lease it has lost (the pool gave up on it, e.g. after a freeze), and
  publish checks the lease too (ops/lease.py). A run that is already publishing is not
  interrupted for its lease: the fence decides from there.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import threading
import time
import uuid

import dagster as dg
import psutil
import psycopg

from ..dagster_compat import capture_interrupts, execute_run_body, keep_sigterm
from ..naming import session_name
from ..resources.database_url import require_database_url
from ..resources.postgres import PostgresResource
from ..run_failures import LOST_DATABASE, POOL_EVENT, drained
from . import log_to_stderr
from .launcher import NOT_STARTED, WarmPoolRunLauncher
from ..ops.lease import WORKER_ENV, publishing, run_ended
from .queue import CHANNEL, LaunchQueue

log = logging.getLogger("export_platform.workers")
BEAT_SECONDS = 0.5
# A lost NOTIFY (e.g. sent while this worker was reconnecting) costs at most this much.
POLL_SECONDS = 1.0
RECONNECT_SECONDS = 1.0
# How long a worker keeps trying to record that a run ended when Dagster's database was gone as
# it ended (the run would otherwise stay STARTED until its maximum runtime).
RECORD_END_SECONDS = 120.0


class Worker:
    def __init__(
        self, instance: dg.DagsterInstance, launcher: WarmPoolRunLauncher, max_runs: int, grace_seconds: float, supervisor_pid: int
    ):
        self.instance = instance
        self.launcher = launcher
        self.max_runs = max_runs
        self.grace_seconds = grace_seconds
        self.queue: LaunchQueue = launcher.queue
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._running: str | None = None  # the run on the main thread, while it executes
        self._interrupted: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._drain_deadline = float("inf")
        self._parent = supervisor_pid
        self._runs_done = 0
        self._registered = False
        self._unreleased: tuple[str, str | None, bool] | None = None  # (run, why retire, at once)
        self._deferred: str | None = None  # why it retires once the pool's retirement is free
        self._retiring: str | None = None
        self._wakeup: int | None = None  # signals as they arrive (listen_for_signals)

    # --- signals: SIGTERM (and SIGINT outside a run) drain ---
    def drain(self, signum: int, _frame=None) -> None:
        if not self._draining.is_set():
            self._drain_deadline = time.monotonic() + self.grace_seconds
            self._draining.set()
            name = signal.Signals(signum).name
            log.info("run worker %s: %s: draining (grace period %g s)", self.worker_id, name, self.grace_seconds)

    def listen_for_signals(self) -> None:
        """Python runs signal handlers on the main thread between bytecodes: not while that thread
        waits in an export's native code (a Polars sink), for as long as the export lasts. The
        interpreter also writes each signal's number to a wakeup fd as it arrives; the heartbeat
        thread reads it, so that a drain's grace period starts at the SIGTERM."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._wakeup = read

    def _wait_for_beat(self) -> None:
        if self._wakeup is None:
            self._stop.wait(BEAT_SECONDS)
            return
        if select.select([self._wakeup], [], [], BEAT_SECONDS)[0] and signal.SIGTERM in os.read(self._wakeup, 64):
            self.drain(signal.SIGTERM)

    # --- the heartbeat thread ---
    def _beat(self) -> None:
        """Heartbeat, the cancel watch (a code server interrupts its run process on cancel; here
        the flag set by the launcher's `terminate` does, with the same SIGINT), the lease watch,
        and the grace period of a drain."""
        conn = None
        while not self._stop.is_set():
            self._wait_for_beat()
            with self._lock:
                running = self._running
            if running is not None and time.monotonic() > self._drain_deadline:
                self._interrupt(running, "its grace period is over", event=drained(self.grace_seconds))
            try:
                conn = conn or self.queue.connect(bounded=True)
                beat = self.queue.beat(conn, self.worker_id, running, self._draining.is_set())
            except psycopg.Error as error:
                log.warning("run worker %s: heartbeat failed: %s", self.worker_id, error)
                if conn is not None:
                    conn.close()
                conn = None
                continue
            self._registered = self._registered and beat.registered
            if running is not None and not beat.holds and not publishing(running):
                self._interrupt(running, "the pool revoked its lease")
            elif running is not None and beat.cancel_requested:
                self._interrupt(running, "its cancel was requested")
        if conn is not None:
            conn.close()

    def _interrupt(self, run_id: str, why: str, event: str | None = None) -> None:
        with self._lock:
            if self._running != run_id or self._interrupted == run_id:
                return
            self._interrupted = run_id
            log.warning("run worker %s: interrupting run %s: %s", self.worker_id, run_id, why)
            if event is not None:
                try:  # before the interrupt, so that the request row gives this as the cause
                    self.instance.report_engine_event(f"{POOL_EVENT}{event}", self.instance.get_run_by_id(run_id))
                except Exception as error:  # the interrupt matters more than its explanation
                    log.warning("run worker %s: could not record why: %s", self.worker_id, error)
            os.kill(self.pid, signal.SIGINT)
            if event is not None:
                # The interrupt takes effect when the main thread is back in Python: stop the
                # export's queries, as the canceling sensor does on a cancel, so that it is.
                try:
                    PostgresResource(url=require_database_url()).cancel_queries(session_name(run_id))
                except Exception as error:
                    log.warning("run worker %s: could not stop the run's queries: %s", self.worker_id, error)

    # --- runs ---
    def _execute(self, run_id: str) -> dg.DagsterRunStatus:
        try:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:  # e.g. cancelled while it waited
                with self._lock:
                    self._running, self._interrupted = run_id, None
                with capture_interrupts():
                    execute_run_body()(run_id, self.instance, lambda _event: None, False)
        except Exception:  # it reports the run's own failures; this is Dagster's database failing under it
            log.exception("run worker %s: run %s raised", self.worker_id, run_id)
        finally:
            with self._lock:
                self._running = None
                run_ended(run_id)
        return self._ended(run_id)

    def _ended(self, run_id: str) -> dg.DagsterRunStatus:
        """The run's final status. A run that returned without its end recorded lost Dagster's
        database as it ended: while this worker still holds it, record that (retrying until the
        database is back), or it would stay STARTED until its maximum runtime. One that never
        started (the database was gone before it could) goes back to the other workers."""
        deadline = time.monotonic() + RECORD_END_SECONDS
        while True:
            try:
                run = self.instance.get_run_by_id(run_id)
                if run is None or run.is_finished or not self.queue.holds(run_id, self.worker_id, None):
                    return run.status if run else dg.DagsterRunStatus.FAILURE
                if run.status in NOT_STARTED:
                    self.queue.reoffer(run_id, self.worker_id)
                    return run.status
                self.instance.report_engine_event(f"{POOL_EVENT}{LOST_DATABASE}", run)
                self.instance.report_run_failed(run, f"{POOL_EVENT}{LOST_DATABASE}")
                return dg.DagsterRunStatus.FAILURE
            except Exception as error:
                if time.monotonic() > deadline:
                    log.error("run worker %s: could not record the end of run %s: %s", self.worker_id, run_id, error)
                    return dg.DagsterRunStatus.FAILURE
                time.sleep(RECONNECT_SECONDS)

    def _retire_after(self, status: dg.DagsterRunStatus) -> tuple[str | None, bool]:
        """Why to retire after this run, if at all, and whether at once (not waiting for the
        pool's one retirement)."""
        rss_mb = psutil.Process().memory_info().rss / 2**20
        log.info("run worker %s: run %d ended %s; RSS %.0f MB", self.worker_id, self._runs_done, status.value, rss_mb)
        if rss_mb > self.launcher.max_rss_mb:
            return f"RSS {rss_mb:.0f} MB above {self.launcher.max_rss_mb} MB", True
        if self._runs_done >= self.max_runs:
            return f"{self._runs_done} runs done", False
        if status is not dg.DagsterRunStatus.SUCCESS:
            return f"its run ended {status.value}", False
        return self._deferred, False

    def _release(self, conn: psycopg.Connection) -> None:
        run_id, why, at_once = self._unreleased
        retiring = self.queue.release(conn, self.worker_id, run_id, why is not None, at_once)
        self._unreleased = None
        if retiring:
            self._retiring = why
        elif why is not None and self._deferred is None:
            log.info("run worker %s: will retire (%s) once the worker retiring now is replaced", self.worker_id, why)
            self._deferred = why

    # --- the main loop ---
    def _connect(self) -> psycopg.Connection:
        conn = self.queue.connect(bounded=True)
        try:
            self.queue.migrate()
            self.queue.register(conn, self.worker_id, self.host, self.pid, self.max_runs)
            conn.execute(f"LISTEN {CHANNEL}")  # a constant identifier
        except BaseException:
            conn.close()
            raise
        # `dev` and its test wait for "ready" (a line per worker in workers.log).
        log.info("run worker %s %s", self.worker_id, "reconnected" if self._registered else "ready")
        self._registered = True
        return conn

    def _stopping(self) -> str | None:
        if os.getppid() != self._parent:  # its supervisor is gone: nobody would replace it
            return "its supervisor is gone"
        if self._draining.is_set():
            return "drained"
        return self._retiring

    def _step(self, conn: psycopg.Connection) -> None:
        """Release the last run if that is still to do, then claim and execute one run, or wait."""
        if self._unreleased is not None:
            self._release(conn)
            return
        if not self._registered:  # its row was swept while it could not beat
            self.queue.register(conn, self.worker_id, self.host, self.pid, self.max_runs)
            self._registered = True
        if self._deferred is not None and self.queue.retire(conn, self.worker_id):
            self._retiring = self._deferred
            return
        run_id = self.queue.claim(conn, self.worker_id)
        if run_id is None:
            for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                pass
            return
        status = self._execute(run_id)
        self._runs_done += 1
        self._unreleased = (run_id, *self._retire_after(status))
        self._release(conn)

    def serve(self) -> None:
        os.environ[WORKER_ENV] = self.worker_id  # for the lease check in publish, also in step processes
        beat = threading.Thread(target=self._beat, name="run-worker-heartbeat", daemon=True)
        beat.start()
        conn: psycopg.Connection | None = None
        try:
            while (why := self._stopping()) is None or self._unreleased is not None:
                try:
                    conn = conn if conn is not None and not conn.closed else self._connect()
                    if why is not None:  # stopping with its last run still to release: once
                        self._release(conn)
                        continue
                    self._step(conn)
                except psycopg.Error as error:  # Dagster's database restarting, or unreachable
                    log.warning("run worker %s: lost Dagster's database (%s); reconnecting", self.worker_id, error)
                    if conn is not None:
                        conn.close()
                    conn = None
                    if why is not None:
                        break  # the supervisor's sweep releases what is left
                    self._draining.wait(RECONNECT_SECONDS)
        finally:
            self._stop.set()
            beat.join()
            if conn is not None:
                conn.close()
            self._leave(replaced=why is not None and why == self._retiring)
        log.info("run worker %s retires: %s", self.worker_id, why)

    def _leave(self, replaced: bool) -> None:
        """A worker retired to be replaced keeps its row (retiring) until its replacement is
        ready: its supervisor removes it then, so that the pool's next retirement waits for it."""
        if replaced:
            return
        try:
            self.queue.deregister(self.worker_id)
        except psycopg.Error as error:  # the supervisor's sweep removes it
            log.warning("run worker %s: could not deregister: %s", self.worker_id, error)


def main() -> None:
    parser = argparse.ArgumentParser(prog="export_platform.workers.worker")
    parser.add_argument("--max-runs", type=int, help="retire after this many runs (default: the launcher's)")
    parser.add_argument("--grace-period", type=float, help="seconds a drain lets the current run finish (default: the launcher's)")
    parser.add_argument("--supervisor", type=int, help="the supervisor's pid: the worker retires when it is gone (default: the parent)")
    args = parser.parse_args()
    # Given by the supervisor: a parent that died while this worker was still loading would
    # otherwise leave a pid 1 here, and the worker would serve on with nobody to replace or stop it.
    supervisor = args.supervisor or os.getppid()
    log_to_stderr()
    import asyncpg  # noqa: F401  (csv's server path; the code location imports it, and DuckDB, lazily)

    from .. import definitions
    from ..resources import duckdb_scan

    duckdb_scan.database()  # DuckDB and its Postgres scanner, which read every other export: ~0.3 s

    definitions.defs.get_repository_def()  # load the code location now, not in the first run
    # Dagster's CLI modules (the run's entry point) and its log capture load on first use: here,
    # not in each worker's first run, which they made 0.1-0.25 s slower.
    execute_run_body()
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        if not isinstance(launcher, WarmPoolRunLauncher):
            raise SystemExit(f"the instance's run launcher is {type(launcher).__name__}, not WarmPoolRunLauncher: no pool to serve")
        instance.compute_log_manager  # noqa: B018  (loaded on first access)
        grace = launcher.grace_period_seconds if args.grace_period is None else args.grace_period
        worker = Worker(instance, launcher, args.max_runs or launcher.max_runs_per_worker, grace, supervisor)
        keep_sigterm()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, worker.drain)
        worker.listen_for_signals()
        worker.serve()


if __name__ == "__main__":
    main()
