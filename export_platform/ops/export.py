"""The three steps of every export job: plan → extract (stream into a temp file) → publish."""


import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from .. import requests_table as rt
from ..config import ExportConfig, options_of
from ..planning import ExportPlan, RequestError, plan_export
from ..preflight import preflight
from ..registry import ExportType
from ..resources.postgres import PostgresResource
from ..resources.requests import RequestStore, request_id_of
from ..resources.storage import ExportStorage
from ..sinks import Pacer, scan_batches, sink

PROGRESS_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class StagedFile:
    path: str
    rows: int
    expected_rows: int
    started: float


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
        try:
            result = plan_export(
                export_type.name,
                config.format,
                config.filters.model_dump(exclude_none=True),
                config.columns,
                options_of(config),
                config.output_path,
            )
            decisions = preflight(result, postgres, session_name(context.run_id))
        except RequestError as error:
            raise dg.Failure(description=str(error), metadata={"field": error.field}) from None
        context.add_output_metadata(
            {
                "format": result.format.value,
                "columns": ", ".join(result.columns),
                "filters": result.filters,
                "preflight": decisions,
            }
        )
        return result

    return plan


class _Progress:
    """Reports streamed rows (to the run log and the request row) at most once per interval,
    whatever the batch size."""

    def __init__(self, context: dg.OpExecutionContext, expected: int, requests: RequestStore):
        self.context, self.expected, self.requests = context, expected, requests
        self.request_id = request_id_of(context.run.tags)
        self.last, self.rows = time.monotonic(), 0
        if self.request_id is not None:
            requests.run(rt.set_total(self.request_id, expected))

    def __call__(self, rows: int) -> None:
        self.rows = rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL_SECONDS:
            self.last = now
            pct = 100.0 * rows / self.expected if self.expected else 100.0
            self.context.log.info(f"streamed {rows:,} of {self.expected:,} rows ({pct:.0f}%)")
            if self.request_id is not None:
                self.requests.run(rt.set_progress(self.request_id, rows, min(pct, 100.0)))


def session_name(run_id: str) -> str:
    """The export's `application_name` in Postgres, so a cancel can find and stop its query."""
    return f"export_platform:{run_id}"


def _temp_path(context: dg.OpExecutionContext, plan: ExportPlan, storage: ExportStorage) -> Path:
    name = f"{context.run_id}.{plan.format.extension}"
    if plan.output_path:
        target = Path(plan.output_path).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".{target.name}.{name}.tmp"
    return storage.temp_path(name)


@dg.op(description="Count and stream the rows from one Postgres snapshot into a temp file.")
def extract_export(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    postgres: PostgresResource,
    storage: ExportStorage,
    requests: RequestStore,
) -> StagedFile:
    started = time.time()  # wall clock: publish may run in another process
    path = _temp_path(context, plan, storage)
    try:
        with postgres.snapshot_stream(plan, session_name(context.run_id)) as (expected, reader):
            context.log.info(f"{expected:,} rows to export")
            progress, pacer = _Progress(context, expected, requests), Pacer()
            sink(scan_batches(reader, progress, pacer), plan, path, pacer)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedFile(path=str(path), rows=progress.rows, expected_rows=expected, started=started)


def _digest(path: Path) -> tuple[str, int]:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), path.stat().st_size


def _storage_key(context: dg.OpExecutionContext, plan: ExportPlan) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{plan.export_type}/{plan.export_type}-{stamp}-{context.run_id[:8]}.{plan.format.extension}"


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
    if plan.output_path:
        target = Path(plan.output_path).resolve()
        path.replace(target)
        uri = target.as_uri()
    else:
        uri = storage.publish(path, _storage_key(context, plan))
    request_id = request_id_of(context.run.tags)
    if request_id is not None:
        requests.run(rt.mark_completed(request_id, rows=staged.rows, uri=uri, size=size, sha256=sha256))
    seconds = time.time() - staged.started
    context.add_output_metadata(
        {
            "rows": staged.rows,
            "bytes": size,
            "seconds": round(seconds, 3),
            "rows_per_second": round(staged.rows / seconds) if seconds else 0,
            "sha256": sha256,
            "path": dg.MetadataValue.path(uri),
        }
    )
    return PublishedExport(uri=uri, rows=staged.rows, bytes=size, sha256=sha256, seconds=seconds)
