"""Running the platform: the database (`db url`, `db stop`, `db migrate`), `serve`, `dev`, `workers`,
`health` and `cleanup`. Each imports what it starts only when it runs."""

from __future__ import annotations

import argparse
import os
import sys

from .common import QUIET_LOGGERS, local_database, use_local_database

def cmd_db_url(args: argparse.Namespace) -> int:
    print(local_database())
    return 0


def cmd_db_stop(args: argparse.Namespace) -> int:
    from ...resources.database_url import DATABASE_URL_ENV
    from ..embedded_postgres import stop_embedded

    if os.environ.get(DATABASE_URL_ENV):
        print(f"{DATABASE_URL_ENV} is set: that server is not the embedded one; nothing stopped")
        return 0
    print("stopped the embedded Postgres" if stop_embedded() else "the embedded Postgres is not running")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from ...resources.database_url import require_database_url
    from ...requests.store import RequestStore

    # A deploy step: the configured database only, never the embedded one.
    print(f"export_requests is at schema version {RequestStore(url=require_database_url()).migrate()}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ...delivery.server import serve

    use_local_database("serve")
    serve(args.host, args.port, args.exit_with_parent, args.log_level)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    import dagster as dg

    from ...definitions import defs
    from ...run_failures import root_message
    from ..instance import use_deployed_instance
    from ...ops.retention import cleanup_run_config

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


def cmd_health(args: argparse.Namespace) -> int:
    from ..health import check

    if use_local_database("health"):
        from ..instance import use_local_instance

        use_local_instance()
    problems, lines = check()
    print("\n".join(lines))
    return 1 if problems else 0


def cmd_dev(args: argparse.Namespace) -> int:
    from ..dev import run_dev

    return run_dev(args.host, args.port, args.log_level, None if args.no_serve else args.serve, args.workers)


def cmd_workers(args: argparse.Namespace) -> int:
    from ...resources.database_url import require_database_url
    from ..instance import use_deployed_instance
    from ...workers.supervisor import serve

    require_database_url()  # every worker loads the code location, which needs it
    use_deployed_instance()
    serve(args.count, args.max_runs, args.grace_period)
    return 0

