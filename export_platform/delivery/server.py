"""`export-platform serve`: finished exports of the local storage over HTTP, and the status page.

    GET      /                                   what this server is, for whoever opens its address
    GET|HEAD /files/<key>?expires=…&sig=…        the file (Range, ETag = sha256, friendly name)
    GET      /requests/<id>?expires=…&sig=…      the end user's status page
    GET      /requests/<id>/events?expires=…&sig=…   the same, pushed (server-sent events)
    GET      /requests/<id>/status?expires=…&sig=…   the same, once (JSON): the page's fallback
    …        /api/v1/…, /examples/export-button.html  the HTTP API and its example page (api.py)

403: a missing, malformed, bad or expired signature; 410: a file signed for but since deleted
(retention, `delete`); 503 (with Retry-After): the database is unreachable; 404: anything else,
including paths that are no storage key. Never a 500: whatever a link or a row holds is answered
(docs/delivery.md lists each status and its cause). Files stream in 64 KiB chunks (Starlette's
FileResponse), so memory stays flat whatever their size and number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

import anyio
import psycopg
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..requests import table as rt
from ..requests.status import Status
from ..resources.database_url import require_database_url
from ..requests.store import RequestStore
from ..resources.storage import TEMP_FOLDER, LocalStorage, StorageError
from ..resources.storage_keys import valid_key
from . import api
from ..links import Kind, Signer, file_url, friendly_name, seconds_left
from .public import public_error
from .push import Notifications

# Links the status page hands out for its download button.
PAGE_LINK_SECONDS = 3600
MAX_BIGINT = 2**63 - 1
# An open event stream reads its row at least this often, and proxies see traffic.
HEARTBEAT_SECONDS = 15
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "gz": "application/gzip",
    "zst": "application/zstd",
    "parquet": "application/vnd.apache.parquet",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}
# Percent-encoded separators would let one path segment stand for several.
_ENCODED_SEPARATORS = (b"%2f", b"%5c", b"%00")
# A download may be cached this long, and never past its link's expiry.
MAX_CACHE_SECONDS = 3600
# The database could not be reached: the answer is 503, and a client may try again after this long.
DATABASE_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, psycopg.OperationalError)
RETRY_AFTER_SECONDS = 5
# Every answer: no content sniffing, and no signed link leaks to another site as a Referer.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
# A FAILED row's error is shown to the end user as it is only when it is a refused request's
# ("<field>: what is wrong"): the fields of a request, as planning names them.


def media_type(key: str) -> str:
    return MEDIA_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Digests:
    """sha256 of published files: the one publish recorded on the request row, else computed (once
    per file: published files never change, publish renames a finished file into place), off the
    event loop, one look-up per file at a time."""

    MAX_ENTRIES = 4096

    def __init__(self, store: RequestStore, storage: LocalStorage) -> None:
        self.store, self.storage = store, storage
        self._known: dict[tuple, str] = {}
        self._locks: dict[Path, anyio.Lock] = {}

    def _look_up(self, key: str, path: Path) -> str:
        return self.store.run(rt.sha256_of(key, self.storage.uri(key))).scalar() or _sha256(path)

    async def of(self, key: str, path: Path, st: os.stat_result) -> str:
        identity = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity not in self._known:
            try:
                async with self._locks.setdefault(path, anyio.Lock()):
                    if identity not in self._known:
                        digest = await anyio.to_thread.run_sync(self._look_up, key, path)
                        if len(self._known) >= self.MAX_ENTRIES:
                            self._known.clear()
                        self._known[identity] = digest
            finally:
                self._locks.pop(path, None)
        return self._known[identity]


ABOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>export_platform: downloads</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>export_platform downloads</h1>
<p>This server delivers finished exports and shows how a requested export is getting on. It answers
signed links only:</p>
<ul><li><code>/files/…</code>: a file, from a request's <code>download_url</code> or its run page in Dagster;</li>
<li><code>/requests/ID</code>: a request's status page, from <code>export-platform url ID --page</code>.</li></ul>
<p>A link is valid until its <code>expires</code> time; ask whoever gave it to you for a new one.</p>
</body></html>
"""


def _refuse(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text + "\n", status_code=status, headers={"cache-control": "no-store", **(headers or {})})


def _database_down(request: Request, error: Exception) -> Response:
    return _refuse(
        503, "the export service cannot reach its database; try again shortly",
        {"retry-after": str(RETRY_AFTER_SECONDS)},
    )


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, the router's own 404 and 405 included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def _stat(root: Path, key: str) -> tuple[Path, os.stat_result] | Response:
    """The published file of `key` and its stat, or why not: 404 for what is no published file
    (a path out of the root or into the temp folder, symlinks followed; a folder; a symlink loop),
    410 for a file that is gone."""
    try:
        path = (root / key).resolve()  # follows symlinks: the target, too, must be inside the root
        if not path.is_relative_to(root) or path.is_relative_to(root / TEMP_FOLDER):
            return _refuse(404, "no such export")
        st = os.stat(path)
    except FileNotFoundError:
        return _refuse(410, "this export has been deleted or has expired")
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError in Python 3.11), a name too long
        return _refuse(404, "no such export")
    return (path, st) if stat.S_ISREG(st.st_mode) else _refuse(404, "no such export")


class Delivery:
    """The server's own pages: files and the status page, over one storage, signer and request store."""

    def __init__(self, storage: LocalStorage, signer: Signer, store: RequestStore) -> None:
        self.storage, self.signer, self.store = storage, signer, store
        self.digests = Digests(store, storage)
        self.notifications = Notifications(store.url)
        self.page = files(__package__).joinpath("status_page.html").read_text()

    def routes(self) -> list[Route]:
        return [
            Route("/", about, methods=["GET"]),
            Route("/files/{key:path}", self.download, methods=["GET", "HEAD"]),
            Route("/requests/{request_id:int}", self.status_page, methods=["GET"]),
            Route("/requests/{request_id:int}/status", self.status, methods=["GET"]),
            Route("/requests/{request_id:int}/events", self.events, methods=["GET"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.notifications.start()
        yield
        await self.notifications.stop()

    async def download(self, request: Request) -> Response:
        key = request.path_params["key"]
        raw_path = request.scope.get("raw_path", b"").lower()
        if not valid_key(key) or any(s in raw_path for s in _ENCODED_SEPARATORS):
            return _refuse(404, "no such export")
        expires = request.query_params.get("expires")
        refusal = self.signer.check(Kind.file, key, expires, request.query_params.get("sig"))
        if refusal:
            return _refuse(403, refusal)
        found = _stat(self.storage.folder(), key)
        if isinstance(found, Response):
            return found
        path, st = found
        etag = await self.digests.of(key, path, st)
        return FileResponse(
            path,
            stat_result=st,
            media_type=media_type(key),
            filename=friendly_name(key),
            headers={
                "etag": f'"{etag}"',
                "cache-control": f"private, max-age={min(MAX_CACHE_SECONDS, seconds_left(expires))}",
            },
        )

    def _signed_row(self, request: Request) -> dict | Response:
        """The request row a status link is signed for, or the refusal."""
        request_id = request.path_params["request_id"]
        query = request.query_params
        refusal = self.signer.check(Kind.request, str(request_id), query.get("expires"), query.get("sig"))
        if refusal:
            return _refuse(403, refusal)
        row = self._read(request_id) if request_id <= MAX_BIGINT else None
        return row or _refuse(404, f"no export request {request_id}")

    def _read(self, request_id: int) -> dict | None:
        row = self.store.run(rt.by_id(request_id)).mappings().first()
        return dict(row) if row else None

    def status_page(self, request: Request) -> Response:
        row = self._signed_row(request)
        return row if isinstance(row, Response) else HTMLResponse(self.page, headers={"cache-control": "no-store"})

    def status(self, request: Request) -> Response:
        row = self._signed_row(request)
        if isinstance(row, Response):
            return row
        return JSONResponse(_public_status(row, self.storage, self.signer), headers={"cache-control": "no-store"})

    async def events(self, request: Request) -> Response:
        row = await run_in_threadpool(self._signed_row, request)
        if isinstance(row, Response):
            return row
        return StreamingResponse(self._stream(row), media_type="text/event-stream", headers={"cache-control": "no-store"})

    async def _stream(self, row: dict) -> AsyncIterator[str]:
        """The row as the page shows it, again on each change announced (or a heartbeat), until
        it is finished."""
        request_id = row["id"]
        wake = self.notifications.subscribe(request_id)
        current, sent = row, None
        try:
            while current is not None:
                shown = json.dumps(_public_status(current, self.storage, self.signer))
                yield f"data: {shown}\n\n" if shown != sent else ": still here\n\n"
                sent = shown
                if Status(current["status"]).meaning.finished:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS)
                wake.clear()  # before the read: a change committed after it wakes us again
                current = await run_in_threadpool(self._read, request_id)
        except DATABASE_DOWN:
            return  # the page falls back to polling, which answers 503 until the database is back
        finally:
            self.notifications.unsubscribe(request_id, wake)


def about(request: Request) -> Response:
    return HTMLResponse(ABOUT, headers={"cache-control": "no-store"})


def build_app(storage: LocalStorage, signer: Signer, store: RequestStore) -> Starlette:
    delivery = Delivery(storage, signer, store)
    return Starlette(
        lifespan=delivery.lifespan,
        routes=[*delivery.routes(), *api.routes(store, storage, signer)],
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={error: _database_down for error in DATABASE_DOWN},
    )


def _download(row: dict, storage: LocalStorage, signer: Signer) -> dict | None:
    """The status page's download button: a fresh link, while the row's file is there."""
    if not Status(row["status"]).meaning.delivered:
        return None
    try:
        key = storage.recorded_key(row["file_key"], row["file_uri"])
    except StorageError:  # no file, or one of another storage
        return None
    if isinstance(_stat(storage.folder(), key), Response):
        return None
    return {"url": file_url("", signer, key, PAGE_LINK_SECONDS), "name": friendly_name(key)}


def _public_status(row: dict, storage: LocalStorage, signer: Signer) -> dict:
    """What the end user may see of a request: no file paths, no run ids, no other rows."""
    return {
        "id": row["id"],
        "export_type": row["export_type"],
        "format": row["format"],
        **Status(row["status"]).shown(),
        "progress_pct": float(row["progress_pct"]) if row["progress_pct"] is not None else None,
        "progress_rows": row["progress_rows"],
        "total_rows": row["total_rows"],
        "row_count": row["row_count"],
        "file_bytes": row["file_bytes"],
        "error": public_error(row),
        "download": _download(row, storage, signer),
    }


def _exit_with(parent: int) -> None:
    """Stop (as on Ctrl-C) once `parent` has ended, i.e. this process was handed to another parent."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def serve(host: str, port: int, exit_with_parent: int | None = None, log_level: str = "info") -> None:
    """Serve until interrupted; the signing key and the storage come from the environment."""
    import uvicorn

    from ..resources.storage import STORAGE_URL_ENV, storage_for

    storage = storage_for(os.environ.get(STORAGE_URL_ENV))
    if not isinstance(storage, LocalStorage):
        raise SystemExit("serve delivers the local export storage; S3 exports carry presigned URLs of their own")
    store = RequestStore(url=require_database_url())
    store.migrate()
    if exit_with_parent:
        _exit_with(exit_with_parent)
    # No access log: each line would hold a signed link, a credential until it expires.
    uvicorn.run(build_app(storage, Signer.from_env(), store), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5)  # open event streams do not hold a shutdown
