"""The three steps of every export job: plan → extract (stream into a temp file) → publish."""


import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from .. import assets
from ..links import LinkError, public_url, status_page_url
from ..requests import table as rt
from ..planning.config import ExportConfig, options_of
from ..planning.plan import ExportPlan, Incremental, RequestError, plan_export
from .preflight import preflight
from ..catalog.registry import ExportType
from ..dagster_compat import MAX_RUNTIME_MESSAGE, failure_without_traceback
from ..requests.status import Status
from ..resources.postgres import ConnectionLost, IncrementalRefused, PostgresResource, is_connection_error
from ..naming import FORMAT_TAG, INCREMENTAL_TAG, REQUESTED_BY_TAG, SCHEDULE_TAG, request_id_of, session_name
from ..requests.store import RequestStore
from ..resources.storage import ExportStorage, OutputRefused, file_uri_path
from ..resources.storage_keys import path_part
from ..sinks import digest_of
from ..sinks.parts import sink_streams
from ..sinks.server_csv import write_server_csv
from ..units import human_bytes
from .lease import check_lease

PROGRESS_INTERVAL_SECONDS = 1.0
EXTRACT_RETRIES = 2


@dataclass(frozen=True)
class StagedFile:
    path: str
    rows: int
    expected_rows: int
    started: float
    sha256: str
    bytes: int
    high_water: str | None = None


@dataclass(frozen=True)
class PublishedExport:
    uri: str  # the file, as the request row's file_uri names it
    rows: int
    bytes: int
    sha256: str
    seconds: float
    key: str | None = None  # its storage key (file_key); None for a file written to an output_path
    url: str | None = None  # a signed download link, where the storage can sign one


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
        storage: ExportStorage,
    ) -> ExportPlan:
        if config.output_path is not None:  # refused before the request row or the database is touched
            allowed_output(storage, config.output_path)
        request_id = request_id_of(context.run.tags)
        if request_id is not None:
            requests.run(rt.mark_running(request_id, context.run_id))
        incremental = None
        if config.incremental is not None:
            if context.run.tags.get(INCREMENTAL_TAG) != config.incremental.key:
                raise dg.Failure(
                    description=f"an incremental run must carry the tag {INCREMENTAL_TAG}={config.incremental.key}: "
                    "the run queue lets one run per key read from its mark at a time"
                )
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
            if incremental is not None:
                postgres.check_incremental()
            decisions = preflight(result, postgres, session_name(context.run_id))
        except RequestError as error:
            raise dg.Failure(description=str(error), metadata={"field": error.field}) from None
        except IncrementalRefused as error:
            raise dg.Failure(description=str(error)) from None
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


def allowed_output(storage: ExportStorage, output_path: str) -> Path:
    """The resolved target of an `output_path`, if the storage's allow-list has its folder."""
    try:
        return storage.output_target(output_path)
    except OutputRefused as refused:
        raise dg.Failure(description=f"output_path: {refused}", metadata={"field": "output_path"}) from None


def temp_path(context: dg.OpExecutionContext, plan: ExportPlan, storage: ExportStorage) -> Path:
    """The run's file being written, alone in a folder of the run's (with whatever its writer
    spools), so that a failure removes all of it: in the storage's temp folder, or for an output
    path beside the target, where publishing is a rename."""
    if not plan.output_path:
        return storage.run_temp_folder(context.run_id) / f"export.{plan.format.extension}"
    target = allowed_output(storage, plan.output_path)
    folder = target.parent / f".{target.name}.{context.run_id}.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / target.name


def discard_staging(path: Path, run_id: str) -> None:
    """Remove a run's file being written and everything beside it in its folder (the run's own)."""
    if run_id in path.parent.name:
        shutil.rmtree(path.parent, ignore_errors=True)


def stopped(context: dg.OpExecutionContext) -> str | None:
    """Why the run is being stopped on request (terminated from the UI, by a request's cancel, or by
    run monitoring at its maximum runtime), or None when it is not: the interrupt, or the cancelled
    query, that then ends a step is no failure of the export, and its event says so."""
    try:
        run = context.instance.get_run_by_id(context.run_id)
        if run is None or run.status not in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            return None
        asked = [r.user_message for r in context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.RUN_CANCELING)]
    except Exception:  # Dagster's storage unreachable: not a stop this step can tell
        return None
    # Run monitoring says why ("Canceling due to exceeding maximum runtime of 60 seconds."); a cancel does not.
    why = next((m.rstrip(".") for m in asked if m.startswith(MAX_RUNTIME_MESSAGE)), "cancelled")
    return f"stopped before the export finished ({why}): nothing was published"


def connection_lost(error: BaseException) -> bool:
    """A dropped connection is worth another attempt (the file restarts from a fresh snapshot); a
    cancelled query or bad data is not."""
    return isinstance(error, ConnectionLost) or is_connection_error(error)


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
        name = session_name(context.run_id)
        with postgres.snapshot_stream(plan, name, plan.chunks, server_csv=postgres.server_csv) as snapshot:
            streams = len(snapshot.copies or snapshot.readers)
            context.log.info(f"{snapshot.count:,} rows to export{f' in {streams} streams' if streams > 1 else ''}; "
                             f"read by {snapshot.reading['reader']}")
            progress = Progress(context, snapshot.count, requests)
            with digest_of(plan, path) as digest:
                if snapshot.copies:
                    write_server_csv(snapshot.copies, plan, path, progress.stream)
                else:
                    sink_streams(snapshot.readers, plan, path, progress.stream)
        context.add_output_metadata({"rows": progress.rows, "streams": streams, **snapshot.reading})
    except BaseException as error:
        discard_staging(path, context.run_id)
        if why := stopped(context):  # a stop, wherever the interrupt landed: its reason, no traceback
            raise failure_without_traceback(why) from None
        if connection_lost(error):
            if context.retry_number < EXTRACT_RETRIES:
                context.log.warning(f"lost the database connection; retrying the extract: {error}")
                raise dg.RetryRequested(max_retries=EXTRACT_RETRIES, seconds_to_wait=1) from error
            attempts = EXTRACT_RETRIES + 1
            cause = error.__cause__ if isinstance(error, ConnectionLost) and error.__cause__ else error
            raise dg.Failure(f"lost the database connection on all {attempts} attempts: {cause}") from error
        raise
    return StagedFile(
        str(path), progress.rows, snapshot.count, started, digest.sha256, digest.size, snapshot.high_water
    )


def storage_key(tags: dict[str, str], plan: ExportPlan, run_id: str, now: datetime) -> str:
    """requests/<requested_by>/…, schedules/<schedule>/<date>/…, or <type>/… for Launchpad runs."""
    name = f"{plan.export_type}-{now:%Y%m%dT%H%M%SZ}-{run_id[:8]}.{plan.format.extension}"
    if schedule := tags.get(SCHEDULE_TAG):
        return f"schedules/{path_part(schedule)}/{now:%Y-%m-%d}/{name}"
    if request_id_of(tags) is not None:
        return f"requests/{path_part(tags.get(REQUESTED_BY_TAG) or 'anonymous')}/{name}"
    return f"{plan.export_type}/{name}"


def link_for(storage: ExportStorage, key: str | None, now: datetime) -> rt.Link:
    """The signed link of a published file (none for an output_path file) and until when it and
    the file are kept."""
    url = None if key is None else storage.signed_url(key, storage.download_url_seconds)
    url_expires = now + timedelta(seconds=storage.download_url_seconds) if url else None
    return rt.Link(url, url_expires, now + timedelta(days=storage.retention_days))


class Superseded(Exception):
    """The request stopped wanting this file (cancelled, failed) before it was recorded: a signal that
    publish handles by standing down, never shown to a person, so outside errors.ExportPlatformError."""

    def __init__(self, request_id: int, status: str | None):
        super().__init__(f"request {request_id} is {status or 'gone'}")
        self.request_id, self.status = request_id, status


def _check_wanted(request_id: int, status: str | None) -> None:
    if status is None or not Status(status).meaning.exporting:
        raise Superseded(request_id, status)


@dataclass(frozen=True)
class Placed:
    """A file in its final place, and how to take that back."""

    uri: str
    key: str | None  # in the storage; None at an output_path
    target: Path | None = None  # the output_path
    previous: Path | None = None  # the file the output_path held before, kept until the run is recorded


def _place(context: dg.OpExecutionContext, plan: ExportPlan, path: Path, storage: ExportStorage, now: datetime) -> Placed:
    if not plan.output_path:
        key = storage_key(context.run.tags, plan, context.run_id, now)
        return Placed(storage.publish(path, key), key)
    target = allowed_output(storage, plan.output_path)
    previous = path.parent / f".previous-{target.name}"  # in the run's folder beside the target: removed with it
    try:
        os.link(target, previous)
    except FileNotFoundError:
        previous = None
    except OSError:  # a filesystem without hard links
        shutil.copy2(target, previous)
    path.replace(target)
    return Placed(target.as_uri(), None, target, previous)


def _unpublish(context: dg.OpExecutionContext, placed: Placed, storage: ExportStorage) -> None:
    try:
        if placed.target is None:
            storage.delete(placed.key)
        elif placed.previous is not None:
            placed.previous.replace(placed.target)
        else:
            placed.target.unlink(missing_ok=True)
    except Exception as error:  # the error that got us here is the one to report
        context.log.error(f"could not take back {placed.uri} after its publish was undone: {error}")


def _record(
    requests: RequestStore,
    request_id: int | None,
    plan: ExportPlan,
    staged: StagedFile,
    run_id: str,
    completed: sa.Update | None,
    fence: Callable[[sa.Connection], None],
) -> None:
    """The request row's COMPLETED and the incremental mark, in one transaction, decided under the
    row's lock: a cancel that got there first wins, and so does a fence (`fence(conn)` raises). With
    neither a request nor a mark (a Launchpad run, `export-platform run`), nothing is written: the
    database need not have the request table at all."""
    if request_id is None and plan.incremental is None:
        return
    with requests.transaction() as conn:
        fence(conn)
        if request_id is not None:
            _check_wanted(request_id, conn.execute(rt.status_for_publish(request_id)).scalar())
            conn.execute(completed)
        if plan.incremental is not None:
            inc = plan.incremental
            conn.execute(rt.advance_high_water(inc.key, inc.column, staged.high_water, run_id))


@dg.op(
    description="Check the row count; then publish the file and record it (request row, "
    "incremental mark) as one decision: if the recording fails, or a cancel came first, the file is removed."
)
def publish_export(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    staged: StagedFile,
    storage: ExportStorage,
    requests: RequestStore,
) -> PublishedExport:
    path = Path(staged.path)
    request_id = request_id_of(context.run.tags)
    try:
        if staged.rows != staged.expected_rows:
            _report_rows_mismatch(context, plan, staged)
            raise dg.Failure(
                description=f"wrote {staged.rows} rows but the snapshot counted {staged.expected_rows}; file discarded"
            )
        if request_id is not None:  # no upload for a request that was cancelled meanwhile
            _check_wanted(request_id, requests.run(rt.status_of(request_id)).scalar())
        sha256, size = staged.sha256, staged.bytes
        now = datetime.now(timezone.utc)
        check_lease(context)  # a worker the pool gave up on must not publish
        placed = _place(context, plan, path, storage, now)
        try:
            link = link_for(storage, placed.key, now)
            completed = None if request_id is None else rt.mark_completed(
                request_id, rows=staged.rows, uri=placed.uri, key=placed.key, size=size, sha256=sha256, link=link
            )
            _record(requests, request_id, plan, staged, context.run_id, completed, lambda conn: check_lease(context, conn))
        except BaseException:
            _unpublish(context, placed, storage)
            raise
    except Superseded as superseded:
        message = f"{superseded}: the export was not published"
        if superseded.status is not None and Status(superseded.status).meaning.stopping:
            requests.run(rt.mark_cancelled(superseded.request_id))
            raise failure_without_traceback(message) from None  # a cancel, not a crash
        raise dg.Failure(message, allow_retries=False) from None
    finally:
        discard_staging(path, context.run_id)
        storage.discard_temp(context.run_id)
    seconds = time.time() - staged.started
    context.add_output_metadata(
        {
            "rows": staged.rows,
            "size": human_bytes(size),
            "bytes": size,
            "seconds": round(seconds, 3),
            "rows_per_second": round(staged.rows / seconds) if seconds else 0,
            "sha256": sha256,
            "path": dg.MetadataValue.path(str(file_uri_path(placed.uri) or placed.uri)),
            # Only an incremental export has one; an empty entry on every other run page says nothing.
            **({"high_water": staged.high_water or "unchanged (no new rows)"} if plan.incremental is not None else {}),
        }
    )
    published = PublishedExport(
        uri=placed.uri, rows=staged.rows, bytes=size, sha256=sha256, seconds=seconds, key=placed.key, url=link.url
    )
    try:
        _report_to_catalog(context, plan, staged, published, storage, link)
    except Exception as error:  # the file is published and recorded: the Catalog's view of it must not undo that
        context.log.warning(f"could not report {placed.uri} to the Asset Catalog: {error}")
    return published


def _requester(tags: dict[str, str]) -> str:
    request_id = request_id_of(tags)
    if request_id is not None:
        return f"request {request_id} by {tags.get(REQUESTED_BY_TAG) or 'anonymous'}"
    if schedule := tags.get(SCHEDULE_TAG):
        return f"schedule {schedule}"
    return "the Launchpad or `export-platform run`"


def _no_link(plan: ExportPlan, request_id: int | None) -> str:
    """How to get a file that has no signed link: read where it is, or configure `serve`."""
    if plan.output_path:
        return "written to output_path on the machine that ran the export; not served"
    mint = f"; then `export-platform url {request_id}` mints one" if request_id is not None else ""
    return ("no download link: this code location has no EXPORT_PLATFORM_PUBLIC_URL and EXPORT_PLATFORM_SIGNING_KEY "
            f"(`make dev` gives it both, for the `serve` it starts){mint}. Until then, read the file where `file` says")


def _links(storage: ExportStorage, plan: ExportPlan, link: rt.Link, request_id: int | None) -> dict:
    found = {assets.LINK: dg.MetadataValue.url(link.url) if link.url else _no_link(plan, request_id)}
    if link.url:
        found["link_expires"] = dg.MetadataValue.timestamp(link.url_expires_at)
    if request_id is not None and public_url() is not None:
        try:
            found["status_page"] = dg.MetadataValue.url(status_page_url(request_id, storage.download_url_seconds))
        except LinkError:  # no signing key: the link above says so
            pass
    return found


def _report_to_catalog(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    staged: StagedFile,
    published: PublishedExport,
    storage: ExportStorage,
    link: rt.Link,
) -> None:
    """The published file as a materialization of its type's asset (the Catalog plots its numbers
    over time; the run page shows its download link), then the row-count check."""
    tags = context.run.tags
    if FORMAT_TAG not in tags:  # a Launchpad run: its format is in its config, not its tags
        context.instance.add_run_tags(context.run_id, {FORMAT_TAG: plan.format.value})
    request_id = request_id_of(tags)
    requester = _requester(tags)
    metadata = {  # the link first: the run page shows the first entries of an event without expanding it
        **_links(storage, plan, link, request_id),
        assets.ROW_COUNT: dg.MetadataValue.int(published.rows),
        assets.SNAPSHOT_ROWS: staged.expected_rows,
        "bytes": published.bytes,
        "seconds": round(published.seconds, 3),
        "rows_per_second": round(published.rows / published.seconds) if published.seconds else 0,
        "sha256": published.sha256,
        "format": plan.format.value,
        "requested_by": requester,
        "columns": ", ".join(plan.columns),
        "filters": dg.MetadataValue.json(plan.filters),
        "file": dg.MetadataValue.path(str(file_uri_path(published.uri) or published.uri)),
    }
    context.log_event(assets.materialization(plan.export_type, metadata, f"{plan.format.value} for {requester}"))
    context.log_event(assets.rows_check(assets.export_key(plan.export_type), staged.rows, staged.expected_rows))


def _report_rows_mismatch(context: dg.OpExecutionContext, plan: ExportPlan, staged: StagedFile) -> None:
    """The failed check of a file that is not published. Events an op logs before it raises are
    lost with the exception, so this one is reported at once, naming the run."""
    key = assets.export_key(plan.export_type)
    context.instance.report_runless_asset_event(assets.rows_check(key, staged.rows, staged.expected_rows, context.run_id))
