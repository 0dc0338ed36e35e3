"""The fence at publish: a run on the warm pool publishes only while its worker holds its lease.

The pool revokes a run's lease when it gives up on the worker (no heartbeat past the timeout,
process gone) and only then fails the run; the queued-run coordinator then frees the run's slot,
so another run of the same incremental key may start from the same mark. A worker that was only
frozen or cut off must therefore not publish when it wakes: publish checks the lease before it
places the file and again inside the transaction that records it. That transaction's session is
named after the run (naming.session_name), so the failure sensor's termination of the run's
sessions also ends it, uncommitted, if the worker is lost in between. See docs/design.md,
"Warm run workers: guarantees".
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import dagster as dg
import psycopg
import sqlalchemy as sa

from ..naming import POOL, POOL_TAG, session_name
from ..run_failures import lost_lease

# Set by each worker for itself and the step processes it starts: whose lease a publish checks.
WORKER_ENV = "EXPORT_PLATFORM_RUN_WORKER"
# Runs of this process that passed their first check and are placing and recording their file.
# Their worker does not interrupt them for a lost lease: an interrupt between placing and recording
# could leave the file behind, and from here the fence decides (a cancel or a maximum runtime still
# interrupts them, as before: a cancel that gets there first takes the file back).
_publishing: set[str] = set()


@runtime_checkable
class LeaseKeeper(Protocol):
    """The warm pool's run launcher (workers/launcher.py), as the instance holds it."""

    def holds_lease(self, run_id: str, worker_id: str | None) -> bool:
        """Whether `worker_id` (any worker, for None) holds the run's lease with a fresh heartbeat."""


def publishing(run_id: str) -> bool:
    return run_id in _publishing


def run_ended(run_id: str) -> None:
    _publishing.discard(run_id)


def check_lease(context: dg.OpExecutionContext, record: sa.Connection | None = None) -> None:
    """Fail the step (without retries) unless the run may still publish: not a pool run, or its
    lease is held by this process's worker (any worker, for a step started outside one) with a
    fresh heartbeat. With `record` (the transaction about to record the result), first name that
    transaction's session after the run."""
    if record is not None:
        record.execute(sa.select(sa.func.set_config("application_name", session_name(context.run_id), True)))
    if context.run.tags.get(POOL_TAG) != POOL:
        return
    launcher = context.instance.run_launcher
    if not isinstance(launcher, LeaseKeeper):
        return
    try:
        held = launcher.holds_lease(context.run_id, os.environ.get(WORKER_ENV))
    except psycopg.Error as error:
        raise dg.Failure(lost_lease(f"Dagster's database could not confirm it: {error}".strip()), allow_retries=False) from None
    if not held:
        raise dg.Failure(lost_lease("the pool gave up on its worker and revoked its lease"), allow_retries=False)
    _publishing.add(context.run_id)
