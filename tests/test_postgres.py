"""PostgresResource's reader guard: the transaction never ends under a read in flight."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import threading

import psycopg
import pyarrow as pa
import pytest

from export_platform.naming import session_name
from export_platform.ops.export import connection_lost
from export_platform.planning.plan import plan_export
from export_platform.resources.postgres import ConnectionLost, GuardedReader, PostgresResource, StreamClosed

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


def test_a_killed_backend_mid_stream_is_a_lost_connection_whatever_the_message(database_url):
    plan = plan_export("users", "csv")
    postgres = PostgresResource(url=database_url, batch_size_hint_bytes=1024)
    with pytest.raises(ConnectionLost) as raised:
        with postgres.snapshot_stream(plan, session_name("kill-probe")) as snapshot:
            batches = iter(snapshot.readers[0])
            next(batches)
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'export_platform:kill-probe'")
            for _ in batches:
                pass
    assert raised.value.__cause__ is not None


# In a fresh interpreter: after an export has streamed, a block freed and a smaller one asked for
# show whether glibc still raises its mmap threshold to the largest block freed (the smaller one
# then comes from the heap, below the program break) or keeps it fixed (the block is mapped).
_AFTER_A_STREAM = """
import ctypes, sys
from export_platform.planning.plan import plan_export
from export_platform.resources.postgres import PostgresResource

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
if sys.argv[1] == "stream":
    with PostgresResource(url=sys.argv[2]).snapshot_stream(plan_export("users", "csv"), "mmap-test") as snapshot:
        assert sum(batch.num_rows for batch in snapshot.readers[0]) == snapshot.count > 0
libc.free(libc.malloc(4 << 20))
print("heap" if libc.malloc(3 << 20) < libc.sbrk(0) else "mapped")
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="glibc's malloc only")
def test_an_export_keeps_glibc_from_moving_batch_buffers_onto_its_heaps(database_url):
    """Batch buffers left on the decoding threads' heaps made a 10M-row export's peak RSS vary
    from 309 to 555 MB (benchmarks/RESULTS.md)."""

    def block_after(mode: str) -> str:
        run = subprocess.run([sys.executable, "-c", _AFTER_A_STREAM, mode, database_url], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert block_after("none") == "heap"  # glibc's default, which the check must be able to see
    assert block_after("stream") == "mapped"
