"""The extract step: count and stream the plan's rows from one snapshot into the run's temp file,
reporting progress; a lost connection is retried from a fresh snapshot."""

import threading
import time
from collections.abc import Callable

import dagster as dg

from ..dagster_compat import MAX_RUNTIME_MESSAGE, failure_without_traceback
from ..naming import request_id_of, session_name
from ..planning.plan import ExportPlan
from ..planning.streams import Reading
from ..requests import table as rt
from ..requests.store import RequestStore
from ..resources.postgres import ConnectionLost, PostgresResource, is_connection_error
from ..resources.storage import ExportStorage
from ..sinks import digest_of
from ..sinks.parts import sink_streams
from ..sinks.server_csv import write_server_csv
from .staging import StagedFile, discard_staging, temp_path

PROGRESS_INTERVAL_SECONDS = 1.0
EXTRACT_RETRIES = 2


class Progress:
    """Reports streamed rows (to the run log and the request row) at most once per interval,
    whatever the batch size; with several streams, their sum. As one chunk of many (`chunk`), it
    adds this chunk's rows to the request row, which the other chunks' processes update too."""

    def __init__(self, context: dg.OpExecutionContext, expected: int, requests: RequestStore, chunk: int | None = None):
        self.context, self.expected, self.requests, self.chunk = context, expected, requests, chunk
        self.request_id = request_id_of(context.run.tags)
        self.last, self.rows, self.reported = time.monotonic(), 0, 0
        self.streams: dict[int, int] = {}
        self.lock = threading.Lock()
        if self.request_id is not None and chunk is None:
            requests.run(rt.set_total(self.request_id, expected))

    def stream(self, index: int) -> Callable[[int], None]:
        """The callback for stream `index`, which counts its own rows."""

        def on_rows(rows: int) -> None:
            with self.lock:
                self.streams[index] = rows
                self(sum(self.streams.values()))

        return on_rows

    def __call__(self, rows: int) -> None:
        self.rows = rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL_SECONDS:
            self.last = now
            pct = 100.0 * rows / self.expected if self.expected else 100.0
            prefix = f"chunk {self.chunk}: " if self.chunk is not None else ""
            self.context.log.info(f"{prefix}streamed {rows:,} of {self.expected:,} rows ({pct:.0f}%)")
            self._report(rows - self.reported, pct)
            self.reported = rows

    def _report(self, new_rows: int, pct: float) -> None:
        if self.request_id is None:
            return
        if self.chunk is None:
            self.requests.run(rt.set_progress(self.request_id, self.rows, min(pct, 100.0)))
        else:
            self.requests.run(rt.add_progress(self.request_id, new_rows))

    def withdraw(self) -> None:
        """Take back what a failed chunk reported, before it is retried."""
        if self.chunk is not None and self.reported:
            self._report(-self.reported, 0.0)
            self.reported = 0


def stopped(context: dg.OpExecutionContext) -> str | None:
    """Why the run is being stopped on request (terminated from the UI, by a request's cancel, or by
    run monitoring at its maximum runtime), or None when it is not: the interrupt, or the cancelled
    query, that then ends a step is no failure of the export, and its event says so."""
    try:
        run = context.instance.get_run_by_id(context.run_id)
        if run is None or run.status not in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            return None
        asked = [r.user_message for r in context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.RUN_CANCELING)]
    except Exception:  # Dagster's storage unreachable: not a stop this step can tell
        return None
    # Run monitoring says why ("Canceling due to exceeding maximum runtime of 60 seconds."); a cancel does not.
    why = next((m.rstrip(".") for m in asked if m.startswith(MAX_RUNTIME_MESSAGE)), "cancelled")
    return f"stopped before the export finished ({why}): nothing was published"


def connection_lost(error: BaseException) -> bool:
    """A dropped connection is worth another attempt (the file restarts from a fresh snapshot); a
    cancelled query or bad data is not."""
    return isinstance(error, ConnectionLost) or is_connection_error(error)


@dg.op(
    description="Count and stream the rows from one Postgres snapshot into a temp file: with chunks > 1, as "
    "that many parallel streams over key ranges, on connections sharing the snapshot."
)
def extract_export(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    postgres: PostgresResource,
    storage: ExportStorage,
    requests: RequestStore,
) -> StagedFile:
    started = time.time()  # wall clock: publish may run in another process
    path = temp_path(context, plan, storage)
    try:
        name = session_name(context.run_id)
        reading = Reading.of(plan, plan.chunks, cap=postgres.max_streams)
        # In key order the writer is faster than the server's CSV (10M rows on 2 cores: 9.6 s against
        # 12.3 s in one process); in no order it is as fast and the server's CSV takes 190 MB, not 310.
        server_csv = postgres.server_csv and not plan.ordered
        with postgres.snapshot_stream(plan, name, reading, server_csv=server_csv) as snapshot:
            streams = len(snapshot.copies or snapshot.readers)
            context.log.info(f"{snapshot.count:,} rows to export{f' in {streams} streams' if streams > 1 else ''}; "
                             f"read by {snapshot.reading['reader']}")
            progress = Progress(context, snapshot.count, requests)
            with digest_of(plan, path) as digest:
                if snapshot.copies:
                    write_server_csv(snapshot.copies, plan, path, progress.stream)
                else:
                    sink_streams(snapshot.readers, plan, path, progress.stream)
        context.add_output_metadata({"rows": progress.rows, "streams": streams, **snapshot.reading})
    except BaseException as error:
        discard_staging(path, context.run_id)
        if why := stopped(context):  # a stop, wherever the interrupt landed: its reason, no traceback
            raise failure_without_traceback(why) from None
        if connection_lost(error):
            if context.retry_number < EXTRACT_RETRIES:
                context.log.warning(f"lost the database connection; retrying the extract: {error}")
                raise dg.RetryRequested(max_retries=EXTRACT_RETRIES, seconds_to_wait=1) from error
            attempts = EXTRACT_RETRIES + 1
            cause = error.__cause__ if isinstance(error, ConnectionLost) and error.__cause__ else error
            raise dg.Failure(f"lost the database connection on all {attempts} attempts: {cause}") from error
        raise
    return StagedFile(
        str(path), progress.rows, snapshot.count, started, digest.sha256, digest.size, snapshot.high_water
    )
