"""The names runs carry: their tags, the Postgres session of their queries, the request sensor's
name. Job names have one builder, `ExportType.job_name` / `chunked_job_name` (`export_<type>`,
`export_<type>_chunked`, catalog/registry.py); code that knows only a type's name asks the
registry (`REGISTRY.get(name).job_name`).

dagster.yaml names three of these keys in its tag_concurrency_limits (YAML cannot import them):
tests/test_naming.py checks that they are the same.
"""

from __future__ import annotations

import hashlib

# Tags the queue limits per value (dagster.yaml): every export run carries the first two.
EXPORT_TYPE_TAG = "export_type"
REQUESTED_BY_TAG = "requested_by"
# The file format, so that the Runs list shows it beside the type and the user.
FORMAT_TAG = "format"
# The queue runs one run per value at a time, so two runs of one incremental key never read from
# the same mark (the plan op refuses an incremental run without it).
INCREMENTAL_TAG = "export_platform/incremental_key"

# The export_requests row behind a run, and that row's run key (random, unique beyond this
# table): how the sensor finds the run of a row.
REQUEST_ID_TAG = "export_platform/request_id"
REQUEST_KEY_TAG = "export_platform/request_key"
# The recurring export (its entry's name) behind a scheduled run; its files go under it.
SCHEDULE_TAG = "export_platform/schedule"
# "true": a process of its own, never a warm worker (an export type's `isolated`, or by hand).
ISOLATED_TAG = "export_platform/isolated"
# Set by the launcher: which path a run took ("pool" or "process").
POOL_TAG = "export_platform/run_worker"
# POOL_TAG's value on runs handed to the warm pool: its health check, terminate and lease take the pool's path.
POOL = "pool"
# Set on a cancelled run once the request sensor has interrupted it (it interrupts only once).
INTERRUPTED_TAG = "export_platform/interrupted"
# Dagster's own: run monitoring ends a run older than this many seconds.
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Dagster caps tag values at 63 characters.
MAX_TAG_LENGTH = 63

REQUEST_SENSOR = "export_request_sensor"


def user_tag(requested_by: str | None) -> str:
    """`requested_by` as a run tag (the per-user queue limit and storage folder): readable, and
    distinct for users who share a prefix longer than a tag can hold."""
    user = requested_by or "anonymous"
    if len(user) <= MAX_TAG_LENGTH:
        return user
    digest = hashlib.sha256(user.encode()).hexdigest()[:10]
    return f"{user[: MAX_TAG_LENGTH - len(digest) - 1]}~{digest}"


def request_id_of(tags: dict[str, str]) -> int | None:
    """The request row behind a run, or None for runs launched from the Launchpad or a schedule."""
    value = tags.get(REQUEST_ID_TAG)
    return int(value) if value else None


def session_name(run_id: str) -> str:
    """The export's `application_name` in Postgres, so a cancel can find and stop its query."""
    return f"export_platform:{run_id}"
