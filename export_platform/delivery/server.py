"""`export-platform serve`: finished exports of the local storage over HTTP, and the status page.

    GET|HEAD /files/<key>?expires=…&sig=…        the file (Range, ETag = sha256, friendly name)
    GET      /requests/<id>?expires=…&sig=…      the end user's status page
    GET      /requests/<id>/events?expires=…&sig=…   the same, pushed (server-sent events)
    GET      /requests/<id>/status?expires=…&sig=…   the same, once (JSON): the page's fallback
    …        /api/v1/…, /examples/export-button.html  the HTTP API and its example page (api.py)

403: a bad or expired signature; 410: a file signed for but since deleted (retention, `delete`);
404: anything else, including paths that are no storage key. Files stream in 64 KiB chunks
(Starlette's FileResponse), so memory stays flat whatever their size and number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import time
from importlib.resources import files
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
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

from ..requests import table as rt
from ..resources.database_url import require_database_url
from ..resources.requests import RequestStore
from ..resources.storage import TEMP_FOLDER, LocalStorage
from . import api
from .links import Kind, Signer, file_url, friendly_name, valid_key
from .push import Notifications

# Links the status page hands out for its download button.
PAGE_LINK_SECONDS = 3600
MAX_BIGINT = 2**63 - 1
# An open event stream reads its row at least this often, and proxies see traffic.
HEARTBEAT_SECONDS = 15
FINISHED = {s.value for s in rt.TERMINAL}
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

    def __init__(self, store: RequestStore) -> None:
        self.store = store
        self._known: dict[tuple, str] = {}
        self._locks: dict[Path, anyio.Lock] = {}

    def _look_up(self, path: Path) -> str:
        return self.store.run(rt.sha256_of(path.as_uri())).scalar() or _sha256(path)

    async def of(self, path: Path, st: os.stat_result) -> str:
        identity = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity not in self._known:
            async with self._locks.setdefault(path, anyio.Lock()):
                if identity not in self._known:
                    digest = await anyio.to_thread.run_sync(self._look_up, path)
                    if len(self._known) >= self.MAX_ENTRIES:
                        self._known.clear()
                    self._known[identity] = digest
            self._locks.pop(path, None)
        return self._known[identity]


def _refuse(status: int, text: str) -> Response:
    return PlainTextResponse(text + "\n", status_code=status, headers={"cache-control": "no-store"})


def build_app(storage: LocalStorage, signer: Signer, store: RequestStore) -> Starlette:
    digests = Digests(store)
    notifications = Notifications(store.url)
    page = files(__package__).joinpath("status_page.html").read_text()

    async def download(request: Request) -> Response:
        key = request.path_params["key"]
        raw_path = request.scope.get("raw_path", b"").lower()
        if not valid_key(key) or any(s in raw_path for s in _ENCODED_SEPARATORS):
            return _refuse(404, "no such export")
        refusal = signer.check(Kind.file, key, request.query_params.get("expires"), request.query_params.get("sig"))
        if refusal:
            return _refuse(403, refusal)
        root = storage.folder()
        path = (root / key).resolve()  # follows symlinks: the target, too, must be inside the root
        if not path.is_relative_to(root) or path.is_relative_to(root / TEMP_FOLDER):
            return _refuse(404, "no such export")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _refuse(410, "this export has been deleted or has expired")
        if not stat.S_ISREG(st.st_mode):
            return _refuse(404, "no such export")
        etag = await digests.of(path, st)
        return FileResponse(
            path,
            stat_result=st,
            media_type=media_type(key),
            filename=friendly_name(key),
            headers={"etag": f'"{etag}"', "cache-control": "private, max-age=3600"},
        )

    def request_row(request: Request) -> dict | Response:
        request_id = request.path_params["request_id"]
        query = request.query_params
        refusal = signer.check(Kind.request, str(request_id), query.get("expires"), query.get("sig"))
        if refusal:
            return _refuse(403, refusal)
        row = store.run(rt.by_id(request_id)).mappings().first() if request_id <= MAX_BIGINT else None
        return dict(row) if row else _refuse(404, f"no export request {request_id}")

    def status_page(request: Request) -> Response:
        row = request_row(request)
        return row if isinstance(row, Response) else HTMLResponse(page, headers={"cache-control": "no-store"})

    def status(request: Request) -> Response:
        row = request_row(request)
        if isinstance(row, Response):
            return row
        return JSONResponse(_public_status(row, storage, signer), headers={"cache-control": "no-store"})

    def read(request_id: int) -> dict | None:
        row = store.run(rt.by_id(request_id)).mappings().first()
        return dict(row) if row else None

    async def events(request: Request) -> Response:
        row = await run_in_threadpool(request_row, request)
        if isinstance(row, Response):
            return row
        request_id = row["id"]

        async def stream():
            wake = notifications.subscribe(request_id)
            current, sent = row, None
            try:
                while current is not None:
                    shown = json.dumps(_public_status(current, storage, signer))
                    yield f"data: {shown}\n\n" if shown != sent else ": still here\n\n"
                    sent = shown
                    if current["status"] in FINISHED:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS)
                    wake.clear()  # before the read: a change committed after it wakes us again
                    current = await run_in_threadpool(read, request_id)
            finally:
                notifications.unsubscribe(request_id, wake)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        notifications.start()
        yield
        await notifications.stop()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/files/{key:path}", download, methods=["GET", "HEAD"]),
            Route("/requests/{request_id:int}", status_page, methods=["GET"]),
            Route("/requests/{request_id:int}/status", status, methods=["GET"]),
            Route("/requests/{request_id:int}/events", events, methods=["GET"]),
            *api.routes(store, storage, signer),
        ]
    )


def _public_status(row: dict, storage: LocalStorage, signer: Signer) -> dict:
    """What the end user may see of a request: no file paths, no run ids, no other rows."""
    download = None
    if row["status"] == rt.Status.COMPLETED.value and row["file_uri"]:
        path = Path(row["file_uri"].removeprefix("file://")).resolve()
        root = storage.folder()
        if path.is_relative_to(root) and path.is_file() and valid_key(key := path.relative_to(root).as_posix()):
            download = {"url": file_url("", signer, key, PAGE_LINK_SECONDS), "name": friendly_name(key)}
    return {
        "id": row["id"],
        "export_type": row["export_type"],
        "format": row["format"],
        "status": row["status"],
        "progress_pct": float(row["progress_pct"]) if row["progress_pct"] is not None else None,
        "progress_rows": row["progress_rows"],
        "total_rows": row["total_rows"],
        "row_count": row["row_count"],
        "file_bytes": row["file_bytes"],
        "error": row["error"],
        "download": download,
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


def serve(host: str, port: int, exit_with_parent: int | None = None) -> None:
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
    uvicorn.run(build_app(storage, Signer.from_env(), store), host=host, port=port, log_level="info", access_log=False,
                timeout_graceful_shutdown=5)  # open event streams do not hold a shutdown
