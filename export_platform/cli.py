"""The `export-platform` command."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


from .config import CsvOptions
from .embedded_postgres import database_url
from .export_types import REGISTRY
from .formats import ExportFormat
from .jobs import run_config_for
from .ops.export import PublishedExport
from .planning import ExportPlan, RequestError, plan_export

QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class ExportFailed(RuntimeError):
    pass


def run_export(plan: ExportPlan) -> PublishedExport:
    """Execute the export type's Dagster job in this process and return what it published."""
    from .definitions import defs  # importing the code location is the slow part; only when needed

    job = defs.resolve_job_def(f"export_{plan.export_type}")
    result = job.execute_in_process(run_config={**run_config_for(plan), **QUIET_LOGGERS}, raise_on_error=False)
    if not result.success:
        failures = [e.step_failure_data.error.message.strip() for e in result.all_events if e.is_step_failure]
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


def _plan_from_args(args: argparse.Namespace) -> ExportPlan:
    csv = CsvOptions(delimiter=args.delimiter, quote_char=args.quote_char, header=not args.no_header)
    return plan_export(args.type, args.format, _filters(args.filter), args.columns, csv, args.output)


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
    header = f"{'type':<22}{'format':<9}{'rows':>10}{'bytes':>14}{'seconds':>9}  path"
    print(header)
    print("-" * len(header))
    for export_type in REGISTRY:
        for fmt in ExportFormat:
            published = run_export(plan_export(export_type.name, fmt))
            print(
                f"{export_type.name:<22}{fmt.value:<9}{published.rows:>10,}{published.bytes:>14,}"
                f"{published.seconds:>9.2f}  {published.uri.removeprefix('file://')}"
            )
    return 0


def _export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", help=f"export type: {', '.join(REGISTRY.names())}")
    parser.add_argument("--format", default="csv", help="csv, csv.gz, parquet or ndjson (default csv)")
    parser.add_argument("--filter", action="append", default=[], metavar="NAME=VALUE",
                        help="a filter; a list is NAME=a,b; repeatable")
    parser.add_argument("--columns", help="comma-separated columns, in order (default: all)")
    parser.add_argument("--delimiter", default=",", help="CSV delimiter (default ,)")
    parser.add_argument("--quote-char", default='"', help='CSV quote character (default ")')
    parser.add_argument("--no-header", action="store_true", help="CSV without a header row")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-platform", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="embedded Postgres, sample data, one export per format")
    demo.add_argument("--rows", type=int, default=100_000, help="rows per sample type (default 100000)")
    demo.set_defaults(handler=_cmd_demo)

    db = commands.add_parser("db", help="database commands")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("url", help="print the database URL in use").set_defaults(handler=_cmd_db)

    seed = commands.add_parser("seed", help="replace the sample tables with N deterministic rows each")
    seed.add_argument("--rows", type=int, required=True)
    seed.set_defaults(handler=_cmd_seed)

    run = commands.add_parser("run", help="run an export type's job in this process")
    _export_options(run)
    run.add_argument("--output", help="write the file to this path instead of the storage folder")
    run.set_defaults(handler=_cmd_run)
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


if __name__ == "__main__":
    sys.exit(main())
