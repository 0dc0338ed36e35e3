"""The API's front-end example (/examples/export-button.html) in headless Chromium: with a user
token its back-end signed, it starts an export, follows it by server-sent events and downloads the
very file. The run is the job executed in-process for the request row, as a worker would run it.
Skipped where chromium or Playwright is missing."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from export_platform.jobs import run_config_for
from export_platform.naming import REQUEST_ID_TAG, REQUESTED_BY_TAG
from export_platform.planning.plan import plan_request
from support.api_calls import new_key, user_token
from support.readback import db_rows, file_rows, run_job
from support.request_rows import row
from support.serve_stack import serve_process

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"),
]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ALICE = "alice@example.com"
COLUMNS = ["id", "name", "email", "country_code", "signup_date"]  # what the example asks for
WAIT_MS = 60_000


@pytest.fixture
def server(database_url, storage_root, tmp_path):
    with serve_process(storage_root, tmp_path / "serve.log") as server:
        yield server
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def export_as_a_worker_would(db, resources, request_id: int) -> None:
    """The request sensor's plan of the row, run by the export type's job with the row's tags."""
    stored = row(db, request_id)
    plan = plan_request(stored["export_type"], stored["format"], json.loads(stored["params"]))
    db.execute("UPDATE export_requests SET status = 'QUEUED' WHERE id = %s", (request_id,))
    config = next(iter(run_config_for(plan)["ops"].values()))["config"]
    tags = {REQUEST_ID_TAG: str(request_id), REQUESTED_BY_TAG: stored["requested_by"]}
    assert run_job(plan.export_type, config, resources, tags=tags).success


def test_the_example_starts_follows_and_downloads_an_export(db, database_url, resources, server, tmp_path):
    key = new_key(database_url, ALICE)
    token = user_token(server.signer, key, ALICE).token
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 560})
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((r.url.split("?")[0], r.headers.get("authorization"))))
        page.goto(f"{server.base}/examples/export-button.html#token={token}")
        page.fill("#countries", "US, FR")
        with page.expect_response(lambda r: r.url.endswith("/api/v1/exports") and r.request.method == "POST") as posted:
            page.click("#start")
        created = posted.value.json()
        assert posted.value.status == 202
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Waiting')")
        stored = row(db, created["id"])
        assert (stored["requested_by"], json.loads(stored["params"])) == (
            ALICE, {"filters": {"country_code": ["US", "FR"]}, "columns": COLUMNS})

        worker = threading.Thread(target=export_as_a_worker_would, args=(db, resources, created["id"]))
        worker.start()
        link = page.locator("#download")
        link.wait_for(state="visible", timeout=WAIT_MS)
        worker.join()
        page.wait_for_function("() => document.getElementById('bar').getAttribute('aria-valuenow') === '100'")
        page.screenshot(path=str(tmp_path / "completed.png"))
        with page.expect_download(timeout=WAIT_MS) as download:
            link.click()
        saved = tmp_path / "downloaded.csv"
        download.value.save_as(saved)
        browser.close()
    final = row(db, created["id"])
    body = saved.read_bytes()
    assert final["status"] == "COMPLETED" and hashlib.sha256(body).hexdigest() == final["sha256"]
    assert body == Path(unquote(urlsplit(final["file_uri"]).path)).read_bytes()
    expected = db_rows(db, "users", COLUMNS, "WHERE country_code IN ('US', 'FR')")
    assert file_rows(db, "users", COLUMNS, "csv", saved) == expected and final["row_count"] == len(expected)
    # The API was called with the user token, never a key; the events came over one signed stream.
    api_calls = [(url, auth) for url, auth in sent if "/api/v1/" in url]
    assert api_calls and all(auth == f"Bearer {token}" for _, auth in api_calls)
    assert [url for url, _ in sent].count(f"{server.base}/requests/{created['id']}/events") == 1


def test_the_example_shows_why_a_request_is_refused(database_url, server, tmp_path):
    key = new_key(database_url, ALICE)
    expired = user_token(server.signer, key, ALICE, seconds=-120).token
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 400})
        page.goto(f"{server.base}/examples/export-button.html#token={expired}")
        page.click("#start")
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=WAIT_MS)
        assert error.text_content() == "the token has expired; ask the application for a new one"
        page.screenshot(path=str(tmp_path / "refused.png"))
        browser.close()
