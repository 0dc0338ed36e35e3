"""Why a run failed, as a message a person can act on: for the request row, the CLI and the tests.

Dagster records a failure as a step error wrapped in its own exception types, or as engine and run
events (a worker that died, a run stopped from outside, one that never started); these read them
back. Exceptions are not kept here: each lives beside the code that raises it (RequestError in
planning/values.py, StorageError in resources/storage.py, ...), where its callers look for it.
"""

from __future__ import annotations

import dagster as dg

from .dagster_compat import (
    DEQUEUE_FAILED_MESSAGES,
    FAILED_FROM_OUTSIDE_MESSAGE,
    FAILURE_ERROR,
    INTERRUPTED_ERROR,
    START_TIMEOUT_REASON,
    STEP_ERROR_WRAPPER,
    WORKER_CRASH_MESSAGE,
    WORKER_EXITED_CLEANLY,
    SerializableErrorInfo,
)

# When a run worker dies, the code server that started it logs why (e.g. "[DagsterApiServer] Run
# execution process for … was terminated by signal 9 (SIGKILL)…") and fails the run without a message.
_WORKER_CRASH = WORKER_CRASH_MESSAGE
_WHY = {
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ENGINE_EVENT,
    dg.DagsterEventType.RUN_CANCELING,
    dg.DagsterEventType.RUN_FAILURE,
}
# A step stopped from outside (e.g. by run monitoring at the maximum runtime) fails with this; the
# reason it was stopped is the run's, not the step's.
_INTERRUPTED = INTERRUPTED_ERROR
# A worker that exits with 0 yet never reported the run's end could not write to Dagster's
# database: with Postgres down, the export's connection and the run's event log go together.
_EXITED_CLEANLY = WORKER_EXITED_CLEANLY
LOST_DATABASE = (
    "the run lost its database: Postgres (the export source and Dagster's run storage) was unreachable, so "
    "the run could not finish or record its result; nothing was published. Request the export again once "
    "the database is back."
)
# Run monitoring's reason for a run that was launched but never started (its worker never came up,
# e.g. the daemon or the machine restarted meanwhile).
_START_TIMEOUT = START_TIMEOUT_REASON
NEVER_STARTED = (
    "the platform restarted before the export began: its run never started, nothing was read or written. "
    "Request the export again."
)
# The queue's launch of the run failed (e.g. the code server did not answer in time), on every try.
NOT_LAUNCHED = "the platform could not start the export's run ({}): nothing was read or written. Request the export again."
# Dagster's own words for a run a daemon gave up on without saying why: what the run's events show instead.
FAILED_BEFORE_START = NOT_LAUNCHED.format("Dagster failed its run before it began, e.g. while its database restarted")
FAILED_FROM_OUTSIDE = (
    "Dagster marked the run failed from outside it (its process or its database was lost while it ran): "
    "nothing was published. Request the export again."
)

# What the warm run-worker pool observed about a run it lost: engine events carrying this prefix,
# the first of which is the run's cause (later ones, and steps failing after it, are its consequences).
POOL_EVENT = "Run worker: "
_AGAIN = "Request the export again."


def worker_gone(pid: int | str, observed: str) -> str:
    """A worker process seen to end (its supervisor's wait status, or its pid gone on this host)."""
    return f"the run worker process (pid {pid}) is gone: {observed}; nothing was published. {_AGAIN}"


def worker_silent(pid: int | str, host: str, seconds: float, stopped: bool = False) -> str:
    """A worker that stopped beating: frozen, stopped, or cut off from Dagster's database."""
    why = "its process is stopped (SIGSTOP)" if stopped else "stopped, frozen, or cut off from Dagster's database"
    return (
        f"the run worker (pid {pid} on {host}) sent no heartbeat for {seconds:.0f} s ({why}): the platform "
        f"failed its run and took the run from it, so it cannot publish. {_AGAIN}"
    )


def drained(grace_seconds: float) -> str:
    return (
        "the platform stopped the export: its run worker was shut down (a deploy or restart) and the export did "
        f"not finish within the {grace_seconds:g} s grace period; nothing was published. {_AGAIN}"
    )


def lost_lease(reason: str) -> str:
    return f"the run worker no longer holds this run ({reason}): the export was stopped before publishing. {_AGAIN}"


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed, for a person reading the request row: its steps' root errors, else what
    the pool saw happen to its worker, else why its worker died, else why it was stopped (e.g. its
    maximum runtime), else why it could not be launched, else the run's own message."""
    events = [r.dagster_event for r in instance.all_logs(run_id, of_type=_WHY) if r.dagster_event]
    pool = [m for e in events if (m := _pool_observation(e)) is not None]
    # A step that fails once its run is being stopped fails of the stop: at its maximum runtime,
    # the canceling sensor's cancel of the query can reach the step before the run's interrupt does
    # ("canceling statement due to user request"), and the reason is the run's. Likewise once the
    # pool has given up on the run's worker (a drain past its grace period interrupts the export).
    stopping = next(
        (i for i, e in enumerate(events)
         if e.event_type is dg.DagsterEventType.RUN_CANCELING or _pool_observation(e) is not None),
        len(events),
    )
    steps = [e.step_failure_data.error for e in events[:stopping] if e.is_step_failure and e.step_failure_data.error]
    causes = [m for m in map(root_message, steps) if not m.startswith(_INTERRUPTED)]
    if causes:
        return "; ".join(causes)
    if pool:
        return pool[0]
    crashes = [m[m.index(_WORKER_CRASH) :] for e in events if e.is_engine_event and _WORKER_CRASH in (m := e.message or "")]
    if crashes and crashes[-1].endswith(_EXITED_CLEANLY):
        return f"{LOST_DATABASE} ({crashes[-1]})"
    stopped = [e.message for e in events if e.event_type is dg.DagsterEventType.RUN_CANCELING and e.message]
    run_failures = [e for e in events if e.event_type is dg.DagsterEventType.RUN_FAILURE]
    if any(_failure_reason(e) == _START_TIMEOUT for e in run_failures):
        return NEVER_STARTED
    launches = [e for e in events if e.is_engine_event and (e.message or "").startswith(DEQUEUE_FAILED_MESSAGES)]
    if launches and not (crashes or stopped):
        error = launches[-1].engine_event_data.error
        return NOT_LAUNCHED.format(_without_class(root_message(error)) if error else launches[-1].message)
    failures = [e.message for e in run_failures if e.message]
    if not (crashes or stopped) and failures[-1:] == [FAILED_FROM_OUTSIDE_MESSAGE]:
        started = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
        return FAILED_FROM_OUTSIDE if started else FAILED_BEFORE_START
    # The first request to stop a run carries the reason; later ones are the termination itself.
    return (crashes[-1:] or stopped[:1] or failures[-1:] or ["the run failed"])[0]


def _pool_observation(event: dg.DagsterEvent) -> str | None:
    """The observation in a pool event (the writer's class name may come first: "[Launcher] Run worker: …")."""
    message = event.message or ""
    return message[message.index(POOL_EVENT) + len(POOL_EVENT) :] if event.is_engine_event and POOL_EVENT in message else None


def _failure_reason(event: dg.DagsterEvent) -> str | None:
    reason = getattr(event.event_specific_data, "failure_reason", None)
    return getattr(reason, "value", None)


def _without_class(message: str) -> str:
    """An error's message without the qualified name of its class in front."""
    name, _, rest = message.partition(": ")
    return rest.strip() if rest and " " not in name and "." in name else message


def root_message(error: SerializableErrorInfo) -> str:
    """The innermost cause, without Dagster's "error occurred while executing op" wrapper."""
    while error.message.startswith(STEP_ERROR_WRAPPER) and error.cause is not None:
        error = error.cause
    return error.message.strip().removeprefix(f"{FAILURE_ERROR}: ")
