"""The retention cleanup: expired files, orphaned temp files, and Dagster's own run history.

Dagster does not prune run records or event logs by itself; without this job they grow with
every export forever.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
from ..dagster_compat import FINISHED_STATUSES
from pydantic import Field

from .. import requests_table as rt
from ..export_types import REGISTRY
from ..resources.requests import RequestStore
from ..resources.storage import ExportStorage

BATCH = 500


class RetentionConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Only count what would be deleted; change nothing.")
    orphan_hours: int = Field(
        default=24, description="A temp file this old whose run is no longer in flight is a crashed run's leftover."
    )
    run_history_days: int = Field(
        default=30, description="Keep Dagster's records and event logs of export runs this many days."
    )


@dg.op(description="Delete files whose expires_at has passed and mark their requests EXPIRED.")
def expire_files(
    context: dg.OpExecutionContext, config: RetentionConfig, requests: RequestStore, storage: ExportStorage
) -> None:
    files = freed = 0
    while rows := requests.run(rt.expired_files(BATCH)).all():
        for row in rows:
            files += 1
            if config.dry_run:
                freed += row.file_bytes or 0
                continue
            freed += storage.delete(row.file_uri)
            requests.run(rt.mark_expired(row.id, "retention"))
        if config.dry_run:
            break  # nothing changed, so the next page would be the same rows
    context.add_output_metadata({"files": files, "bytes_freed": freed, "dry_run": config.dry_run})


@dg.op(description="Remove temp files left by runs that crashed.")
def remove_orphaned_temp_files(
    context: dg.OpExecutionContext, config: RetentionConfig, storage: ExportStorage
) -> None:
    files = freed = 0
    for path in storage.stale_temp_files(config.orphan_hours * 3600):
        run = context.instance.get_run_by_id(path.name.split(".", 1)[0])
        if run is not None and not run.is_finished:
            continue
        files, freed = files + 1, freed + path.stat().st_size
        if not config.dry_run:
            path.unlink(missing_ok=True)
    context.add_output_metadata({"files": files, "bytes_freed": freed, "dry_run": config.dry_run})


@dg.op(description="Delete Dagster's run records and event logs of finished export runs past the history window.")
def prune_run_history(context: dg.OpExecutionContext, config: RetentionConfig) -> None:
    cutoff = datetime.now(timezone.utc) - timedelta(days=config.run_history_days)
    runs = 0
    for export_type in REGISTRY:
        records = context.instance.get_run_records(
            dg.RunsFilter(job_name=export_type.job_name, statuses=list(FINISHED_STATUSES), updated_before=cutoff)
        )
        runs += len(records)
        if not config.dry_run:
            for record in records:
                context.instance.delete_run(record.dagster_run.run_id)
    context.add_output_metadata({"runs": runs, "dry_run": config.dry_run})


@dg.job(
    name="retention_cleanup",
    description="Deletes expired exports, crashed runs' temp files and old export run history.",
    executor_def=dg.in_process_executor,
)
def retention_cleanup() -> None:
    expire_files()
    remove_orphaned_temp_files()
    prune_run_history()


def cleanup_run_config(dry_run: bool) -> dict:
    config = {"config": {"dry_run": dry_run}}
    return {"ops": {name: config for name in ("expire_files", "remove_orphaned_temp_files", "prune_run_history")}}
