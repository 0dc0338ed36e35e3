"""The `export-platform` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import dagster as dg


from .embedded_postgres import database_url
from .errors import root_message
from .export_types import REGISTRY
from .formats import ExportFormat
from .jobs import run_config_for
from .ops.export import PublishedExport
from .client import Refused
from .planning import ExportPlan, RequestError, check_chunks, export_type_named, plan_export, plan_request

# The command prints its own result or error; Dagster's event log stays in the run record.
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# pdf holds at most 10,000 rows: the demo narrows each sample type to about that many.
DEMO_PDF_FILTERS = {
    "users": {"signup_date_from": "2015-01-01", "signup_date_to": "2015-01-31"},
    "ezpass_transactions": {"from_posting_date": "2024-01-01", "to_posting_date": "2024-01-01"},
    "ledger_postings": {"from_posting_date": "2023-01-01", "to_posting_date": "2023-01-01"},
}


class ExportFailed(RuntimeError):
    pass


def run_export(plan: ExportPlan) -> PublishedExport:
    """Execute the export type's Dagster job in this process and return what it published."""
    from .definitions import defs  # importing the code location is the slow part; only when needed

    job = defs.resolve_job_def(f"export_{plan.export_type}")
    result = job.execute_in_process(run_config={**run_config_for(plan), **QUIET_LOGGERS}, raise_on_error=False)
    if not result.success:
        failures = [root_message(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
        raise ExportFailed("; ".join(failures) or "the run failed")
    return result.output_for_node("publish_export")


def _filters(pairs: Sequence[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise RequestError("filters", f"expected --filter name=value, got {pair!r}")
        # A repeated filter adds values, as `name=a,b` does.
        filters[name] = f"{filters[name]},{value}" if name in filters else value
    return filters


def _params(args: argparse.Namespace) -> dict:
    """The request's params, as an application would store them: --options, then the CSV flags."""
    try:
        params = json.loads(args.options) if args.options else {}
    except ValueError:
        raise RequestError("options", "expected a JSON object such as '{\"csv\": {\"bom\": true}}'") from None
    if not isinstance(params, dict) or {"filters", "columns"} & set(params):
        raise RequestError("options", "expected a JSON object of export options (filters and columns have their own flags)")
    flags = {"delimiter": args.delimiter, "quote_char": args.quote_char, "header": False if args.no_header else None}
    csv = {k: v for k, v in flags.items() if v is not None}
    if csv:
        params["csv"] = {**(params.get("csv") or {}), **csv}
    return {"filters": _filters(args.filter), "columns": args.columns, **params}


def _plan_from_args(args: argparse.Namespace) -> ExportPlan:
    plan = plan_request(args.type, args.format, _params(args))
    chunks = check_chunks(export_type_named(args.type), plan.format, args.chunks)
    return replace(plan, output_path=args.output, chunks=chunks)


def _cmd_run(args: argparse.Namespace) -> int:
    plan = _plan_from_args(args)
    published = run_export(plan)
    print(
        f"rows={published.rows} bytes={published.bytes} seconds={published.seconds:.2f} "
        f"sha256={published.sha256} path={published.uri.removeprefix('file://')}"
    )
    return 0


def _cmd_db(args: argparse.Namespace) -> int:
    print(database_url())
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .resources.requests import RequestStore

    print(f"export_requests is at schema version {RequestStore().migrate()}")
    return 0


def _seed(rows: int) -> float:
    import psycopg

    from .sample_data import seed

    started = time.monotonic()
    with psycopg.connect(database_url(), autocommit=True) as conn:
        seed(conn, rows)
    return time.monotonic() - started


def _cmd_seed(args: argparse.Namespace) -> int:
    seconds = _seed(args.rows)
    print(f"seeded {args.rows:,} rows into each of {', '.join(REGISTRY.names())} in {seconds:.1f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    print(f"database: {database_url()}")
    print(f"seeded {args.rows:,} rows per sample type in {_seed(args.rows):.1f} s")
    header = f"{'type':<22}{'format':<11}{'rows':>10}{'bytes':>14}{'seconds':>9}  path"
    print(header)
    print("-" * len(header))
    for export_type in REGISTRY:
        for fmt in ExportFormat:
            filters = DEMO_PDF_FILTERS.get(export_type.name) if fmt is ExportFormat.pdf else None
            try:
                published = run_export(plan_export(export_type.name, fmt, filters))
            except ExportFailed as refused:  # e.g. pdf above its row limit: the preflight says why
                print(f"{export_type.name:<22}{fmt.value:<11}refused: {refused}")
                continue
            print(
                f"{export_type.name:<22}{fmt.value:<11}{published.rows:>10,}{published.bytes:>14,}"
                f"{published.seconds:>9.2f}  {published.uri.removeprefix('file://')}"
            )
    return 0


def _cmd_request(args: argparse.Namespace) -> int:
    from .client import ExportClient

    params = _params(args)
    plan = plan_request(args.type, args.format, params)
    request_id = ExportClient().request(
        args.type,
        args.format,
        filters=params.pop("filters"),
        columns=list(plan.columns) if params.pop("columns") else None,
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
              "file_uri", "file_bytes", "sha256", "download_url", "expires_at", "error", "run_id",
              "created_at", "started_at", "finished_at"]
    return "\n".join(f"{name:>13}: {row[name]}" for name in fields if row.get(name) is not None)


def _cmd_status(args: argparse.Namespace) -> int:
    from .client import ExportClient

    client = ExportClient()
    if args.wait:
        interactive = sys.stdout.isatty()
        row = client.wait(args.id, on_update=lambda r: print("\r" + _progress_line(r), end="", flush=True)
                          if interactive else None)
        if interactive:
            print()
    else:
        row = client.status(args.id)
        if row is None:
            raise RequestError("id", f"no export request {args.id}")
    print(_describe(row))
    return 0 if row["status"] != "FAILED" else 1


def _cmd_list(args: argparse.Namespace) -> int:
    from .client import ExportClient

    rows = ExportClient().list(args.user, args.page, args.page_size)
    print(f"{'id':>8}  {'type':<20} {'format':<8} {'user':<12} {'status':<16} {'rows':>10}  created")
    for row in rows:
        rows_text = f"{row['row_count']:,}" if row["row_count"] is not None else ""
        print(f"{row['id']:>8}  {row['export_type'][:20]:<20} {row['format'][:8]:<8} {str(row['requested_by'])[:12]:<12} "
              f"{row['status']:<16} {rows_text:>10}  {row['created_at']:%Y-%m-%d %H:%M:%S}")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from .client import ExportClient

    if ExportClient().cancel(args.id):
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
    raise RequestError("expires", f"expected a duration such as 90s, 30m, 1h or 7d, got {text!r}")


def _cmd_url(args: argparse.Namespace) -> int:
    from .client import ExportClient

    print(ExportClient().fresh_url(args.id, _seconds(args.expires)))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from .client import ExportClient

    print(f"deleted the file of request {args.id} ({ExportClient().delete(args.id):,} bytes freed)")
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    import os

    from .definitions import defs
    from .instance import prepare_dagster_home
    from .ops.retention import cleanup_run_config

    os.environ.update(prepare_dagster_home())  # run history lives in the real instance
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("retention_cleanup").execute_in_process(
            run_config={**cleanup_run_config(args.dry_run), **QUIET_LOGGERS}, instance=instance
        )
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            found = {k: v.value for k, v in event.step_output_data.metadata.items() if k != "dry_run"}
            print(f"{event.step_key:<28} " + " ".join(f"{k}={v:,}" for k, v in found.items()))
    print("dry run: nothing was changed" if args.dry_run else "done")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from .health import check

    problems, lines = check()
    print("\n".join(lines))
    return 1 if problems else 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from .dev import serve

    return serve(args.host, args.port)


def _cmd_workers(args: argparse.Namespace) -> int:
    import os

    from .instance import prepare_dagster_home
    from .workers.supervisor import serve

    os.environ.update(prepare_dagster_home())
    serve(args.count, args.max_runs)
    return 0


def _export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", help=f"export type: {', '.join(REGISTRY.names())}")
    formats = ", ".join(f.value for f in ExportFormat)
    parser.add_argument("--format", default="csv", help=f"{formats} (default csv)")
    parser.add_argument("--filter", action="append", default=[], metavar="NAME=VALUE",
                        help="a filter; a list is NAME=a,b; repeatable")
    parser.add_argument("--columns", help="comma-separated columns, in order (default: all)")
    parser.add_argument("--delimiter", help="CSV delimiter (default ,)")
    parser.add_argument("--quote-char", help='CSV quote character (default ")')
    parser.add_argument("--no-header", action="store_true", help="CSV without a header row")
    parser.add_argument(
        "--options",
        metavar="JSON",
        help='export options as in a request\'s params, e.g. \'{"csv": {"bom": true}, "time_zone": "Europe/Paris", '
        '"labels": {"email": "E-mail"}}\' (keys: labels, time_zone, formula_protection, csv, parquet, xlsx, pdf)',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-platform", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="embedded Postgres, sample data, one export per format")
    demo.add_argument("--rows", type=int, default=100_000, help="rows per sample type (default 100000)")
    demo.set_defaults(handler=_cmd_demo)

    db = commands.add_parser("db", help="database commands")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("url", help="print the database URL in use").set_defaults(handler=_cmd_db)
    db_commands.add_parser("migrate", help="create or upgrade the export_requests table").set_defaults(
        handler=_cmd_migrate
    )

    seed = commands.add_parser("seed", help="replace the sample tables with N deterministic rows each")
    seed.add_argument("--rows", type=int, required=True)
    seed.set_defaults(handler=_cmd_seed)

    run = commands.add_parser("run", help="run an export type's job in this process")
    _export_options(run)
    run.add_argument("--output", help="write the file to this path instead of the storage folder")
    run.add_argument("--chunks", type=int, default=1, metavar="N",
                     help="read the type's key range as N parallel streams sharing one snapshot (csv, ndjson, "
                     "parquet; default 1)")
    run.set_defaults(handler=_cmd_run)

    request = commands.add_parser("request", help="insert a row into export_requests; prints its id")
    _export_options(request)
    request.add_argument("--user", help="requested_by")
    request.add_argument("--idempotency-key", help="a second request with the same key (and user) is not created")
    request.set_defaults(handler=_cmd_request)

    status = commands.add_parser("status", help="show a request; --wait follows it to the end")
    status.add_argument("id", type=int)
    status.add_argument("--wait", action="store_true", help="show progress until the request is finished")
    status.set_defaults(handler=_cmd_status)

    listing = commands.add_parser("list", help="list requests, newest first")
    listing.add_argument("--user")
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--page-size", type=int, default=20)
    listing.set_defaults(handler=_cmd_list)

    cancel = commands.add_parser("cancel", help="cancel a pending, queued or running request")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(handler=_cmd_cancel)

    url = commands.add_parser("url", help="mint a fresh signed download URL for a completed export")
    url.add_argument("id", type=int)
    url.add_argument("--expires", default="1h", help="validity: 90s, 30m, 1h, 7d (default 1h)")
    url.set_defaults(handler=_cmd_url)

    delete = commands.add_parser("delete", help="delete a completed export's file (the row becomes EXPIRED)")
    delete.add_argument("id", type=int)
    delete.set_defaults(handler=_cmd_delete)

    cleanup = commands.add_parser("cleanup", help="run the retention cleanup now")
    cleanup.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    cleanup.set_defaults(handler=_cmd_cleanup)

    commands.add_parser("health", help="database, daemon, request sensor, queue depth").set_defaults(
        handler=_cmd_health
    )

    workers = commands.add_parser("workers", help="the warm run-worker pool on its own (a deployment unit)")
    workers.add_argument("--count", type=int, help="workers to keep alive (default: dagster.yaml's run_launcher workers)")
    workers.add_argument("--max-runs", type=int, help="replace each worker after this many runs (default: dagster.yaml's)")
    workers.set_defaults(handler=_cmd_workers)

    dev = commands.add_parser("dev", help="Dagster webserver + daemon + run workers on this project's instance")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(handler=_cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except RequestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExportFailed as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    except Refused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
