"""A small Python client for applications: the request table's calls without writing SQL.

    from export_platform.requests.client import ExportClient
    client = ExportClient()                      # the database of EXPORT_PLATFORM_DATABASE_URL
    request_id = client.request("users", "csv", filters={"country_code": "US"}, requested_by="alice")
    final = client.wait(request_id)              # a dict of the row, once it is terminal (LISTEN)

Requests are checked here as the sensor would check them, so a bad one fails at once with a
`RequestError` naming the field instead of becoming a FAILED row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql as pgsql

from . import table as rt
from .. import links
from ..errors import NotFound, Refused, TimedOut
from ..planning.plan import RequestError, plan_request
from ..planning.values import shown
from .status import Status, spoken
from ..resources.database_url import require_database_url
from ..requests.store import RequestStore
from ..resources.storage import STORAGE_URL_ENV, ExportStorage, storage_for


def request_params(filters: Any = None, columns: Any = None, options: Any = None) -> dict:
    """A request row's params from its parts, as the Python client and the HTTP API both build them;
    what is unset is left out (`plan_request` then checks the rest, naming the field)."""
    if options is not None and not isinstance(options, Mapping):
        raise RequestError("options", f"expected an object of export options, got {shown(options)}")
    for part in ("filters", "columns"):
        if part in (options or {}):
            raise RequestError(f"options.{part}", f"{part} is a field of the request, not an option")
    return {k: v for k, v in {"filters": filters, "columns": columns, **(options or {})}.items() if v is not None}


class ExportClient:
    def __init__(self, url: str | None = None, storage: ExportStorage | None = None):
        self.store = RequestStore(url=url or require_database_url())
        self.storage = storage or storage_for(os.environ.get(STORAGE_URL_ENV))

    def request(
        self,
        export_type: str,
        format: str = "csv",
        *,
        filters: dict | None = None,
        columns: list[str] | str | None = None,
        options: dict | None = None,
        requested_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Insert a request; with an idempotency_key already used by requested_by, return that id.

        `columns` is a list or comma-separated text, as in a request row. `options` are the export
        options of a request's params: labels, time_zone, formula_protection, csv, parquet, xlsx, pdf
        (e.g. `{"csv": {"delimiter": ";"}}`). The row is planned here as the sensor will plan it
        (`plan_request`), so that a bad request fails at once, naming the field.
        """
        params = request_params(filters, columns, options)
        plan_request(export_type, format, params)
        request_id = self.store.run(rt.insert(export_type, format, params, requested_by, idempotency_key)).scalar()
        if request_id is None:
            request_id = self.store.run(rt.by_idempotency_key(requested_by, idempotency_key)).scalar_one()
        return request_id

    def status(self, request_id: int) -> dict[str, Any] | None:
        row = self.store.run(rt.by_id(request_id)).mappings().first()
        return dict(row) if row else None

    def wait(
        self,
        request_id: int,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_seconds: float = 5.0,
    ) -> dict[str, Any]:
        """Wait until the request is finished (requests/status.py: COMPLETED, FAILED, CANCELLED, EXPIRED).

        Woken by `NOTIFY export_requests` on each change of the row's status or progress; it also
        reads the row every `poll_seconds`, in case a notification was missed (e.g. a reconnect)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with psycopg.connect(self.store.url, autocommit=True) as listener:
            listener.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(rt.NOTIFY_CHANNEL)))
            while True:
                row = self.status(request_id)  # read after LISTEN: no change can fall in between
                if row is None:
                    raise NotFound(f"no export request {request_id}")
                if on_update:
                    on_update(row)
                if Status(row["status"]).meaning.finished:
                    return row
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimedOut(f"request {request_id} still {row['status']} after {timeout} s")
                for notice in listener.notifies(timeout=min(poll_seconds, left or poll_seconds)):
                    if rt.notified_id(notice.payload) == request_id:
                        break

    def status_page_url(self, request_id: int, seconds: int = 24 * 3600) -> str:
        """The signed address of the request's status page on `export-platform serve`, for its user."""
        if self.status(request_id) is None:
            raise Refused(f"no export request {request_id}")
        return links.status_page_url(request_id, seconds)

    def list(self, requested_by: str | None = None, page: int = 1, page_size: int = 20) -> list[dict[str, Any]]:
        rows = self.store.run(rt.listing(requested_by, page_size, (page - 1) * page_size)).mappings().all()
        return [dict(r) for r in rows]

    def cancel(self, request_id: int) -> bool:
        """Ask for a cancel; False when the request is already finished (or unknown)."""
        return self.store.run(rt.request_cancel(request_id)).rowcount == 1

    def _finished_file(self, request_id: int) -> dict[str, Any]:
        row = self.status(request_id)
        if row is None:
            raise Refused(f"no export request {request_id}")
        if not Status(row["status"]).meaning.delivered:
            raise Refused(f"request {request_id} is {row['status']}, not {spoken(Status.where(delivered=True))}: "
                          "it has no file")
        return row

    def fresh_url(self, request_id: int, seconds: int = 3600) -> str:
        """Mint a new signed URL for a completed, unexpired export and store it on the row."""
        row = self._finished_file(request_id)
        now = datetime.now(timezone.utc)
        if row["expires_at"] is not None and row["expires_at"] <= now:
            raise Refused(f"request {request_id}'s file expired at {row['expires_at']:%Y-%m-%d %H:%M:%S %Z}")
        url = self.storage.signed_url(self.storage.recorded_key(row["file_key"], row["file_uri"]), seconds)
        if url is None:
            raise Refused(
                f"this storage cannot sign URLs; the file is {row['file_uri']} (local storage signs links for "
                f"`export-platform serve` once {links.PUBLIC_URL_ENV} is set)"
            )
        self.store.run(rt.set_link(request_id, url, now + timedelta(seconds=seconds)))
        return url

    def delete(self, request_id: int) -> int:
        """Delete a finished export's file; the row becomes EXPIRED (expired_reason 'deleted').
        Returns the bytes freed."""
        row = self._finished_file(request_id)
        freed = self.storage.delete_request_file(row["file_key"], row["file_uri"])
        self.store.run(rt.mark_expired(request_id, "deleted"))
        return freed
