"""The ranges an export is read in, in parallel: key ranges (the type's chunk key split into
consecutive ranges whose exports, concatenated in range order, are the whole export in its
declared row order) and page ranges (the table's heap pages, for exports in no order)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyRange:
    """`lower <= key < upper` (`<= upper` when `upper_inclusive`); None leaves that side open.

    Bounds are text: they are bound into the statement as settings, never written into it."""

    lower: str | None = None
    upper: str | None = None
    upper_inclusive: bool = False

    def describe(self, key: str) -> str:
        lower = f"{self.lower} <= " if self.lower is not None else ""
        upper = f" {'<=' if self.upper_inclusive else '<'} {self.upper}" if self.upper is not None else ""
        return f"{lower}{key}{upper}" if lower or upper else f"every {key}"


# What a closed split of an empty result holds: no key is both >= 0 and < 0.
NO_KEYS = KeyRange("0", "0")


def split_range(low: int | None, high: int | None, chunks: int, closed: bool) -> list[KeyRange]:
    """At most `chunks` ranges of equal width over [low, high], the chunk key's extent.

    Equal width costs two index look-ups (min and max); equal row counts would need a sort of
    every key (percentile_disc: +2 s at 10M rows). A skewed key therefore gives uneven chunks:
    still correct, less parallel. `closed` bounds the first and last range by the extent itself,
    so rows whose keys lie outside it when it was measured are never read (chunks read in other
    transactions); open outer ends are for chunks that share the measuring snapshot.
    """
    if low is None or high is None:
        return [NO_KEYS if closed else KeyRange()]
    width = high - low + 1
    count = max(1, min(chunks, width))  # never more ranges than key values
    cuts = [str(low + width * i // count) for i in range(1, count)]
    lowers = [str(low) if closed else None, *cuts]
    uppers = [*cuts, str(high) if closed else None]
    last = count - 1
    return [KeyRange(lo, hi, upper_inclusive=closed and i == last) for i, (lo, hi) in enumerate(zip(lowers, uppers))]


@dataclass(frozen=True)
class PageRange:
    """The rows stored in heap pages `lower <= page < upper` (by ctid; Postgres 14+ reads such a
    range with a TID range scan). None leaves that side open: the outer ranges also take rows on
    pages beyond those counted when the table was measured."""

    lower: int | None = None
    upper: int | None = None

    def describe(self, key: str = "page") -> str:
        return KeyRange(
            None if self.lower is None else str(self.lower), None if self.upper is None else str(self.upper)
        ).describe(key)


def split_pages(pages: int, streams: int) -> list[PageRange]:
    """`streams` consecutive page ranges of (nearly) equal size covering the whole table."""
    count = max(1, min(streams, pages))
    cuts = [pages * i // count for i in range(1, count)]
    return [PageRange(lo, hi) for lo, hi in zip([None, *cuts], [*cuts, None])]
