"""The HTTP API (/api/v1/) of a real `export-platform serve` process: requests become rows exactly
as the request table takes them, a bad one is a 422 in the row's own words, callers see only their
own exports, and hostile bodies and forged credentials get a 4xx and change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from jsonschema import Draft202012Validator
from starlette.routing import Mount

from export_platform.catalog.export_types import REGISTRY
from export_platform.delivery import api
from export_platform.delivery.api import MAX_BODY_BYTES
from export_platform.delivery.tokens import token_secret
from export_platform.requests import table as rt
from export_platform.requests.client import request_params
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import LocalStorage
from support.api_calls import Answer, Key, call, new_key, user_token
from support.request_rows import insert, row, tick
from support.serve_stack import serve_process

pytestmark = pytest.mark.slow  # a real server process

ALICE = "alice@example.com"
INJECTION = "x'); DROP TABLE users;--"


@pytest.fixture(scope="module")
def server(database_url, storage_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("api") / "serve.log"
    with serve_process(storage_root, log) as server:
        yield server
    assert "Traceback" not in log.read_text()  # no request, however bad, made the server fail


@pytest.fixture(scope="module")
def alice(database_url) -> Key:
    return new_key(database_url, ALICE)


@pytest.fixture(scope="module")
def document(server) -> dict:
    answer = call(server.port, "GET", "/api/v1/openapi.json")
    assert answer.status == 200
    return answer.json


def conforms(document: dict, schema: str, value) -> None:
    """`value` is what the OpenAPI document says `schema` is."""
    root = Resource.from_contents(document, default_specification=DRAFT202012)
    validator = Draft202012Validator({"$ref": f"urn:api#/components/schemas/{schema}"},
                                     registry=Registry().with_resource("urn:api", root))
    errors = [e.message for e in validator.iter_errors(value)]
    assert not errors, errors


def counts(db) -> tuple:
    """What a refused call must leave as it was: the requests, their owners, the keys, the sample data."""
    return db.execute(
        "SELECT (SELECT count(*) FROM export_requests), (SELECT max(updated_at) FROM export_requests), "
        "(SELECT count(*) FROM export_api_requests), (SELECT count(*) FROM export_api_keys), "
        "(SELECT count(*) FROM users), (SELECT sum(hashtext(u::text)) FROM users u)"
    ).fetchone()


def post(server, body, key) -> Answer:
    return call(server.port, "POST", "/api/v1/exports", body, key)


def test_the_openapi_document_is_valid_and_covers_every_route(server, document, database_url, storage_root):
    validate_spec(document)
    routes = api.routes(RequestStore(url=database_url), LocalStorage(root=str(storage_root)), server.signer)
    mounted = next(r for r in routes if isinstance(r, Mount))
    routed = {(r.path.replace("{request_id:int}", "{id}"), m.lower()) for r in mounted.routes for m in r.methods
              if m != "HEAD"}
    documented = {(p, m) for p, item in document["paths"].items() for m in item if m != "parameters"}
    assert routed == documented
    assert set(document["components"]["schemas"]["NewExport"]["discriminator"]["mapping"]) == set(REGISTRY.names())
    for method, path, status in (("PUT", "/api/v1/exports", 405), ("GET", "/api/v1/nothing", 404),
                                 ("GET", "/api/v1/exports/abc", 404)):
        answer = call(server.port, method, path)
        assert (answer.status, answer.headers["content-type"], answer.json["field"]) == (status, "application/json", None)


def test_a_request_becomes_one_row_as_the_table_takes_it(server, db, alice, document):
    body = {"export_type": "users", "format": "csv.gz", "filters": {"country_code": ["US", "FR"]},
            "columns": ["id", "email"], "options": {"csv": {"delimiter": ";"}}}
    before = counts(db)[0]
    answer = post(server, body, alice)
    assert answer.status == 202
    created = answer.json
    conforms(document, "Export", created)
    assert answer.headers["location"] == created["status_url"] == f"{server.base}/api/v1/exports/{created['id']}"
    stored = row(db, created["id"])
    assert (stored["export_type"], stored["format"], json.loads(stored["params"]), stored["requested_by"]) == (
        "users", "csv.gz", {"filters": {"country_code": ["US", "FR"]}, "columns": ["id", "email"],
                            "csv": {"delimiter": ";"}}, ALICE)
    assert (stored["status"], stored["idempotency_key"], counts(db)[0]) == ("PENDING", None, before + 1)
    assert (created["status"], created["filters"], created["options"]) == ("PENDING", body["filters"], body["options"])
    assert (created["status_label"], created["finished"], created["delivered"]) == ("Waiting to start", False, False)

    fetched = call(server.port, "GET", created["status_url"].removeprefix(server.base), key=alice)
    assert fetched.status == 200 and fetched.json["id"] == created["id"]
    # The event stream's link is signed for this request: no key needed (its /status twin answers once).
    once = call(server.port, "GET", created["events_url"].removeprefix(server.base).replace("/events?", "/status?"))
    assert (once.status, once.json["id"], once.json["status"]) == (200, created["id"], "PENDING")


def test_a_listing_pages_newest_first_without_repeats(server, database_url, db, document):
    key = new_key(database_url, ALICE)
    ids = [post(server, {"export_type": "ledger_postings"}, key).json["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = call(server.port, "GET", "/api/v1/exports?limit=2" + (f"&cursor={cursor}" if cursor else ""), key=key)
        assert page.status == 200
        conforms(document, "ExportList", page.json)
        seen += [e["id"] for e in page.json["exports"]]
        post(server, {"export_type": "users"}, new_key(database_url, ALICE))  # others' new rows change nothing
        if (cursor := page.json["next_cursor"]) is None:
            break
    assert seen == ids[::-1]
    for bad in ("limit=0", "limit=101", "limit=abc", "cursor=-1", f"cursor={2**64}", "limit=%EF%BC%92"):
        answer = call(server.port, "GET", f"/api/v1/exports?{bad}", key=key)
        assert answer.status == 422 and answer.json["field"] == bad.split("=")[0], bad


def test_an_idempotency_key_makes_one_request_per_key_and_user(server, database_url, db, alice):
    body = {"export_type": "users", "idempotency_key": "order-66 export"}
    first = post(server, body, alice)
    again = post(server, body, alice)
    assert (first.status, again.status, again.headers.get("idempotent-replayed")) == (202, 202, "true")
    assert again.json["id"] == first.json["id"] and again.json["idempotency_key"] == "order-66 export"
    assert "idempotent-replayed" not in first.headers
    # Another application that happens to pick the same key for the same user gets a request of its own.
    other = post(server, body, new_key(database_url, ALICE))
    assert other.status == 202 and other.json["id"] != first.json["id"]
    assert db.execute("SELECT count(*) FROM export_requests WHERE requested_by = %s AND idempotency_key LIKE %s",
                      (ALICE, "%:order-66 export")).fetchone()[0] == 2


BAD_REQUESTS = [
    {"export_type": "nope"},
    {"export_type": INJECTION},
    {"export_type": "users", "format": "docx"},
    {"export_type": "users", "filters": {"country_code": 5}},
    {"export_type": "users", "filters": {"country_code = '' OR 1=1 --": "US"}},
    {"export_type": "users", "filters": ["country_code"]},
    {"export_type": "users", "filters": {"signup_date_from": "2024-02-30"}},
    {"export_type": "users", "filters": {"lifetime_value_min": "10", "lifetime_value_max": "5"}},
    {"export_type": "users", "filters": {"lifetime_value_min": "1e999999"}},
    {"export_type": "users", "columns": ["id", INJECTION]},
    {"export_type": "users", "columns": "id,nope"},
    {"export_type": "users", "columns": [{"id": 1}]},
    {"export_type": "users", "options": {"csv": {"delimiter": ";;"}}},
    {"export_type": "users", "options": {"time_zone": "Mars/Olympus_Mons"}},
    {"export_type": "users", "options": {"nope": 1}},
    {"export_type": "users", "format": "pdf", "options": {"pdf": {"orientation": "diagonal"}}},
    {"export_type": "users", "format": "xlsx", "options": {"xlsx": {"sheet_name": "a/b"}}},
    {"export_type": "users", "options": {"labels": {"email": "  "}}},
]


@pytest.fixture
def clean_queue(db):
    """The sensor tick below takes every PENDING row: none but the test's own."""
    db.execute("UPDATE export_requests SET status = 'CANCELLED' WHERE status IN ('PENDING', 'QUEUED')")


@pytest.mark.parametrize("body", BAD_REQUESTS, ids=[json.dumps(b)[:60] for b in BAD_REQUESTS])
def test_a_bad_request_is_a_422_in_the_words_the_row_would_get(server, db, database_url, alice, instance, store,
                                                               clean_queue, body):
    before = counts(db)
    answer = post(server, body, alice)
    assert answer.status == 422, answer.body
    assert counts(db) == before
    # The same request inserted with SQL, and the request sensor's verdict on it.
    params = request_params(body.get("filters"), body.get("columns"), body.get("options"))
    request_id = insert(db, body["export_type"], body.get("format", "csv"), params, user=ALICE)
    tick(instance, store, database_url)
    failed = row(db, request_id)
    assert (failed["status"], answer.error) == ("FAILED", failed["error"])
    assert answer.json["field"] == failed["error"].split(":")[0]


@pytest.mark.parametrize("body, field", [
    ({"export_type": 5}, "export_type"),
    ({"export_type": ["users"]}, "export_type"),
    ({"format": "csv"}, "export_type"),
    ({"export_type": "users", "format": ["csv"]}, "format"),
    ({"export_type": "users", "format": ""}, "format"),
    ({"export_type": "users", "options": ["csv"]}, "options"),
    ({"export_type": "users", "options": {"filters": {}}}, "options.filters"),
])
def test_values_of_the_wrong_json_type_are_a_422_naming_the_field(server, db, alice, body, field):
    before = counts(db)
    answer = post(server, body, alice)
    assert (answer.status, answer.json["field"]) == (422, field), answer.body
    assert counts(db) == before


def test_requests_a_row_cannot_hold_are_refused(server, db, alice):
    """Text and numbers that JSON carries but Postgres' jsonb, or Python, cannot take."""
    cases = {
        "NUL in an option": (b'{"export_type": "users", "format": "xlsx", "options": {"xlsx": {"sheet_name": "a\\u0000"}}}',
                             422, "options.xlsx.sheet_name"),
        "lone surrogate": (b'{"export_type": "users", "filters": {"country_code": "\\ud800"}}', 422,
                           "filters.country_code"),
        "NaN": (b'{"export_type": "users", "filters": {"lifetime_value_min": NaN}}', 422,
                "filters.lifetime_value_min"),
        "infinite float": (b'{"export_type": "users", "filters": {"lifetime_value_min": 1e400}}', 422,
                           "filters.lifetime_value_min"),
        "5,000 digits": (b'{"export_type": "users", "filters": {"lifetime_value_min": ' + b"9" * 5000 + b"}}", 400,
                         "body"),
        "deep nesting": (b'{"export_type": "users", "filters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "body"),
        "not JSON": (b"export_type=users", 400, "body"),
        "not UTF-8": (b'{"export_type": "\xff"}', 400, "body"),
        "a list": (b'["users"]', 422, "body"),
        "empty": (b"", 400, "body"),
        "unknown field": (b'{"export_type": "users", "callback_url": "http://evil.example"}', 422, "callback_url"),
        "requested_by of another": (b'{"export_type": "users", "requested_by": "mallory@example.com"}', 403,
                                    "requested_by"),
        "idempotency key of the wrong type": (b'{"export_type": "users", "idempotency_key": 7}', 422,
                                              "idempotency_key"),
    }
    before = counts(db)
    for case, (raw, status, field) in cases.items():
        answer = call(server.port, "POST", "/api/v1/exports", key=alice, raw=raw)
        assert (answer.status, answer.json["field"]) == (status, field), (case, answer.body[:300])
    assert counts(db) == before


def test_huge_bodies_and_other_content_types_are_refused_unread(server, db, alice):
    before = counts(db)
    huge = json.dumps({"export_type": "users", "filters": {"plate_number": ["x" * 100] * 20_000}}).encode()
    assert len(huge) > MAX_BODY_BYTES
    assert call(server.port, "POST", "/api/v1/exports", key=alice, raw=huge).status == 413
    # The same without a Content-Length: counted as it streams in.
    chunked = call(server.port, "POST", "/api/v1/exports", key=alice, raw=iter([huge[:600_000], huge[600_000:]]))
    assert chunked.status == 413
    as_form = call(server.port, "POST", "/api/v1/exports", key=alice, raw=b'{"export_type": "users"}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert as_form.status == 415
    assert counts(db) == before


def _forged(signer, key: Key, other: Key) -> dict[str, str | None]:
    token = user_token(signer, key, ALICE).token
    header, claims, sig = token.split(".")
    secret = token_secret(signer, key.key_id)
    now = int(time.time())
    return {
        "no header": None,
        "basic": "Basic YWxpY2U6c2VjcmV0",
        "bearer, nothing": "Bearer ",
        "random": "Bearer 0123456789abcdef",
        "a key with another secret": f"Bearer {key.token[:-4]}AAAA",
        "a key of another form": f"Bearer {key.token}x",
        "an unknown key id": f"Bearer epk_000000000000_{key.token[-43:]}",
        "a token with another signature": f"Bearer {header}.{claims}.{sig[::-1]}",
        "a token with alg none": "Bearer " + jwt.encode({"sub": ALICE, "exp": now + 60}, None, algorithm="none",
                                                         headers={"kid": key.key_id}),
        "a token signed with the API key": "Bearer " + jwt.encode({"sub": ALICE, "exp": now + 60}, key.token,
                                                                   headers={"kid": key.key_id}),
        "a token naming another key": "Bearer " + jwt.encode({"sub": ALICE, "exp": now + 60}, secret,
                                                              headers={"kid": other.key_id}),
        "an expired token": "Bearer " + jwt.encode({"sub": ALICE, "exp": now - 120}, secret, headers={"kid": key.key_id}),
        "a token for a day": "Bearer " + jwt.encode({"sub": ALICE, "exp": now + 86400}, secret,
                                                     headers={"kid": key.key_id}),
        "a token without exp": "Bearer " + jwt.encode({"sub": ALICE}, secret, headers={"kid": key.key_id}),
        "a token for another user of a fixed key": "Bearer " + jwt.encode(
            {"sub": "mallory@example.com", "exp": now + 60}, secret, headers={"kid": key.key_id}),
        "a token with HS512": "Bearer " + jwt.encode({"sub": ALICE, "exp": now + 60}, secret, algorithm="HS512",
                                                      headers={"kid": key.key_id}),
        "a huge token": "Bearer " + "a" * 20_000,
        "a NUL in the key id": "Bearer " + jwt.encode({"sub": ALICE, "exp": now + 60}, secret, headers={"kid": "\x00"}),
        "a NUL in the user": "Bearer " + jwt.encode({"sub": "a\x00", "exp": now + 60}, secret,
                                                     headers={"kid": key.key_id}),
        "a lone surrogate in the user": "Bearer " + jwt.encode({"sub": "\ud800", "exp": now + 60}, secret,
                                                                headers={"kid": key.key_id}),
    }


def test_forged_keys_and_tokens_are_401_and_change_nothing(server, db, database_url, alice):
    other = new_key(database_url, "bob@example.com")
    own = post(server, {"export_type": "users"}, alice).json["id"]
    before = counts(db)
    for case, authorization in _forged(server.signer, alice, other).items():
        headers = {"authorization": authorization} if authorization else {}
        for method, path, body in (("POST", "/api/v1/exports", {"export_type": "users"}), ("GET", "/api/v1/exports", None),
                                   ("POST", f"/api/v1/exports/{own}/cancel", None),
                                   ("DELETE", f"/api/v1/exports/{own}", None)):
            answer = call(server.port, method, path, body, headers=headers)
            assert answer.status == 401, (case, method, path, answer.body)
            assert answer.headers["www-authenticate"].startswith("Bearer") and str(own) not in answer.error
    assert counts(db) == before


def test_a_revoked_key_and_its_tokens_are_refused_at_once(server, db, database_url):
    key = new_key(database_url, ALICE)
    token = user_token(server.signer, key, ALICE)
    assert post(server, {"export_type": "users"}, key).status == 202
    assert call(server.port, "GET", "/api/v1/exports", key=token).status == 200
    db.execute("UPDATE export_api_keys SET revoked_at = now() WHERE key_id = %s", (key.key_id,))
    assert post(server, {"export_type": "users"}, key).status == 401
    assert call(server.port, "GET", "/api/v1/exports", key=token).status == 401


def test_a_caller_sees_and_changes_only_its_own_exports(server, db, database_url, alice):
    mine = post(server, {"export_type": "users"}, alice).json["id"]
    sql_row = insert(db, "users", user=ALICE)  # the same user's request, made with SQL: no key's
    other = new_key(database_url, ALICE)  # another application acting for the same user
    snapshot = row(db, mine)
    for request_id in (mine, sql_row, 2**62, 2**63 + 1):
        for method, path in (("GET", f"/api/v1/exports/{request_id}"), ("POST", f"/api/v1/exports/{request_id}/cancel"),
                             ("DELETE", f"/api/v1/exports/{request_id}")):
            answer = call(server.port, method, path, key=other)
            assert (answer.status, answer.error) == (404, f"no export {request_id}"), (method, path)
    assert all(e["id"] not in (mine, sql_row) for e in call(server.port, "GET", "/api/v1/exports", key=other).json["exports"])
    assert row(db, mine) == snapshot and row(db, sql_row)["status"] == "PENDING"
    assert call(server.port, "GET", f"/api/v1/exports/{mine}", key=alice).status == 200


def test_a_trusted_key_names_users_and_their_tokens_see_only_their_own(server, db, database_url):
    backend = new_key(database_url, None)
    missing = post(server, {"export_type": "users"}, backend)
    assert (missing.status, missing.json["field"]) == (422, "requested_by")
    for_bob = post(server, {"export_type": "users", "requested_by": "bob@example.com"}, backend).json
    for_carol = post(server, {"export_type": "users", "requested_by": "carol@example.com"}, backend).json
    assert row(db, for_bob["id"])["requested_by"] == "bob@example.com"
    bob = user_token(server.signer, backend, "bob@example.com")
    by_token = post(server, {"export_type": "users"}, bob)
    assert by_token.status == 202 and row(db, by_token.json["id"])["requested_by"] == "bob@example.com"
    assert post(server, {"export_type": "users", "requested_by": "carol@example.com"}, bob).status == 403
    listed = {e["id"] for e in call(server.port, "GET", "/api/v1/exports", key=bob).json["exports"]}
    assert listed == {for_bob["id"], by_token.json["id"]}
    assert call(server.port, "GET", f"/api/v1/exports/{for_carol['id']}", key=bob).status == 404
    assert call(server.port, "GET", "/api/v1/exports?requested_by=carol%40example.com", key=bob).status == 403
    only_carol = call(server.port, "GET", "/api/v1/exports?requested_by=carol%40example.com", key=backend).json
    assert [e["id"] for e in only_carol["exports"]] == [for_carol["id"]]


def test_cancel_and_delete_follow_the_tables_rules(server, db, database_url, alice):
    store = RequestStore(url=database_url)
    pending = post(server, {"export_type": "users"}, alice).json["id"]
    first = call(server.port, "POST", f"/api/v1/exports/{pending}/cancel", key=alice)
    assert (first.status, first.json["status"], row(db, pending)["status"]) == (202, "CANCEL_REQUESTED", "CANCEL_REQUESTED")
    assert call(server.port, "POST", f"/api/v1/exports/{pending}/cancel", key=alice).status == 202
    refused = call(server.port, "DELETE", f"/api/v1/exports/{pending}", key=alice)
    assert refused.status == 409 and "CANCEL_REQUESTED" in refused.error
    store.run(rt.mark_cancelled(pending))
    assert call(server.port, "POST", f"/api/v1/exports/{pending}/cancel", key=alice).status == 200

    done = post(server, {"export_type": "users"}, alice).json["id"]
    store.run(rt.mark_running(done, "run-api"))
    store.run(rt.mark_failed(done, "stopped by the test"))
    answer = call(server.port, "POST", f"/api/v1/exports/{done}/cancel", key=alice)
    assert answer.status == 409 and "is FAILED: only a PENDING, QUEUED or RUNNING export can be cancelled" in answer.error
    assert row(db, done)["status"] == "FAILED"  # the trigger and the transition both keep it
    assert call(server.port, "DELETE", f"/api/v1/exports/{done}", key=alice).status == 409


def test_each_key_has_its_rate_and_each_token_user_a_bucket_of_its_own(server, db, database_url):
    slow = new_key(database_url, None, rate_per_minute=3)
    for _ in range(3):
        assert call(server.port, "GET", "/api/v1/exports", key=slow).status == 200
    limited = call(server.port, "GET", "/api/v1/exports", key=slow)
    assert limited.status == 429 and 1 <= int(limited.headers["retry-after"]) <= 20
    before = counts(db)
    assert post(server, {"export_type": "users", "requested_by": ALICE}, slow).status == 429
    assert counts(db) == before
    assert call(server.port, "GET", "/api/v1/exports", key=user_token(server.signer, slow, ALICE)).status == 200
    assert call(server.port, "GET", "/api/v1/exports", key=new_key(database_url, ALICE)).status == 200


def test_cors_is_off_unless_origins_are_configured(server, storage_root, tmp_path):
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    closed = call(server.port, "OPTIONS", "/api/v1/exports", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers and closed.status >= 400
    env = {"EXPORT_PLATFORM_CORS_ORIGINS": "https://app.example.com, https://admin.example.com"}
    with serve_process(storage_root, tmp_path / "serve.log", env) as open_server:
        allowed = call(open_server.port, "OPTIONS", "/api/v1/exports", headers=preflight)
        assert (allowed.status, allowed.headers["access-control-allow-origin"]) == (200, "https://app.example.com")
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = call(open_server.port, "OPTIONS", "/api/v1/exports", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # Only the API: the signed files and pages are not for other sites' scripts.
        assert "access-control-allow-origin" not in call(open_server.port, "GET", "/requests/1",
                                                         headers={"origin": "https://app.example.com"}).headers


def test_api_key_commands_create_list_and_revoke(server, db, tmp_path):
    cli = [sys.executable, "-m", "export_platform.tooling.cli", "api-key"]
    created = subprocess.run([*cli, "create", "crm-backend", "--user", ALICE, "--rate-per-minute", "120"],
                             env=server.env, capture_output=True, text=True, check=True).stdout
    lines = created.splitlines()
    api_key, secret = lines[lines.index(next(l for l in lines if l.startswith("API key"))) + 1].strip(), lines[-1].strip()
    key_id = api_key.split("_")[1]
    stored = db.execute("SELECT * FROM export_api_keys WHERE name = 'crm-backend'").fetchone()
    assert key_id in stored and api_key.split("_", 2)[2] not in " ".join(map(str, stored))  # the hash, not the key
    assert secret == token_secret(server.signer, key_id)
    assert post(server, {"export_type": "users"}, api_key).status == 202
    token = jwt.encode({"sub": ALICE, "exp": int(time.time()) + 300}, secret, headers={"kid": key_id})
    assert call(server.port, "GET", "/api/v1/exports", key=token).status == 200

    listed = subprocess.run([*cli, "list"], env=server.env, capture_output=True, text=True, check=True).stdout
    assert any(l.split()[:4] == ["crm-backend", key_id, ALICE, "120"] and l.endswith(" -") for l in listed.splitlines())
    again = subprocess.run([*cli, "create", "crm-backend", "--trusted"], env=server.env, capture_output=True, text=True)
    assert again.returncode == 2 and "exists already" in again.stderr and "Traceback" not in again.stderr
    revoked = subprocess.run([*cli, "revoke", "crm-backend"], env=server.env, capture_output=True, text=True, check=True)
    assert "revoked API key crm-backend" in revoked.stdout
    assert post(server, {"export_type": "users"}, api_key).status == 401
    assert call(server.port, "GET", "/api/v1/exports", key=token).status == 401
    assert subprocess.run([*cli, "revoke", "crm-backend"], env=server.env, capture_output=True).returncode == 1


# Bodies as a careless or hostile client sends them.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30) | st.sampled_from([INJECTION, "users", "csv"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10,
)
names = st.sampled_from(["export_type", "format", "filters", "columns", "options", "idempotency_key"]) | text
bodies = st.dictionaries(names, json_values, max_size=5) | st.fixed_dictionaries(
    {"export_type": st.sampled_from(REGISTRY.names())},
    optional={"format": text, "filters": st.dictionaries(text, json_values, max_size=3) | json_values,
              "columns": st.lists(text, max_size=3) | json_values, "options": json_values},
)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies)
def test_any_body_is_one_row_or_a_4xx_and_none(server, db, alice, body):
    before = counts(db)
    answer = call(server.port, "POST", "/api/v1/exports", key=alice,
                  raw=json.dumps(body, allow_nan=True).encode())
    assert answer.status in (202, 400, 403, 409, 422), answer.body
    assert set(answer.json) >= ({"id", "status"} if answer.status == 202 else {"error", "field"})
    after = counts(db)
    created = answer.status == 202 and "idempotent-replayed" not in answer.headers
    assert after[0] - before[0] == after[2] - before[2] == (1 if created else 0)
    assert after[4:] == before[4:]  # the sample data, whatever the strings said


def test_a_user_token_reads_a_failure_as_the_status_page_shows_it(server, db, database_url):
    """An internal error can hold hosts, paths and run ids: the back-end's key reads it, the
    browser holding the user's token reads what the status page says; a refusal naming the
    user's own field stays readable to both."""
    backend = new_key(database_url, None)
    dana = user_token(server.signer, backend, "dana@example.com")
    store = RequestStore(url=database_url)
    internal, refused = (post(server, {"export_type": "users", "requested_by": "dana@example.com"}, backend).json["id"] for _ in range(2))
    for request_id, error in ((internal, "could not write /srv/exports/.tmp/run-7f3a on db-primary.internal"),
                              (refused, "filters.country: unknown filter for users")):
        store.run(rt.mark_running(request_id, "run-api"))
        store.run(rt.mark_failed(request_id, error))
    raw = call(server.port, "GET", f"/api/v1/exports/{internal}", key=backend).json["error"]
    shown = call(server.port, "GET", f"/api/v1/exports/{internal}", key=dana).json["error"]
    assert raw == row(db, internal)["error"]
    assert "db-primary" not in shown and "/srv" not in shown and f"quote request {internal}" in shown
    assert call(server.port, "GET", f"/api/v1/exports/{refused}", key=dana).json["error"] == "filters.country: unknown filter for users"
    listed = {e["id"]: e["error"] for e in call(server.port, "GET", "/api/v1/exports", key=dana).json["exports"]}
    assert listed[internal] == shown
