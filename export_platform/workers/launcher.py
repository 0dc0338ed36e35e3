"""The run launcher: hands each launched run to a warm worker, else starts a run process.

A run goes to the pool when a worker with a fresh heartbeat will be free for it; otherwise, or
when the run is tagged `export_platform/isolated` (an export type's `isolated` setting tags all
its runs), it is launched exactly as Dagster's DefaultRunLauncher does (a new process started by
the code server), so no run waits on a pool that is down or busy. See docs/deploy.md.

It is also where the pool decides that a worker holding a run is gone (`observe`) and acts on it,
for run monitoring (`check_run_worker_health`), cancels (`terminate`) and the supervisors' sweeps
alike: the lease is revoked first, then the run is failed, cancelled or offered to another worker,
and what was observed is written on the run for the request row (run_failures.POOL_EVENT).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import dagster as dg
import psutil
import psycopg

from ..dagster_compat import CheckRunHealthResult, ConfigurableClassData, WorkerStatus
from ..naming import ISOLATED_TAG, POOL, POOL_TAG
from ..processes import DEFAULT_GRACE_SECONDS, WORKER_MODULE
from ..run_failures import POOL_EVENT, worker_gone, worker_silent
from .process_launcher import LocalWorkerRunLauncher
from .queue import Holder, LaunchQueue

# A run in these states has not begun executing: a worker lost now may hand it to another.
NOT_STARTED = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING)


def worker_process(pid: int) -> psutil.Process | None:
    """The run worker with this pid on this host, if it still exists (not a zombie, nor another
    program that reused the pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process if WORKER_MODULE in " ".join(process.cmdline()) else None
    except psutil.NoSuchProcess:
        return None


class WarmPoolRunLauncher(LocalWorkerRunLauncher):
    def __init__(
        self,
        postgres_url: str,
        workers: int = 2,
        max_runs_per_worker: int = 50,
        max_rss_mb: int = 1024,
        heartbeat_timeout_seconds: float = 5.0,
        grace_period_seconds: float = DEFAULT_GRACE_SECONDS,
        inst_data: ConfigurableClassData | None = None,
    ):
        self.queue = LaunchQueue(postgres_url)
        self.workers = workers
        self.max_runs_per_worker = max_runs_per_worker
        self.max_rss_mb = max_rss_mb
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self.grace_period_seconds = grace_period_seconds
        self._migrated = False
        super().__init__(inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict:
        return {
            "postgres_url": dg.Field(dg.StringSource, description="Dagster's storage database: the launch queue lives there."),
            "workers": dg.Field(int, default_value=2, is_required=False, description="Workers `export-platform workers` keeps alive."),
            "max_runs_per_worker": dg.Field(
                int, default_value=50, is_required=False,
                description="A worker is replaced after this many runs (one worker of the pool at a time).",
            ),
            "max_rss_mb": dg.Field(int, default_value=1024, is_required=False, description="A worker above this RSS after a run is replaced."),
            "heartbeat_timeout_seconds": dg.Field(
                float, default_value=5.0, is_required=False,
                description="A worker silent this long is dead: no run is handed to it and its run fails.",
            ),
            "grace_period_seconds": dg.Field(
                float, default_value=DEFAULT_GRACE_SECONDS, is_required=False,
                description="On SIGTERM a worker stops taking runs and has this long to finish the one it runs; "
                "past it the export is stopped and its request says so.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def _ensure_tables(self) -> None:
        if not self._migrated:
            self.queue.migrate()
            self._migrated = True

    def fresh_workers(self) -> int:
        """Workers with a fresh heartbeat, not retiring: those that take runs now."""
        self._ensure_tables()
        return self.queue.fresh_workers(self.heartbeat_timeout_seconds)

    def _succeeded(self, run_ids: list[str]) -> list[str]:
        records = self._instance.get_run_records(dg.RunsFilter(run_ids=run_ids, statuses=[dg.DagsterRunStatus.SUCCESS]))
        return [r.dagster_run.run_id for r in records]

    def launch_run(self, context) -> None:
        run = context.dagster_run
        if run.tags.get(ISOLATED_TAG, "").lower() != "true":
            # Tagged first: a terminate arriving while the run is being queued must take the pool's path.
            self._instance.add_run_tags(run.run_id, {POOL_TAG: POOL})
            try:
                self._ensure_tables()
                queued = self.queue.enqueue_if_capacity(run.run_id, self.heartbeat_timeout_seconds, self._succeeded)
                why = "no warm run worker is free"
            except psycopg.Error as error:  # the queue is unreachable: the run must still start
                queued, why = False, f"the launch queue failed ({error})"
            if queued:
                self._instance.report_engine_event("Handed to the warm run-worker pool", run, cls=self.__class__)
                return
            self._instance.add_run_tags(run.run_id, {POOL_TAG: "process"})
            self._instance.report_engine_event(f"Starting a run process: {why}", run, cls=self.__class__)
        super().launch_run(context)

    # --- a worker holding a run, and what the pool does when it is gone ---
    def observe(self, holder: Holder) -> str | None:
        """What shows that the worker holding this run is gone, or None while it may be alive:
        unregistered (its supervisor saw it end), its process gone from this host, or silent
        past the heartbeat timeout (counted from Postgres's start, after a restart)."""
        if holder.worker_id is None:
            return None
        if holder.host is None:
            return worker_gone(holder.worker_pid, "it ended and its supervisor removed it from the pool")
        process = None
        if holder.host == socket.gethostname():
            process = worker_process(holder.pid)
            if process is None:
                return worker_gone(holder.pid, "its process no longer exists (killed, e.g. out of memory, or exited)")
        if holder.silent_seconds is not None and holder.silent_seconds > self.heartbeat_timeout_seconds:
            stopped = process is not None and _status(process) == psutil.STATUS_STOPPED
            return worker_silent(holder.pid, holder.host, holder.silent_seconds, stopped)
        return None

    def give_up(self, run: dg.DagsterRun, holder: Holder, observed: str, fail: bool = False) -> bool:
        """Revoke the run's lease from a worker that is gone and say why on the run (and, with
        `fail`, fail it); False if the lease had meanwhile changed hands."""
        if not self.queue.revoke(run.run_id, holder.worker_id):
            return False
        self._instance.report_engine_event(f"{POOL_EVENT}{observed}", run, cls=self.__class__)
        if fail:
            self._instance.report_run_failed(run, f"{POOL_EVENT}{observed}")
        return True

    def hand_back(self, run: dg.DagsterRun, holder: Holder, observed: str) -> bool:
        """Offer a run that a gone worker had claimed but not started to the other workers."""
        if not self.queue.reoffer(run.run_id, holder.worker_id):
            return False
        self._instance.report_engine_event(
            f"Offered to another run worker: the one that took it never started it ({observed})", run, cls=self.__class__
        )
        return True

    def requeue(self, run: dg.DagsterRun) -> bool:
        """Give a run no worker has claimed back to Dagster's run queue when the pool has no
        worker left to take it (all gone, or draining): the queue launches it again, on a run
        process or on a pool that is back by then. As the queue daemon does with a launch that
        failed to reach the code server."""
        if run.status is not dg.DagsterRunStatus.STARTING or not self.queue.withdraw(run.run_id):
            return False
        self._instance.report_engine_event(
            "Returned to the run queue: no warm run worker is left to take it", run, cls=self.__class__
        )
        self._instance.report_dagster_event(dg.DagsterEvent.job_enqueue(run), run_id=run.run_id)
        return True

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished or run.tags.get(POOL_TAG) != POOL:
            return super().terminate(run_id)
        holder = self.queue.holder(run_id)
        if holder is None:
            return super().terminate(run_id)  # it fell back to a run process after all
        self._instance.report_run_canceling(run)
        if self.queue.withdraw(run_id):  # no worker had it yet
            self._instance.report_run_canceled(run, "Cancelled before a run worker took it")
            return True
        observed = self.observe(holder)
        if observed is not None and self.queue.revoke(run_id, holder.worker_id):
            self._instance.report_run_canceled(run, f"Cancelled; its run worker was already gone: {observed}")
            return True
        # The worker's heartbeat sees the flag and interrupts its main thread, as a code server
        # interrupts its run process.
        self.queue.request_cancel(run_id)
        return True

    def holds_lease(self, run_id: str, worker_id: str | None) -> bool:
        """The fence publish checks (ops/lease.py)."""
        return self.queue.holds(run_id, worker_id, self.heartbeat_timeout_seconds)

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if run.tags.get(POOL_TAG) != POOL:
            return super().check_run_worker_health(run)
        holder = self.queue.holder(run.run_id)
        if holder is None:
            # The worker released it: the run's own events decide its status.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "released by its worker")
        if holder.worker_id is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "waiting for a worker")
        observed = self.observe(holder)
        if observed is None or not self.give_up(run, holder, observed):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=holder.worker_id)
        return CheckRunHealthResult(WorkerStatus.FAILED, observed, run_worker_id=holder.worker_id)


def _status(process: psutil.Process) -> str | None:
    try:
        return process.status()
    except psutil.Error:
        return None
