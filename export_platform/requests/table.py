"""The statements on `export_requests`: every read and write of a request row (SQLAlchemy Core).

The table, its triggers and migrations are in schema.py, the statuses in status.py; both are
re-exported here, so that `from ..requests import table as rt` reaches all of the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .schema import (  # noqa: F401  (re-exported: the table's one import for its users)
    NOTIFY_CHANNEL,
    SCHEMA_VERSION,
    UPGRADES,
    SchemaMismatch,
    check_version,
    export_requests,
    metadata,
    migrate,
    notified_id,
    schema_versions,
    watermarks,
)
from .status import Status, values_of


@dataclass(frozen=True)
class Link:
    """How a finished file can be fetched, and until when."""

    url: str | None
    url_expires_at: datetime | None
    file_expires_at: datetime


_now = sa.text("now()")


# --- Statements. Each update names the statuses it may apply to: a move, those the declaration
# lets into its new status, so racing writers (the sensor, the run, an application cancelling)
# never move a row backwards and never meet the trigger's refusal.

t = export_requests
_INITIAL = Status.the(initial=True)
_STOPPING = Status.the(stopping=True)
_EXPORTING = Status.where(exporting=True)
_DELIVERED = Status.where(delivered=True)


def _update(request_id: int, from_states: tuple[Status, ...], **values) -> sa.Update:
    statuses = t.c.status.in_(values_of(from_states))
    return t.update().where(t.c.id == request_id, statuses).values(updated_at=_now, **values)


def _move(request_id: int, to: Status, **values) -> sa.Update:
    return _update(request_id, to.sources, status=to.value, **values)


def pending(limit: int) -> sa.Select:
    """The oldest PENDING rows, locked so that two sensor ticks never take the same row. `params`
    comes as JSON text, for the sensor to decode row by row: one row's JSON that Python cannot
    read (nesting too deep, a 5,000-digit number) must not fail the whole batch."""
    return (
        sa.select(
            t.c.id, t.c.export_type, t.c.format, sa.cast(t.c.params, sa.Text).label("params"), t.c.requested_by,
            t.c.run_key,
        )
        .where(t.c.status == _INITIAL.value)
        .order_by(t.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def needing_attention(limit: int, quiet_seconds: int) -> sa.Select:
    """Rows whose run the sensor must look at: cancels, queued rows not yet tied to their run, and
    active rows quiet for `quiet_seconds` (their run may have ended without reporting back)."""
    quiet = t.c.updated_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, quiet_seconds)
    return (
        sa.select(t.c.id, t.c.status, t.c.run_id, t.c.run_key, t.c.queued_at, t.c.offers)
        .where(
            sa.or_(
                t.c.status == _STOPPING.value,
                sa.and_(t.c.status == Status.QUEUED.value, t.c.run_id.is_(None)),
                sa.and_(t.c.status.in_(Status.values(active=True)), quiet),
            )
        )
        .order_by(t.c.updated_at)
        .limit(limit)
    )


def mark_queued(request_id: int) -> sa.Update:
    return _move(request_id, Status.QUEUED, queued_at=_now, error=None, offers=t.c.offers + 1)


def requeue(request_id: int) -> sa.Update:
    """A QUEUED row whose run never appeared goes back to PENDING (run_key still prevents doubles)."""
    return _move(request_id, _INITIAL, queued_at=None)


def set_run_id(request_id: int, run_id: str) -> sa.Update:
    return _update(request_id, (*Status.where(active=True), _STOPPING), run_id=run_id)


def mark_running(request_id: int, run_id: str) -> sa.Update:
    return _move(request_id, Status.RUNNING, run_id=run_id, started_at=_now)


def set_total(request_id: int, total_rows: int) -> sa.Update:
    return _update(
        request_id, _EXPORTING, total_rows=total_rows, progress_rows=0, progress_pct=0 if total_rows else 100
    )


def set_progress(request_id: int, rows: int, pct: float) -> sa.Update:
    return _update(request_id, _EXPORTING, progress_rows=rows, progress_pct=round(pct, 2))


def add_progress(request_id: int, rows: int) -> sa.Update:
    """Add one chunk's newly streamed rows: the chunks of an export run in separate processes, and
    the row shows their total."""
    done = sa.func.coalesce(t.c.progress_rows, 0) + rows
    pct = sa.case((t.c.total_rows > 0, sa.func.least(100, 100 * sa.cast(done, sa.Numeric) / t.c.total_rows)), else_=100)
    return _update(request_id, _EXPORTING, progress_rows=done, progress_pct=sa.func.round(pct, 2))


def mark_completed(
    request_id: int, *, rows: int, uri: str, key: str | None, size: int, sha256: str, link: Link
) -> sa.Update:
    return _move(
        request_id,
        Status.COMPLETED,
        row_count=rows,
        progress_rows=rows,
        progress_pct=100,
        file_uri=uri,
        file_key=key,
        file_bytes=size,
        sha256=sha256,
        finished_at=_now,
        download_url=link.url,
        download_url_expires_at=link.url_expires_at,
        expires_at=link.file_expires_at,
    )


def set_link(request_id: int, url: str, url_expires_at: datetime) -> sa.Update:
    return _update(request_id, _DELIVERED, download_url=url, download_url_expires_at=url_expires_at)


def expired_files(limit: int, after: tuple[datetime, int] | None = None) -> sa.Select:
    """Completed exports past their expiry, oldest first; the page after `after` (the last row's
    expires_at and id), so that rows left in place (a dry run, a failed delete) are not read again."""
    query = (
        sa.select(t.c.id, t.c.file_key, t.c.file_uri, t.c.file_bytes, t.c.expires_at)
        .where(t.c.status.in_(Status.values(delivered=True)), t.c.expires_at < sa.func.now())
        .order_by(t.c.expires_at, t.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sa.tuple_(t.c.expires_at, t.c.id) > sa.tuple_(*after))
    return query


def mark_expired(request_id: int, reason: str) -> sa.Update:
    """The file is gone: deleted by retention (`retention`) or on request (`deleted`)."""
    return _move(request_id, Status.EXPIRED, expired_reason=reason, download_url=None, download_url_expires_at=None)


MAX_ERROR_LENGTH = 2_000


def readable_error(error: str) -> str:
    """An error as the row can hold it (text cannot hold NUL) and a person can read it."""
    error = error.replace("\x00", "\\0")
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 1] + "…"


def mark_failed(request_id: int, error: str) -> sa.Update:
    return _move(request_id, Status.FAILED, error=readable_error(error), finished_at=_now)


def mark_cancelled(request_id: int) -> sa.Update:
    return _move(request_id, Status.CANCELLED, finished_at=_now)


def status_of(request_id: int) -> sa.Select:
    return sa.select(t.c.status).where(t.c.id == request_id)


def status_for_publish(request_id: int) -> sa.Select:
    """The row's status, locked until the publishing transaction ends: a cancel arriving meanwhile
    waits, then finds the row finished (and is ignored by the trigger above)."""
    return status_of(request_id).with_for_update()


def request_cancel(request_id: int) -> sa.Update:
    return _move(request_id, _STOPPING)


def insert(export_type: str, format: str, params: dict, requested_by: str | None, idempotency_key: str | None):
    return (
        pg_insert(t)
        .values(
            export_type=export_type,
            format=format,
            params=params,
            requested_by=requested_by,
            idempotency_key=idempotency_key,
        )
        .on_conflict_do_nothing(constraint="export_requests_idempotency")
        .returning(t.c.id)
    )


def by_id(request_id: int) -> sa.Select:
    return sa.select(t).where(t.c.id == request_id)


def sha256_of(file_key: str, file_uri: str) -> sa.Select:
    """The checksum publish recorded for a file of one storage, if a request made it."""
    return (
        sa.select(t.c.sha256)
        .where(t.c.file_key == file_key, t.c.file_uri == file_uri, t.c.sha256.is_not(None))
        .limit(1)
    )


def by_idempotency_key(requested_by: str | None, key: str) -> sa.Select:
    return sa.select(t.c.id).where(t.c.requested_by.is_not_distinct_from(requested_by), t.c.idempotency_key == key)


def listing(requested_by: str | None, limit: int, offset: int) -> sa.Select:
    query = sa.select(t).order_by(t.c.id.desc()).limit(limit).offset(offset)
    return query.where(t.c.requested_by == requested_by) if requested_by is not None else query


def queue_depth() -> sa.Select:
    return sa.select(sa.func.count()).where(t.c.status.in_(Status.values(waiting=True)))


def high_water(key: str) -> sa.Select:
    return sa.select(sa.cast(watermarks.c.high_water, sa.Text)).where(watermarks.c.key == key)


def advance_high_water(key: str, column: str, value: str, run_id: str):
    """Record a published export's upper bound; never moves a mark backwards."""
    statement = pg_insert(watermarks).values(key=key, column_name=column, high_water=sa.cast(value, sa.DateTime(timezone=True)), run_id=run_id)
    return statement.on_conflict_do_update(
        index_elements=[watermarks.c.key],
        set_={"high_water": statement.excluded.high_water, "run_id": run_id, "column_name": column, "updated_at": _now},
        where=watermarks.c.high_water < statement.excluded.high_water,
    )
