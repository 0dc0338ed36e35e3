"""Exports from the command line: `run` (a job in this process), `request` (a row, as an application
inserts it), `seed` and `demo` (sample data, and every type in every format)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...catalog.export_types import REGISTRY
from ...catalog.formats import ExportFormat
from ...errors import ExportFailed
from .common import QUIET_LOGGERS, bad_option, local_database, plain, quiet_dagster_warnings, request_client

if TYPE_CHECKING:
    from ...ops.publish import PublishedExport
    from ...planning.plan import ExportPlan

# pdf holds at most 10,000 rows: the demo narrows each sample type to about that many.
DEMO_PDF_FILTERS = {
    "users": {"signup_date_from": "2015-01-01", "signup_date_to": "2015-01-31"},
    "ezpass_transactions": {"from_posting_date": "2024-01-01", "to_posting_date": "2024-01-01"},
    "ledger_postings": {"from_posting_date": "2023-01-01", "to_posting_date": "2023-01-01"},
}


def run_export(plan: ExportPlan, instance=None) -> PublishedExport:
    """Execute the export type's Dagster job in this process and return what it published; with an
    `instance`, the run is recorded there (and shows in the UI). The plan's output path is the
    command line's own: this run may write there (Launchpad runs may not, docs/reference.md)."""
    quiet_dagster_warnings()
    from ...definitions import defs  # importing the code location is the slow part; only when needed
    from ...run_failures import root_message
    from ...jobs import run_config_for
    from ...resources.storage import OUTPUT_FOLDERS_ENV

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


def _filters(pairs: Sequence[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise bad_option("filters", f"expected --filter name=value, got {pair!r}")
        # A repeated filter adds values, as `name=a,b` does.
        filters[name] = f"{filters[name]},{value}" if name in filters else value
    return filters


def _params(args: argparse.Namespace) -> dict:
    """The request's params, as an application would store them: --options, then the CSV flags."""
    try:
        params = json.loads(args.options) if args.options else {}
    except ValueError:
        raise bad_option("options", "expected a JSON object such as '{\"csv\": {\"bom\": true}}'") from None
    if not isinstance(params, dict) or {"filters", "columns"} & set(params):
        raise bad_option(
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
    from ...planning.plan import plan_request

    return plan_request(args.type, args.format, _params(args), output_path=args.output, chunks=args.chunks)


def cmd_run(args: argparse.Namespace) -> int:
    from ...resources.storage import file_uri_path

    plan = _plan_from_args(args)
    local_database()  # after the plan: a bad request is refused without starting a database
    published = run_export(plan)
    print(
        f"rows={published.rows} bytes={published.bytes} seconds={published.seconds:.2f} "
        f"sha256={published.sha256} path={file_uri_path(published.uri) or published.uri}"
    )
    return 0


def _seed(rows: int) -> float:
    import psycopg

    from ..sample_data import seed

    started = time.monotonic()
    with psycopg.connect(local_database(), autocommit=True) as conn:
        seed(conn, rows)
    return time.monotonic() - started


def cmd_seed(args: argparse.Namespace) -> int:
    seconds = _seed(args.rows)
    print(f"seeded {args.rows:,} rows into each of {', '.join(REGISTRY.names())} in {seconds:.1f} s")
    return 0


def _demo_folder() -> Path | None:
    """The local folder the demo's files go to (None for S3 storage)."""
    from ...resources.storage import STORAGE_URL_ENV, LocalStorage, storage_for

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


def cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from ..instance import prepare_dagster_home
    from ...planning.plan import plan_request
    from ...units import human_bytes
    from ...requests.store import RequestStore

    url = local_database()
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


def cmd_request(args: argparse.Namespace) -> int:
    params = _params(args)
    request_id = request_client().request(  # planned there, once, as the sensor will plan the row
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

