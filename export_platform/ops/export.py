"""The three steps of every export job: plan → extract (stream into a temp file) → publish."""


import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

from .. import requests_table as rt
from ..config import ExportConfig, options_of
from ..planning import ExportPlan, Incremental, RequestError, plan_export
from ..preflight import preflight
from ..registry import ExportType
from ..resources.postgres import PostgresResource
from ..resources.requests import RequestStore, request_id_of
from ..resources.storage import ExportStorage
from ..sinks.parts import discard_parts, sink_streams
from ..units import human_bytes

PROGRESS_INTERVAL_SECONDS = 1.0
# A dropped connection is worth another attempt (the file restarts from a fresh snapshot); a
# cancelled query or bad data is not. A chunk's connection cannot adopt the export's snapshot once
# the connection that exported it has been dropped.
_CONNECTION_LOST = (
    "server closed the connection",
    "terminating connection",
    "no connection to the server",
    "invalid snapshot identifier",
)
EXTRACT_RETRIES = 2
SCHEDULE_TAG = "export_platform/schedule"


@dataclass(frozen=True)
class StagedFile:
    path: str
    rows: int
    expected_rows: int
    started: float
    high_water: str | None = None


@dataclass(frozen=True)
class PublishedExport:
    uri: str
    rows: int
    bytes: int
    sha256: str
    seconds: float


def plan_op_name(export_type_name: str) -> str:
    # Op names must be unique across the code location, and each type's plan op has its own config.
    return f"plan_{export_type_name}"


def build_plan_op(export_type: ExportType, config_class: type[ExportConfig]) -> dg.OpDefinition:
    @dg.op(
        name=plan_op_name(export_type.name),
        description=f"Check the {export_type.name} request against the registry and its format (row limit, "
        "number precision, time zone) and build its query.",
    )
    def plan(
        context: dg.OpExecutionContext,
        config: config_class,  # type: ignore[valid-type]
        requests: RequestStore,
        postgres: PostgresResource,
    ) -> ExportPlan:
        request_id = request_id_of(context.run.tags)
        if request_id is not None:
            requests.run(rt.mark_running(request_id, context.run_id))
        incremental = None
        if config.incremental is not None:
            lower = requests.run(rt.high_water(config.incremental.key)).scalar()
            incremental = Incremental(config.incremental.column, config.incremental.key, lower)
        try:
            result = plan_export(
                export_type.name,
                config.format,
                config.filters.model_dump(exclude_none=True),
                config.columns,
                options_of(config),
                config.output_path,
                incremental,
                config.chunks,
            )
            decisions = preflight(result, postgres, session_name(context.run_id))
        except RequestError as error:
            raise dg.Failure(description=str(error), metadata={"field": error.field}) from None
        context.add_output_metadata(
            {
                "format": result.format.value,
                "columns": ", ".join(result.columns),
                "filters": result.filters,
                "incremental_from": (incremental.lower or "the beginning") if incremental else "not incremental",
                "chunks": result.chunks,
                "preflight": decisions,
            }
        )
        return result

    return plan


class Progress:
    """Reports streamed rows (to the run log and the request row) at most once per interval,
    whatever the batch size; with several streams, their sum. As one chunk of many (`chunk`), it
    adds this chunk's rows to the request row, which the other chunks' processes update too."""

    def __init__(self, context: dg.OpExecutionContext, expected: int, requests: RequestStore, chunk: int | None = None):
        self.context, self.expected, self.requests, self.chunk = context, expected, requests, chunk
        self.request_id = request_id_of(context.run.tags)
        self.last, self.rows, self.reported = time.monotonic(), 0, 0
        self.streams: dict[int, int] = {}
        self.lock = threading.Lock()
        if self.request_id is not None and chunk is None:
            requests.run(rt.set_total(self.request_id, expected))

    def stream(self, index: int) -> Callable[[int], None]:
        """The callback for stream `index`, which counts its own rows."""

        def on_rows(rows: int) -> None:
            with self.lock:
                self.streams[index] = rows
                self(sum(self.streams.values()))

        return on_rows

    def __call__(self, rows: int) -> None:
        self.rows = rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL_SECONDS:
            self.last = now
            pct = 100.0 * rows / self.expected if self.expected else 100.0
            prefix = f"chunk {self.chunk}: " if self.chunk is not None else ""
            self.context.log.info(f"{prefix}streamed {rows:,} of {self.expected:,} rows ({pct:.0f}%)")
            self._report(rows - self.reported, pct)
            self.reported = rows

    def _report(self, new_rows: int, pct: float) -> None:
        if self.request_id is None:
            return
        if self.chunk is None:
            self.requests.run(rt.set_progress(self.request_id, self.rows, min(pct, 100.0)))
        else:
            self.requests.run(rt.add_progress(self.request_id, new_rows))

    def withdraw(self) -> None:
        """Take back what a failed chunk reported, before it is retried."""
        if self.chunk is not None and self.reported:
            self._report(-self.reported, 0.0)
            self.reported = 0


def session_name(run_id: str) -> str:
    """The export's `application_name` in Postgres, so a cancel can find and stop its query."""
    return f"export_platform:{run_id}"


def temp_path(context: dg.OpExecutionContext, plan: ExportPlan, storage: ExportStorage) -> Path:
    name = f"{context.run_id}.{plan.format.extension}"
    if plan.output_path:
        target = Path(plan.output_path).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".{target.name}.{name}.tmp"
    return storage.temp_path(name)


def connection_lost(error: BaseException) -> bool:
    return isinstance(error, Exception) and any(m in str(error) for m in _CONNECTION_LOST)


@dg.op(
    description="Count and stream the rows from one Postgres snapshot into a temp file: with chunks > 1, as "
    "that many parallel streams over key ranges, on connections sharing the snapshot."
)
def extract_export(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    postgres: PostgresResource,
    storage: ExportStorage,
    requests: RequestStore,
) -> StagedFile:
    started = time.time()  # wall clock: publish may run in another process
    path = temp_path(context, plan, storage)
    try:
        with postgres.snapshot_stream(plan, session_name(context.run_id), plan.chunks) as snapshot:
            streams = f" in {len(snapshot.readers)} chunks" if len(snapshot.readers) > 1 else ""
            context.log.info(f"{snapshot.count:,} rows to export{streams}")
            progress = Progress(context, snapshot.count, requests)
            sink_streams(snapshot.readers, plan, path, progress.stream)
        context.add_output_metadata({"rows": progress.rows, "streams": len(snapshot.readers)})
    except BaseException as error:
        discard_parts(path)
        if connection_lost(error):
            if context.retry_number < EXTRACT_RETRIES:
                context.log.warning(f"lost the database connection; retrying the extract: {error}")
                raise dg.RetryRequested(max_retries=EXTRACT_RETRIES, seconds_to_wait=1) from error
            attempts = EXTRACT_RETRIES + 1
            raise dg.Failure(f"lost the database connection on all {attempts} attempts: {error}") from error
        raise
    return StagedFile(str(path), progress.rows, snapshot.count, started, snapshot.high_water)


def _digest(path: Path) -> tuple[str, int]:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), path.stat().st_size


def _path_part(value: str) -> str:
    """A user or schedule name made safe as one path segment."""
    part = re.sub(r"[^A-Za-z0-9._@-]", "_", value)[:100]
    return "_" if part in ("", ".", "..") else part


def storage_key(tags: dict[str, str], plan: ExportPlan, run_id: str, now: datetime) -> str:
    """requests/<requested_by>/…, schedules/<schedule>/<date>/…, or <type>/… for Launchpad runs."""
    name = f"{plan.export_type}-{now:%Y%m%dT%H%M%SZ}-{run_id[:8]}.{plan.format.extension}"
    if schedule := tags.get(SCHEDULE_TAG):
        return f"schedules/{_path_part(schedule)}/{now:%Y-%m-%d}/{name}"
    if request_id_of(tags) is not None:
        return f"requests/{_path_part(tags.get('requested_by') or 'anonymous')}/{name}"
    return f"{plan.export_type}/{name}"


def link_for(storage: ExportStorage, uri: str, now: datetime) -> rt.Link:
    url_expires = now + timedelta(seconds=storage.download_url_seconds)
    url = storage.signed_url(uri, storage.download_url_seconds)
    return rt.Link(url, url_expires if url else None, now + timedelta(days=storage.retention_days))


@dg.op(description="Check the row count, checksum the file and move it into place atomically.")
def publish_export(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    staged: StagedFile,
    storage: ExportStorage,
    requests: RequestStore,
) -> PublishedExport:
    path = Path(staged.path)
    if staged.rows != staged.expected_rows:
        path.unlink(missing_ok=True)
        raise dg.Failure(
            description=f"wrote {staged.rows} rows but the snapshot counted {staged.expected_rows}; file discarded"
        )
    sha256, size = _digest(path)
    now = datetime.now(timezone.utc)
    if plan.output_path:
        target = Path(plan.output_path).resolve()
        path.replace(target)
        uri = target.as_uri()
    else:
        uri = storage.publish(path, storage_key(context.run.tags, plan, context.run_id, now))
    if plan.incremental is not None:
        inc = plan.incremental
        requests.run(rt.advance_high_water(inc.key, inc.column, staged.high_water, context.run_id))
    request_id = request_id_of(context.run.tags)
    if request_id is not None:
        link = link_for(storage, uri, now)
        requests.run(rt.mark_completed(request_id, rows=staged.rows, uri=uri, size=size, sha256=sha256, link=link))
    seconds = time.time() - staged.started
    context.add_output_metadata(
        {
            "rows": staged.rows,
            "size": human_bytes(size),
            "bytes": size,
            "seconds": round(seconds, 3),
            "rows_per_second": round(staged.rows / seconds) if seconds else 0,
            "sha256": sha256,
            "path": dg.MetadataValue.path(uri),
            # Only an incremental export has one; an empty entry on every other run page says nothing.
            **({"high_water": staged.high_water or "unchanged (no new rows)"} if plan.incremental is not None else {}),
        }
    )
    return PublishedExport(uri=uri, rows=staged.rows, bytes=size, sha256=sha256, seconds=seconds)
