"""Keeps N warm run workers alive: `export-platform workers [--count N]`, and part of `dev`.

Each worker is a new interpreter (`python -m export_platform.workers.worker`, as
export_platform/processes.py's `worker` declares it) in a session of its own, never a fork of this
process: a Ctrl-C in the terminal reaches the supervisor only, which then drains its workers. One
supervisor per host; scale across hosts by running more (e.g. a Kubernetes Deployment's replicas).
The supervisor

- replaces a worker that exits (retired after its runs, or killed), and for one that did not
  retire, fails or re-offers the run it held, saying on the run how it ended (its wait status);
- removes a retired worker's row once its replacement is ready (the pool's one retirement);
- sweeps the hand-off tables every few seconds, for every host: queue rows of ended runs go, a
  run claimed by a worker that is gone (process gone, or silent past the heartbeat timeout) is
  offered to another worker if it had not started, else failed with what was observed, and rows
  of workers that are gone are removed;
- survives Dagster's database going away (it retries), and on SIGTERM or SIGINT drains: each
  worker finishes its run within the grace period (then interrupts it), and whatever is still
  running past the grace period and a margin is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from .. import processes
from ..processes import STOP_MARGIN_SECONDS
from ..run_failures import worker_gone
from . import log_to_stderr
from .launcher import NOT_STARTED, WarmPoolRunLauncher, worker_process
from .queue import RETIRE_SLOT_SECONDS, Holder

log = logging.getLogger("export_platform.workers")
CHECK_SECONDS = 0.2
# A worker that fails within this long of starting is failing to start (bad config, database
# down): wait this long before the next attempt rather than spinning.
RESTART_BACKOFF_SECONDS = 5.0
SWEEP_SECONDS = 5.0
# After a failed attempt at the database, wait this long before the next.
RETRY_SECONDS = 2.0
# A worker row silent this long is gone for good, whatever its host (its own supervisor is gone too).
DEAD_AFTER_SECONDS = 60.0


def exit_status(returncode: int) -> str:
    """A worker's wait status, as a person reads it."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        oom = ", e.g. by the out-of-memory killer" if name == "SIGKILL" else ""
        return f"killed by signal {-returncode} ({name}){oom}"
    return f"exited with code {returncode}"


@dataclass
class Slot:
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    reported: bool = False  # its exit is in the supervisor's to-do list


class Supervisor:
    def __init__(
        self, instance: dg.DagsterInstance, launcher: WarmPoolRunLauncher, count: int, max_runs: int | None = None,
        grace_seconds: float | None = None, env: dict[str, str] | None = None, log_path: Path | None = None,
    ):
        self.instance = instance
        self.launcher = launcher
        self.queue = launcher.queue
        self.count = count
        self.grace_seconds = launcher.grace_period_seconds if grace_seconds is None else grace_seconds
        self.worker = processes.worker(os.getpid(), self.grace_seconds, max_runs, env, log_path)
        self.host = socket.gethostname()
        self.stopping = threading.Event()
        self._slots: list[Slot] = []
        self._exits: list[tuple[int, str]] = []  # (pid, how it ended) still to settle in the tables
        self._next_sweep = 0.0
        self._next_attempt = 0.0

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process.poll() is None]

    def _spawn(self) -> Slot:
        return Slot(processes.start(self.worker))

    def run(self) -> None:
        """Until `stop()`; then drains the workers, whatever ended the loop."""
        try:
            self._slots = [self._spawn() for _ in range(self.count)]
            while not self.stopping.wait(CHECK_SECONDS):
                self._tend(respawn=True)
                self._try_settle()
        finally:
            self._stop_workers()

    def _tend(self, respawn: bool) -> None:
        """Note workers that exited, and replace them (no database needed)."""
        for i, slot in enumerate(self._slots):
            code = slot.process.poll()
            if code is None:
                continue
            if not slot.reported:
                slot.reported = True
                self._exits.append((slot.process.pid, exit_status(code)))
            if not respawn or (code > 0 and time.monotonic() - slot.started < RESTART_BACKOFF_SECONDS):
                continue  # retried once the backoff has passed
            log.info("run worker pid %s %s; starting another", slot.process.pid, exit_status(code))
            self._slots[i] = self._spawn()

    def _try_settle(self) -> None:
        if time.monotonic() < self._next_attempt:
            return
        try:
            self._settle()
        except Exception as error:  # Dagster's database is away: all of it is retried
            log.warning("run-worker supervisor: %s; retrying in %g s", error, RETRY_SECONDS)
            self._next_attempt = time.monotonic() + RETRY_SECONDS

    def _settle(self) -> None:
        while self._exits:
            self._exited(*self._exits[0])
            self._exits.pop(0)
        if time.monotonic() >= self._next_sweep:
            self.sweep()
            self._next_sweep = time.monotonic() + SWEEP_SECONDS

    def _exited(self, pid: int, how: str) -> None:
        """A worker of this supervisor ended: what it held goes to another worker (not started)
        or fails saying how it ended; its row goes, unless it retired to be replaced."""
        row = next((w for w in self.queue.workers() if w.host == self.host and w.pid == pid), None)
        if row is None:  # it deregistered itself (drained, or its row was swept)
            return
        if row.run_id is not None:
            holder = self.queue.holder(row.run_id)
            if holder is not None and holder.worker_id == row.worker_id:
                self._lost(holder, worker_gone(pid, how))
        if not (row.retiring and row.run_id is None and how == exit_status(0)):
            self.queue.deregister(row.worker_id)

    def _lost(self, holder: Holder, observed: str) -> None:
        record = self.instance.get_run_record_by_id(holder.run_id)
        if record is None or record.dagster_run.is_finished:
            self.queue.forget_runs([holder.run_id])
        elif record.dagster_run.status in NOT_STARTED:
            self.launcher.hand_back(record.dagster_run, holder, observed)
        else:
            self.launcher.give_up(record.dagster_run, holder, observed, fail=True)

    def sweep(self) -> None:
        """The hand-off tables of every host: rows of ended runs, runs held by workers that are
        gone, rows of workers that are gone."""
        holders = self.queue.holders()
        records = {
            r.dagster_run.run_id: r
            for r in self.instance.get_run_records(dg.RunsFilter(run_ids=[h.run_id for h in holders]))
        } if holders else {}
        ended = [h.run_id for h in holders if h.run_id not in records or records[h.run_id].dagster_run.is_finished]
        if ended:
            self.queue.forget_runs(ended)
        for holder in holders:
            if holder.run_id not in ended and (observed := self.launcher.observe(holder)) is not None:
                self._lost(holder, observed)
        waiting = [records[h.run_id].dagster_run for h in holders if h.worker_id is None and h.run_id not in ended]
        if waiting and self.queue.fresh_workers(self.launcher.heartbeat_timeout_seconds) == 0:
            for run in waiting:  # the pool is gone or draining: nobody here will take them
                self.launcher.requeue(run)
        rows = self.queue.workers()
        live = set(self.pids)
        timeout = self.launcher.heartbeat_timeout_seconds
        ready = {r.pid for r in rows if r.host == self.host and not r.retiring and r.silent_seconds < timeout}
        full = len(live) == self.count and live <= ready
        for row in rows:
            if row.host == self.host and row.pid not in live and worker_process(row.pid) is None:
                # A retired worker's row waits (within the retirement slot) until this host's pool is whole again.
                if not (row.retiring and row.run_id is None and not full and row.silent_seconds < RETIRE_SLOT_SECONDS):
                    self.queue.deregister(row.worker_id)
            elif row.silent_seconds > DEAD_AFTER_SECONDS:
                self.queue.deregister(row.worker_id)

    def _stop_workers(self) -> None:
        """Drain: the worker's stop signal (SIGTERM) to each, which finishes its run within the grace
        period; SIGKILL to any still running past its stop time (the grace period and a margin)."""
        live = [slot.process for slot in self._slots if slot.process.poll() is None]
        if live:
            log.info("run-worker supervisor: draining %d workers (grace period %g s)", len(live), self.grace_seconds)
        for worker in live:
            worker.send_signal(self.worker.stop.signal)
        deadline = time.monotonic() + self.worker.stop.grace_seconds
        while any(worker.poll() is None for worker in live) and time.monotonic() < deadline:
            self._tend(respawn=False)
            self._try_settle()  # e.g. runs queued for the pool go back to the run queue
            time.sleep(CHECK_SECONDS)
        for worker in live:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
                overran = f"killed (SIGKILL): it was still running {STOP_MARGIN_SECONDS:g} s after the grace period"
                self._exits.append((worker.pid, overran))
        self._tend(respawn=False)
        self._next_attempt = self._next_sweep = 0.0
        self._try_settle()  # what fails here, the next supervisor's sweep finds

    def stop(self) -> None:
        self.stopping.set()


def serve(count: int | None = None, max_runs: int | None = None, grace_seconds: float | None = None) -> None:
    """`export-platform workers`: the pool in the foreground until SIGTERM or Ctrl-C (a drain);
    its size and limits come from the instance's `run_launcher` config (dagster.yaml)."""
    log_to_stderr()
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        if not isinstance(launcher, WarmPoolRunLauncher):
            raise SystemExit(f"the instance's run launcher is {type(launcher).__name__}, not WarmPoolRunLauncher")
        supervisor = Supervisor(instance, launcher, count or launcher.workers, max_runs, grace_seconds)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: supervisor.stop())
        supervisor.run()
