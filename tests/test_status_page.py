"""The end user's status page in headless Chromium (Debian's `chromium`, driven by Playwright):
its bar follows a running export and its button downloads the very file. Skipped where chromium
or Playwright is missing."""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
from pathlib import Path

import pytest

from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, status_page_url
from export_platform.ops import extract as export_ops
from export_platform.resources.postgres import PostgresResource
from export_platform.naming import REQUEST_ID_TAG, REQUESTED_BY_TAG
from support.readback import run_job, seeded_beside
from support.serve_stack import TEST_KEY, serve_process
from support.request_rows import insert, row

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"),
]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
BAR_SHOWS = "pct => Math.abs(Number(document.getElementById('bar').getAttribute('aria-valuenow')) - pct) < 0.01"
# The bar's drawn width, once its transition has ended, as a percentage of its track.
DRAWN_PCT = """() => document.getAnimations().length === 0 &&
    100 * document.getElementById('bar').getBoundingClientRect().width /
    document.querySelector('.track').getBoundingClientRect().width"""
WAIT_MS = 60_000


@pytest.fixture
def server(database_url, storage_root, tmp_path, monkeypatch):
    with serve_process(storage_root, tmp_path / "serve.log") as server:
        monkeypatch.setenv(SIGNING_KEY_ENV, TEST_KEY)
        monkeypatch.setenv(PUBLIC_URL_ENV, server.base)
        yield server


@pytest.fixture
def paced(monkeypatch) -> tuple[queue.Queue, threading.Semaphore]:
    """The export reports progress after every batch, then waits until the test lets it go on: the
    browser is checked at each step of a running export, whatever the machine's speed."""
    reported: queue.Queue = queue.Queue()
    go_on = threading.Semaphore(0)
    report = export_ops.Progress._report

    def paced_report(self, new_rows: int, pct: float) -> None:
        report(self, new_rows, pct)
        reported.put(pct)
        go_on.acquire(timeout=WAIT_MS / 1000)  # the test failed if it never says so: finish anyway

    monkeypatch.setattr(export_ops, "PROGRESS_INTERVAL_SECONDS", 0)
    monkeypatch.setattr(export_ops.Progress, "_report", paced_report)
    return reported, go_on


def test_the_page_follows_a_running_export_and_downloads_its_file(db, resources, server, paced, tmp_path):
    reported, go_on = paced
    request_id = insert(db, "users", "csv.gz", user="grace")
    db.execute("UPDATE export_requests SET status = 'QUEUED' WHERE id = %s", (request_id,))
    # Many progress reports: 10,000 users (DuckDB reads at least 2,048 rows a batch) in small batches,
    # from a database beside the session's (whose request row the page shows).
    users = seeded_beside(db.info.dsn, "status_page_users", 10_000, ("users",))
    small_batches = {**resources, "postgres": PostgresResource(url=users, batch_size_hint_bytes=32 * 1024)}
    outcome: list = []

    def export() -> None:
        try:
            tags = {REQUEST_ID_TAG: str(request_id), REQUESTED_BY_TAG: "grace"}
            outcome.append(run_job("users", {"format": "csv_gz"}, small_batches, tags=tags))
        finally:
            reported.put(None)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 520})
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url.split("?")[0].rsplit("/", 1)[-1]))
        page.goto(status_page_url(request_id, 600))
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Queued')")
        exporter = threading.Thread(target=export)
        exporter.start()
        shown = []
        while (pct := reported.get(timeout=WAIT_MS / 1000)) is not None:
            expected = float(row(db, request_id)["progress_pct"])
            page.wait_for_function(BAR_SHOWS, arg=expected, timeout=WAIT_MS)
            shown.append(expected)
            if len(shown) == 3:
                assert abs(page.wait_for_function(DRAWN_PCT, timeout=WAIT_MS).json_value() - expected) < 1
                page.screenshot(path=str(tmp_path / "running.png"))
            go_on.release()
        exporter.join()
        assert outcome and outcome[0].success
        assert len([p for p in shown if 0 < p < 100]) >= 3 and shown == sorted(shown)  # it moved, forward

        final = row(db, request_id)
        button = page.locator("#download")
        button.wait_for(state="visible", timeout=WAIT_MS)
        page.wait_for_function(BAR_SHOWS, arg=100.0, timeout=WAIT_MS)
        assert abs(page.wait_for_function(DRAWN_PCT, timeout=WAIT_MS).json_value() - 100) < 1
        page.screenshot(path=str(tmp_path / "completed.png"))
        with page.expect_download(timeout=WAIT_MS) as download:
            button.click()
        saved = tmp_path / "downloaded"
        download.value.save_as(saved)
        day = final["finished_at"].strftime("%Y-%m-%d")
        assert download.value.suggested_filename == f"users-{day}.csv.gz"
        browser.close()
    assert fetched.count("events") == 1 and "status" not in fetched  # pushed over one stream, never polled
    body = saved.read_bytes()
    assert hashlib.sha256(body).hexdigest() == final["sha256"] and len(body) == final["file_bytes"]
    assert final["row_count"] == 10_000
    assert body == Path(final["file_uri"].removeprefix("file://")).read_bytes()


INTERNAL_ERROR = (
    "OSError: [Errno 28] No space left on device: '/srv/exports/.tmp/5f3c2a1e-0b7d-4c55-9a43-d7e2f1c0a9b8/export.csv' "
    "(worker-3.internal)"
)


def test_a_failed_request_shows_its_user_what_to_do_and_no_internals(db, server, tmp_path):
    internal = insert(db, "users", "xlsx", user="alice@example.com", status="FAILED")
    refused = insert(db, "users", "pdf", user="alice@example.com", status="FAILED")
    db.execute("UPDATE export_requests SET error = %s WHERE id = %s", (INTERNAL_ERROR, internal))
    db.execute(
        "UPDATE export_requests SET error = %s WHERE id = %s",
        ("format: pdf holds at most 10,000 rows and this request matches 12,345: narrow it with filters, or choose "
         "csv or xlsx", refused),
    )
    folder = Path(os.environ.get("EXPORT_PLATFORM_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 520})
        shown = {}
        for name, request_id in (("failed", internal), ("refused", refused)):
            page.goto(status_page_url(request_id, 600))
            page.locator("#error").wait_for(state="visible", timeout=WAIT_MS)
            page.screenshot(path=str(folder / f"{name}.png"))
            shown[name] = (page.inner_text("#status"), page.inner_text("#error"), page.inner_text("body"))
        browser.close()
    status, error, body = shown["failed"]
    assert status.startswith("Failed") and f"quote request {internal}" in error
    for secret in ("/srv", ".tmp", "5f3c2a1e", "internal", "Errno", "alice"):
        assert secret not in body, secret
    status, error, _ = shown["refused"]
    assert status.startswith("Failed") and error.startswith("format: pdf holds at most 10,000 rows")
