"""PostgresResource's reader guard: the transaction never ends under a read in flight."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from export_platform.ops.extract import connection_lost
from export_platform.resources.postgres import ConnectionLost, GuardedReader, StreamClosed

SCHEMA = pa.schema([("id", pa.int64())])


def test_close_waits_for_the_read_in_flight_and_stops_later_reads():
    reading, release = threading.Event(), threading.Event()

    def batches():
        yield pa.record_batch([pa.array([1])], schema=SCHEMA)
        reading.set()
        release.wait(10)  # a read blocked in the driver
        order.append("the read in flight returned")
        yield pa.record_batch([pa.array([2])], schema=SCHEMA)
        yield pa.record_batch([pa.array([3])], schema=SCHEMA)

    guard = GuardedReader(pa.RecordBatchReader.from_batches(SCHEMA, batches()))
    closer_waits = threading.Event()

    class WatchedLock:
        """The guard's lock, saying when `close` has asked for it (the read in flight holds it)."""

        def __init__(self, lock):
            self._lock = lock

        def __enter__(self):
            if threading.current_thread().name == "closer":
                closer_waits.set()
            self._lock.acquire()

        def __exit__(self, *exc):
            self._lock.release()

    guard._lock = WatchedLock(guard._lock)
    seen, outcome, order = [], [], []

    def consume():
        try:
            for batch in guard:
                seen.append(batch.column(0)[0].as_py())
        except StreamClosed as error:
            outcome.append(error)

    def close():
        guard.close()
        order.append("closed")

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert reading.wait(10)
    closer = threading.Thread(target=close, name="closer")
    closer.start()
    assert closer_waits.wait(10)  # close has begun, while the read is in flight
    assert order == []  # and has not returned
    release.set()
    closer.join(10)
    consumer.join(10)
    assert not closer.is_alive() and not consumer.is_alive()
    # close returned only once the read in flight had; that batch arrives, and nothing is read after.
    assert order == ["the read in flight returned", "closed"]
    assert seen == [1, 2] and len(outcome) == 1
    with pytest.raises(StreamClosed):
        next(iter(guard))


class _DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        # The server's words follow its lc_messages; only the SQLSTATE decides.
        (_DriverError("la connexion au serveur a été perdue", "08006"), True),
        (_DriverError("Verbindung beendet wegen Anweisung des Administrators", "57P01"), True),
        (_DriverError("terminating connection due to administrator command", None), False),
        (_DriverError("server closed the connection unexpectedly", "57014"), False),  # a cancelled query
        (ConnectionLost("whatever the language"), True),
        (ValueError("server closed the connection"), False),
    ],
)
def test_a_lost_connection_is_known_by_its_sqlstate_not_its_words(error, lost):
    assert connection_lost(error) is lost
