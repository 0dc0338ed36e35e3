"""The run launcher: hands each launched run to a warm worker, else starts a run process.

A run goes to the pool when a worker with a fresh heartbeat will be free for it; otherwise, or
when the run is tagged `export_platform/isolated` (an export type's `isolated` setting tags all
its runs), it is launched exactly as Dagster's DefaultRunLauncher does (a new process started by
the code server), so no run waits on a pool that is down or busy. See docs/deploy.md.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import dagster as dg
import psutil
import psycopg

from ..dagster_compat import CheckRunHealthResult, ConfigurableClassData, WorkerStatus
from ..naming import ISOLATED_TAG, POOL_TAG
from .process_launcher import LocalWorkerRunLauncher, worker_gone
from .queue import LaunchQueue

# POOL_TAG's value on runs handed to the pool: the health check and terminate take the pool's path for them.
POOL = "pool"


class WarmPoolRunLauncher(LocalWorkerRunLauncher):
    def __init__(
        self,
        postgres_url: str,
        workers: int = 2,
        max_runs_per_worker: int = 50,
        max_rss_mb: int = 1024,
        heartbeat_timeout_seconds: float = 5.0,
        inst_data: ConfigurableClassData | None = None,
    ):
        self.queue = LaunchQueue(postgres_url)
        self.workers = workers
        self.max_runs_per_worker = max_runs_per_worker
        self.max_rss_mb = max_rss_mb
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self._migrated = False
        super().__init__(inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict:
        return {
            "postgres_url": dg.Field(dg.StringSource, description="Dagster's storage database: the launch queue lives there."),
            "workers": dg.Field(int, default_value=2, is_required=False, description="Workers `export-platform workers` keeps alive."),
            "max_runs_per_worker": dg.Field(int, default_value=50, is_required=False, description="A worker is replaced after this many runs."),
            "max_rss_mb": dg.Field(int, default_value=1024, is_required=False, description="A worker above this RSS after a run is replaced."),
            "heartbeat_timeout_seconds": dg.Field(
                float, default_value=5.0, is_required=False,
                description="A worker silent this long is dead: no run is handed to it and its run fails.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)

    def _ensure_tables(self) -> None:
        if not self._migrated:
            self.queue.migrate()
            self._migrated = True

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

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished or run.tags.get(POOL_TAG) != POOL:
            return super().terminate(run_id)
        if self.queue.entry(run_id, self.heartbeat_timeout_seconds) is None:
            return super().terminate(run_id)  # it fell back to a run process after all
        self._instance.report_run_canceling(run)
        if self.queue.withdraw(run_id):  # no worker had it yet
            self._instance.report_run_canceled(run, "Cancelled before a run worker took it")
            return True
        # The worker's heartbeat sees the flag and interrupts its main thread, as a code server
        # interrupts its run process.
        self.queue.request_cancel(run_id)
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if run.tags.get(POOL_TAG) != POOL:
            return super().check_run_worker_health(run)
        entry = self.queue.entry(run.run_id, self.heartbeat_timeout_seconds)
        if entry is None:
            # The worker released it: the run's own events decide its status.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "released by its worker")
        if entry.worker_id is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "waiting for a worker")
        alive = entry.host is not None and entry.fresh
        if alive and entry.host == socket.gethostname():
            alive = psutil.pid_exists(entry.pid) and psutil.Process(entry.pid).status() != psutil.STATUS_ZOMBIE
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=entry.worker_id)
        self.queue.forget(run.run_id)
        pid = entry.pid or entry.worker_id.rsplit(":", 2)[1]
        return CheckRunHealthResult(WorkerStatus.FAILED, worker_gone(pid), run_worker_id=entry.worker_id)
