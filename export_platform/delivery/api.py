"""The HTTP API on `export-platform serve`, under /api/v1/ (docs/delivery.md; the OpenAPI document
is GET /api/v1/openapi.json).

    POST   /exports                 request an export: 202 {id, status, status_url, …}
    GET    /exports/{id}            its status, progress, result, download_url, error
    GET    /exports?limit&cursor    the caller's exports, newest first, paged
    POST   /exports/{id}/cancel     ask for a cancel
    DELETE /exports/{id}            delete its file; the row becomes EXPIRED

It reads and writes `export_requests` and nothing else: the request sensor stays the one path to a
run, and a request is checked by the planner exactly as the sensor checks a row, so a bad one is a
422 whose `error` is the very text the row would have got. Callers are API keys or the user tokens
their back-ends sign (auth.py); each sees and changes only the requests it made.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ..planning.plan import RequestError, plan_request
from ..planning.values import decode_params
from ..requests import api_keys
from ..requests import table as rt
from ..requests.client import ExportClient, Refused, request_params
from ..requests.status import Status, spoken
from ..requests.store import RequestStore
from ..resources.storage import ExportStorage, StorageError
from . import openapi
from .auth import ApiError, Authenticator, Caller, RateLimiter, check_user
from .public import public_error
from ..links import Signer, public_url, status_page_url

PREFIX = "/api/v1"
CORS_ORIGINS_ENV = "EXPORT_PLATFORM_CORS_ORIGINS"
MAX_BODY_BYTES = 1024 * 1024
# How long the links in an answer (download, status page, event stream) stay valid.
LINK_SECONDS = 3600
DEFAULT_PAGE, MAX_PAGE = 20, 100
MAX_BIGINT = 2**63 - 1
MAX_IDEMPOTENCY_KEY = 200
BODY_FIELDS = ("export_type", "format", "filters", "columns", "options", "idempotency_key", "requested_by")
NO_STORE = {"cache-control": "no-store"}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


def _problem(error: ApiError) -> JSONResponse:
    return _json({"error": error.message, "field": error.field}, error.status, error.headers)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _text_problem(value: Any, path: str) -> RequestError | None:
    """Text a request row cannot hold (Postgres' text and jsonb refuse NUL and lone surrogates)."""
    if isinstance(value, str):
        if "\x00" in value:
            return RequestError(path, "text holds a NUL character")
        if any("\ud800" <= c <= "\udfff" for c in value):
            return RequestError(path, "text holds a lone UTF-16 surrogate")
    return None


def check_storable(body: Any) -> None:
    """Refuse, naming where, what JSON allows but a row cannot store: NaN, ±Infinity, NUL, lone
    surrogates. (Walked with a stack: the body may nest as deep as the JSON decoder allows.)"""
    stack = [(body, "body")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(path, f"expected a finite number, got {value}")
        if problem := _text_problem(value, path):
            raise problem
        if isinstance(value, dict):
            for key, item in value.items():
                inner = f"{path}.{key[:60]}" if path != "body" else key[:60]
                if problem := _text_problem(key, inner):
                    raise problem
                stack.append((item, inner))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def decode_body(raw: bytes) -> dict:
    """The body, decoded as the sensor decodes a row's params (numbers of at most 100 digits,
    bounded nesting)."""
    try:
        body = decode_params(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "body: not UTF-8 text", "body") from None
    except RequestError as error:
        raise ApiError(400, f"body: {error.message}", "body") from None
    except ValueError as error:
        raise ApiError(400, f"body: not valid JSON ({error})", "body") from None
    if not isinstance(body, dict):
        raise ApiError(422, "body: expected a JSON object with export_type, format, filters, columns, options", "body")
    return body


async def read_body(request: Request) -> dict:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "send the request as Content-Type: application/json", "body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES:,} bytes", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES:,} bytes", "body")
        chunks.append(chunk)
    return decode_body(b"".join(chunks))


def _optional_text(body: dict, field: str, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RequestError(field, f"expected text of 1 to {limit} characters, got {type(value).__name__}")
    return value


def _requested_by(caller: Caller, body: dict) -> str:
    """Who the request is for: the key's or the token's user, or, for a trusted key, the body's."""
    asked = body.get("requested_by")
    if asked is not None:
        check_user("requested_by", asked)
    fixed = caller.user
    if fixed is not None:
        if asked is not None and asked != fixed:
            raise ApiError(403, f"requested_by: this caller acts for {fixed} only", "requested_by")
        return fixed
    if asked is None:
        raise RequestError("requested_by", "required: this key acts for its users, name the one the export is for")
    return asked


@dataclass(frozen=True)
class Call:
    """What an operation gets of its HTTP request."""

    base: str
    body: dict | None = None
    request_id: int | None = None
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Api:
    store: RequestStore
    storage: ExportStorage
    signer: Signer
    client: ExportClient
    authenticator: Authenticator
    limiter: RateLimiter

    # --- What a caller sees of a request.

    def shown(self, caller: Caller, row: dict, base: str) -> dict:
        params = row["params"] if isinstance(row["params"], dict) else {}
        page = status_page_url(row["id"], LINK_SECONDS, base, self.signer)
        download = None
        if Status(row["status"]).meaning.delivered:
            try:
                download = self.storage.signed_url(self.storage.recorded_key(row["file_key"], row["file_uri"]), LINK_SECONDS)
            except StorageError:  # no file, or one of another storage
                download = None
        return {
            "id": row["id"],
            "export_type": row["export_type"],
            "format": row["format"],
            "filters": params.get("filters"),
            "columns": params.get("columns"),
            "options": {k: v for k, v in params.items() if k not in ("filters", "columns")},
            "requested_by": row["requested_by"],
            "idempotency_key": api_keys.client_idempotency_key(caller.key.key_id, row["idempotency_key"]),
            **Status(row["status"]).shown(),
            "progress_pct": float(row["progress_pct"]) if row["progress_pct"] is not None else None,
            "progress_rows": row["progress_rows"],
            "total_rows": row["total_rows"],
            "row_count": row["row_count"],
            "file_bytes": row["file_bytes"],
            "sha256": row["sha256"],
            "download_url": download,
            "expires_at": _iso(row["expires_at"]),
            # A browser holding a user token is the end user: it reads what the status page shows.
            "error": public_error(row) if caller.token_user else row["error"],
            "created_at": _iso(row["created_at"]),
            "started_at": _iso(row["started_at"]),
            "finished_at": _iso(row["finished_at"]),
            "status_url": f"{base}{PREFIX}/exports/{row['id']}",
            "status_page_url": page,
            "events_url": page.replace("?", "/events?", 1),
        }

    @staticmethod
    def _row(conn: sa.Connection, caller: Caller, request_id: int) -> dict:
        if request_id > MAX_BIGINT:
            raise ApiError(404, f"no export {request_id}")
        found = conn.execute(api_keys.owned_one(request_id, caller.key.key_id, caller.scope)).mappings().first()
        if found is None:  # someone else's or none at all: the same answer, so ids tell nothing
            raise ApiError(404, f"no export {request_id}")
        return dict(found)

    # --- Operations, each in a worker thread (the database calls block), on the connection and in
    # the transaction in which the caller's key was read.

    def create(self, conn: sa.Connection, caller: Caller, call: Call) -> JSONResponse:
        body = call.body
        unknown = [k for k in body if k not in BODY_FIELDS]
        if unknown:
            raise RequestError(unknown[0][:60], f"unknown field; known: {', '.join(BODY_FIELDS)}")
        check_storable(body)
        requested_by = _requested_by(caller, body)
        client_key = _optional_text(body, "idempotency_key", MAX_IDEMPOTENCY_KEY)
        export_type, export_format = body.get("export_type"), body.get("format")
        export_format = "csv" if export_format is None else export_format  # the table's default
        params = request_params(body.get("filters"), body.get("columns"), body.get("options"))
        plan_request(export_type, export_format, params)  # the sensor's own check of the row
        stored_key = api_keys.stored_idempotency_key(caller.key.key_id, client_key)
        request_id = conn.execute(rt.insert(export_type, export_format, params, requested_by, stored_key)).scalar()
        replayed = request_id is None
        if replayed:  # the same idempotency key again: the first request, not a second one
            request_id = conn.execute(rt.by_idempotency_key(requested_by, stored_key)).scalar_one()
        else:
            conn.execute(api_keys.own(request_id, caller.key.key_id))
        row = conn.execute(api_keys.owned_one(request_id, caller.key.key_id, caller.scope)).mappings().first()
        if row is None:
            raise ApiError(409, "idempotency_key: already used for a request this caller did not make", "idempotency_key")
        shown = self.shown(caller, dict(row), call.base)
        headers = {"location": shown["status_url"], **({"idempotent-replayed": "true"} if replayed else {})}
        return _json(shown, 202, headers)

    def get(self, conn: sa.Connection, caller: Caller, call: Call) -> JSONResponse:
        return _json(self.shown(caller, self._row(conn, caller, call.request_id), call.base))

    def listing(self, conn: sa.Connection, caller: Caller, call: Call) -> JSONResponse:
        query = call.query
        limit = _whole_number(query.get("limit", str(DEFAULT_PAGE)), "limit", 1, MAX_PAGE)
        cursor = query.get("cursor")
        before = _whole_number(cursor, "cursor", 1, MAX_BIGINT) if cursor is not None else None
        scope = caller.scope
        if "requested_by" in query:
            asked = check_user("requested_by", query["requested_by"])
            if scope is not None and asked != scope:
                raise ApiError(403, f"requested_by: this caller acts for {scope} only", "requested_by")
            scope = asked
        rows = conn.execute(api_keys.owned_page(caller.key.key_id, scope, limit, before)).mappings().all()
        shown = [self.shown(caller, dict(r), call.base) for r in rows]
        more = len(rows) == limit
        return _json({"exports": shown, "next_cursor": str(rows[-1]["id"]) if more else None})

    def cancel(self, conn: sa.Connection, caller: Caller, call: Call) -> JSONResponse:
        request_id = call.request_id
        self._row(conn, caller, request_id)
        conn.execute(rt.request_cancel(request_id))  # the table's move, from the statuses that may be cancelled
        row = self._row(conn, caller, request_id)
        status, stopping = Status(row["status"]), Status.the(stopping=True)
        if status is stopping:
            return _json(self.shown(caller, row, call.base), 202)
        if status in stopping.becomes:
            return _json(self.shown(caller, row, call.base))
        raise ApiError(409, f"export {request_id} is {status.value}: only a {spoken(stopping.sources)} export can be "
                       "cancelled", "status")

    def delete(self, conn: sa.Connection, caller: Caller, call: Call) -> JSONResponse:
        request_id = call.request_id
        row = self._row(conn, caller, request_id)
        if row["status"] == Status.EXPIRED.value:
            return _json(self.shown(caller, row, call.base))
        try:
            self.client.delete(request_id)  # the file, then the row, as `export-platform delete` does
        except Refused as error:
            raise ApiError(409, f"{error}; cancel an export that is still running", "status") from None
        except (StorageError, OSError) as error:
            raise ApiError(503, f"the file could not be deleted ({error}); export {request_id} is unchanged",
                           headers={"retry-after": "60"}) from None
        return _json(self.shown(caller, self._row(conn, caller, request_id), call.base))


def _whole_number(text: str, field: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and low <= int(text) <= high):
        raise RequestError(field, f"expected a whole number from {low} to {high:,}, got {text[:60]!r}")
    return int(text)


def _base(request: Request) -> str:
    return public_url() or str(request.base_url).rstrip("/")


Operation = Callable[[sa.Connection, Caller, Call], Response]


def _endpoint(api: Api, operation: Operation, with_body: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """An authenticated, rate-limited endpoint: the body is read on the event loop, then the key
    check, the limit and the operation run in one worker thread, in one transaction."""

    async def endpoint(request: Request) -> Response:
        try:
            call = Call(
                _base(request), await read_body(request) if with_body else None,
                request.path_params.get("request_id"), dict(request.query_params),
            )
            authorization = request.headers.get("authorization")

            def authorized() -> Response:
                with api.store.transaction() as conn:
                    caller = api.authenticator.caller(conn, authorization)
                    api.limiter.take(caller)
                    return operation(conn, caller, call)

            return await run_in_threadpool(authorized)
        except ApiError as error:
            return _problem(error)
        except RequestError as error:
            return _problem(ApiError(422, str(error), error.field))

    return endpoint


def cors_origins() -> list[str]:
    """EXPORT_PLATFORM_CORS_ORIGINS: comma-separated origins allowed to call the API from a browser
    (`*`: any). Unset: none, and browsers keep other sites' pages from calling it."""
    return [o.strip().rstrip("/") for o in os.environ.get(CORS_ORIGINS_ENV, "").split(",") if o.strip()]


async def _not_found(request: Request, error: HTTPException) -> Response:
    return _json({"error": error.detail, "field": None}, error.status_code, error.headers)


def routes(store: RequestStore, storage: ExportStorage, signer: Signer) -> list[BaseRoute]:
    """The API's routes and its example page, for `serve`'s app."""
    api = Api(store, storage, signer, ExportClient(store.url, storage), Authenticator(signer), RateLimiter())
    document = openapi.document(PREFIX)
    example = files(__package__).joinpath("api_example.html").read_text()
    app = Starlette(
        routes=[
            Route("/openapi.json", lambda request: _json(document, headers={"cache-control": "public, max-age=300"})),
            Route("/exports", _endpoint(api, api.create, with_body=True), methods=["POST"]),
            Route("/exports", _endpoint(api, api.listing), methods=["GET"]),
            Route("/exports/{request_id:int}", _endpoint(api, api.get), methods=["GET"]),
            Route("/exports/{request_id:int}", _endpoint(api, api.delete), methods=["DELETE"]),
            Route("/exports/{request_id:int}/cancel", _endpoint(api, api.cancel), methods=["POST"]),
        ],
        exception_handlers={HTTPException: _not_found},
        middleware=[Middleware(
            CORSMiddleware, allow_origins=cors_origins(), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"], expose_headers=["location", "retry-after"], max_age=600,
        )],
    )
    return [
        Mount(PREFIX, app=app),
        Route("/examples/export-button.html", lambda request: HTMLResponse(example, headers=NO_STORE)),
    ]
