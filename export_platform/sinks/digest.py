"""The export file's sha256 and size, taken while it is written instead of by a second read.

A thread follows the file as its writer appends to it, hashing each part as it lands (from the
page cache, while the rest is still being written): when the writer is done, only its last bytes
are left to hash. That holds only for writers that append and never go back, which is what
Polars' sinks, the JSON writer and the chunk joins do. Zip-based xlsx (zipfile seeks back to
rewrite each member's header) and pdf (written in one go at the end) are hashed after they are
written.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import TracebackType

_READ = 1 << 20
_POLL_SECONDS = 0.02


def file_digest(path: Path) -> tuple[str, int]:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), path.stat().st_size


class WrittenDigest:
    """`with WrittenDigest(path, follow) as digest: write(path)`, then `digest.sha256`, `digest.size`.

    With `follow`, the file is hashed as it grows; else it is read once the writer is done. The
    size hashed is checked against the file's: a writer that went back would be caught by it
    unless it rewrote bytes in place."""

    def __init__(self, path: Path, follow: bool):
        self.path, self.follow = path, follow
        self.sha256, self.size = "", 0
        self._hash, self._written = hashlib.sha256(), threading.Event()
        self._thread = threading.Thread(target=self._follow, name="export-digest", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> WrittenDigest:
        if self.follow:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._written.set()
        if self.follow:
            self._thread.join()
        if kind is not None:
            return
        if not self.follow:
            self.sha256, self.size = file_digest(self.path)
            return
        if self._error is not None:
            raise self._error
        if self.size != self.path.stat().st_size:
            raise RuntimeError(f"{self.path.name} changed behind its digest: {self.size} bytes hashed, "
                               f"{self.path.stat().st_size} written")
        self.sha256 = self._hash.hexdigest()

    def _open(self):
        while True:
            try:
                return self.path.open("rb")
            except FileNotFoundError:
                if self._written.wait(_POLL_SECONDS):  # done, and never created: the exit reports it
                    return self.path.open("rb")

    def _read_available(self, source) -> None:
        while chunk := source.read(_READ):
            self._hash.update(chunk)
            self.size += len(chunk)

    def _follow(self) -> None:
        try:
            with self._open() as source:
                while not self._written.is_set():
                    self._read_available(source)
                    self._written.wait(_POLL_SECONDS)
                self._read_available(source)  # what the writer wrote last
        except BaseException as error:  # re-raised by the writer's thread on exit
            self._error = error
