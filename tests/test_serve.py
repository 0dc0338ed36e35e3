"""`export-platform serve` as a real process on loopback over real files: signed links on the
request rows, the download's headers, ranges, and every kind of bad input (tampered or reused
signatures, `..` and encoded slashes, deleted files), each with its status and never a traceback."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
from datetime import timedelta
from urllib.parse import quote, urlparse

import psycopg
import pytest
from psycopg import sql as pgsql

from export_platform.requests import table as rt
from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.requests.client import ExportClient
from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, Kind, LinkError, file_url, status_page_url
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import LocalStorage, storage_for
from support.readback import database_beside
from support.serve_stack import TEST_KEY, serve_process
from support.request_rows import export_request, insert

pytestmark = pytest.mark.slow  # a real server process

KEY = "requests/carol/users-20261125T101010Z-1a2b3c4d.csv.gz"
OTHER_KEY = "requests/mallory/users-20261125T111111Z-99999999.csv.gz"
SIZE = 300_000


@pytest.fixture(scope="module")
def server(database_url, storage_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(storage_root, log) as server:
        yield server
    assert "Traceback" not in log.read_text()  # no request, however bad, made the server fail


@pytest.fixture
def signing(server, monkeypatch):
    """This process signs like the server (in-process runs put links on the rows)."""
    monkeypatch.setenv(SIGNING_KEY_ENV, TEST_KEY)
    monkeypatch.setenv(PUBLIC_URL_ENV, server.base)


@pytest.fixture(scope="module")
def files(storage_root) -> dict[str, bytes]:
    contents = {KEY: os.urandom(SIZE), OTHER_KEY: b"mallory's private data\n" * 100}
    for key, body in contents.items():
        (storage_root / key).parent.mkdir(parents=True, exist_ok=True)
        (storage_root / key).write_bytes(body)
    return contents


def target(server, key: str, seconds: int = 60) -> str:
    """A signed link to `key`, as a request target."""
    return file_url("", server.signer, key, seconds)


def test_a_local_request_gets_a_download_link_that_serves_its_file(db, resources, server, signing):
    final = export_request(db, resources, resources["storage"], user="alice")
    url = final["download_url"]
    assert url.startswith(f"{server.base}/files/requests/alice/ledger_postings-")
    assert abs(final["download_url_expires_at"] - final["finished_at"] - timedelta(days=1)) < timedelta(seconds=5)
    path = urlparse(url)
    status, headers, body = server.get(f"{path.path}?{path.query}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == final["sha256"] and len(body) == final["file_bytes"]
    assert body == open(final["file_uri"].removeprefix("file://"), "rb").read()
    day = final["file_uri"].rsplit("-", 2)[1][:8]
    assert headers["content-disposition"] == f'attachment; filename="ledger_postings-{day[:4]}-{day[4:6]}-{day[6:]}.csv"'
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-length"] == str(final["file_bytes"])
    assert headers["etag"] == f'"{final["sha256"]}"'
    assert headers["accept-ranges"] == "bytes"

    head_status, head_headers, head_body = server.get(f"{path.path}?{path.query}", method="HEAD")
    assert (head_status, head_body) == (200, b"")
    assert {k: head_headers[k] for k in ("content-length", "etag", "content-disposition")} == {
        k: headers[k] for k in ("content-length", "etag", "content-disposition")
    }

    fresh = ExportClient(db.info.dsn, resources["storage"]).fresh_url(final["id"], seconds=120)
    assert fresh != url and server.get(fresh.removeprefix(server.base))[2] == body


def test_url_command_mints_a_download_link_and_a_status_page(db, resources, server, signing):
    final = export_request(db, resources, resources["storage"], user="dave")
    command = [sys.executable, "-m", "export_platform.tooling.cli", "url", str(final["id"]), "--expires", "5m"]
    link = subprocess.run(command, env=server.env, capture_output=True, text=True, check=True).stdout.strip()
    assert server.get(link.removeprefix(server.base))[2] == open(final["file_uri"][7:], "rb").read()
    page = subprocess.run([*command, "--page"], env=server.env, capture_output=True, text=True, check=True).stdout
    status, headers, html = server.get(page.strip().removeprefix(server.base))
    assert status == 200 and headers["content-type"].startswith("text/html") and b"progressbar" in html
    status, _, body = server.get(page.strip().removeprefix(server.base).replace("?", "/status?"))
    shown = json.loads(body)
    assert (status, shown["status"], shown["row_count"]) == (200, "COMPLETED", final["row_count"])
    assert "file_uri" not in shown and "run_id" not in shown and "requested_by" not in shown
    download = server.get(shown["download"]["url"])
    assert download[0] == 200 and hashlib.sha256(download[2]).hexdigest() == final["sha256"]


def test_ranges_are_served_and_bad_ones_refused(server, files):
    url, body = target(server, KEY), files[KEY]
    status, headers, part = server.get(url, headers={"Range": "bytes=10-19"})
    assert (status, part, headers["content-range"], headers["content-length"]) == (
        206, body[10:20], f"bytes 10-19/{SIZE}", "10"
    )
    assert headers["content-type"] == "application/gzip"
    assert headers["content-disposition"] == 'attachment; filename="users-2026-11-25.csv.gz"'
    assert server.get(url, headers={"Range": "bytes=-7"})[2] == body[-7:]
    assert server.get(url, headers={"Range": f"bytes={SIZE - 5}-"})[2] == body[-5:]
    assert server.get(url, headers={"Range": f"bytes=0-{SIZE * 2}"})[:1] == (206,)  # an end past the file is cut
    # A resumed download whose file changed gets the whole new file, not a spliced one.
    etag = server.get(url, method="HEAD")[1]["etag"]
    assert server.get(url, headers={"Range": "bytes=5-9", "If-Range": etag})[2] == body[5:10]
    assert server.get(url, headers={"Range": "bytes=5-9", "If-Range": '"other"'})[:1] == (200,)

    for past_end in (f"bytes={SIZE}-", f"bytes={SIZE + 100}-{SIZE + 200}"):
        status, headers, _ = server.get(url, headers={"Range": past_end})
        assert (status, headers["content-range"]) == (416, f"bytes */{SIZE}")
    for malformed in ("bytes=abc", "bytes=9-5", "items=0-5", "bytes", "bytes=x-"):
        status, _, text = server.get(url, headers={"Range": malformed})
        assert status == 400 and b"Traceback" not in text and body[:64] not in text, malformed
    # A negative suffix length reads as a start before the file (Starlette's parser): refused too.
    assert server.get(url, headers={"Range": "bytes=--1"})[0] == 416


def test_tampered_expired_and_reused_signatures_are_refused(server, files, db):
    good = target(server, KEY)
    path, query = good.split("?")
    sig = query.split("sig=")[1]
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    expired = target(server, KEY, seconds=-1)
    refused = {
        "tampered": f"{path}?{query.replace(sig, flipped)}",
        "unsigned": path,
        "no expiry": f"{path}?sig={sig}",
        "later expiry": f"{path}?{query.replace('expires=', 'expires=9')}",
        "expired": expired,
        "another file's": f"/files/{quote(OTHER_KEY)}?{query}",
        "another key's": file_url("", type(server.signer)(b"some-other-key-0123456789"), KEY, 60),
    }
    for case, url in refused.items():
        status, _, text = server.get(url)
        assert status == 403, case
        assert files[OTHER_KEY][:20] not in text and b"Traceback" not in text, case

    request_id = db.execute(
        "INSERT INTO export_requests (export_type, requested_by) VALUES ('users', 'erin') RETURNING id"
    ).fetchone()[0]
    page = status_page_url(request_id, 60, "", server.signer)
    assert server.get(page)[0] == 200
    for case, url in {
        "another request's": page.replace(f"/requests/{request_id}?", f"/requests/{request_id - 1}?"),
        "a file's signature on a page": f"/requests/{request_id}?{query}",
        "a page's signature on a file": f"{path}?{page.split('?')[1]}",
        "expired page": status_page_url(request_id, -1, "", server.signer),
    }.items():
        assert server.get(url)[0] == 403, case
        if url.startswith("/requests/"):
            assert server.get(url.replace("?", "/status?", 1))[0] == 403, case


def test_paths_outside_the_storage_never_serve(server, files, storage_root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not an export\n")
    (storage_root / "requests" / "carol" / "link.csv").unlink(missing_ok=True)
    (storage_root / "requests" / "carol" / "link.csv").symlink_to(secret)
    (storage_root / ".tmp").mkdir(exist_ok=True)
    (storage_root / ".tmp" / "run.csv").write_bytes(b"half written")
    escape = os.path.relpath(secret, storage_root)
    def signed(key: str) -> str:  # even a valid signature opens none of these
        return server.signer.query(Kind.file, key, 60)

    backslash, nul = "requests\\carol", "requests/carol\x00.csv"
    cases = {
        "dot-dot": f"/files/{escape}?{signed(escape)}",
        "dot-dot inside": f"/files/requests/carol/../mallory/x.csv?{signed('requests/carol/../mallory/x.csv')}",
        "encoded dot-dot": f"/files/requests/%2e%2e/%2e%2e/{escape}?{signed(f'requests/../../{escape}')}",
        "encoded slash": f"/files/{KEY.replace('/', '%2F')}?{signed(KEY)}",
        "encoded backslash": f"/files/requests%5Ccarol?{signed(backslash)}",
        "absolute": f"/files//etc/passwd?{signed('/etc/passwd')}",
        "symlink out": f"/files/requests/carol/link.csv?{signed('requests/carol/link.csv')}",
        "temp folder": f"/files/.tmp/run.csv?{signed('.tmp/run.csv')}",
        "a folder": f"/files/requests/carol?{signed('requests/carol')}",
        "nul": f"/files/requests/carol%00.csv?{signed(nul)}",
    }
    for case, url in cases.items():
        status, _, text = server.get(url)
        assert status == 404, (case, status, text)
        assert b"not an export" not in text and b"half written" not in text and b"Traceback" not in text, case
    for url in ("/files/", "/requests/abc", "/requests/-1", f"/requests/{2**70}?expires=1&sig=x"):
        assert server.get(url)[0] in (403, 404), url
    status, _, front = server.get("/")  # says what the server is (was a bare 404), and lists nothing
    assert status == 200 and b"export_platform downloads" in front and b"carol" not in front
    assert server.get(target(server, KEY), method="POST")[0] == 405


def test_unknown_requests_are_404_and_deleted_files_410(server, storage_root, db, resources, signing):
    assert server.get(status_page_url(2**62, 60, "", server.signer))[0] == 404
    assert server.get(status_page_url(2**63 + 5, 60, "", server.signer))[0] == 404  # past bigint
    gone = "requests/carol/users-20261101T000000Z-0000abcd.csv"
    (storage_root / gone).write_bytes(b"a,b\n")
    url = target(server, gone)
    assert server.get(url)[0] == 200
    (storage_root / gone).unlink()
    for method in ("GET", "HEAD"):
        status, _, text = server.get(url, method=method)
        assert status == 410 and b"Traceback" not in text, method

    final = export_request(db, resources, resources["storage"], user="frank")
    link = final["download_url"].removeprefix(server.base)
    ExportClient(db.info.dsn, resources["storage"]).delete(final["id"])
    assert server.get(link, method="HEAD")[0] == 410
    page = status_page_url(final["id"], 60, "", server.signer)
    shown = json.loads(server.get(page.replace("?", "/status?"))[2])
    assert (shown["status"], shown["download"]) == ("EXPIRED", None)
    # What the page shows of it comes from the declaration (requests/status.py), not the page.
    assert (shown["status_label"], shown["status_note"], shown["finished"], shown["delivered"]) == (
        "No longer available", "The file has been deleted.", True, False
    )


def test_no_signing_key_is_a_clear_error(server, storage_root, monkeypatch):
    env = {k: v for k, v in server.env.items() if k != SIGNING_KEY_ENV}
    done = subprocess.run([sys.executable, "-m", "export_platform.tooling.cli", "serve", "--port", "1"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and f"{SIGNING_KEY_ENV} must be set" in done.stderr and "Traceback" not in done.stderr
    for weak, why in ((" " * 32, "is blank"), ("changemechangeme", "looks guessable")):
        done = subprocess.run([sys.executable, "-m", "export_platform.tooling.cli", "serve", "--port", "1"],
                              env={**env, SIGNING_KEY_ENV: weak}, capture_output=True, text=True)
        assert done.returncode == 2 and why in done.stderr and "Traceback" not in done.stderr, done.stderr
    monkeypatch.setenv(PUBLIC_URL_ENV, server.base)
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    with pytest.raises(LinkError, match=SIGNING_KEY_ENV):
        storage_for(None)  # when the code location loads, not when a run publishes
    monkeypatch.setenv(SIGNING_KEY_ENV, "short")
    with pytest.raises(LinkError, match="too short"):
        LocalStorage(root=str(storage_root)).signed_url(KEY, 60)


def test_the_status_shows_progress_and_errors_and_no_download_before_completion(server, db, database_url):
    store = RequestStore(url=database_url)
    request_id = insert(db, "users", user="heidi")
    page = status_page_url(request_id, 60, "", server.signer).replace("?", "/status?")
    assert json.loads(server.get(page)[2])["status"] == "PENDING"
    for statement in (rt.mark_running(request_id, "run-h"), rt.set_total(request_id, 400), rt.set_progress(request_id, 100, 25.0)):
        store.run(statement)
    shown = json.loads(server.get(page)[2])
    assert (shown["status"], shown["progress_pct"], shown["progress_rows"], shown["total_rows"], shown["download"]) == (
        "RUNNING", 25.0, 100, 400, None
    )
    assert (shown["status_label"], shown["finished"], shown["failed"]) == ("Exporting", False, False)
    store.run(rt.mark_failed(request_id, "filters.country_code: expected text"))
    shown = json.loads(server.get(page)[2])
    assert (shown["status"], shown["error"], shown["download"]) == ("FAILED", "filters.country_code: expected text", None)
    assert (shown["status_label"], shown["finished"], shown["failed"], shown["status_note"]) == ("Failed", True, True, None)


def test_the_etag_is_the_checksum_publish_recorded(server, db, storage_root):
    key = "requests/ivan/users-20261120T000000Z-0000beef.csv"
    (storage_root / key).parent.mkdir(parents=True, exist_ok=True)
    (storage_root / key).write_bytes(b"id\n1\n")
    recorded = "ab" * 32  # used as recorded: the file is not read again
    db.execute(
        "INSERT INTO export_requests (export_type, status, file_key, file_uri, sha256) VALUES ('users', 'COMPLETED', %s, %s, %s)",
        (key, (storage_root / key).resolve().as_uri(), recorded),
    )
    assert server.get(target(server, key), method="HEAD")[1]["etag"] == f'"{recorded}"'


def test_the_event_stream_pushes_each_change_until_the_request_ends(server, db, database_url):
    store = RequestStore(url=database_url)
    request_id = insert(db, "users", user="judy")
    events = status_page_url(request_id, 60, "", server.signer).replace("?", "/events?")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", events)
    response = conn.getresponse()
    assert (response.status, response.getheader("content-type")) == (200, "text/event-stream; charset=utf-8")

    def next_event() -> dict:
        while not (line := response.readline()).startswith(b"data: "):
            assert line, "the stream ended"
        return json.loads(line[len(b"data: "):])

    assert next_event()["status"] == "PENDING"
    store.run(rt.mark_running(request_id, "run-j"))
    assert next_event()["status"] == "RUNNING"
    store.run(rt.set_total(request_id, 10))
    store.run(rt.set_progress(request_id, 5, 50.0))
    while (shown := next_event())["progress_pct"] != 50.0:
        assert shown["status"] == "RUNNING"
    store.run(rt.mark_failed(request_id, "stopped"))
    assert (next_event()["status"], response.read()) == ("FAILED", b"\n")  # the event's end, then the stream's
    conn.close()
    assert server.get(events.replace("sig=", "sig=x"))[0] == 403


def test_malformed_links_are_refused_never_a_server_error(server, files, db):
    path, query = target(server, KEY).split("?")
    expires, sig = (part.split("=", 1)[1] for part in query.split("&"))
    request_id = insert(db, "users", user="kim")
    page_query = status_page_url(request_id, 60, "", server.signer).split("?")[1]
    page_sig = page_query.split("sig=")[1]
    cases = {
        "a superscript digit": (f"expires=%C2%B2&sig={sig}", f"expires=%C2%B2&sig={page_sig}"),
        "Arabic-Indic digits": (f"expires=%D9%A3%D9%A3&sig={sig}", f"expires=%D9%A3%D9%A3&sig={page_sig}"),
        "a 5,000-digit expiry": (f"expires={'9' * 5_000}&sig={sig}", f"expires={'9' * 5_000}&sig={page_sig}"),
        "a non-ASCII signature": (f"expires={expires}&sig=%C3%A9{sig[1:]}", f"expires={expires}&sig=%C3%A9{page_sig[1:]}"),
        "a signature with NUL": (f"expires={expires}&sig={sig}%00", f"expires={expires}&sig={page_sig}%00"),
        "invalid UTF-8": (f"expires={expires}&sig=%FF%FE", f"expires={expires}&sig=%FF%FE"),
        "a signed expiry with a sign": (f"expires=%2B{expires}&sig={sig}", f"expires=%2B{expires}&sig={page_sig}"),
    }
    for case, (file_query, page) in cases.items():
        for url in (f"{path}?{file_query}", f"/requests/{request_id}?{page}", f"/requests/{request_id}/status?{page}",
                    f"/requests/{request_id}/events?{page}"):
            status, headers, text = server.get(url)
            assert status == 403, (case, url, status, text[:200])
            assert b"Traceback" not in text and headers["cache-control"] == "no-store", case


def test_a_signed_symlink_loop_or_overlong_name_is_not_found(server, storage_root):
    folder = storage_root / "requests" / "carol"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loop.csv").unlink(missing_ok=True)
    (folder / "loop.csv").symlink_to(folder / "loop.csv")
    (folder / "ring-a.csv").unlink(missing_ok=True)
    (folder / "ring-b.csv").unlink(missing_ok=True)
    (folder / "ring-a.csv").symlink_to(folder / "ring-b.csv")
    (folder / "ring-b.csv").symlink_to(folder / "ring-a.csv")
    long_key = "requests/carol/" + "x" * 300 + ".csv"
    for key in ("requests/carol/loop.csv", "requests/carol/ring-a.csv", long_key, "requests/" + "y/" * 3000 + "z.csv"):
        for method in ("GET", "HEAD"):
            status, _, text = server.get(target(server, key), method=method)
            assert status == 404 and b"Traceback" not in text, (key[:40], method, status)


def test_every_answer_says_nosniff_and_a_download_is_cached_no_longer_than_its_link(server, files, db):
    for seconds in (45, 7 * 86400):
        status, headers, _ = server.get(target(server, KEY, seconds=seconds), method="HEAD")
        assert status == 200
        max_age = int(headers["cache-control"].split("max-age=")[1])
        assert headers["cache-control"].startswith("private, ") and 0 < max_age <= min(seconds, 3600), headers
    request_id = insert(db, "users", user="lee")
    answers = [
        target(server, KEY),
        status_page_url(request_id, 60, "", server.signer),
        status_page_url(request_id, 60, "", server.signer).replace("?", "/status?"),
        target(server, KEY, seconds=-1),  # 403
        "/files/requests/carol/nothing-here.csv",  # 404
        "/nowhere",
    ]
    for url in answers:
        status, headers, _ = server.get(url, method="HEAD" if url.startswith("/files/") else "GET")
        assert headers.get("x-content-type-options") == "nosniff", (url, status)
        assert headers.get("referrer-policy") == "no-referrer", (url, status)


def test_the_status_shows_the_user_a_message_meant_for_them_never_internals(server, db, database_url):
    store = RequestStore(url=database_url)
    internal = (
        "OSError: [Errno 28] No space left on device: '/srv/exports/.tmp/5f3c2a1e-0b7d-4c55-9a43-d7e2f1c0a9b8/export.csv' "
        "(run 5f3c2a1e-0b7d-4c55-9a43-d7e2f1c0a9b8 on worker-3.internal, connection to db.internal:5432)"
    )
    shown = {}
    for error in (internal, "filters.country_code: expected text, got 42", "format: pdf holds at most 10,000 rows"):
        request_id = insert(db, "users", user="mia")
        store.run(rt.mark_failed(request_id, error))
        page = status_page_url(request_id, 60, "", server.signer).replace("?", "/status?")
        shown[error] = (request_id, json.loads(server.get(page)[2])["error"])
    request_id, message = shown[internal]
    assert f"request {request_id}" in message
    for secret in ("/srv", ".tmp", "5f3c2a1e", "internal", "5432", "Errno"):
        assert secret not in message, secret
    assert shown["filters.country_code: expected text, got 42"][1] == "filters.country_code: expected text, got 42"
    assert shown["format: pdf holds at most 10,000 rows"][1] == "format: pdf holds at most 10,000 rows"
    assert db.execute("SELECT error FROM export_requests WHERE id = %s", (request_id,)).fetchone()[0] == internal


@pytest.fixture
def unreliable_database(database_url):
    """A database of its own that the test can shut to new connections, as if its server were down."""
    name = "serve_outage"
    url = database_beside(database_url, name)
    RequestStore(url=url).migrate()
    with psycopg.connect(database_url, autocommit=True) as admin:

        def down() -> None:
            admin.execute(pgsql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(pgsql.Identifier(name)))
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

        def up() -> None:
            admin.execute(pgsql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(pgsql.Identifier(name)))

        try:
            yield url, down, up
        finally:
            up()


def test_with_the_database_down_serve_answers_503_with_retry_after(unreliable_database, storage_root, files, tmp_path):
    url, down, up = unreliable_database
    log = tmp_path / "serve.log"
    with serve_process(storage_root, log, {DATABASE_URL_ENV: url}) as server:
        with psycopg.connect(url, autocommit=True) as app:
            request_id = insert(app, "users", user="nina")
        page = status_page_url(request_id, 60, "", server.signer)
        down()
        # OTHER_KEY's checksum was never looked up by this server: it must ask the database.
        for link, method in [(target(server, OTHER_KEY), "HEAD"), (target(server, OTHER_KEY), "GET"), (page, "GET"),
                             (page.replace("?", "/status?"), "GET"), (page.replace("?", "/events?"), "GET")]:
            status, headers, text = server.get(link, method=method)
            assert status == 503 and int(headers["retry-after"]) > 0, (link, status, text[:300])
            assert headers["cache-control"] == "no-store" and b"Traceback" not in text
        up()
        status, headers, body = server.get(target(server, OTHER_KEY))
        assert (status, body) == (200, files[OTHER_KEY])
        assert json.loads(server.get(page.replace("?", "/status?"))[2])["status"] == "PENDING"
    assert "Traceback" not in log.read_text()
