"""Keeps N warm run workers alive: `export-platform workers [--count N]`, and part of `dev`.

Each worker is a new interpreter (`python -m export_platform.workers.worker`), never a fork of
this process. A worker that exits (retired after its runs, or killed) is replaced; one that was
killed is also removed from the registry at once, so run monitoring fails the run it held on
its next poll instead of waiting for the heartbeat to go stale. One supervisor per host; scale
across hosts by running more (e.g. a Kubernetes Deployment's replicas).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import log_to_stderr
from .queue import LaunchQueue

log = logging.getLogger("export_platform.workers")
CHECK_SECONDS = 0.2
# A worker that fails within this long of starting is failing to start (bad config, database
# down): wait this long before the next attempt rather than spinning.
RESTART_BACKOFF_SECONDS = 5.0


class Supervisor:
    def __init__(
        self, queue: LaunchQueue, count: int, max_runs: int | None = None,
        env: dict[str, str] | None = None, log_path: Path | None = None,
    ):
        self.queue = queue
        self.count = count
        self.max_runs = max_runs
        self.env = env
        self.log_path = log_path
        self.stopping = threading.Event()
        self._workers: list[tuple[subprocess.Popen, float]] = []

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker, _ in self._workers if worker.poll() is None]

    def _spawn(self) -> tuple[subprocess.Popen, float]:
        out = self.log_path.open("ab") if self.log_path else None
        try:
            worker = subprocess.Popen(
                [sys.executable, "-m", "export_platform.workers.worker", *(["--max-runs", str(self.max_runs)] if self.max_runs else [])],
                env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None,
            )
        finally:
            if out:
                out.close()
        return worker, time.monotonic()

    def _forget(self, worker: subprocess.Popen) -> None:
        """A worker killed by a signal could not deregister itself; do it for it."""
        with self.queue.connect() as conn:
            conn.execute(
                "DELETE FROM export_platform_run_workers WHERE pid = %s AND host = %s", (worker.pid, socket.gethostname())
            )

    def run(self) -> None:
        """Until `stop()`."""
        self.queue.migrate()
        self._workers = [self._spawn() for _ in range(self.count)]
        while not self.stopping.wait(CHECK_SECONDS):
            for i, (worker, started) in enumerate(self._workers):
                if worker.poll() is None:
                    continue
                if worker.returncode < 0:
                    self._forget(worker)
                if worker.returncode > 0 and time.monotonic() - started < RESTART_BACKOFF_SECONDS:
                    continue  # retried once the backoff has passed
                log.info("run worker pid %s exited with %s; starting another", worker.pid, worker.returncode)
                self._workers[i] = self._spawn()
        self._stop_workers()

    def _stop_workers(self) -> None:
        for worker, _ in self._workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker, _ in self._workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    def stop(self) -> None:
        self.stopping.set()


def serve(count: int | None = None, max_runs: int | None = None) -> None:
    """`export-platform workers`: the pool in the foreground until SIGTERM or Ctrl-C; its size
    and limits come from the instance's `run_launcher` config (dagster.yaml)."""
    import dagster as dg

    from .launcher import WarmPoolRunLauncher

    log_to_stderr()
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        if not isinstance(launcher, WarmPoolRunLauncher):
            raise SystemExit(f"the instance's run launcher is {type(launcher).__name__}, not WarmPoolRunLauncher")
        supervisor = Supervisor(launcher.queue, count or launcher.workers, max_runs)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stop())
    supervisor.run()
