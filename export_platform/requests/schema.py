"""`export_requests`' schema: its tables, triggers and migrations (SQLAlchemy Core).

The platform owns and migrates the table. `migrate` is idempotent: it creates what is missing,
applies, in order, the upgrade steps past the version recorded in `export_platform_schema`, so a
later release can add columns safely to a table that already holds requests, and then brings the
status rules (the CHECK constraint, the transition trigger, the open rows' index) to what
requests/status.py declares whenever they differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from ..errors import DatabaseError
from .status import Status

metadata = sa.MetaData()
_now = sa.text("now()")
_status = sa.column("status")

# Generated from the declaration: the statuses a row may hold, and the rows the sensor has work on.
STATUS_CHECK = sa.CheckConstraint(_status.in_(Status.values()), name="export_requests_status_check")
OPEN_ROWS = sa.Index("export_requests_open", "id", postgresql_where=_status.in_(Status.values(finished=False)))

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
    sa.Column("status", sa.Text, nullable=False, server_default=Status.the(initial=True).value),
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
    STATUS_CHECK,
    # A retried or double-clicked insert with the same key yields no second export.
    sa.UniqueConstraint("requested_by", "idempotency_key", name="export_requests_idempotency"),
    # The sensor's scan: only the rows it has work on.
    OPEN_ROWS,
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

schema_versions = sa.Table(
    "export_platform_schema",
    metadata,
    sa.Column("component", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


# --- The status rules, generated from status.py. A move between two statuses is allowed when the
# declaration lists it, ignored (0 rows updated) when the declaration says a finished row ignores
# it (a cancel racing the finish), and refused with check_violation otherwise, whoever writes it.

STATUS_RULES = "export_requests_status_rules"


def _sql(expression: sa.ColumnElement) -> str:
    """An expression of the declaration's values as SQL text, its values rendered as literals by
    SQLAlchemy: they are the declaration's names, never user data."""
    return str(expression.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def _moves() -> tuple[str, str]:
    old, new = sa.literal_column("OLD.status"), sa.literal_column("NEW.status")
    allowed = sa.tuple_(old, new).in_([(s.value, n.value) for s in Status for n in s.becomes])
    ignored = sa.and_(
        new.in_(Status.values(ignored_once_finished=True)),
        old.in_(Status.values(finished=True)),
    )
    return _sql(allowed), _sql(ignored)


def _status_rules_function() -> sa.DDL:
    allowed, ignored = _moves()
    body = (
        "BEGIN\n"
        f"    IF {allowed} THEN\n        RETURN NEW;\n    END IF;\n"
        f"    IF {ignored} THEN\n        RETURN NULL;\n    END IF;\n"
        # %% is sa.DDL's escape of plpgsql's placeholder
        "    RAISE EXCEPTION 'export_requests: a %% request cannot become %%', OLD.status, NEW.status\n"
        "        USING ERRCODE = 'check_violation', HINT = 'export_platform/requests/status.py declares the moves';\n"
        "END"
    )
    return sa.DDL(
        f"CREATE OR REPLACE FUNCTION {STATUS_RULES}() RETURNS trigger LANGUAGE plpgsql AS $rules$\n{body}\n$rules$"
    )


def status_rules_ddl() -> list[sa.ExecutableDDLElement]:
    """Everything that makes the database hold the declaration, in order; safe on a table that
    has any earlier version of it (each object is replaced)."""
    return [
        sa.schema.DropConstraint(STATUS_CHECK, if_exists=True),
        sa.schema.AddConstraint(STATUS_CHECK),
        _status_rules_function(),
        sa.DDL(
            f"CREATE OR REPLACE TRIGGER {STATUS_RULES} BEFORE UPDATE OF status ON export_requests FOR EACH ROW "
            f"WHEN (NEW.status IS DISTINCT FROM OLD.status) EXECUTE FUNCTION {STATUS_RULES}()"
        ),
        sa.schema.DropIndex(OPEN_ROWS, if_exists=True),
        sa.schema.CreateIndex(OPEN_ROWS),
    ]


@functools.cache  # the declaration is fixed once imported; check_version asks on every new pool
def status_rules_fingerprint() -> dict:
    """What the database records of the rules it holds: their statuses, and a digest of their DDL."""
    ddl = "\n".join(str(statement.compile(dialect=postgresql.dialect())) for statement in status_rules_ddl())
    return {"statuses": Status.values(), "sha256": hashlib.sha256(ddl.encode()).hexdigest()}


_RULES_IN_PLACE = sa.text(
    "SELECT obj_description(to_regprocedure(:function), 'pg_proc'), "
    "EXISTS (SELECT FROM pg_trigger WHERE tgname = :trigger AND tgrelid = to_regclass('export_requests')) "
    "AND EXISTS (SELECT FROM pg_constraint WHERE conname = :check AND conrelid = to_regclass('export_requests')) "
    "AND to_regclass(:index) IS NOT NULL"
).bindparams(function=f"{STATUS_RULES}()", trigger=STATUS_RULES, check=STATUS_CHECK.name, index=OPEN_ROWS.name)


def _recorded_rules(conn: sa.Connection) -> dict | None:
    """The fingerprint recorded with the status rules; None when one of them is missing (say, a
    trigger dropped by hand), so that migrate puts them all back."""
    comment, in_place = conn.execute(_RULES_IN_PLACE).one()
    return json.loads(comment) if comment and in_place else None


def _refuse_unknown_statuses(recorded: dict | None) -> None:
    unknown = sorted(set(recorded["statuses"]) - set(Status.values())) if recorded else []
    if unknown:
        raise SchemaMismatch(
            f"export_requests allows statuses this release does not know ({', '.join(unknown)}): "
            "upgrade export_platform here before it serves this database"
        )


def sync_status_rules(conn: sa.Connection) -> None:
    """Replace the status rules when they differ from the declaration. Refuses to drop statuses a
    newer release added (its rows may hold them)."""
    recorded = _recorded_rules(conn)
    if recorded == status_rules_fingerprint():
        return
    _refuse_unknown_statuses(recorded)
    for statement in status_rules_ddl():
        conn.execute(statement)
    fingerprint = sa.literal(json.dumps(status_rules_fingerprint()))
    conn.execute(sa.DDL(f"COMMENT ON FUNCTION {STATUS_RULES}() IS {_sql(fingerprint)}"))


# --- Push: each change of a request's status or progress is announced on this channel with
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


# --- Upgrade steps for tables made by older releases: UPGRADES[i] takes version i + 1 to i + 2.
# A new column goes into the table above (for fresh installs) and gets a step here. A status
# needs no step: `sync_status_rules` follows the declaration.

def _v2_links_and_expiry(conn: sa.Connection) -> None:
    conn.execute(sa.text(
        "ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS download_url_expires_at timestamptz, "
        "ADD COLUMN IF NOT EXISTS expired_reason text"
    ))


def _v3_run_keys(conn: sa.Connection) -> None:
    # Version 3 also added a trigger that ignored a cancel of a finished row: the status rules do now.
    conn.execute(sa.text(
        "ALTER TABLE export_requests "
        "ADD COLUMN IF NOT EXISTS run_key text NOT NULL DEFAULT gen_random_uuid()::text, "
        "ADD COLUMN IF NOT EXISTS offers smallint NOT NULL DEFAULT 0"
    ))


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


def _v6_status_rules(conn: sa.Connection) -> None:
    # Versions 3 to 5 kept finished rows with a trigger of literals; the generated rules replace it.
    conn.execute(sa.text("DROP TRIGGER IF EXISTS export_requests_keep_finished ON export_requests"))
    conn.execute(sa.text("DROP FUNCTION IF EXISTS export_requests_keep_finished()"))


UPGRADES: list[Callable[[sa.Connection], None]] = [
    _v2_links_and_expiry,
    _v3_run_keys,
    _v4_notify_and_file_index,
    _v5_file_keys,
    _v6_status_rules,
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
    needs, newer than it knows, or holding other status rules. Changes nothing: migrating is an
    explicit step."""
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
    recorded = _recorded_rules(conn)
    if recorded != status_rules_fingerprint():
        _refuse_unknown_statuses(recorded)
        raise SchemaMismatch(f"export_requests' status rules are not this release's (requests/status.py): {MIGRATE_HINT}")
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
    sync_status_rules(conn)
    conn.execute(
        schema_versions.update()
        .where(schema_versions.c.component == "export_requests", schema_versions.c.version < SCHEMA_VERSION)
        .values(version=SCHEMA_VERSION)
    )
    return SCHEMA_VERSION
