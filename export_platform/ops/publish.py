"""The publish step: check the row count, then place the file and record it (request row,
incremental mark) as one decision, and report it to the Asset Catalog."""

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from .. import assets
from ..dagster_compat import failure_without_traceback
from ..links import LinkError, public_url, status_page_url
from ..naming import FORMAT_TAG, REQUESTED_BY_TAG, SCHEDULE_TAG, request_id_of
from ..planning.plan import ExportPlan
from ..requests import table as rt
from ..requests.store import RequestStore
from ..requests.status import Status
from ..resources.storage import ExportStorage, file_uri_path
from ..resources.storage_keys import path_part
from ..units import human_bytes
from .lease import check_lease
from .staging import StagedFile, allowed_output, discard_staging


@dataclass(frozen=True)
class PublishedExport:
    uri: str  # the file, as the request row's file_uri names it
    rows: int
    bytes: int
    sha256: str
    seconds: float
    key: str | None = None  # its storage key (file_key); None for a file written to an output_path
    url: str | None = None  # a signed download link, where the storage can sign one


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
            # Only an incremental export has one (its snapshot's upper bound, fixed even when no row is
            # new); an empty entry on every other run page says nothing.
            **({"high_water": staged.high_water} if plan.incremental is not None else {}),
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
