"""Dagster's DefaultRunLauncher, plus the worker health check that run monitoring needs.

The default launcher starts each run worker as a child of the code server, and only that code
server notices the worker dying. When the code server is gone too (killed with it, restarted, or
the host rebooted), run monitoring cannot ask the default launcher about the worker, and the run
(and its request row) would stay STARTED until its maximum runtime. The worker logs its pid when
it starts; this launcher checks that the process still exists. On Kubernetes, the
K8sRunLauncher has its own check (see docs/deploy.md).
"""

from __future__ import annotations

import json
import socket

import psutil
from dagster import DagsterEventType, DagsterInstance, DefaultRunLauncher
from dagster import DagsterRun

from ..dagster_compat import GRPC_INFO_TAG, WORKER_STARTED_MESSAGE, CheckRunHealthResult, WorkerStatus
from ..run_failures import worker_gone

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
# The pid is logged just after the process starts; a process created later than this after the
# log entry is another process that reused the pid.
_PID_REUSE_SLACK_SECONDS = 5.0


def _is_local(run: DagsterRun) -> bool:
    info = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    return "socket" in info or info.get("host") in _LOCAL_HOSTS | {socket.gethostname()}


def run_worker(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The run worker's pid and the time it logged it, from the run's engine events."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if event and event.message and event.message.startswith(WORKER_STARTED_MESSAGE):
            pid = event.engine_event_data.metadata.get("pid")
            if pid is not None:
                return int(pid.value), record.timestamp
    return None


class LocalWorkerRunLauncher(DefaultRunLauncher):
    """Launches like DefaultRunLauncher; reports a worker FAILED once its process is gone."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        # Run monitoring fails the run on any status but RUNNING or SUCCESS, so "cannot tell" must
        # be RUNNING: the maximum runtime still ends such a run.
        if not _is_local(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING, "worker on another host; not checked")
        worker = run_worker(self._instance, run.run_id)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "worker has not logged its pid yet")
        pid, logged_at = worker
        try:
            process = psutil.Process(pid)
            alive = process.status() != psutil.STATUS_ZOMBIE
            alive = alive and process.create_time() <= logged_at + _PID_REUSE_SLACK_SECONDS
        except psutil.NoSuchProcess:
            alive = False
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        gone = worker_gone(pid, "killed (e.g. out of memory) or its host restarted")
        return CheckRunHealthResult(WorkerStatus.FAILED, gone, run_worker_id=str(pid))
