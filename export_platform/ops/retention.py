"""The retention cleanup: expired files, orphaned temp files, and Dagster's own run history.

Dagster does not prune run records or event logs by itself; without this job they grow with
every export forever.
"""

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from functools import partial

import dagster as dg
from ..dagster_compat import FINISHED_STATUSES
from pydantic import Field

from ..requests import table as rt
from ..catalog.export_types import REGISTRY
from ..requests.store import RequestStore
from ..resources.storage import ExportStorage, StorageError, remove_tree, tree_size

BATCH = 500
# Files the platform writes without a request row: schedules/<schedule>/<date>/… and, for
# Launchpad runs, <export type>/…. Request files (requests/…) follow their row's expires_at.
SCHEDULE_FOLDER = "schedules"


class RetentionConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Only count what would be deleted; change nothing.")
    orphan_hours: int = Field(
        default=24, description="A temp file this old whose run is no longer in flight is a crashed run's leftover."
    )
    run_history_days: int = Field(
        default=30, description="Keep Dagster's records and event logs of export runs this many days."
    )
    days_without_request: int = Field(
        default=7,
        description="Files of recurring schedules (schedules/…) and of Launchpad runs (<export type>/…), which "
        "have no request row, are deleted this many days after they were written (their time in storage).",
    )


class Tally:
    """What a cleanup step found, freed and failed on; a failure is reported and skipped, never
    stops the step, and fails it at the end so that the run shows it."""

    def __init__(self, context: dg.OpExecutionContext, dry_run: bool):
        self.context, self.dry_run = context, dry_run
        self.files = self.freed = 0
        self.failures: list[str] = []

    def delete(self, what: str, size: int | None, delete: Callable[[], int]) -> bool:
        """Delete a file by calling `delete` (or, in a dry run, count it); False if that failed."""
        try:
            freed = (size or 0) if self.dry_run else delete()
        except (StorageError, OSError) as error:
            self.context.log.error(f"left {what} in place: {error}")
            self.failures.append(f"{what}: {error}")
            return False
        self.files, self.freed = self.files + 1, self.freed + freed
        return True

    def report(self) -> None:
        metadata = {"files": self.files, "bytes_freed": self.freed, "failed": len(self.failures), "dry_run": self.dry_run}
        if self.failures:
            raise dg.Failure(
                description=f"{len(self.failures)} file(s) could not be deleted and stay for the next cleanup; "
                f"first: {self.failures[0]}",
                metadata=metadata,
            )
        self.context.add_output_metadata(metadata)


@dg.op(description="Delete files whose expires_at has passed and mark their requests EXPIRED.")
def expire_files(
    context: dg.OpExecutionContext, config: RetentionConfig, requests: RequestStore, storage: ExportStorage
) -> None:
    tally, after = Tally(context, config.dry_run), None
    while rows := requests.run(rt.expired_files(BATCH, after)).all():
        for row in rows:
            delete = partial(storage.delete_request_file, row.file_key, row.file_uri)
            if tally.delete(f"request {row.id}'s {row.file_uri}", row.file_bytes, delete) and not config.dry_run:
                requests.run(rt.mark_expired(row.id, "retention"))
        after = (rows[-1].expires_at, rows[-1].id)
    tally.report()


@dg.op(
    description="Delete the files of schedules and Launchpad runs (no request row) older than days_without_request."
)
def expire_files_without_request(
    context: dg.OpExecutionContext, config: RetentionConfig, storage: ExportStorage
) -> None:
    tally = Tally(context, config.dry_run)
    cutoff = datetime.now(timezone.utc) - timedelta(days=config.days_without_request)
    for folder in [SCHEDULE_FOLDER, *REGISTRY.names()]:
        for stored in storage.files_under(folder):
            if stored.modified < cutoff:
                tally.delete(stored.key, stored.bytes, partial(storage.delete, stored.key))
    tally.report()


@dg.op(description="Remove the temp folders left by runs that crashed.")
def remove_orphaned_temp_files(
    context: dg.OpExecutionContext, config: RetentionConfig, storage: ExportStorage
) -> None:
    files = freed = 0
    for path in storage.stale_temp_files(config.orphan_hours * 3600):
        run = context.instance.get_run_by_id(path.name.split(".", 1)[0])
        if run is not None and not run.is_finished:
            continue
        files, freed = files + 1, freed + tree_size(path)
        if not config.dry_run:
            remove_tree(path)
    context.add_output_metadata({"files": files, "bytes_freed": freed, "dry_run": config.dry_run})


@dg.op(description="Delete Dagster's run records and event logs of finished export runs past the history window.")
def prune_run_history(context: dg.OpExecutionContext, config: RetentionConfig) -> None:
    cutoff = datetime.now(timezone.utc) - timedelta(days=config.run_history_days)
    runs = 0
    job_names = [t.job_name for t in REGISTRY] + [t.chunked_job_name for t in REGISTRY if t.chunk_key]
    for job_name in job_names:
        records = context.instance.get_run_records(
            dg.RunsFilter(job_name=job_name, statuses=list(FINISHED_STATUSES), updated_before=cutoff)
        )
        runs += len(records)
        if not config.dry_run:
            for record in records:
                context.instance.delete_run(record.dagster_run.run_id)
    context.add_output_metadata({"runs": runs, "dry_run": config.dry_run})


@dg.job(
    name="retention_cleanup",
    description="Deletes expired exports, old files of schedules and Launchpad runs, crashed runs' temp files "
    "and old export run history.",
    executor_def=dg.in_process_executor,
)
def retention_cleanup() -> None:
    expire_files()
    expire_files_without_request()
    remove_orphaned_temp_files()
    prune_run_history()


def cleanup_run_config(dry_run: bool) -> dict:
    config = {"config": {"dry_run": dry_run}}
    ops = ("expire_files", "expire_files_without_request", "remove_orphaned_temp_files", "prune_run_history")
    return {"ops": {name: config for name in ops}}
