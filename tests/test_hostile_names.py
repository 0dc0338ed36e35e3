"""Names as people type them, end to end: an e-mail address as the user and a storage folder with a
space and an accent (`My Exports/Données`), through a request the daemon's run workers export, its
signed link and status page on a real `serve`, `export-platform delete`, and the retention cleanup
(`export-platform cleanup` on the deployment's own DAGSTER_HOME). And a Launchpad run that asks to
write outside the folders its workers may write to."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from urllib.parse import urlparse

import dagster as dg
import pytest

from export_platform.catalog.export_types import REGISTRY
from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, status_page_url
from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.run_failures import failure_message
from export_platform.home import HOME_ENV
from support.daemon_stack import daemon_stack, wait_for, wait_status
from export_platform.processes import free_port
from support.readback import db_rows, file_rows
from support.request_rows import LEDGER_COLUMNS, insert, row
from support.serve_stack import TEST_KEY, serve_process

pytestmark = pytest.mark.slow

USER = "alice@example.com"
CLI = [sys.executable, "-m", "export_platform.tooling.cli"]


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, port):
    folder = tmp_path_factory.mktemp("My Exports") / "Données"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as environment:
        # The run workers sign links for the `serve` below.
        environment.setenv(SIGNING_KEY_ENV, TEST_KEY)
        environment.setenv(PUBLIC_URL_ENV, f"http://127.0.0.1:{port}")
        with daemon_stack(database_url, folder, {"ledger_postings": 500}) as stack:
            stack.env[HOME_ENV] = str(folder / "home")  # nothing of the commands' own lands in the checkout
            yield stack


@pytest.fixture(scope="module")
def server(stack, port):
    log = stack.tmp / "serve.log"
    with serve_process(stack.exports, log, {DATABASE_URL_ENV: stack.app_url}, port=port) as server:
        yield server
    assert "Traceback" not in log.read_text()


@pytest.fixture
def app(stack):
    import psycopg

    with psycopg.connect(stack.app_url, autocommit=True) as conn:
        yield conn


def completed(app, user: str = USER) -> dict:
    request_id = insert(app, "ledger_postings", "csv", {"columns": LEDGER_COLUMNS}, user=user)
    final = wait_status(app, request_id, {"COMPLETED", "FAILED", "CANCELLED"})
    assert final["status"] == "COMPLETED", final["error"]
    return final


def download(server, url: str) -> tuple[int, bytes]:
    parsed = urlparse(url)
    status, _, body = server.get(f"{parsed.path}?{parsed.query}")
    return status, body


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=stack.env, timeout=300)


def user_files(stack, final: dict | None = None) -> list:
    """The user's files, under their name as typed; only the request's with `final`."""
    folder = stack.exports / "requests" / USER
    found = sorted(p for p in folder.iterdir() if p.is_file()) if folder.exists() else []
    return [p for p in found if final["run_id"][:8] in p.name] if final else found


def test_an_email_user_under_a_folder_with_a_space_and_an_accent_downloads_and_deletes(stack, server, app, tmp_path):
    final = completed(app)
    [path] = user_files(stack, final)
    assert final["download_url"], "the row has no download link"
    status, body = download(server, final["download_url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == final["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "download.csv").write_bytes(body)
    assert file_rows(app, "ledger_postings", LEDGER_COLUMNS, "csv", tmp_path / "download.csv") == db_rows(
        app, "ledger_postings", LEDGER_COLUMNS
    )

    page = status_page_url(final["id"], 60, "", server.signer)
    shown = json.loads(server.get(page.replace("?", "/status?"))[2])
    assert shown["status"] == "COMPLETED" and shown["download"], shown
    assert server.get(shown["download"]["url"])[2] == body

    deleted = cli(stack, "delete", str(final["id"]))
    assert deleted.returncode == 0, deleted.stderr
    assert f"({final['file_bytes']:,} bytes freed)" in deleted.stdout
    assert not path.exists() and user_files(stack, final) == []
    assert (row(app, final["id"])["status"], row(app, final["id"])["expired_reason"]) == ("EXPIRED", "deleted")
    assert download(server, final["download_url"])[0] == 410
    assert json.loads(server.get(page.replace("?", "/status?"))[2])["download"] is None


def test_retention_deletes_the_file_of_an_email_user_under_a_folder_with_a_space_and_an_accent(stack, server, app):
    final = completed(app)
    [path] = user_files(stack, final)
    app.execute("UPDATE export_requests SET expires_at = now() - interval '1 minute' WHERE id = %s", (final["id"],))
    before = stack.instance.get_runs_count(dg.RunsFilter(job_name="retention_cleanup"))
    cleanup = cli(stack, "cleanup")
    assert cleanup.returncode == 0, cleanup.stderr
    [line] = [line for line in cleanup.stdout.splitlines() if line.startswith("expire_files ")]
    assert f"files=1 bytes_freed={final['file_bytes']:,} failed=0" in line
    assert not path.exists()
    assert (row(app, final["id"])["status"], row(app, final["id"])["expired_reason"]) == ("EXPIRED", "retention")
    # Recorded in the deployment's instance (its DAGSTER_HOME), not one the command made up.
    assert stack.instance.get_runs_count(dg.RunsFilter(job_name="retention_cleanup")) == before + 1
    assert not (stack.tmp / "home" / "dagster").exists()
    assert download(server, final["download_url"])[0] == 410


def test_a_launchpad_run_cannot_write_outside_the_allowed_folders(stack, graphql, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    config = {"format": "csv", "columns": ["id"], "output_path": str(victim)}
    run_id = graphql.submit_job_execution(
        REGISTRY.get("ledger_postings").job_name, run_config={"ops": {"plan_ledger_postings": {"config": config}}}
    )
    wait_for(lambda: stack.instance.get_run_by_id(run_id).is_finished, what="the Launchpad run")
    assert stack.instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert failure_message(stack.instance, run_id).startswith("output_path: ")
    assert victim.read_text() == "someone else's file\n"
    assert sorted(os.listdir(tmp_path)) == ["victim.txt"]  # no temp folder beside it either
