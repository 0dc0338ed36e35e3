"""The HTTP API end to end, as an application uses it: a real `serve`, `dagster-daemon` and warm run
workers. Create with a key, follow the server-sent events, download (the row's sha256), list,
cancel, delete; another key sees and touches none of it."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from export_platform.resources.database_url import DATABASE_URL_ENV
from support.api_calls import call, new_key
from support.daemon_stack import daemon_stack, runs_for, wait_status
from support.readback import db_rows, file_rows
from support.request_rows import row
from support.serve_stack import serve_process

pytestmark = pytest.mark.slow

ALICE = "alice@example.com"
COLUMNS = ["id", "name", "email", "country_code", "lifetime_value"]


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    with daemon_stack(database_url, tmp_path_factory.mktemp("api_daemon"), {"users": 3_000}) as stack:
        yield stack


@pytest.fixture(scope="module")
def server(stack):
    log = stack.tmp / "serve.log"
    with serve_process(stack.exports, log, {DATABASE_URL_ENV: stack.app_url}) as server:
        yield server
    assert "Traceback" not in log.read_text()


def follow(server, events_url: str) -> list[dict]:
    """Every event of the export's stream, until it ends (at a terminal status)."""
    target = urlsplit(events_url)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("GET", f"{target.path}?{target.query}")
    response = conn.getresponse()
    assert (response.status, response.getheader("content-type")) == (200, "text/event-stream; charset=utf-8")
    events = [json.loads(line[len(b"data: "):]) for line in response.read().splitlines() if line.startswith(b"data: ")]
    conn.close()
    return events


def get(server, url: str) -> tuple[int, bytes]:
    answer = call(server.port, "GET", url.removeprefix(server.base))
    return answer.status, answer.body


def test_create_follow_download_list_cancel_delete(stack, server, app):
    key = new_key(stack.app_url, ALICE)
    body = {"export_type": "users", "format": "csv", "filters": {"country_code": ["US", "FR"]}, "columns": COLUMNS,
            "idempotency_key": "weekly-report-2026-12-02"}
    created = call(server.port, "POST", "/api/v1/exports", body, key)
    assert created.status == 202 and created.json["status"] == "PENDING"
    request_id = created.json["id"]

    events = follow(server, created.json["events_url"])
    statuses = [e["status"] for e in events]
    assert statuses[-1] == "COMPLETED" and statuses[0] in ("PENDING", "QUEUED", "RUNNING"), statuses
    done = call(server.port, "GET", f"/api/v1/exports/{request_id}", key=key).json
    stored = row(app, request_id)
    assert (done["status"], done["row_count"], done["sha256"], done["file_bytes"]) == (
        "COMPLETED", stored["row_count"], stored["sha256"], stored["file_bytes"])
    status, data = get(server, done["download_url"])
    assert status == 200 and hashlib.sha256(data).hexdigest() == stored["sha256"]
    downloaded = stack.tmp / "downloaded.csv"
    downloaded.write_bytes(data)
    expected = db_rows(app, "users", COLUMNS, "WHERE country_code IN ('US', 'FR')")
    assert file_rows(app, "users", COLUMNS, "csv", downloaded) == expected and done["row_count"] == len(expected) > 0
    assert stored["requested_by"] == ALICE and len(runs_for(stack.instance, request_id)) == 1
    # The same idempotency key again, after the fact: the same export, no second run.
    again = call(server.port, "POST", "/api/v1/exports", body, key)
    assert again.json["id"] == request_id and again.json["status"] == "COMPLETED"

    second = call(server.port, "POST", "/api/v1/exports", {"export_type": "users", "format": "xlsx"}, key).json
    cancelled = call(server.port, "POST", f"/api/v1/exports/{second['id']}/cancel", key=key)
    assert cancelled.status == 202 and cancelled.json["status"] == "CANCEL_REQUESTED"
    wait_status(app, second["id"], ("CANCELLED",))
    assert call(server.port, "GET", f"/api/v1/exports/{second['id']}", key=key).json["status"] == "CANCELLED"

    listed = call(server.port, "GET", "/api/v1/exports", key=key).json
    assert [(e["id"], e["status"]) for e in listed["exports"]] == [(second["id"], "CANCELLED"), (request_id, "COMPLETED")]

    # Another application, even one acting for the same user, sees and touches none of it.
    other = new_key(stack.app_url, ALICE)
    for method, path in (("GET", f"/api/v1/exports/{request_id}"), ("POST", f"/api/v1/exports/{request_id}/cancel"),
                         ("DELETE", f"/api/v1/exports/{request_id}")):
        assert call(server.port, method, path, key=other).status == 404
    assert call(server.port, "GET", "/api/v1/exports", key=other).json["exports"] == []
    file = Path(unquote(urlsplit(stored["file_uri"]).path))
    assert row(app, request_id) == stored and file.exists()

    deleted = call(server.port, "DELETE", f"/api/v1/exports/{request_id}", key=key)
    assert (deleted.status, deleted.json["status"], deleted.json["download_url"]) == (200, "EXPIRED", None)
    assert (row(app, request_id)["status"], row(app, request_id)["expired_reason"]) == ("EXPIRED", "deleted")
    assert not any(file.parent.glob("users-*.csv")), "the file is still in the storage"
    assert get(server, done["download_url"])[0] == 410
    assert call(server.port, "DELETE", f"/api/v1/exports/{request_id}", key=key).status == 200  # already gone
