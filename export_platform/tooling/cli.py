"""The `export-platform` command: try the platform locally, request exports, follow them.

Only the standard library and the (dependency-free) registry are imported before the arguments
are parsed, so `--help` and mistakes answer at once; each command imports what it needs.

The local commands (demo, dev, seed, db url, run, request, status, list, cancel, url, delete, api-key,
serve, health) use the embedded Postgres when EXPORT_PLATFORM_DATABASE_URL is unset: a checkout needs
nothing set. The operator commands (db migrate, cleanup, workers) change a deployment and need the
variable, so that a missing one is an error rather than an empty database of their own.

Errors print their message, never a Python traceback or class path (EXPORT_PLATFORM_TRACEBACK=1
shows the traceback of an unexpected one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog.export_types import REGISTRY
from ..catalog.formats import ExportFormat
from ..catalog.registry import RowOrder

if TYPE_CHECKING:
    from ..ops.publish import PublishedExport
    from ..planning.plan import ExportPlan

# The command prints its own result or error; Dagster's event log stays in the run record.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# pdf holds at most 10,000 rows: the demo narrows each sample type to about that many.
DEMO_PDF_FILTERS = {
    "users": {"signup_date_from": "2015-01-01", "signup_date_to": "2015-01-31"},
    "ezpass_transactions": {"from_posting_date": "2024-01-01", "to_posting_date": "2024-01-01"},
    "ledger_postings": {"from_posting_date": "2023-01-01", "to_posting_date": "2023-01-01"},
}
# `status --wait` says where to look when nothing has picked a request up after this long.
PENDING_HINT_SECONDS = 15
# `status --wait` writes a progress line at least this often when its output is not a terminal.
PROGRESS_LINE_SECONDS = 5
TRACEBACK_ENV = "EXPORT_PLATFORM_TRACEBACK"
# "psycopg.errors.UndefinedTable: ..." → "UndefinedTable: ..."; Dagster's qualified "…events.Failure: x" → "x".
_CLASS_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?P<name>[A-Za-z_]\w*): ")


class ExportFailed(RuntimeError):
    pass


def plain(message: str) -> str:
    """An error message as a person reads it: without the Python module path of its class (a bare
    class name stays where it says something, e.g. "UndefinedTable: relation ... does not exist")."""
    match = _CLASS_PATH.match(message)
    if match is None:
        return message.strip()
    rest = message[match.end():].strip()
    return rest if match["name"] in ("Failure", "DagsterError") else f"{match['name']}: {rest}"


def _quiet_dagster_warnings() -> None:
    """Dagster marks some APIs beta or superseded; a user of this command cannot act on that."""
    import warnings

    from dagster_shared.utils.warnings import BetaWarning, PreviewWarning, SupersessionWarning

    for category in (BetaWarning, PreviewWarning, SupersessionWarning):
        warnings.simplefilter("ignore", category)


def run_export(plan: ExportPlan, instance=None) -> PublishedExport:
    """Execute the export type's Dagster job in this process and return what it published; with an
    `instance`, the run is recorded there (and shows in the UI). The plan's output path is the
    command line's own: this run may write there (Launchpad runs may not, docs/reference.md)."""
    _quiet_dagster_warnings()
    from ..definitions import defs  # importing the code location is the slow part; only when needed
    from ..run_failures import root_message
    from ..jobs import run_config_for
    from ..resources.storage import OUTPUT_FOLDERS_ENV

    job = defs.resolve_job_def(REGISTRY.get(plan.export_type).job_name)
    if plan.output_path:
        # The run executes in this process, whose storage reads the allow-list when the plan op
        # checks the path (an execute_in_process `resources=` override of `storage` did not reach
        # the plan op of the job resolved from these Definitions).
        folder = str(Path(plan.output_path).resolve().parent)
        allowed = os.environ.get(OUTPUT_FOLDERS_ENV)
        os.environ[OUTPUT_FOLDERS_ENV] = os.pathsep.join(filter(None, [folder, allowed]))
    result = job.execute_in_process(
        run_config={**run_config_for(plan), **QUIET_LOGGERS}, instance=instance, raise_on_error=False
    )
    if not result.success:
        # No failure sensor watches an in-process run: its staged file is removed here.
        defs.resources["storage"].discard_temp(result.run_id)
        failures = [plain(root_message(e.step_failure_data.error)) for e in result.all_events if e.is_step_failure]
        raise ExportFailed("; ".join(failures) or "the run failed")
    return result.output_for_node("publish_export")


def _request_error(field: str, message: str) -> Exception:
    from ..planning.plan import RequestError

    return RequestError(field, message)


def _filters(pairs: Sequence[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise _request_error("filters", f"expected --filter name=value, got {pair!r}")
        # A repeated filter adds values, as `name=a,b` does.
        filters[name] = f"{filters[name]},{value}" if name in filters else value
    return filters


def _params(args: argparse.Namespace) -> dict:
    """The request's params, as an application would store them: --options, then the CSV flags."""
    try:
        params = json.loads(args.options) if args.options else {}
    except ValueError:
        raise _request_error("options", "expected a JSON object such as '{\"csv\": {\"bom\": true}}'") from None
    if not isinstance(params, dict) or {"filters", "columns"} & set(params):
        raise _request_error(
            "options", "expected a JSON object of export options (filters and columns have their own flags)"
        )
    flags = {"delimiter": args.delimiter, "quote_char": args.quote_char, "header": False if args.no_header else None}
    csv = {k: v for k, v in flags.items() if v is not None}
    if csv:
        params["csv"] = {**(params.get("csv") or {}), **csv}
    if args.order is not None:
        params["order"] = args.order
    return {"filters": _filters(args.filter), "columns": args.columns, **params}


def _plan_from_args(args: argparse.Namespace) -> ExportPlan:
    from ..planning.plan import plan_request

    return plan_request(args.type, args.format, _params(args), output_path=args.output, chunks=args.chunks)


def _local_database() -> str:
    from .embedded_postgres import local_database_url

    return local_database_url()


def _use_local_database(command: str) -> bool:
    """For a command whose code reads EXPORT_PLATFORM_DATABASE_URL itself (serve, health): the
    configured database, else the embedded one, as for every local command; said on stderr, since
    these two also run deployed, where a missing variable is a mistake to see at once. True when
    it fell back to the embedded one."""
    from ..resources.database_url import DATABASE_URL_ENV

    if os.environ.get(DATABASE_URL_ENV):
        return False
    os.environ[DATABASE_URL_ENV] = _local_database()
    print(f"{command}: {DATABASE_URL_ENV} is not set: using the embedded Postgres "
          f"({os.environ[DATABASE_URL_ENV]}), as the local commands do", file=sys.stderr, flush=True)
    return True


def _client():
    """The request table of a local command's database."""
    from ..requests.client import ExportClient

    return ExportClient(_local_database())


def _cmd_run(args: argparse.Namespace) -> int:
    from ..resources.storage import file_uri_path

    plan = _plan_from_args(args)
    _local_database()  # after the plan: a bad request is refused without starting a database
    published = run_export(plan)
    print(
        f"rows={published.rows} bytes={published.bytes} seconds={published.seconds:.2f} "
        f"sha256={published.sha256} path={file_uri_path(published.uri) or published.uri}"
    )
    return 0


def _cmd_db_url(args: argparse.Namespace) -> int:
    print(_local_database())
    return 0


def _cmd_db_stop(args: argparse.Namespace) -> int:
    from ..resources.database_url import DATABASE_URL_ENV
    from .embedded_postgres import stop_embedded

    if os.environ.get(DATABASE_URL_ENV):
        print(f"{DATABASE_URL_ENV} is set: that server is not the embedded one; nothing stopped")
        return 0
    print("stopped the embedded Postgres" if stop_embedded() else "the embedded Postgres is not running")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ..resources.database_url import require_database_url
    from ..requests.store import RequestStore

    # A deploy step: the configured database only, never the embedded one.
    print(f"export_requests is at schema version {RequestStore(url=require_database_url()).migrate()}")
    return 0


def _seed(rows: int) -> float:
    import psycopg

    from .sample_data import seed

    started = time.monotonic()
    with psycopg.connect(_local_database(), autocommit=True) as conn:
        seed(conn, rows)
    return time.monotonic() - started


def _cmd_seed(args: argparse.Namespace) -> int:
    seconds = _seed(args.rows)
    print(f"seeded {args.rows:,} rows into each of {', '.join(REGISTRY.names())} in {seconds:.1f} s")
    return 0


def _demo_folder() -> Path | None:
    """The local folder the demo's files go to (None for S3 storage)."""
    from ..resources.storage import STORAGE_URL_ENV, LocalStorage, storage_for

    storage = storage_for(os.environ.get(STORAGE_URL_ENV))
    return storage.folder() if isinstance(storage, LocalStorage) else None


def _shown_path(path: Path) -> str:
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


DEMO_NEXT = """
What next:
  make dev            the Dagster UI (its address is printed): Runs shows these {runs} exports, the
                      Catalog each type's files over time; serve, for downloads, on port 8080
  a request           with `make dev` running, in another terminal:
                        .venv/bin/export-platform request users --format xlsx --filter country_code=US
                        .venv/bin/export-platform status ID --wait     (ID: the number it printed)
                      or an application's INSERT INTO export_requests (README: Request an export)
  the files           {folder}<type>/
  stop the database   .venv/bin/export-platform db stop"""


def _cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from .instance import prepare_dagster_home
    from ..planning.plan import plan_request
    from ..units import human_bytes
    from ..requests.store import RequestStore

    url = _local_database()
    print(f"database: {url}")
    RequestStore(url=url).migrate()  # the embedded database is ready for request rows too
    print(f"seeded {args.rows:,} rows per sample type in {_seed(args.rows):.1f} s")
    folder = _demo_folder()
    where = f"{_shown_path(folder)}/<type>/" if folder else "the bucket"
    print(f"exporting every sample type in every format; the files are in {where}\n")
    header = f"{'type':<20} {'format':<10} {'rows':>8} {'size':>10} {'seconds':>7}  file"
    print(header)
    os.environ.update(prepare_dagster_home())  # the runs go into the instance `make dev` shows
    runs = 0
    with dg.DagsterInstance.get() as instance:
        for export_type in REGISTRY:
            for fmt in ExportFormat:
                filters = DEMO_PDF_FILTERS.get(export_type.name) if fmt is ExportFormat.pdf else None
                runs += 1
                try:
                    published = run_export(plan_request(export_type.name, fmt, {"filters": filters}), instance)
                except ExportFailed as refused:  # e.g. pdf above its row limit: the preflight says why
                    print(f"{export_type.name:<20} {fmt.value:<10} refused: {refused}")
                    continue
                shown = published.key.rsplit("/", 1)[-1] if folder else published.uri
                print(f"{export_type.name:<20} {fmt.value:<10} {published.rows:>8,} {human_bytes(published.bytes):>10} "
                      f"{published.seconds:>7.2f}  {shown}")
    print("\npdf holds at most 10,000 rows, so the demo filters its rows:")
    for name, narrowed in DEMO_PDF_FILTERS.items():
        print(f"  {name:<20} " + " ".join(f"{k}={v}" for k, v in narrowed.items()))
    print(DEMO_NEXT.format(runs=runs, folder=f"{_shown_path(folder)}/" if folder else "the bucket"))
    return 0


def _cmd_request(args: argparse.Namespace) -> int:
    params = _params(args)
    request_id = _client().request(  # planned there, once, as the sensor will plan the row
        args.type,
        args.format,
        filters=params.pop("filters"),
        columns=params.pop("columns"),
        options=params,
        requested_by=args.user,
        idempotency_key=args.idempotency_key,
    )
    print(request_id)
    return 0


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
        if row["status"] == "PENDING" and not self.hinted and time.monotonic() - self.since >= PENDING_HINT_SECONDS:
            self.hinted = True
            print(("\n" if self.interactive else "") +
                  f"hint: request {row['id']} is still PENDING after {PENDING_HINT_SECONDS} s, so no sensor has "
                  "picked it up: is the Dagster daemon running? Start it with `export-platform dev` (or see "
                  "`export-platform health`).", file=sys.stderr, flush=True)


def _cmd_status(args: argparse.Namespace) -> int:
    client = _client()
    if args.wait:
        interactive = sys.stdout.isatty()
        # Read at least every second: a line is due every PROGRESS_LINE_SECONDS even when nothing is announced.
        row = client.wait(args.id, on_update=_Follower(interactive), poll_seconds=1.0)
        if interactive:
            print()
    else:
        row = client.status(args.id)
        if row is None:
            raise _request_error("id", f"no export request {args.id}")
    print(_describe(row))
    return 0 if row["status"] != "FAILED" else 1


def _cmd_list(args: argparse.Namespace) -> int:
    rows = _client().list(args.user, args.page, args.page_size)
    print(f"{'id':>8}  {'type':<20} {'format':<8} {'user':<12} {'status':<16} {'rows':>10}  created")
    for row in rows:
        rows_text = f"{row['row_count']:,}" if row["row_count"] is not None else ""
        print(f"{row['id']:>8}  {row['export_type'][:20]:<20} {row['format'][:8]:<8} {str(row['requested_by'])[:12]:<12} "
              f"{row['status']:<16} {rows_text:>10}  {row['created_at']:%Y-%m-%d %H:%M:%S}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    if _client().cancel(args.id):
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
    raise _request_error("expires", f"expected a duration such as 90s, 30m, 1h or 7d, got {text!r}")


def _cmd_url(args: argparse.Namespace) -> int:
    client = _client()
    seconds = _seconds(args.expires)
    print(client.status_page_url(args.id, seconds) if args.page else client.fresh_url(args.id, seconds))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..delivery.server import serve

    _use_local_database("serve")
    serve(args.host, args.port, args.exit_with_parent, args.log_level)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from ..resources.storage import StorageError

    try:
        freed = _client().delete(args.id)
    except StorageError as error:
        print(f"error: {error}; request {args.id} is unchanged", file=sys.stderr)
        return 1
    print(f"deleted the file of request {args.id} ({freed:,} bytes freed)")
    return 0


def _api_key_store():
    from ..requests.store import RequestStore

    store = RequestStore(url=_local_database())
    store.migrate()  # the key table, where this database has none yet
    return store


def _token_secret_line(key_id: str, name: str) -> str:
    from ..links import LinkError, Signer
    from ..delivery.tokens import token_secret

    try:
        return token_secret(Signer.from_env(), key_id)
    except LinkError as error:
        return f"(not shown: {error}; then run `export-platform api-key token-secret {name}`)"


def _cmd_api_key_create(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from ..delivery.auth import check_user
    from ..requests import api_keys

    if (args.user is None) == (not args.trusted):
        raise _request_error("user", "give either --user USER (the key acts for that user) or --trusted (the key "
                             "names the user of each request)")
    user = check_user("user", args.user) if args.user is not None else None
    key, statement = api_keys.create(args.name, user, args.rate_per_minute)
    store = _api_key_store()
    try:
        store.run(statement)
    except sa.exc.IntegrityError:
        raise api_keys.ApiKeyError(f"a key named {args.name!r} exists already (`export-platform api-key list`)") from None
    acts_for = f"acts for {user}" if user else "trusted to name the user of each request"
    print(f"created API key {args.name} (id {key.key_id}): {acts_for}, {args.rate_per_minute} requests a minute\n"
          f"API key, for the application's back-end (shown once: the database keeps only its hash):\n"
          f"  {key.token}\n"
          f"token secret, to sign user tokens for browsers (docs/delivery.md):\n"
          f"  {_token_secret_line(key.key_id, args.name)}")
    return 0


def _cmd_api_key_list(args: argparse.Namespace) -> int:
    from ..requests import api_keys

    rows = _api_key_store().run(api_keys.listing()).all()
    if not rows:
        print("no API keys; create one with `export-platform api-key create NAME --user USER`")
        return 0
    print(f"{'name':<24} {'id':<12} {'acts for':<28} {'per min':>8}  {'created':<16}  revoked")
    for r in rows:
        revoked = f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "-"
        print(f"{r.name[:24]:<24} {r.key_id:<12} {(r.requested_by or '(trusted: any user)')[:28]:<28} "
              f"{r.rate_per_minute:>8}  {r.created_at:%Y-%m-%d %H:%M}  {revoked}")
    return 0


def _cmd_api_key_revoke(args: argparse.Namespace) -> int:
    from ..requests import api_keys

    revoked = _api_key_store().run(api_keys.revoke(args.name)).first()
    if revoked is None:
        print(f"no active API key named {args.name!r}; nothing revoked", file=sys.stderr)
        return 1
    print(f"revoked API key {revoked.name} (id {revoked.key_id}): it and its user tokens are refused from now on")
    return 0


def _cmd_api_key_token_secret(args: argparse.Namespace) -> int:
    from ..requests import api_keys

    from ..links import Signer
    from ..delivery.tokens import token_secret

    row = _api_key_store().run(api_keys.by_name(args.name)).first()
    if row is None:
        raise api_keys.ApiKeyError(f"no API key named {args.name!r}")
    print(token_secret(Signer.from_env(), row.key_id))
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    import dagster as dg

    from ..definitions import defs
    from ..run_failures import root_message
    from .instance import use_deployed_instance
    from ..ops.retention import cleanup_run_config

    use_deployed_instance()  # run history lives in the deployment's instance
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("retention_cleanup").execute_in_process(
            run_config={**cleanup_run_config(args.dry_run), **QUIET_LOGGERS}, instance=instance, raise_on_error=False
        )
    for event in result.all_events:
        failure = event.step_failure_data.user_failure_data if event.is_step_failure else None
        if event.event_type_value == "STEP_OUTPUT" or failure:
            metadata = (failure or event.step_output_data).metadata
            found = {k: v.value for k, v in metadata.items() if k != "dry_run"}
            print(f"{event.step_key:<30} " + " ".join(f"{k}={v:,}" for k, v in found.items()))
        if event.is_step_failure:
            print(f"{event.step_key:<30} failed: {root_message(event.step_failure_data.error)}", file=sys.stderr)
    if not result.success:
        return 1
    print("dry run: nothing was changed" if args.dry_run else "done")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from .health import check

    if _use_local_database("health"):
        from .instance import use_local_instance

        use_local_instance()
    problems, lines = check()
    print("\n".join(lines))
    return 1 if problems else 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(args.host, args.port, args.log_level, None if args.no_serve else args.serve, args.workers)


def _cmd_workers(args: argparse.Namespace) -> int:
    from ..resources.database_url import require_database_url
    from .instance import use_deployed_instance
    from ..workers.supervisor import serve

    require_database_url()  # every worker loads the code location, which needs it
    use_deployed_instance()
    serve(args.count, args.max_runs, args.grace_period)
    return 0


def _export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", help=f"the export type: {', '.join(REGISTRY.names())}")
    formats = ", ".join(f.value for f in ExportFormat)
    parser.add_argument("--format", default="csv", help=f"file format: {formats} (default csv)")
    parser.add_argument("--filter", action="append", default=[], metavar="NAME=VALUE",
                        help="a row filter of the type, e.g. country_code=US; NAME=a,b matches any of the values; "
                        "repeatable (docs/reference.md: the sample types' filters)")
    parser.add_argument("--columns", metavar="A,B,...", help="columns to export, in this order (default: all)")
    parser.add_argument("--delimiter", help="CSV field delimiter (default ,)")
    parser.add_argument("--quote-char", help='CSV quote character (default ")')
    parser.add_argument("--no-header", action="store_true", help="CSV without a header row")
    parser.add_argument("--order", choices=[o.value for o in RowOrder],
                        help="row order: key (the type's order_by, the same file every time) or none (as stored, read "
                        "by parallel streams: fastest); default: the type's")
    parser.add_argument(
        "--options",
        metavar="JSON",
        help='export options as in a request\'s params, e.g. \'{"csv": {"bom": true}, "time_zone": "Europe/Paris", '
        '"labels": {"email": "E-mail"}}\' (keys: labels, time_zone, formula_protection, csv, parquet, xlsx, pdf; '
        "docs/reference.md lists them)",
    )


def _id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", type=int, metavar="ID", help="the request's id, as `request` printed it")


def _show_help(parser: argparse.ArgumentParser):
    """A handler for a command group given no subcommand: its help, not an error."""

    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-platform",
        description="Turn 'give me this data as a file' into tracked, restartable Dagster runs.",
        epilog="Start with `export-platform demo`, then `export-platform dev`; `export-platform COMMAND --help` "
        "explains each command.",
    )
    parser.set_defaults(handler=_show_help(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {details}".strip())

    demo = command("demo", "seed sample data and export every sample type in every format",
                   "Uses the embedded Postgres unless EXPORT_PLATFORM_DATABASE_URL is set; the runs are recorded "
                   "in the Dagster instance, so `export-platform dev` shows them.")
    demo.add_argument("--rows", type=int, default=100_000, metavar="N", help="rows per sample type (default 100000)")
    demo.set_defaults(handler=_cmd_demo)

    db = command("db", "the database: its URL, its schema, stopping the embedded server")
    db.set_defaults(handler=_show_help(db))
    db_commands = db.add_subparsers(title="commands", metavar="COMMAND")
    db_commands.add_parser("url", help="print the database URL in use (starts the embedded Postgres if needed)",
                           description="Print the database URL in use: EXPORT_PLATFORM_DATABASE_URL, or the embedded "
                           "Postgres, started if needed.").set_defaults(handler=_cmd_db_url)
    db_commands.add_parser("migrate", help="create or upgrade the export_requests table (and the HTTP API's keys)",
                           description="Create or upgrade the export_requests table (and the HTTP API's key tables) of "
                           "EXPORT_PLATFORM_DATABASE_URL (a deploy step; never the embedded Postgres) and print its "
                           "schema version.").set_defaults(handler=_cmd_migrate)
    db_commands.add_parser("stop", help="stop the embedded Postgres (it keeps running after other commands)",
                           description="Stop the embedded Postgres under $EXPORT_PLATFORM_HOME/pgdata; the next "
                           "command starts it again. Its data stays.").set_defaults(handler=_cmd_db_stop)

    seed = command("seed", "replace the sample tables with N deterministic rows each",
                   "The same N always gives the same rows.")
    seed.add_argument("--rows", type=int, required=True, metavar="N", help="rows per sample table")
    seed.set_defaults(handler=_cmd_seed)

    run = command("run", "run an export type's job in this process and print where the file is",
                  "No daemon needed and no request row written; prints rows, bytes, seconds, sha256 and path.")
    _export_options(run)
    run.add_argument("--output", metavar="PATH",
                     help="write the file to this path instead of the storage folder; an existing file there is "
                     "replaced only once the new one is complete")
    run.add_argument("--chunks", type=int, default=1, metavar="N",
                     help="read as N parallel streams sharing one snapshot: with --order key, N key ranges (csv, "
                     "ndjson, parquet); with --order none, N page ranges, 1 (the default) choosing N from the "
                     "machine and the database")
    run.set_defaults(handler=_cmd_run)

    request = command("request", "ask for an export as an application does: insert an export_requests row",
                      "Prints the new request's id. A running `export-platform dev` (its request sensor) launches "
                      "the run; follow it with `export-platform status ID --wait`.")
    _export_options(request)
    request.add_argument("--user", help="who asks (requested_by): their files go to requests/USER/ and per-user "
                         "limits apply")
    request.add_argument("--idempotency-key", metavar="KEY",
                         help="a second request with the same key (and user) returns the first one's id")
    request.set_defaults(handler=_cmd_request)

    status = command("status", "show a request; with --wait, follow its progress to the end",
                     "Exits 1 when the request FAILED.")
    _id(status)
    status.add_argument("--wait", action="store_true", help="show progress until the request is finished")
    status.set_defaults(handler=_cmd_status)

    listing = command("list", "list requests, newest first")
    listing.add_argument("--user", help="only this requested_by")
    listing.add_argument("--page", type=int, default=1, metavar="N", help="page number, from 1 (default 1)")
    listing.add_argument("--page-size", type=int, default=20, metavar="N", help="requests per page (default 20)")
    listing.set_defaults(handler=_cmd_list)

    cancel = command("cancel", "cancel a pending, queued or running request",
                     "A running export's query is stopped and its temp file removed; the row ends CANCELLED.")
    _id(cancel)
    cancel.set_defaults(handler=_cmd_cancel)

    url = command("url", "mint a fresh signed download URL for a completed export")
    _id(url)
    url.add_argument("--expires", default="1h", metavar="DURATION", help="validity: 90s, 30m, 1h, 7d (default 1h)")
    url.add_argument("--page", action="store_true", help="the request's status page instead (any status)")
    url.set_defaults(handler=_cmd_url)

    serve = command("serve", "serve signed downloads of the local storage and the requests' status pages",
                    "Needs EXPORT_PLATFORM_SIGNING_KEY; uses EXPORT_PLATFORM_DATABASE_URL, else the embedded Postgres. "
                    "The code location needs the same key and EXPORT_PLATFORM_PUBLIC_URL (where this is reached) for "
                    "local exports to get a download_url (`export-platform dev` starts serve and sets both). See "
                    "docs/delivery.md.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="uvicorn's log level (default info: its start and stop; warning: problems only)")
    serve.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    serve.set_defaults(handler=_cmd_serve)

    delete = command("delete", "delete a completed export's file now (the row becomes EXPIRED)")
    _id(delete)
    delete.set_defaults(handler=_cmd_delete)

    api_key = command("api-key", "keys of the HTTP API (`serve`, /api/v1/): create, list, revoke",
                      "The database keeps a key's hash, never the key. See docs/delivery.md.")
    api_key.set_defaults(handler=_show_help(api_key))
    key_commands = api_key.add_subparsers(title="commands", metavar="COMMAND")
    create_key = key_commands.add_parser(
        "create", help="create a key for an application; prints the key and its token secret once",
        description="Create an API key for an application. It prints the key (for the application's back-end) and "
        "the token secret the back-end signs its users' browser tokens with; the database keeps neither.")
    create_key.add_argument("name", help="the application, e.g. billing-backend (letters, digits, . _ @ -)")
    acts_for = create_key.add_mutually_exclusive_group()
    acts_for.add_argument("--user", metavar="USER", help="the key acts for this requested_by only, e.g. alice@example.com")
    acts_for.add_argument("--trusted", action="store_true",
                          help="the key names the user (requested_by) of each request: a back-end acting for its users")
    create_key.add_argument("--rate-per-minute", type=int, default=600, metavar="N",
                            help="requests a minute the key may make, in bursts of up to N (default 600)")
    create_key.set_defaults(handler=_cmd_api_key_create)
    key_commands.add_parser("list", help="list the keys: name, id, user, rate, created, revoked",
                            description="List the API keys (never the keys themselves).").set_defaults(
                                handler=_cmd_api_key_list)
    revoke_key = key_commands.add_parser("revoke", help="revoke a key: it and its user tokens are refused at once",
                                         description="Revoke an API key by name or id; its requests stay.")
    revoke_key.add_argument("name", metavar="NAME_OR_ID", help="the key's name or id, as `api-key list` shows them")
    revoke_key.set_defaults(handler=_cmd_api_key_revoke)
    secret = key_commands.add_parser("token-secret", help="print a key's token secret again",
                                     description="Print the secret a key's user tokens are signed with; it follows "
                                     "from EXPORT_PLATFORM_SIGNING_KEY, so it changes when that key is rotated.")
    secret.add_argument("name", help="the key's name")
    secret.set_defaults(handler=_cmd_api_key_token_secret)

    cleanup = command("cleanup", "run the retention cleanup now (it also runs daily at 03:00 UTC)",
                      "Cleans the database of EXPORT_PLATFORM_DATABASE_URL, never the embedded Postgres, and records "
                      "the run in the instance of DAGSTER_HOME (required).")
    cleanup.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    cleanup.set_defaults(handler=_cmd_cleanup)

    command("health", "check the database, the daemon, the request sensor and the queue",
            "Exits 1 when something is wrong. Checks the database of EXPORT_PLATFORM_DATABASE_URL, else the "
            "embedded Postgres (started if needed), and the instance of DAGSTER_HOME (required).").set_defaults(handler=_cmd_health)

    workers = command("workers", "run the warm run-worker pool on its own (a deployment unit)",
                      "Keeps N long-lived workers, each with Dagster and the code location imported, taking runs "
                      "from the launch queue in Dagster's Postgres. Needs EXPORT_PLATFORM_DATABASE_URL and DAGSTER_HOME "
                      "(the deployment's dagster.yaml). See docs/deploy.md.")
    workers.add_argument("--count", type=int, metavar="N",
                         help="workers to keep alive (default: dagster.yaml's run_launcher workers)")
    workers.add_argument("--max-runs", type=int, metavar="K",
                         help="replace each worker after this many runs (default: dagster.yaml's)")
    workers.add_argument("--grace-period", type=float, metavar="S",
                         help="on SIGTERM or Ctrl-C, seconds each worker may take to finish its export "
                              "(default: dagster.yaml's run_launcher grace_period_seconds)")
    workers.set_defaults(handler=_cmd_workers)

    dev = command("dev", "start the Dagster UI, the daemon, the warm run workers and serve on this project's instance; "
                  "Ctrl-C stops them",
                  "Prints the UI's address once it answers. The daemon's request sensor launches a run for each "
                  "new export_requests row; serve delivers the files (signed links on the rows and the run pages). "
                  "The database keeps running: `export-platform db stop`.")
    dev.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=3000, help="port of the UI (default 3000)")
    dev.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                     help="Dagster's log level in this terminal (default warning; info shows every sensor tick)")
    dev.add_argument("--serve", type=int, default=8080, metavar="PORT",
                     help="the port of `serve` (default 8080), started with a development signing key")
    dev.add_argument("--no-serve", action="store_true", help="do not start `serve` (files then have no download link)")
    dev.add_argument("--workers", type=int, metavar="N",
                     help="warm run workers (default: one per core, at most 5, as free memory allows)")
    dev.set_defaults(handler=_cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ExportFailed as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # Imported only now: they pull in Polars and Dagster, which `--help` must not wait for.
        import psycopg

        from ..requests.client import Refused
        from ..links import LinkError
        from ..planning.plan import RequestError
        from ..requests.api_keys import ApiKeyError
        from ..requests.table import SchemaMismatch
        from ..resources.database_url import DatabaseUrlMissing
        from ..resources.storage import StorageError
        from .instance import InstanceMissing

        if isinstance(error, (RequestError, LinkError, DatabaseUrlMissing, InstanceMissing, ApiKeyError)):
            print(f"error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, Refused):
            print(f"refused: {error}", file=sys.stderr)
            return 1
        if isinstance(error, (SchemaMismatch, StorageError, LookupError, TimeoutError)):
            print(f"error: {error}", file=sys.stderr)
            return 1
        if isinstance(error, psycopg.OperationalError):
            print(f"error: cannot reach the database: {plain(str(error))}", file=sys.stderr)
            return 1
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {plain(str(error)) or type(error).__name__} ({TRACEBACK_ENV}=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
