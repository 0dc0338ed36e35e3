"""Where finished files go. One interface; the local folder is the default implementation."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..embedded_postgres import platform_home

STORAGE_URL_ENV = "EXPORT_PLATFORM_STORAGE_URL"


class ExportStorage(dg.ConfigurableResource, ABC):
    @abstractmethod
    def temp_path(self, name: str) -> Path:
        """A local path to write a file to before it is published."""

    @abstractmethod
    def publish(self, temp_path: Path, key: str) -> str:
        """Move a finished temp file to `key` atomically; return its URI."""

    @abstractmethod
    def discard_temp(self, run_id: str) -> int:
        """Remove what a run left in the temp area (it failed or was cancelled); returns how many."""


class LocalStorage(ExportStorage):
    root: str | None = Field(
        default=None,
        description="Folder for finished exports. Unset: EXPORT_PLATFORM_STORAGE_URL, "
        "else .export_platform/exports.",
    )

    def folder(self) -> Path:
        root = self.root or os.environ.get(STORAGE_URL_ENV) or str(platform_home() / "exports")
        return Path(root.removeprefix("file://")).resolve()

    def temp_path(self, name: str) -> Path:
        # Inside the storage folder, so that publishing is a rename on one filesystem.
        tmp = self.folder() / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / name

    def discard_temp(self, run_id: str) -> int:
        leftovers = list((self.folder() / ".tmp").glob(f"{run_id}.*"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def publish(self, temp_path: Path, key: str) -> str:
        target = self.folder() / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, target)
        return target.as_uri()
