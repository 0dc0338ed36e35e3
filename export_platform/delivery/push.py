"""One LISTEN connection per `serve` process, fanned out to the status pages that are open: each
page's event stream is woken by `NOTIFY export_requests` about its request, instead of polling."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import psycopg
from psycopg import sql as pgsql

from ..requests import table as rt

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 2.0


class Notifications:
    def __init__(self, url: str) -> None:
        self.url = url
        self._waiting: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None

    def subscribe(self, request_id: int) -> asyncio.Event:
        event = asyncio.Event()
        self._waiting[request_id].add(event)
        return event

    def unsubscribe(self, request_id: int, event: asyncio.Event) -> None:
        self._waiting[request_id].discard(event)
        if not self._waiting[request_id]:
            del self._waiting[request_id]

    def _wake(self, request_id: int | None = None) -> None:
        """Wake the streams of one request, or all (after a reconnect, a notification may be lost)."""
        groups = self._waiting.values() if request_id is None else [self._waiting.get(request_id, ())]
        for group in groups:
            for event in group:
                event.set()

    def _notified(self, payload: str) -> None:
        request_id = rt.notified_id(payload)
        if request_id is None:
            log.warning("skipped a notification on %s that names no request: %.80r", rt.NOTIFY_CHANNEL, payload)
        else:
            self._wake(request_id)

    async def _listen(self) -> None:
        """Listens until stopped: whatever goes wrong, it logs, wakes every stream (each then reads
        its row) and connects again."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(rt.NOTIFY_CHANNEL)))
                    self._wake()
                    async for notice in conn.notifies():
                        self._notified(notice.payload)
            except (psycopg.OperationalError, OSError) as error:
                log.warning("LISTEN %s lost (%s); reconnecting", rt.NOTIFY_CHANNEL, error)
            except Exception:  # a bug must not end the pushes for good, as one bad payload once did
                log.exception("LISTEN %s failed; reconnecting", rt.NOTIFY_CHANNEL)
            self._wake()  # the streams read their rows again: nothing is missed for long
            await asyncio.sleep(RECONNECT_SECONDS)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
