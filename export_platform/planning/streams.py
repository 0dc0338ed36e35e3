"""How an export's rows are read: by how many streams, over which ranges.

These are decisions about a plan. The facts they rest on (the row count and the chunk key's
extent, read in one pass; the table's heap pages and the database's limits) are read by the
Postgres resource inside the export's snapshot, so that the ranges, the count and the rows are
one point in time: the resource runs the statement a `Reading` needs, hands what it showed back
to `Reading.ranges`, and reads the ranges decided here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from .key_ranges import KeyRange, PageRange, split_pages, split_range
from .plan import ExportPlan

# A page stream reads at least this many heap pages (8 MiB at the default block size), as DuckDB's
# Postgres scanner does: a smaller table is not worth another connection.
PAGES_PER_STREAM = 1000
# The default of PostgresResource.max_streams.
MAX_STREAMS = 8


def stream_count(cores: int, pages: int | None, per_query: int, free_connections: int, cap: int) -> int:
    """How many page streams an export in no order reads in parallel: no more than this machine's
    cores, the processes the database lets one query use (max_parallel_workers_per_gather + 1:
    its administrator's limit on one query's share of the server), half the connections still
    free, `cap`, and one per PAGES_PER_STREAM of the table; one for a view."""
    if pages is None:
        return 1
    return max(1, min(cores, per_query, free_connections // 2, cap, pages // PAGES_PER_STREAM))


class Need(Enum):
    """The statement whose answer the ranges are cut from (every one of them also counts the rows)."""

    COUNT = "count"  # the count alone: one stream
    EXTENT = "extent"  # the count and the chunk key's min and max, in one pass
    LIMITS = "limits"  # the count, and the table's pages and the database's limits on parallel reads


@dataclass(frozen=True)
class Shown:
    """What the snapshot showed: the rows to export, and the facts `Reading.needs`."""

    count: int
    low: int | None = None
    high: int | None = None
    pages: int | None = None  # None for a view or a partitioned table
    per_query: int = 1
    free_connections: int = 0


@dataclass(frozen=True)
class Reading:
    """How one snapshot's rows are read: key ranges in key order, or page ranges in no order.

    `streams` is what the plan asked (its chunks); for page ranges 1 means as many as the machine
    and the database allow, at most `cap`. A chunk of the chunked job reads its `key_range` as one
    stream and counts only that range."""

    by_key: bool
    streams: int = 1
    key_range: KeyRange | None = None
    cap: int = MAX_STREAMS

    @classmethod
    def of(cls, plan: ExportPlan, streams: int = 1, key_range: KeyRange | None = None, cap: int = MAX_STREAMS) -> Reading:
        return cls(plan.ordered or key_range is not None, streams, key_range, cap)

    @property
    def needs(self) -> Need:
        if not self.by_key:
            return Need.LIMITS
        return Need.COUNT if self.streams == 1 else Need.EXTENT

    def ranges(self, shown: Shown) -> list[KeyRange | PageRange | None]:
        """The ranges the streams read, one stream each, in key order for key ranges."""
        if self.by_key:
            if self.streams == 1:
                return [self.key_range]
            # Open outer ends: the streams share the snapshot that measured the extent.
            return split_range(shown.low, shown.high, self.streams, closed=False)
        streams = self.streams
        if streams == 1:
            cores = len(os.sched_getaffinity(0))
            streams = stream_count(cores, shown.pages, shown.per_query, shown.free_connections, self.cap)
        return split_pages(shown.pages, streams) if shown.pages is not None else [None]

    def describe(self, streams: int) -> str:
        return f"{streams} {'key' if self.by_key else 'page'} range stream(s)"


def chunk_ranges(low: int | None, high: int | None, chunks: int) -> list[KeyRange]:
    """The chunked job's key ranges over the extent its split measured: closed at that extent,
    since each chunk reads in a transaction of its own and must not read rows added beyond it."""
    return split_range(low, high, chunks, closed=True)
