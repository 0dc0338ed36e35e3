"""Everything export_platform uses from Dagster's private modules (`dagster._…`), in one place.

Dagster moves these between releases without notice. tests/test_dagster_compat.py imports each
one and checks the shape the project relies on, so an upgrade that moves or changes one fails
there, loudly, instead of in a run worker or the daemon. No other module imports `dagster._…`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType, TickStatus
from dagster._serdes import ConfigurableClassData
from dagster._utils.error import SerializableErrorInfo
from dagster._utils.interrupts import capture_interrupts
from dagster._utils.schedules import is_valid_cron_string

# Log text the project reads back. The tests check each against the code that writes it.
# `execute_run_body` (and the code server's run subprocess) when a run worker starts; its
# metadata carries the pid:
WORKER_STARTED_MESSAGE = "Started process for run"
# The code server when a run process it started dies ("... was terminated by signal 9 (SIGKILL)"):
WORKER_CRASH_MESSAGE = "Run execution process for"
# Qualified class names that prefix a step error's message:
STEP_ERROR_WRAPPER = "dagster._core.errors.DagsterExecutionStepExecutionError"
FAILURE_ERROR = "dagster._core.definitions.events.Failure"
INTERRUPTED_ERROR = "dagster._core.errors.DagsterExecutionInterruptedError"
# The end of the code server's message for a run process that exited 0 without reporting the run's
# end (dagster._utils.get_run_crash_explanation):
WORKER_EXITED_CLEANLY = "unexpectedly exited with code 0."
# Run monitoring's failure reason (RunFailureReason) for a run that never started in time:
START_TIMEOUT_REASON = "START_TIMEOUT"
# The queued-run daemon's engine events when it gives up launching a run (the second after
# `max_user_code_failure_retries` re-queues; dagster/_daemon/run_coordinator/queued_run_coordinator_daemon.py):
DEQUEUE_FAILED_MESSAGES = (
    "Caught an unrecoverable error while dequeuing the run",
    "Run dequeue failed to reach the user code server after",
)
# `report_run_failed`'s message when its caller gives none (a daemon giving up on a run):
FAILED_FROM_OUTSIDE_MESSAGE = "This run has been marked as failed from outside the execution context."
# The start of run monitoring's RUN_CANCELING message for a run past its `dagster/max_runtime`:
MAX_RUNTIME_MESSAGE = "Canceling due to exceeding maximum runtime"


# The next three import on first use: the CLI and daemon modules cost ~0.5 s of imports that
# nothing else (the code server, a run) needs.
def execute_run_body() -> Callable[..., int]:
    """The body of `dagster api execute_run`: reports the worker's pid, executes the run on the
    calling thread (where Dagster's interrupt handling works), shuts its threads down.
    Signature (run_id, instance, write_stream_fn, set_exit_code_on_failure) -> exit code."""
    from dagster._cli.api import _execute_run_command_body

    return _execute_run_command_body


def keep_sigterm() -> None:
    """Leave this process's SIGTERM handler alone during runs. Dagster maps SIGTERM to its SIGINT
    handler whenever it swaps that handler (`_replace_interrupt_signal` calls
    `setup_interrupt_handlers`, at every run and step), which would turn a run worker's SIGTERM
    (drain: finish the run, then exit) into an interrupt of the run."""
    from dagster._utils import interrupts

    interrupts.setup_interrupt_handlers = lambda: None
def failure_without_traceback(message: str) -> Exception:
    """An exception that fails its step with `message` alone. Dagster records any exception that
    ends a step with its stack trace (and an interrupt with the frames of wherever it landed: ~70
    lines of a writer's internals); a requested stop is no crash, and its event should say so and
    no more. Dagster records a `DagsterUserCodeProcessError` carrying one already-serialized error
    as that error (`serializable_error_info_from_exc_info` hoists it), so the step's failure is this
    message with an empty stack, in the run's event log and its console log alike."""
    from dagster._core.errors import DagsterUserCodeProcessError

    error = SerializableErrorInfo(message=message, stack=[], cls_name=None)
    return DagsterUserCodeProcessError(message, user_code_process_error_infos=[error])


def set_storage_engine(storage: object, engine: object) -> None:
    """dagster-postgres's run, event-log and schedule storages each keep their SQLAlchemy engine in
    `_engine` (what their `optimize_for_webserver` replaces); there is no public way to pass one."""
    storage._engine = engine  # type: ignore[attr-defined]


def sensor_daemon() -> ModuleType:
    from dagster._daemon import sensor

    return sensor


def daemon_main() -> Callable[[], None]:
    """`dagster-daemon`'s console entry point."""
    from dagster._daemon.cli import main

    return main


def set_sensor_loop_seconds(seconds: float) -> None:
    """The sensor daemon sleeps `MIN_INTERVAL_LOOP_TIME` (5 s) between loops whatever a sensor's
    `minimum_interval_seconds`; no instance setting changes it (dagster/_daemon/sensor.py)."""
    sensor_daemon().MIN_INTERVAL_LOOP_TIME = seconds


__all__ = [
    "DEQUEUE_FAILED_MESSAGES",
    "DagsterUserCodeUnreachableError",
    "EngineEventData",
    "FAILED_FROM_OUTSIDE_MESSAGE",
    "FAILURE_ERROR",
    "INTERRUPTED_ERROR",
    "MAX_RUNTIME_MESSAGE",
    "START_TIMEOUT_REASON",
    "STEP_ERROR_WRAPPER",
    "WORKER_CRASH_MESSAGE",
    "WORKER_EXITED_CLEANLY",
    "CheckRunHealthResult",
    "ConfigurableClassData",
    "FINISHED_STATUSES",
    "GRPC_INFO_TAG",
    "InstigatorStatus",
    "InstigatorType",
    "SerializableErrorInfo",
    "TickStatus",
    "WORKER_STARTED_MESSAGE",
    "WorkerStatus",
    "capture_interrupts",
    "daemon_main",
    "execute_run_body",
    "failure_without_traceback",
    "is_valid_cron_string",
    "keep_sigterm",
    "sensor_daemon",
    "set_sensor_loop_seconds",
    "set_storage_engine",
]
