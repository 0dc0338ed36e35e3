"""The request statuses are declared once (requests/status.py); the table's CHECK constraint, its
transition trigger and its open rows' index are generated from that declaration, and `migrate`
brings a table of the previous schema to them with its rows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import export_platform
from export_platform.requests import schema
from export_platform.requests import table as rt
from export_platform.requests.status import Meaning, Status, check_declaration
from export_platform.requests.store import RequestStore
from support.readback import database_beside
from support.request_rows import insert

MOVES = [(s.value, n.value) for s in Status for n in s.becomes]
# Every pair of different statuses the declaration does not allow, but a late cancel (ignored).
FORBIDDEN = [
    (s.value, n.value) for s in Status for n in Status
    if s is not n and n not in s.becomes and not (s.meaning.finished and n.meaning.ignored_once_finished)
]


def test_the_declaration_answers_what_the_platform_asks():
    assert {s.value: set(s.meaning.becomes) for s in Status} == {  # as docs/reference.md lists them
        "PENDING": {"QUEUED", "RUNNING", "FAILED", "CANCEL_REQUESTED", "CANCELLED"},
        "QUEUED": {"PENDING", "RUNNING", "FAILED", "CANCEL_REQUESTED", "CANCELLED"},
        "RUNNING": {"COMPLETED", "FAILED", "CANCEL_REQUESTED", "CANCELLED"},
        "COMPLETED": {"EXPIRED"},
        "FAILED": set(),
        "CANCEL_REQUESTED": {"CANCELLED"},
        "CANCELLED": set(),
        "EXPIRED": set(),
    }
    assert Status.values(finished=True) == ["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"]
    assert Status.the(initial=True) is Status.PENDING
    assert Status.the(stopping=True).value == "CANCEL_REQUESTED"
    assert Status.CANCELLED.sources == (Status.PENDING, Status.QUEUED, Status.RUNNING, Status.CANCEL_REQUESTED)
    assert Status("RUNNING") is Status.RUNNING and Status.RUNNING == "RUNNING"
    assert not any(s.becomes for s in Status if s.meaning.finished and not s.meaning.delivered)


@pytest.mark.parametrize(("member", "meaning", "refusal"), [
    ("RUNNING", Meaning("Exporting", exporting=True, becomes=("PAUSED",)), "RUNNING becomes unknown statuses"),
    ("FAILED", Meaning("Failed", finished=True, becomes=("PENDING",)), "FAILED is finished"),
    ("QUEUED", Meaning("Queued", initial=True), "exactly one request status must be initial"),
])
def test_a_declaration_the_rules_cannot_follow_is_refused(monkeypatch, member, meaning, refusal):
    monkeypatch.setattr(Status[member], "meaning", meaning)
    with pytest.raises(TypeError, match=refusal):
        check_declaration()


def test_the_check_constraint_refuses_an_unknown_status(db):
    with pytest.raises(psycopg.errors.CheckViolation, match="export_requests_status_check"):
        insert(db, status="PAUSED")
    request_id = insert(db)  # and an update to it: no declared move leads there
    with pytest.raises(psycopg.errors.CheckViolation, match="a PENDING request cannot become pending"):
        db.execute("UPDATE export_requests SET status = 'pending' WHERE id = %s", (request_id,))


@pytest.mark.parametrize(("before", "after"), MOVES)
def test_the_trigger_allows_each_declared_move(db, before, after):
    request_id = insert(db, status=before)
    moved = db.execute("UPDATE export_requests SET status = %s WHERE id = %s", (after, request_id))
    assert moved.rowcount == 1
    assert db.execute("SELECT status FROM export_requests WHERE id = %s", (request_id,)).fetchone()[0] == after


def test_the_trigger_refuses_every_move_the_declaration_forbids(db):
    assert ("RUNNING", "PENDING") in FORBIDDEN and ("FAILED", "RUNNING") in FORBIDDEN
    for before, after in FORBIDDEN:
        request_id = insert(db, status=before)
        with pytest.raises(psycopg.errors.CheckViolation, match=f"a {before} request cannot become {after}"):
            db.execute("UPDATE export_requests SET status = %s WHERE id = %s", (after, request_id))
        assert db.execute("SELECT status FROM export_requests WHERE id = %s", (request_id,)).fetchone()[0] == before


@pytest.mark.parametrize("finished", Status.values(finished=True))
def test_a_late_cancel_of_a_finished_row_is_ignored(db, finished):
    request_id = insert(db, status=finished)
    cancel = db.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    assert cancel.rowcount == 0
    assert db.execute("SELECT status FROM export_requests WHERE id = %s", (request_id,)).fetchone()[0] == finished


LINK = rt.Link("https://exports.example.com/f.csv", None, datetime(2030, 1, 1, tzinfo=timezone.utc))
STATEMENTS = {  # each statement that moves a row, and where to
    Status.QUEUED: rt.mark_queued,
    Status.PENDING: rt.requeue,
    Status.RUNNING: lambda request_id: rt.mark_running(request_id, "run-1"),
    Status.COMPLETED: lambda request_id: rt.mark_completed(
        request_id, rows=1, uri="file:///Données/f.csv", key="f.csv", size=1, sha256="0" * 64, link=LINK),
    Status.FAILED: lambda request_id: rt.mark_failed(request_id, "stopped by the test"),
    Status.CANCEL_REQUESTED: rt.request_cancel,
    Status.CANCELLED: rt.mark_cancelled,
    Status.EXPIRED: lambda request_id: rt.mark_expired(request_id, "deleted"),
}


@pytest.mark.parametrize("target", list(STATEMENTS), ids=str)
def test_each_statement_moves_a_row_from_the_declared_sources_only(store, db, target):
    """The statements' guards are the declaration's moves: from any other status a statement
    changes nothing (0 rows), and never meets the trigger's refusal."""
    for status in Status:
        request_id = insert(db, user="alice@example.com", status=status.value)
        moved = store.run(STATEMENTS[target](request_id)).rowcount
        after = db.execute("SELECT status FROM export_requests WHERE id = %s", (request_id,)).fetchone()[0]
        assert (moved, after) == ((1, target.value) if status in target.sources else (0, status.value)), status


# The schema of version 5 as its release created it: the table with its literal CHECK, index and
# trigger (the notify trigger, unchanged since, comes from its upgrade step: see the fixture).
VERSION_5 = """
CREATE TABLE export_requests (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY,
    export_type TEXT NOT NULL,
    format TEXT DEFAULT 'csv' NOT NULL,
    params JSONB DEFAULT '{}'::jsonb NOT NULL,
    requested_by TEXT,
    idempotency_key TEXT,
    run_key TEXT DEFAULT gen_random_uuid()::text NOT NULL,
    offers SMALLINT DEFAULT '0' NOT NULL,
    status TEXT DEFAULT 'PENDING' NOT NULL,
    run_id TEXT, progress_rows BIGINT, total_rows BIGINT, progress_pct NUMERIC(5, 2), row_count BIGINT,
    file_uri TEXT, file_key TEXT, file_bytes BIGINT, sha256 TEXT, download_url TEXT,
    download_url_expires_at TIMESTAMP WITH TIME ZONE, expires_at TIMESTAMP WITH TIME ZONE,
    expired_reason TEXT, error TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    queued_at TIMESTAMP WITH TIME ZONE, started_at TIMESTAMP WITH TIME ZONE, finished_at TIMESTAMP WITH TIME ZONE,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT export_requests_status_check CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING', 'COMPLETED',
        'FAILED', 'CANCEL_REQUESTED', 'CANCELLED', 'EXPIRED')),
    CONSTRAINT export_requests_idempotency UNIQUE (requested_by, idempotency_key)
);
CREATE INDEX export_requests_by_user ON export_requests (requested_by, id DESC);
CREATE INDEX export_requests_by_file_key ON export_requests (file_key) WHERE file_key IS NOT NULL;
CREATE INDEX export_requests_open ON export_requests (id) WHERE status IN ('PENDING', 'QUEUED', 'RUNNING', 'CANCEL_REQUESTED');
CREATE OR REPLACE FUNCTION export_requests_keep_finished() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER export_requests_keep_finished BEFORE UPDATE OF status ON export_requests FOR EACH ROW
    WHEN (NEW.status = 'CANCEL_REQUESTED' AND OLD.status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED'))
    EXECUTE FUNCTION export_requests_keep_finished();
CREATE TABLE export_watermarks (key TEXT PRIMARY KEY, column_name TEXT NOT NULL,
    high_water TIMESTAMP WITH TIME ZONE NOT NULL, run_id TEXT NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL);
CREATE TABLE export_platform_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO export_platform_schema VALUES ('export_requests', 5);
"""


@pytest.fixture
def version_5(database_url: str):
    """A database holding release 5's request table and rows in every status."""
    url = database_beside(database_url, "status_rules_migration")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS export_api_requests, export_api_keys, export_requests, "
                     "export_watermarks, export_platform_schema CASCADE")
        conn.execute("DROP FUNCTION IF EXISTS export_requests_status_rules, export_requests_keep_finished, "
                     "export_requests_notify CASCADE")
        conn.execute(VERSION_5)
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    with engine.begin() as conn:
        schema._v4_notify_and_file_index(conn)
        schema._v5_file_keys(conn)
    engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        for status in Status:
            insert(conn, user="zoé@example.com", status=status.value, params={"folder": "Données"})
    return url


def _rules(conn) -> dict:
    return {
        "triggers": {r[0] for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'export_requests'::regclass AND NOT tgisinternal")},
        "open": conn.execute("SELECT pg_get_indexdef('export_requests_open'::regclass)").fetchone()[0],
    }


def test_migrating_the_previous_schema_keeps_its_rows_and_replaces_its_rules(version_5):
    rows_before = _rows(version_5)
    with pytest.raises(rt.SchemaMismatch, match="schema version 5; this release needs 6"):
        RequestStore(url=version_5).engine()
    assert RequestStore(url=version_5).migrate() == rt.SCHEMA_VERSION == 6
    assert _rows(version_5) == rows_before
    with psycopg.connect(version_5, autocommit=True) as conn:
        assert _rules(conn)["triggers"] == {"export_requests_notify", "export_requests_status_rules"}
        assert conn.execute("SELECT to_regprocedure('export_requests_keep_finished()')").fetchone()[0] is None
        running = conn.execute("SELECT id FROM export_requests WHERE status = 'RUNNING'").fetchone()[0]
        with pytest.raises(psycopg.errors.CheckViolation, match="a RUNNING request cannot become PENDING"):
            conn.execute("UPDATE export_requests SET status = 'PENDING' WHERE id = %s", (running,))
        late = conn.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE status = 'COMPLETED'")
        assert late.rowcount == 0
    RequestStore(url=version_5).engine()  # this release's schema now: no mismatch
    assert RequestStore(url=version_5).migrate() == rt.SCHEMA_VERSION and _rows(version_5) == rows_before


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, status, requested_by, params, run_key FROM export_requests ORDER BY id").fetchall()


def test_a_status_added_to_the_declaration_reaches_the_database_through_migrate(version_5, tmp_path):
    """Adding a status is one change in status.py: a copy of the package with PAUSED declared
    migrates the table to allow it (CHECK, trigger, index); this release then refuses that table
    instead of undoing the newer rules."""
    RequestStore(url=version_5).migrate()
    package = Path(export_platform.__file__).parent
    shutil.copytree(package, tmp_path / "export_platform", ignore=shutil.ignore_patterns("__pycache__", "fonts"))
    declaration = tmp_path / "export_platform" / "requests" / "status.py"
    text = declaration.read_text()
    running = 'becomes=("COMPLETED", "FAILED", "CANCEL_REQUESTED", "CANCELLED")'
    assert running in text
    text = text.replace(running, 'becomes=("PAUSED", "COMPLETED", "FAILED", "CANCEL_REQUESTED", "CANCELLED")').replace(
        "    COMPLETED = ",
        '    PAUSED = "PAUSED", Meaning("Paused", active=True, becomes=("RUNNING", "CANCELLED"))\n    COMPLETED = ',
    )
    declaration.write_text(text)
    migrate = "from export_platform.requests.store import RequestStore; import sys; RequestStore(url=sys.argv[1]).migrate()"
    subprocess.run([sys.executable, "-c", migrate, version_5], cwd=tmp_path, check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(tmp_path)})
    with psycopg.connect(version_5, autocommit=True) as conn:
        running_id = conn.execute("SELECT id FROM export_requests WHERE status = 'RUNNING'").fetchone()[0]
        for status in ("PAUSED", "RUNNING", "PAUSED", "CANCELLED"):
            conn.execute("UPDATE export_requests SET status = %s WHERE id = %s", (status, running_id))
        with pytest.raises(psycopg.errors.CheckViolation, match="a PENDING request cannot become PAUSED"):
            conn.execute("UPDATE export_requests SET status = 'PAUSED' WHERE status = 'PENDING'")
        assert "'PAUSED'" in _rules(conn)["open"]
    for step in (lambda store: store.engine(), lambda store: store.migrate()):
        with pytest.raises(rt.SchemaMismatch, match=r"statuses this release does not know \(PAUSED\)"):
            step(RequestStore(url=version_5))


def test_migrate_restores_rules_changed_by_hand(version_5):
    store = RequestStore(url=version_5)
    store.migrate()
    with psycopg.connect(version_5, autocommit=True) as conn:
        conn.execute("DROP INDEX export_requests_open")
    with pytest.raises(rt.SchemaMismatch, match="status rules are not this release's.*db migrate"):
        RequestStore(url=version_5).engine()
    assert RequestStore(url=version_5).migrate() == rt.SCHEMA_VERSION
    with psycopg.connect(version_5, autocommit=True) as conn:
        assert "WHERE (status = ANY" in _rules(conn)["open"]
