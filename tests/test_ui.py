"""The Dagster UI and `serve` as a new user first sees them, in headless Chromium (Debian's
`chromium`, driven by Playwright) on `export-platform dev`: the Asset Catalog with an export's
plots and checks after two exports, the run page's download link, a cancelled run, the
Launchpad, the Runs list, the sensors and schedules, serve's front page.

Skipped where Chromium or Playwright is missing (browsers cannot be downloaded here). The
screenshots are kept in the test's folder, or in $EXPORT_PLATFORM_SCREENSHOTS when set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from support.dev_server import clean_env, running_dev
from export_platform.catalog.export_types import REGISTRY
from export_platform.naming import REQUEST_SENSOR
from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.tooling.sample_data import seed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package"),
]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CLI = [sys.executable, "-m", "export_platform.tooling.cli"]
LOCATION = "export_platform.definitions"
# Enough rows that an xlsx export is still being written when its cancel arrives.
USERS = 300_000


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _described(env: dict, request_id: str, *flags: str) -> dict[str, str]:
    lines = _cli(env, "status", request_id, *flags).splitlines()
    return dict(line.strip().split(": ", 1) for line in lines if ": " in line and not line.startswith("["))


def _shot(page, folder: Path, name: str, url: str | None, wait_for: str) -> str:
    if url:
        page.goto(url)
    page.get_by_text(wait_for, exact=False).first.wait_for(timeout=90_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    return page.inner_text("body")


def _cancel_while_streaming(env: dict, app: str) -> dict[str, str]:
    request_id = _cli(env, "request", "users", "--format", "xlsx", "--user", "carol").strip()
    deadline = time.monotonic() + 300
    with psycopg.connect(app, autocommit=True) as conn:
        query = "SELECT status, coalesce(progress_rows, 0) FROM export_requests WHERE id = %s"
        while (found := conn.execute(query, (int(request_id),)).fetchone()) != ("RUNNING", found[1]) or not found[1]:
            assert found[0] in ("PENDING", "QUEUED", "RUNNING") and time.monotonic() < deadline, found
            time.sleep(0.2)
    _cli(env, "cancel", request_id)
    final = _described(env, request_id, "--wait")
    assert final["status"] == "CANCELLED", final
    return final


def test_a_new_user_sees_exports_in_the_catalog_downloads_from_the_run_page_and_cancels_quietly(database_url, tmp_path):
    env = clean_env(database_url, tmp_path, "ui")
    app = make_url(env[DATABASE_URL_ENV]).render_as_string(hide_password=False)
    with psycopg.connect(app, autocommit=True) as conn:
        seed(conn, USERS, ("users",))
        us_rows = conn.execute("SELECT count(*) FROM users WHERE country_code = 'US'").fetchone()[0]
    folder = Path(os.environ.get("EXPORT_PLATFORM_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    with running_dev(env, tmp_path) as dev:
        requests = [
            _cli(env, "request", "users", "--format", "csv", "--filter", "country_code=US", "--user", "Zoë O'Hara").strip(),
            _cli(env, "request", "users", "--format", "parquet", "--filter", "country_code=US", "--user", "alice").strip(),
        ]
        finished = [_described(env, r, "--wait") for r in requests]
        assert [f["status"] for f in finished] == ["COMPLETED", "COMPLETED"]
        assert all(f["download_url"].startswith(f"{dev.serve_url}/files/") for f in finished)  # dev gave it serve's URL
        cancelled = _cancel_while_streaming(env, app)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            catalog = _shot(page, folder, "catalog", f"{dev.url}/assets", "ledger_postings")
            asset = _shot(page, folder, "asset", f"{dev.url}/assets/exports/users", "Columns")
            page.get_by_role("button", name="Plots").click()
            plots = _shot(page, folder, "plots", None, "dagster/row_count")
            checks = _shot(page, folder, "checks", f"{dev.url}/assets/exports/users?view=checks", "rows_written")

            run = _shot(page, folder, "run", f"{dev.url}/runs/{finished[0]['run_id']}", "ASSET_MATERIALIZATION")
            link = page.locator(f'a[href^="{dev.serve_url}/files/"]').first
            link.evaluate("a => a.removeAttribute('target')")  # the download in this page, not a new tab
            with page.expect_download() as download:
                link.click()
            downloaded = Path(download.value.path()).read_bytes()

            stopped = _shot(page, folder, "cancelled", f"{dev.url}/runs/{cancelled['run_id']}", "RUN_CANCELED")
            launchpad = _shot(page, folder, "launchpad",
                              f"{dev.url}/locations/{LOCATION}/jobs/{REGISTRY.get('users').job_name}/playground", "Launch Run")
            runs = _shot(page, folder, "runs", f"{dev.url}/runs", "format: parquet")
            sensors = _shot(page, folder, "sensors", f"{dev.url}/automation", REQUEST_SENSOR)
            front = _shot(page, folder, "serve", dev.serve_url, "export_platform downloads")
            browser.close()
        dev.stop()
    home = tmp_path / "platform" / "dagster"
    pages = catalog + asset + plots + checks + run + stopped + launchpad + runs + sensors
    assert "Join the Dagster community" not in pages

    # The Catalog: each type an asset, downstream of its table; the exports' numbers plotted; the check passed.
    assert "exports / users" in catalog.replace("\n", " ") and "postgres / users" in catalog.replace("\n", " ")
    assert "Polars" in asset and "filters: country_code" in asset and "postgres / users" in asset
    assert all(name in plots for name in ("dagster/row_count", "bytes", "seconds", "rows_per_second"))
    assert "Plots are automatically generated" not in plots  # the empty state, when nothing numeric was recorded
    assert "rows_match_snapshot" in checks and "Passed" in checks and str(us_rows) in checks
    # The run page: the materialization, and a signed link that downloads the file the row describes.
    assert "csv for request" in run and "rows_match_snapshot" in run
    assert hashlib.sha256(downloaded).hexdigest() == finished[0]["sha256"]
    # A cancel reads as one: no ERROR event with a traceback, in the UI or the workers' log.
    assert "Canceled" in stopped and "stopped before the export finished (cancelled)" in stopped
    assert "Stack Trace" not in stopped and "DagsterExecutionInterruptedError" not in stopped
    assert "Traceback" not in (home / "workers.log").read_text()
    # The Launchpad opens with the filters and columns to edit; the Runs list shows each run's format.
    assert "plan_users" in launchpad and "No errors" in launchpad
    assert "filters:" in launchpad and "country_code: null" in launchpad and "columns:" in launchpad
    assert "format: csv" in runs and "format: xlsx" in runs
    assert "recurring_us_users_daily" in sensors and "retention_cleanup_daily" in sensors
    assert "/requests/ID" in front
    assert "No heartbeat received" not in (home / "daemon.log").read_text()

