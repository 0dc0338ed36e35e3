"""The command line's grammar: every command, option and help text (docs/reference.md lists them).
The handlers live in one module per area; this module and those import only the standard library,
the registry and the error family, so `--help` answers at once."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ...catalog.export_types import REGISTRY
from ...catalog.formats import ExportFormat
from ...catalog.registry import RowOrder
from . import exports, follow, keys, operate

# command(name, summary, details=""): a new subcommand, its description the summary and details.
Command = Callable[..., argparse.ArgumentParser]


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


def _listen_on(parser: argparse.ArgumentParser, port: int, host_help: str, port_help: str, log_level: str,
               log_help: str) -> None:
    """--host, --port and --log-level of a command that serves (serve, dev)."""
    parser.add_argument("--host", default="127.0.0.1", help=f"{host_help} (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"{port_help} (default {port})")
    parser.add_argument("--log-level", default=log_level, choices=["debug", "info", "warning", "error"], help=log_help)


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

    for add in (_local, _exports, _following, _delivery, _operations):
        add(command)
    return parser


def _local(command: Command) -> None:
    """The local start: demo, the database, sample data."""
    demo = command("demo", "seed sample data and export every sample type in every format",
                   "Uses the embedded Postgres unless EXPORT_PLATFORM_DATABASE_URL is set; the runs are recorded "
                   "in the Dagster instance, so `export-platform dev` shows them.")
    demo.add_argument("--rows", type=int, default=100_000, metavar="N", help="rows per sample type (default 100000)")
    demo.set_defaults(handler=exports.cmd_demo)

    db = command("db", "the database: its URL, its schema, stopping the embedded server")
    db.set_defaults(handler=_show_help(db))
    db_commands = db.add_subparsers(title="commands", metavar="COMMAND")
    db_commands.add_parser("url", help="print the database URL in use (starts the embedded Postgres if needed)",
                           description="Print the database URL in use: EXPORT_PLATFORM_DATABASE_URL, or the embedded "
                           "Postgres, started if needed.").set_defaults(handler=operate.cmd_db_url)
    db_commands.add_parser("migrate", help="create or upgrade the export_requests table (and the HTTP API's keys)",
                           description="Create or upgrade the export_requests table (and the HTTP API's key tables) of "
                           "EXPORT_PLATFORM_DATABASE_URL (a deploy step; never the embedded Postgres) and print its "
                           "schema version.").set_defaults(handler=operate.cmd_migrate)
    db_commands.add_parser("stop", help="stop the embedded Postgres (it keeps running after other commands)",
                           description="Stop the embedded Postgres under $EXPORT_PLATFORM_HOME/pgdata; the next "
                           "command starts it again. Its data stays.").set_defaults(handler=operate.cmd_db_stop)

    seed = command("seed", "replace the sample tables with N deterministic rows each",
                   "The same N always gives the same rows.")
    seed.add_argument("--rows", type=int, required=True, metavar="N", help="rows per sample table")
    seed.set_defaults(handler=exports.cmd_seed)


def _exports(command: Command) -> None:
    """Exports: a run in this process, or a request row."""
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
    run.set_defaults(handler=exports.cmd_run)

    request = command("request", "ask for an export as an application does: insert an export_requests row",
                      "Prints the new request's id. A running `export-platform dev` (its request sensor) launches "
                      "the run; follow it with `export-platform status ID --wait`.")
    _export_options(request)
    request.add_argument("--user", help="who asks (requested_by): their files go to requests/USER/ and per-user "
                         "limits apply")
    request.add_argument("--idempotency-key", metavar="KEY",
                         help="a second request with the same key (and user) returns the first one's id")
    request.set_defaults(handler=exports.cmd_request)


def _following(command: Command) -> None:
    """A request once made: its status, the list, cancel, a fresh link, delete."""
    status = command("status", "show a request; with --wait, follow its progress to the end",
                     "Exits 1 when the request FAILED.")
    _id(status)
    status.add_argument("--wait", action="store_true", help="show progress until the request is finished")
    status.set_defaults(handler=follow.cmd_status)

    listing = command("list", "list requests, newest first")
    listing.add_argument("--user", help="only this requested_by")
    listing.add_argument("--page", type=int, default=1, metavar="N", help="page number, from 1 (default 1)")
    listing.add_argument("--page-size", type=int, default=20, metavar="N", help="requests per page (default 20)")
    listing.set_defaults(handler=follow.cmd_list)

    cancel = command("cancel", "cancel a pending, queued or running request",
                     "A running export's query is stopped and its temp file removed; the row ends CANCELLED.")
    _id(cancel)
    cancel.set_defaults(handler=follow.cmd_cancel)

    url = command("url", "mint a fresh signed download URL for a completed export")
    _id(url)
    url.add_argument("--expires", default="1h", metavar="DURATION", help="validity: 90s, 30m, 1h, 7d (default 1h)")
    url.add_argument("--page", action="store_true", help="the request's status page instead (any status)")
    url.set_defaults(handler=follow.cmd_url)

    delete = command("delete", "delete a completed export's file now (the row becomes EXPIRED)")
    _id(delete)
    delete.set_defaults(handler=follow.cmd_delete)


def _delivery(command: Command) -> None:
    """Delivery: `serve` and the keys of its HTTP API."""
    serve = command("serve", "serve signed downloads of the local storage and the requests' status pages",
                    "Needs EXPORT_PLATFORM_SIGNING_KEY; uses EXPORT_PLATFORM_DATABASE_URL, else the embedded Postgres. "
                    "The code location needs the same key and EXPORT_PLATFORM_PUBLIC_URL (where this is reached) for "
                    "local exports to get a download_url (`export-platform dev` starts serve and sets both). See "
                    "docs/delivery.md.")
    _listen_on(serve, 8080, "address to listen on", "port to listen on", "info",
               "uvicorn's log level (default info: its start and stop; warning: problems only)")
    serve.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    serve.set_defaults(handler=operate.cmd_serve)

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
    create_key.set_defaults(handler=keys.cmd_api_key_create)
    key_commands.add_parser("list", help="list the keys: name, id, user, rate, created, revoked",
                            description="List the API keys (never the keys themselves).").set_defaults(
                                handler=keys.cmd_api_key_list)
    revoke_key = key_commands.add_parser("revoke", help="revoke a key: it and its user tokens are refused at once",
                                         description="Revoke an API key by name or id; its requests stay.")
    revoke_key.add_argument("name", metavar="NAME_OR_ID", help="the key's name or id, as `api-key list` shows them")
    revoke_key.set_defaults(handler=keys.cmd_api_key_revoke)
    secret = key_commands.add_parser("token-secret", help="print a key's token secret again",
                                     description="Print the secret a key's user tokens are signed with; it follows "
                                     "from EXPORT_PLATFORM_SIGNING_KEY, so it changes when that key is rotated.")
    secret.add_argument("name", help="the key's name")
    secret.set_defaults(handler=keys.cmd_api_key_token_secret)


def _operations(command: Command) -> None:
    """Running the platform: cleanup, health, the worker pool, everything at once."""
    cleanup = command("cleanup", "run the retention cleanup now (it also runs daily at 03:00 UTC)",
                      "Cleans the database of EXPORT_PLATFORM_DATABASE_URL, never the embedded Postgres, and records "
                      "the run in the instance of DAGSTER_HOME (required).")
    cleanup.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    cleanup.set_defaults(handler=operate.cmd_cleanup)

    command("health", "check the database, the daemon, the request sensor and the queue",
            "Exits 1 when something is wrong. Checks the database of EXPORT_PLATFORM_DATABASE_URL, else the "
            "embedded Postgres (started if needed), and the instance of DAGSTER_HOME (required).").set_defaults(handler=operate.cmd_health)

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
    workers.set_defaults(handler=operate.cmd_workers)

    dev = command("dev", "start the Dagster UI, the daemon, the warm run workers and serve on this project's instance; "
                  "Ctrl-C stops them",
                  "Prints the UI's address once it answers. The daemon's request sensor launches a run for each "
                  "new export_requests row; serve delivers the files (signed links on the rows and the run pages). "
                  "The database keeps running: `export-platform db stop`.")
    _listen_on(dev, 3000, "address the UI listens on", "port of the UI", "warning",
               "Dagster's log level in this terminal (default warning; info shows every sensor tick)")
    dev.add_argument("--serve", type=int, default=8080, metavar="PORT",
                     help="the port of `serve` (default 8080), started with a development signing key")
    dev.add_argument("--no-serve", action="store_true", help="do not start `serve` (files then have no download link)")
    dev.add_argument("--workers", type=int, metavar="N",
                     help="warm run workers (default: one per core, at most 5, as free memory allows)")
    dev.set_defaults(handler=operate.cmd_dev)

