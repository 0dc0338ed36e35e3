"""The chunked job's steps: split → extract_chunk (one mapped step per key range) → combine.

Each chunk is its own step, so an executor can run them in separate processes or pods and retry
one alone. An exported snapshot cannot outlive the transaction that exported it, so chunks read in
their own transactions. What holds instead, fixed in the split's one snapshot: the key ranges
(closed at the key's extent, so rows added later beyond it are never read), the incremental upper
bound, and the total row count the request row shows. Each chunk is consistent in itself and its
rows are checked against its own count; a write committed between two chunks' reads is seen by
the chunks that start after it and not by those before.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ..requests import table as rt
from ..planning.key_ranges import KeyRange
from ..planning.plan import ExportPlan
from ..planning.streams import Reading, chunk_ranges
from ..resources.postgres import PostgresResource
from ..naming import request_id_of, session_name
from ..requests.store import RequestStore
from ..resources.storage import ExportStorage
from ..sinks import digest_of, scan_batches
from ..sinks.parts import join_parts, part_path, write_part
from ..dagster_compat import failure_without_traceback
from .extract import EXTRACT_RETRIES, Progress, connection_lost, stopped
from .staging import StagedFile, temp_path


@dataclass(frozen=True)
class ChunkTask:
    index: int
    key_range: KeyRange
    high_water: str | None
    started: float  # when the export was split: the run's seconds count from here


@dataclass(frozen=True)
class StagedChunk:
    task: ChunkTask
    path: str
    rows: int
    expected_rows: int


def _chunk_path(context: dg.OpExecutionContext, plan: ExportPlan, storage: ExportStorage, index: int) -> Path:
    # In the storage's temp folder whatever the output path: the folder every step can reach, and
    # where a failed run's leftovers are cleaned up by run id.
    return part_path(storage.run_temp_folder(context.run_id) / f"export.{plan.format.extension}", index)


@dg.op(
    out=dg.DynamicOut(ChunkTask),
    description="Count the rows and split the key range into the configured number of chunks, in one snapshot.",
)
def split_export(
    context: dg.OpExecutionContext, plan: ExportPlan, postgres: PostgresResource, requests: RequestStore
) -> Iterator[dg.DynamicOutput[ChunkTask]]:
    started = time.time()
    extent = postgres.extent(plan, session_name(context.run_id))
    ranges = chunk_ranges(extent.low, extent.high, plan.chunks)
    context.log.info(f"{extent.count:,} rows to export in {len(ranges)} chunks")
    request_id = request_id_of(context.run.tags)
    if request_id is not None:
        requests.run(rt.set_total(request_id, extent.count))
    for index, key_range in enumerate(ranges):
        yield dg.DynamicOutput(
            ChunkTask(index, key_range, extent.high_water, started),
            mapping_key=f"chunk_{index}",
            metadata={"key_range": key_range.describe(plan.chunk_key or ""), "export_rows": extent.count},
        )


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=EXTRACT_RETRIES, delay=1),
    description="Count and stream one chunk's key range, in its own snapshot, into a part file; retried "
    "alone when its database connection is lost.",
)
def extract_chunk(
    context: dg.OpExecutionContext,
    plan: ExportPlan,
    task: ChunkTask,
    postgres: PostgresResource,
    storage: ExportStorage,
    requests: RequestStore,
) -> StagedChunk:
    path, progress = _chunk_path(context, plan, storage, task.index), None
    started = time.monotonic()
    try:
        reading = Reading.of(plan, key_range=task.key_range)
        with postgres.snapshot_stream(plan, session_name(context.run_id), reading, task.high_water) as snapshot:
            context.log.info(f"chunk {task.index}: {snapshot.count:,} rows ({task.key_range.describe(plan.chunk_key)})")
            progress = Progress(context, snapshot.count, requests, chunk=task.index)
            write_part(scan_batches(snapshot.readers[0], progress), plan, path, task.index)
    except BaseException as error:
        path.unlink(missing_ok=True)
        if progress is not None:
            progress.withdraw()
        if why := stopped(context):
            raise failure_without_traceback(f"chunk {task.index}: {why}") from None
        if not isinstance(error, Exception) or connection_lost(error):
            raise  # the retry policy runs this chunk again, from a fresh snapshot
        raise dg.Failure(f"chunk {task.index}: {error}", allow_retries=False) from error
    context.add_output_metadata(
        {"chunk": task.index, "rows": progress.rows, "seconds": round(time.monotonic() - started, 3)}
    )
    return StagedChunk(task, str(path), progress.rows, snapshot.count)


@dg.op(description="Join the chunks' parts, in key order, into the export's one temp file.")
def combine_chunks(
    context: dg.OpExecutionContext, plan: ExportPlan, chunks: list[StagedChunk], storage: ExportStorage
) -> StagedFile:
    chunks = sorted(chunks, key=lambda c: c.task.index)
    path = temp_path(context, plan, storage)
    with digest_of(plan, path) as digest:
        join_parts(plan, [Path(c.path) for c in chunks], path)
    rows, expected = sum(c.rows for c in chunks), sum(c.expected_rows for c in chunks)
    context.log.info(f"joined {len(chunks)} chunks: {rows:,} rows")
    first = chunks[0].task
    return StagedFile(str(path), rows, expected, first.started, digest.sha256, digest.size, first.high_water)


@dg.failure_hook(required_resource_keys={"storage"})
def discard_chunk_parts(context: dg.HookContext) -> None:
    """A chunk (or the join) that failed for good: remove the run's parts now rather than leave them to the
    failure sensor or the retention cleanup."""
    context.resources.storage.discard_temp(context.run_id)
