"""Following requests: `status` (and `--wait`), `list`, `cancel`, `url`, `delete`."""

from __future__ import annotations

import argparse
import sys
import time

from ...requests.status import Status
from .common import bad_option, request_client

# `status --wait` says where to look when nothing has picked a request up after this long.
PENDING_HINT_SECONDS = 15
# `status --wait` writes a progress line at least this often when its output is not a terminal.
PROGRESS_LINE_SECONDS = 5
def _progress_line(row: dict) -> str:
    pct = float(row["progress_pct"] or 0)
    bar = "#" * int(pct // 5) + "." * (20 - int(pct // 5))
    rows = f"{row['progress_rows'] or 0:,}/{row['total_rows']:,} rows" if row["total_rows"] is not None else ""
    return f"[{bar}] {pct:5.1f}% {row['status']:<16} {rows}"


def _describe(row: dict) -> str:
    fields = ["id", "export_type", "format", "requested_by", "status", "progress_pct", "row_count",
              "file_uri", "file_key", "file_bytes", "sha256", "download_url", "expires_at", "error", "run_id",
              "created_at", "started_at", "finished_at"]
    return "\n".join(f"{name:>13}: {row[name]}" for name in fields if row.get(name) is not None)


class _Follower:
    """`status --wait`'s callback: a progress bar on a terminal; elsewhere (CI, a log file) a line
    whenever the status changes and at least every PROGRESS_LINE_SECONDS; and, once, a hint when the
    request stays PENDING (nothing launches runs while the Dagster daemon is down)."""

    def __init__(self, interactive: bool):
        self.interactive, self.since, self.hinted = interactive, time.monotonic(), False
        self.last_line, self.last_status = float("-inf"), None

    def __call__(self, row: dict) -> None:
        now = time.monotonic()
        if self.interactive:
            print("\r" + _progress_line(row), end="", flush=True)
        elif row["status"] != self.last_status or now - self.last_line >= PROGRESS_LINE_SECONDS:
            self.last_line, self.last_status = now, row["status"]
            print(_progress_line(row), flush=True)
        if Status(row["status"]).meaning.initial and not self.hinted and time.monotonic() - self.since >= PENDING_HINT_SECONDS:
            self.hinted = True
            print(("\n" if self.interactive else "") +
                  f"hint: request {row['id']} is still {row['status']} after {PENDING_HINT_SECONDS} s, so no sensor has "
                  "picked it up: is the Dagster daemon running? Start it with `export-platform dev` (or see "
                  "`export-platform health`).", file=sys.stderr, flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    client = request_client()
    if args.wait:
        interactive = sys.stdout.isatty()
        # Read at least every second: a line is due every PROGRESS_LINE_SECONDS even when nothing is announced.
        row = client.wait(args.id, on_update=_Follower(interactive), poll_seconds=1.0)
        if interactive:
            print()
    else:
        row = client.status(args.id)
        if row is None:
            raise bad_option("id", f"no export request {args.id}", hint="`export-platform list` shows the requests")
    print(_describe(row))
    return 1 if Status(row["status"]).meaning.failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = request_client().list(args.user, args.page, args.page_size)
    print(f"{'id':>8}  {'type':<20} {'format':<8} {'user':<12} {'status':<16} {'rows':>10}  created")
    for row in rows:
        rows_text = f"{row['row_count']:,}" if row["row_count"] is not None else ""
        print(f"{row['id']:>8}  {row['export_type'][:20]:<20} {row['format'][:8]:<8} {str(row['requested_by'])[:12]:<12} "
              f"{row['status']:<16} {rows_text:>10}  {row['created_at']:%Y-%m-%d %H:%M:%S}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    if request_client().cancel(args.id):
        print(f"cancel requested for {args.id}")
        return 0
    print(f"request {args.id} is not pending, queued or running; nothing to cancel", file=sys.stderr)
    return 1


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return int(text[:-1]) * units[text[-1]]
    if text.isdigit():
        return int(text)
    raise bad_option("expires", f"expected a duration such as 90s, 30m, 1h or 7d, got {text!r}")


def cmd_url(args: argparse.Namespace) -> int:
    client = request_client()
    seconds = _seconds(args.expires)
    print(client.status_page_url(args.id, seconds) if args.page else client.fresh_url(args.id, seconds))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from ...resources.storage import StorageError

    try:
        freed = request_client().delete(args.id)
    except StorageError as error:
        print(f"error: {error}; request {args.id} is unchanged", file=sys.stderr)
        return 1
    print(f"deleted the file of request {args.id} ({freed:,} bytes freed)")
    return 0

