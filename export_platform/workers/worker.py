"""One warm run worker: `python -m export_platform.workers.worker` (the supervisor starts it).

It is a fresh interpreter, never a fork: Polars starts threads at import, and a process forked
after that can deadlock. At start it imports Dagster and the code location and opens the
instance, once; then it claims runs from the launch queue one at a time and executes each on its
main thread exactly as `dagster api execute_run` does, so Dagster's interrupt handling (cancel,
maximum runtime) works as in a run process. It exits (and the supervisor starts a fresh one)
after the launcher's `max_runs_per_worker` runs, above `max_rss_mb`, or after any run that did
not succeed: a cancelled or failed run may leave threads or memory behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import uuid

import dagster as dg
import psutil
import psycopg

from ..dagster_compat import capture_interrupts, execute_run_body, setup_interrupt_handlers
from .launcher import WarmPoolRunLauncher
from . import log_to_stderr
from .queue import CHANNEL, LaunchQueue

log = logging.getLogger("export_platform.workers")
BEAT_SECONDS = 0.5
# A lost NOTIFY (e.g. sent while this worker was reconnecting) costs at most this much.
POLL_SECONDS = 1.0


class Worker:
    def __init__(self, instance: dg.DagsterInstance, launcher: WarmPoolRunLauncher, max_runs: int):
        self.instance = instance
        self.launcher = launcher
        self.max_runs = max_runs
        self.queue: LaunchQueue = launcher.queue
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._running: str | None = None  # the run on the main thread, while it executes
        self._interrupted: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._parent = os.getppid()

    def _beat(self) -> None:
        """Heartbeat, and the cancel watch: a code server interrupts its run process on cancel;
        here the flag set by the launcher's `terminate` does, with the same SIGINT."""
        conn = None
        while not self._stop.wait(BEAT_SECONDS):
            try:
                conn = conn or self.queue.connect()
                held, cancel = self.queue.beat(conn, self.worker_id)
            except psycopg.Error as error:
                log.warning("run worker %s: heartbeat failed: %s", self.worker_id, error)
                conn = None
                continue
            with self._lock:
                if cancel and held is not None and held == self._running and self._interrupted != held:
                    self._interrupted = held
                    os.kill(self.pid, signal.SIGINT)
        if conn is not None:
            conn.close()

    def _execute(self, run_id: str) -> dg.DagsterRunStatus:
        with self._lock:
            self._running = run_id
        try:
            with capture_interrupts():
                execute_run_body()(run_id, self.instance, lambda _event: None, False)
        finally:
            with self._lock:
                self._running = None
        run = self.instance.get_run_by_id(run_id)
        return run.status if run else dg.DagsterRunStatus.FAILURE

    def _retire_after(self, status: dg.DagsterRunStatus, runs_done: int) -> str | None:
        rss_mb = psutil.Process().memory_info().rss / 2**20
        log.info("run worker %s: run %d ended %s; RSS %.0f MB", self.worker_id, runs_done, status.value, rss_mb)
        if runs_done >= self.max_runs:
            return f"{runs_done} runs done"
        if rss_mb > self.launcher.max_rss_mb:
            return f"RSS {rss_mb:.0f} MB above {self.launcher.max_rss_mb} MB"
        if status is not dg.DagsterRunStatus.SUCCESS:
            return f"its run ended {status.value}"
        return None

    def serve(self) -> None:
        self.queue.migrate()
        with self.queue.connect() as conn:
            self.queue.register(conn, self.worker_id, self.host, self.pid, self.max_runs)
            conn.execute(f"LISTEN {CHANNEL}")  # a constant identifier
            beat = threading.Thread(target=self._beat, name="run-worker-heartbeat", daemon=True)
            beat.start()
            log.info("run worker %s ready", self.worker_id)
            runs_done, why = 0, None
            try:
                while why is None:
                    if os.getppid() != self._parent:  # its supervisor is gone: nobody would replace it
                        why = "its supervisor is gone"
                        break
                    run_id = self.queue.claim(conn, self.worker_id)
                    if run_id is None:
                        for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                            pass
                        continue
                    status = self._execute(run_id)
                    runs_done += 1
                    why = self._retire_after(status, runs_done)
                    self.queue.release(conn, self.worker_id, run_id, retiring=why is not None)
            except KeyboardInterrupt:  # SIGINT/SIGTERM while idle: stop
                why = "stopped"
            finally:
                self._stop.set()
                beat.join()
                self.queue.deregister(conn, self.worker_id)
            log.info("run worker %s retires: %s", self.worker_id, why)


def main() -> None:
    parser = argparse.ArgumentParser(prog="export_platform.workers.worker")
    parser.add_argument("--max-runs", type=int, help="retire after this many runs (default: the launcher's)")
    max_runs = parser.parse_args().max_runs
    log_to_stderr()
    setup_interrupt_handlers()  # SIGTERM (how Kubernetes and the supervisor stop it) acts as SIGINT
    import adbc_driver_postgresql.dbapi  # noqa: F401  (every export streams through it; the code location imports it lazily)

    from .. import definitions

    definitions.defs.get_repository_def()  # load the code location now, not in the first run
    # Dagster's CLI modules (the run's entry point) and its log capture load on first use: here,
    # not in each worker's first run, which they made 0.1-0.25 s slower.
    execute_run_body()
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        if not isinstance(launcher, WarmPoolRunLauncher):
            raise SystemExit(f"the instance's run launcher is {type(launcher).__name__}, not WarmPoolRunLauncher: no pool to serve")
        instance.compute_log_manager  # noqa: B018  (loaded on first access)
        Worker(instance, launcher, max_runs or launcher.max_runs_per_worker).serve()


if __name__ == "__main__":
    main()
