"""The Dagster UI as a new user first sees it, in headless Chromium (Debian's `chromium`, driven by
Playwright): the Launchpad, the run page of a request's export, the sensors and schedules.

Skipped where Chromium or Playwright is missing (browsers cannot be downloaded here). The
screenshots are kept in the test's folder, or in $EXPORT_PLATFORM_SCREENSHOTS when set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def _cli(env: dict, *args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _shot(page, folder: Path, name: str, url: str, wait_for: str) -> str:
    page.goto(url)
    page.get_by_text(wait_for, exact=False).first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    return page.inner_text("body")


def test_a_new_user_sees_the_launchpad_a_request_run_and_the_sensors(database_url, tmp_path):
    env = clean_env(database_url, tmp_path, "ui")
    app = make_url(env[DATABASE_URL_ENV]).render_as_string(hide_password=False)
    with psycopg.connect(app, autocommit=True) as conn:
        seed(conn, 2_000, ("users",))
    folder = Path(os.environ.get("EXPORT_PLATFORM_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    with running_dev(env, tmp_path) as dev:
        request_id = _cli(env, "request", "users", "--format", "xlsx", "--filter", "country_code=US",
                          "--user", "alice").strip()
        described = _cli(env, "status", request_id, "--wait")
        row = dict(line.strip().split(": ", 1) for line in described.splitlines())
        assert row["status"] == "COMPLETED"
        assert Path(row["file_uri"].removeprefix("file://")).stat().st_size == int(row["file_bytes"])
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            launchpad = _shot(page, folder, "launchpad", f"{dev.url}/locations/{LOCATION}/jobs/{REGISTRY.get('users').job_name}/playground",
                              "Launch Run")
            run = _shot(page, folder, "run", f"{dev.url}/runs/{row['run_id']}", "publish_export")
            sensors = _shot(page, folder, "sensors", f"{dev.url}/automation", REQUEST_SENSOR)
            browser.close()
        dev.stop()
    assert "Join the Dagster community" not in launchpad + run + sensors
    assert "plan_users" in launchpad and "No errors" in launchpad
    assert "RUN_SUCCESS" in run or "Success" in run
    assert "recurring_us_users_daily" in sensors and "retention_cleanup_daily" in sensors
