"""`export_requests`: the table through which applications ask for exports (SQLAlchemy Core).

The platform owns and migrates it. `migrate` is idempotent: it creates what is missing and then
applies, in order, the upgrade steps past the version recorded in `export_platform_schema`, so a
later release can add columns safely to a table that already holds requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..errors import DatabaseError


class Status(str, Enum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Link:
    """How a finished file can be fetched, and until when."""

    url: str | None
    url_expires_at: datetime | None
    file_expires_at: datetime


TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
ACTIVE = (Status.QUEUED, Status.RUNNING)

metadata = sa.MetaData()
_now = sa.text("now()")

export_requests = sa.Table(
    "export_requests",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("export_type", sa.Text, nullable=False),
    sa.Column("format", sa.Text, nullable=False, server_default="csv"),
    sa.Column("params", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("requested_by", sa.Text),
    sa.Column("idempotency_key", sa.Text),
    # The Dagster run key: unique beyond this table, so a recreated table (ids starting again) or a
    # second export database beside the same Dagster instance never collides with an earlier run.
    sa.Column("run_key", sa.Text, nullable=False, server_default=sa.text("gen_random_uuid()::text")),
    # How often the sensor has offered the row as a run; a row whose run never appears is offered
    # again a few times, then failed, never retried forever.
    sa.Column("offers", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False, server_default=Status.PENDING.value),
    sa.Column("run_id", sa.Text),
    sa.Column("progress_rows", sa.BigInteger),
    sa.Column("total_rows", sa.BigInteger),
    sa.Column("progress_pct", sa.Numeric(5, 2)),
    sa.Column("row_count", sa.BigInteger),
    sa.Column("file_uri", sa.Text),
    # The file's key relative to the storage root (resources/storage_keys.py), never encoded: what
    # the platform finds the file by. file_uri names it absolutely, for people and applications.
    sa.Column("file_key", sa.Text),
    sa.Column("file_bytes", sa.BigInteger),
    sa.Column("sha256", sa.Text),
    sa.Column("download_url", sa.Text),
    sa.Column("download_url_expires_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("expired_reason", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("queued_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.CheckConstraint(
        sa.column("status").in_([s.value for s in Status]), name="export_requests_status_check"
    ),
    # A retried or double-clicked insert with the same key yields no second export.
    sa.UniqueConstraint("requested_by", "idempotency_key", name="export_requests_idempotency"),
    # The sensor's scan: only the rows it has work on.
    sa.Index(
        "export_requests_open",
        "id",
        postgresql_where=sa.column("status").in_(["PENDING", "QUEUED", "RUNNING", "CANCEL_REQUESTED"]),
    ),
    sa.Index("export_requests_by_user", "requested_by", sa.column("id").desc()),
    # `serve` finds a file's sha256 (its ETag) here instead of reading the whole file again.
    sa.Index("export_requests_by_file_key", "file_key", postgresql_where=sa.column("file_key").is_not(None)),
)

# High-water marks of incremental recurring exports; advanced only after a file is published.
watermarks = sa.Table(
    "export_watermarks",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("column_name", sa.Text, nullable=False),
    sa.Column("high_water", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
)

# A cancel can only stop an export that has not finished: on a finished row (COMPLETED, FAILED,
# CANCELLED, EXPIRED) setting CANCEL_REQUESTED is ignored by the database itself, so the row keeps
# telling the truth about its file whoever writes it (the UPDATE reports 0 rows).
_KEEP_FINISHED = [
    sa.DDL(
        "CREATE OR REPLACE FUNCTION export_requests_keep_finished() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NULL; END $$"
    ),
    sa.DDL("DROP TRIGGER IF EXISTS export_requests_keep_finished ON export_requests"),
    sa.DDL(
        "CREATE TRIGGER export_requests_keep_finished BEFORE UPDATE OF status ON export_requests FOR EACH ROW "
        "WHEN (NEW.status = 'CANCEL_REQUESTED' AND OLD.status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED')) "
        "EXECUTE FUNCTION export_requests_keep_finished()"
    ),
]
for _statement in _KEEP_FINISHED:
    sa.event.listen(export_requests, "after_create", _statement)

schema_versions = sa.Table(
    "export_platform_schema",
    metadata,
    sa.Column("component", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# Upgrade steps for tables made by older releases: UPGRADES[i] takes version i + 1 to i + 2.
# A new column goes into the table above (for fresh installs) and gets a step here.
def _v2_links_and_expiry(conn: sa.Connection) -> None:
    conn.execute(sa.text(
        "ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS download_url_expires_at timestamptz, "
        "ADD COLUMN IF NOT EXISTS expired_reason text"
    ))


def _v3_run_keys_and_finished_rows(conn: sa.Connection) -> None:
    conn.execute(sa.text(
        "ALTER TABLE export_requests "
        "ADD COLUMN IF NOT EXISTS run_key text NOT NULL DEFAULT gen_random_uuid()::text, "
        "ADD COLUMN IF NOT EXISTS offers smallint NOT NULL DEFAULT 0"
    ))
    for statement in _KEEP_FINISHED:
        conn.execute(statement)


# Push: each change of a request's status or progress is announced on this channel with
# {"id", "status", "progress_pct"}, so that applications can LISTEN instead of polling the table.
NOTIFY_CHANNEL = "export_requests"


def notified_id(payload: str) -> int | None:
    """The request id of a notification on the channel, or None for a payload that is not the
    trigger's: any role that can connect can NOTIFY the channel with anything."""
    try:
        request_id = json.loads(payload).get("id")
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested too deep
        return None
    return request_id if type(request_id) is int else None
_NOTIFY_FUNCTION = sa.DDL(f"""
CREATE OR REPLACE FUNCTION export_requests_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status
            OR NEW.progress_pct IS DISTINCT FROM OLD.progress_pct THEN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', json_build_object(
            'id', NEW.id, 'status', NEW.status, 'progress_pct', NEW.progress_pct)::text);
    END IF;
    RETURN NULL;
END $$""")
_NOTIFY_TRIGGER = sa.DDL(
    "CREATE OR REPLACE TRIGGER export_requests_notify AFTER INSERT OR UPDATE ON export_requests "
    "FOR EACH ROW EXECUTE FUNCTION export_requests_notify()"
)
# Fresh installs get the trigger with the table; older ones through the upgrade step below.
sa.event.listen(export_requests, "after_create", _NOTIFY_FUNCTION)
sa.event.listen(export_requests, "after_create", _NOTIFY_TRIGGER)


def _v4_notify_and_file_index(conn: sa.Connection) -> None:
    conn.execute(_NOTIFY_FUNCTION)
    conn.execute(_NOTIFY_TRIGGER)
    conn.execute(sa.text(
        "CREATE INDEX IF NOT EXISTS export_requests_by_file ON export_requests (file_uri) WHERE file_uri IS NOT NULL"
    ))


def _v5_file_keys(conn: sa.Connection) -> None:
    # Rows published before keep file_key NULL: the storage decodes their file_uri (recorded_key).
    conn.execute(sa.text("ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS file_key text"))
    conn.execute(sa.text(
        "CREATE INDEX IF NOT EXISTS export_requests_by_file_key ON export_requests (file_key) WHERE file_key IS NOT NULL"
    ))
    conn.execute(sa.text("DROP INDEX IF EXISTS export_requests_by_file"))


UPGRADES: list[Callable[[sa.Connection], None]] = [
    _v2_links_and_expiry,
    _v3_run_keys_and_finished_rows,
    _v4_notify_and_file_index,
    _v5_file_keys,
]
SCHEMA_VERSION = 1 + len(UPGRADES)


class SchemaMismatch(DatabaseError):
    """The request table's recorded schema is not the one this release reads and writes."""


MIGRATE_HINT = "run `export-platform db migrate` (`export-platform dev` and the deploy step do)"


def _recorded_version(conn: sa.Connection) -> int | None:
    if conn.execute(sa.select(sa.func.to_regclass(schema_versions.name))).scalar() is None:
        return None
    return conn.execute(
        sa.select(schema_versions.c.version).where(schema_versions.c.component == "export_requests")
    ).scalar()


def check_version(conn: sa.Connection) -> int:
    """Refuse, with what to do, a request table this release cannot use: missing, older than it
    needs, or newer than it knows. Changes nothing: migrating is an explicit step."""
    version = _recorded_version(conn)
    if version is None:
        raise SchemaMismatch(f"export_requests is not set up in this database: {MIGRATE_HINT}")
    if version < SCHEMA_VERSION:
        raise SchemaMismatch(
            f"export_requests is at schema version {version}; this release needs {SCHEMA_VERSION}: {MIGRATE_HINT}"
        )
    if version > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"export_requests is at schema version {version}, newer than this release knows ({SCHEMA_VERSION}): "
            "upgrade export_platform here before it serves this database"
        )
    return version


def migrate(conn: sa.Connection) -> int:
    """Create or upgrade the request table; safe to run any number of times, concurrently too.
    Never lowers the recorded version: an older release refuses a newer table instead."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('export_platform_schema'))"))
    fresh = not sa.inspect(conn).has_table("export_requests")
    metadata.create_all(conn, checkfirst=True)
    current = _recorded_version(conn)
    if current is None:
        current = SCHEMA_VERSION if fresh else 1
        conn.execute(schema_versions.insert().values(component="export_requests", version=current))
    if current > SCHEMA_VERSION:
        check_version(conn)
    for step in UPGRADES[current - 1 :]:
        step(conn)
    conn.execute(
        schema_versions.update()
        .where(schema_versions.c.component == "export_requests", schema_versions.c.version < SCHEMA_VERSION)
        .values(version=SCHEMA_VERSION)
    )
    return SCHEMA_VERSION


# --- Statements. Each transition names the states it may leave from, so racing writers
# (the sensor, the run, an application cancelling) cannot move a row backwards.

t = export_requests


def _transition(request_id: int, from_states: tuple[Status, ...], **values) -> sa.Update:
    return (
        t.update()
        .where(t.c.id == request_id, t.c.status.in_([s.value for s in from_states]))
        .values(updated_at=_now, **values)
    )


def pending(limit: int) -> sa.Select:
    """The oldest PENDING rows, locked so that two sensor ticks never take the same row. `params`
    comes as JSON text, for the sensor to decode row by row: one row's JSON that Python cannot
    read (nesting too deep, a 5,000-digit number) must not fail the whole batch."""
    return (
        sa.select(
            t.c.id, t.c.export_type, t.c.format, sa.cast(t.c.params, sa.Text).label("params"), t.c.requested_by,
            t.c.run_key,
        )
        .where(t.c.status == Status.PENDING.value)
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
                t.c.status == Status.CANCEL_REQUESTED.value,
                sa.and_(t.c.status == Status.QUEUED.value, t.c.run_id.is_(None)),
                sa.and_(t.c.status.in_([s.value for s in ACTIVE]), quiet),
            )
        )
        .order_by(t.c.updated_at)
        .limit(limit)
    )


def mark_queued(request_id: int) -> sa.Update:
    return _transition(
        request_id, (Status.PENDING,), status=Status.QUEUED.value, queued_at=_now, error=None, offers=t.c.offers + 1
    )


def requeue(request_id: int) -> sa.Update:
    """A QUEUED row whose run never appeared goes back to PENDING (run_key still prevents doubles)."""
    return _transition(request_id, (Status.QUEUED,), status=Status.PENDING.value, queued_at=None)


def set_run_id(request_id: int, run_id: str) -> sa.Update:
    return _transition(request_id, (Status.QUEUED, Status.RUNNING, Status.CANCEL_REQUESTED), run_id=run_id)


def mark_running(request_id: int, run_id: str) -> sa.Update:
    return _transition(
        request_id, (Status.PENDING, Status.QUEUED), status=Status.RUNNING.value, run_id=run_id, started_at=_now
    )


def set_total(request_id: int, total_rows: int) -> sa.Update:
    return _transition(
        request_id, (Status.RUNNING,), total_rows=total_rows, progress_rows=0, progress_pct=0 if total_rows else 100
    )


def set_progress(request_id: int, rows: int, pct: float) -> sa.Update:
    return _transition(request_id, (Status.RUNNING,), progress_rows=rows, progress_pct=round(pct, 2))


def add_progress(request_id: int, rows: int) -> sa.Update:
    """Add one chunk's newly streamed rows: the chunks of an export run in separate processes, and
    the row shows their total."""
    done = sa.func.coalesce(t.c.progress_rows, 0) + rows
    pct = sa.case((t.c.total_rows > 0, sa.func.least(100, 100 * sa.cast(done, sa.Numeric) / t.c.total_rows)), else_=100)
    return _transition(request_id, (Status.RUNNING,), progress_rows=done, progress_pct=sa.func.round(pct, 2))


def mark_completed(
    request_id: int, *, rows: int, uri: str, key: str | None, size: int, sha256: str, link: Link
) -> sa.Update:
    return _transition(
        request_id,
        (Status.RUNNING,),
        status=Status.COMPLETED.value,
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
    return _transition(request_id, (Status.COMPLETED,), download_url=url, download_url_expires_at=url_expires_at)


def expired_files(limit: int, after: tuple[datetime, int] | None = None) -> sa.Select:
    """Completed exports past their expiry, oldest first; the page after `after` (the last row's
    expires_at and id), so that rows left in place (a dry run, a failed delete) are not read again."""
    query = (
        sa.select(t.c.id, t.c.file_key, t.c.file_uri, t.c.file_bytes, t.c.expires_at)
        .where(t.c.status == Status.COMPLETED.value, t.c.expires_at < sa.func.now())
        .order_by(t.c.expires_at, t.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(sa.tuple_(t.c.expires_at, t.c.id) > sa.tuple_(*after))
    return query


def mark_expired(request_id: int, reason: str) -> sa.Update:
    """The file is gone: deleted by retention (`retention`) or on request (`deleted`)."""
    return _transition(
        request_id, (Status.COMPLETED,), status=Status.EXPIRED.value, expired_reason=reason, download_url=None,
        download_url_expires_at=None,
    )


MAX_ERROR_LENGTH = 2_000


def readable_error(error: str) -> str:
    """An error as the row can hold it (text cannot hold NUL) and a person can read it."""
    error = error.replace("\x00", "\\0")
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 1] + "…"


def mark_failed(request_id: int, error: str) -> sa.Update:
    return _transition(
        request_id,
        (Status.PENDING, Status.QUEUED, Status.RUNNING),
        status=Status.FAILED.value,
        error=readable_error(error),
        finished_at=_now,
    )


def mark_cancelled(request_id: int) -> sa.Update:
    return _transition(
        request_id,
        (Status.PENDING, Status.QUEUED, Status.RUNNING, Status.CANCEL_REQUESTED),
        status=Status.CANCELLED.value,
        finished_at=_now,
    )


def status_of(request_id: int) -> sa.Select:
    return sa.select(t.c.status).where(t.c.id == request_id)


def status_for_publish(request_id: int) -> sa.Select:
    """The row's status, locked until the publishing transaction ends: a cancel arriving meanwhile
    waits, then finds the row finished (and is ignored by the trigger above)."""
    return status_of(request_id).with_for_update()


def request_cancel(request_id: int) -> sa.Update:
    return _transition(
        request_id, (Status.PENDING, Status.QUEUED, Status.RUNNING), status=Status.CANCEL_REQUESTED.value
    )


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
    return sa.select(sa.func.count()).where(t.c.status.in_([Status.PENDING.value, Status.QUEUED.value]))


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
