"""PostgresResource's reader guard: the transaction never ends under a read in flight."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from export_platform.resources.postgres import GuardedReader, StreamClosed

SCHEMA = pa.schema([("id", pa.int64())])


def test_close_waits_for_the_read_in_flight_and_stops_later_reads():
    reading, release = threading.Event(), threading.Event()

    def batches():
        yield pa.record_batch([pa.array([1])], schema=SCHEMA)
        reading.set()
        release.wait(10)  # a read blocked in the driver
        yield pa.record_batch([pa.array([2])], schema=SCHEMA)
        yield pa.record_batch([pa.array([3])], schema=SCHEMA)

    guard = GuardedReader(pa.RecordBatchReader.from_batches(SCHEMA, batches()))
    seen, outcome = [], []

    def consume():
        try:
            for batch in guard:
                seen.append(batch.column(0)[0].as_py())
        except StreamClosed as error:
            outcome.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert reading.wait(10)
    closer = threading.Thread(target=guard.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # still waiting for the read in flight
    release.set()
    closer.join(10)
    consumer.join(10)
    assert seen == [1, 2] and len(outcome) == 1  # the batch in flight arrives; nothing is read after close
    with pytest.raises(StreamClosed):
        next(iter(guard))
