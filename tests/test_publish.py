"""Publishing decides once: the file and its record (request row, incremental mark) appear together,
or neither does."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from export_platform.run_failures import root_message
from export_platform.resources.postgres import PostgresResource
from export_platform.naming import REQUEST_ID_TAG
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import OUTPUT_FOLDERS_ENV, LocalStorage
from support.readback import run_job
from support.readback import run_incremental
from support.request_rows import insert, row


def files(root) -> list:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def cancel_when_streaming(url: str, request_id: int, monkeypatch) -> threading.Thread:
    """The application's cancel, arriving once the run is streaming (its total is on the row) and
    before it publishes (publishing waits for it)."""
    from export_platform.ops import publish as export

    done = threading.Event()
    check = export._check_wanted
    monkeypatch.setattr(export, "_check_wanted", lambda *args: (done.wait(30), check(*args)))

    def cancel() -> None:
        with psycopg.connect(url, autocommit=True) as app:
            query = "SELECT total_rows IS NOT NULL FROM export_requests WHERE id = %s"
            while not app.execute(query, (request_id,)).fetchone()[0]:
                time.sleep(0.01)
            app.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
        done.set()

    thread = threading.Thread(target=cancel, daemon=True)
    thread.start()
    return thread


def resources_for(database_url: str, root) -> dict:
    return {
        "postgres": PostgresResource(url=database_url),
        "storage": LocalStorage(root=str(root)),
        "requests": RequestStore(url=database_url),
    }


def export_in_background(database_url: str, root, request_id: int) -> tuple[dict, threading.Thread]:
    """The request's export on a thread; its result lands in the returned dict."""
    outcome: dict = {}
    resources, tags = resources_for(database_url, root), {REQUEST_ID_TAG: str(request_id)}
    runner = threading.Thread(target=lambda: outcome.update(result=run_job("ledger_postings", {"format": "csv"}, resources, tags=tags)))
    runner.start()
    return outcome, runner


@pytest.fixture
def slow_to_publish(monkeypatch):
    """Holds publishing until the test releases it: a cancel arriving late in the export."""
    from export_platform.ops import publish as export

    reached, release = threading.Event(), threading.Event()
    place = export._place

    def held(*args):
        reached.set()
        assert release.wait(30)
        return place(*args)

    monkeypatch.setattr(export, "_place", held)
    return reached, release


def test_a_cancel_during_the_export_wins_and_nothing_is_published(db, database_url, tmp_path, monkeypatch):
    request_id = insert(db, "ledger_postings")
    canceller = cancel_when_streaming(database_url, request_id, monkeypatch)
    result = run_job("ledger_postings", {"format": "csv"}, resources_for(database_url, tmp_path), tags={REQUEST_ID_TAG: str(request_id)})
    canceller.join(30)
    final = row(db, request_id)
    assert not result.success
    assert final["status"] == "CANCELLED"
    assert (final["file_uri"], final["sha256"], final["row_count"], final["expires_at"]) == (None, None, None, None)
    assert files(tmp_path) == []  # nothing published, no temp left


def test_the_export_that_got_there_first_wins_with_every_detail(db, database_url, tmp_path, slow_to_publish):
    reached, release = slow_to_publish
    request_id = insert(db, "ledger_postings")
    outcome, runner = export_in_background(database_url, tmp_path, request_id)
    assert reached.wait(60)
    release.set()
    runner.join(60)
    # Once the row is COMPLETED, a cancel cannot turn it back.
    db.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    final = row(db, request_id)
    assert outcome["result"].success and final["status"] == "COMPLETED"
    assert None not in (final["file_uri"], final["sha256"], final["row_count"], final["expires_at"], final["file_bytes"])
    assert [str(p) for p in files(tmp_path)] == [final["file_uri"].removeprefix(f"file://{tmp_path}/")]


def test_a_cancel_while_the_file_is_being_published_wins_and_removes_it(db, database_url, tmp_path, slow_to_publish):
    reached, release = slow_to_publish
    request_id = insert(db, "ledger_postings")
    outcome, runner = export_in_background(database_url, tmp_path, request_id)
    assert reached.wait(60)
    db.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    release.set()
    runner.join(60)
    final = row(db, request_id)
    assert not outcome["result"].success and final["status"] == "CANCELLED"
    assert final["file_uri"] is None and files(tmp_path) == []


def test_a_mark_that_cannot_advance_takes_its_published_file_back(incremental_db, resources, tmp_path):
    url, overrides = incremental_db
    storage = LocalStorage(root=str(tmp_path))
    config = {"format": "csv", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_locked"}}
    requests = RequestStore(url=url, statement_timeout_ms=500)
    assert run_incremental(config, {**resources, **overrides, "storage": storage, "requests": requests}).success
    before = files(tmp_path)
    with psycopg.connect(url) as holder:
        mark = holder.execute("SELECT high_water FROM export_watermarks WHERE key = 'inc_locked' FOR UPDATE").fetchone()
        with psycopg.connect(url, autocommit=True) as app:
            app.execute("INSERT INTO users (id, name, updated_at) VALUES (200001, 'new', now())")
        failed = run_incremental(config, {**resources, **overrides, "storage": storage, "requests": requests})
        holder.rollback()
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_key == "publish_export" and "statement timeout" in root_message(failure.step_failure_data.error)
    assert files(tmp_path) == before  # the second file was taken back
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT high_water FROM export_watermarks WHERE key = 'inc_locked'").fetchone() == mark
        conn.execute("DELETE FROM users WHERE id = 200001")



def test_an_output_file_replaced_by_a_run_whose_recording_fails_is_restored(incremental_db, resources, tmp_path, monkeypatch):
    url, overrides = incremental_db
    monkeypatch.setenv(OUTPUT_FOLDERS_ENV, str(tmp_path / "out"))  # the worker host's allow-list
    target = tmp_path / "out" / "users.csv"
    target.parent.mkdir()
    target.write_text("the earlier export\n")
    config = {"format": "csv", "columns": ["id"], "output_path": str(target),
              "incremental": {"column": "updated_at", "key": "inc_output"}}
    requests = RequestStore(url=url, statement_timeout_ms=500)
    run_resources = {**resources, **overrides, "storage": LocalStorage(root=str(tmp_path / "exports")), "requests": requests}
    with psycopg.connect(url) as holder:
        holder.execute("INSERT INTO export_watermarks VALUES ('inc_output', 'updated_at', '2000-01-01', 'r', now())")
        holder.commit()
        holder.execute("SELECT * FROM export_watermarks WHERE key = 'inc_output' FOR UPDATE")
        failed = run_incremental(config, run_resources)
        holder.rollback()
    assert not failed.success
    assert target.read_text() == "the earlier export\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["users.csv"]  # nothing of the run left beside it
    assert run_incremental(config, run_resources).success  # and once it can be recorded, it is replaced
    assert target.read_text().startswith("id\n")


def test_output_path_is_refused_outside_the_allowed_folders_before_anything_is_read(resources, tmp_path, monkeypatch):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "victim.csv").write_text("keep me\n")
    (allowed / "link.csv").symlink_to(outside / "victim.csv")
    (allowed / "folder-link").symlink_to(outside)
    monkeypatch.setenv(OUTPUT_FOLDERS_ENV, str(allowed))
    storage = LocalStorage(root=str(tmp_path / "exports"))
    for path in (outside / "victim.csv", outside / "new.csv", allowed / ".." / "outside" / "new.csv",
                 allowed / "link.csv", allowed / "folder-link" / "new.csv", tmp_path / "new.csv"):
        result = run_job("users", {"format": "csv", "columns": ["id"], "output_path": str(path)}, {**resources, "storage": storage})
        assert not result.success, path
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_key == "plan_users", path
        assert root_message(failure.step_failure_data.error).startswith("output_path: "), path
    assert sorted(p.name for p in outside.iterdir()) == ["victim.csv"] and (outside / "victim.csv").read_text() == "keep me\n"
    assert not (tmp_path / "exports").exists() and not (tmp_path / "new.csv").exists()
    written = run_job("users", {"format": "csv", "columns": ["id"], "output_path": str(allowed / "ok.csv")}, {**resources, "storage": storage})
    assert written.success and (allowed / "ok.csv").read_text().startswith("id\n")
