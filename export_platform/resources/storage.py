"""Where finished files go: one interface, a local folder or an S3-compatible bucket.

Every export is first written to a local temp file; `publish` then makes it visible under its
final key in one step (a rename on one filesystem, or an S3 upload that only appears once it is
complete), so nobody ever reads a partial file.
"""

from __future__ import annotations

import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
from pydantic import Field, PrivateAttr

from ..delivery.links import Signer, file_url, public_url
from ..tooling.embedded_postgres import platform_home

STORAGE_URL_ENV = "EXPORT_PLATFORM_STORAGE_URL"
TEMP_FOLDER = ".tmp"


class StorageError(RuntimeError):
    pass


def _mtimes(path: Path) -> list[float]:
    return [path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))] if path.is_dir() else [path.stat().st_mtime]


def tree_size(path: Path) -> int:
    """Bytes in a file, or in the files under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredFile:
    uri: str
    bytes: int
    modified: datetime


class ExportStorage(dg.ConfigurableResource, ABC):
    retention_days: int = Field(
        default=7, description="Days a finished export is kept; the retention cleanup deletes it after."
    )
    download_url_seconds: int = Field(
        default=24 * 3600, description="How long a signed download URL stays valid (where the storage can sign)."
    )

    @abstractmethod
    def temp_folder(self) -> Path:
        """Local folder for files being written, one folder per run named by its run id."""

    def run_temp_folder(self, run_id: str) -> Path:
        """Where a run writes everything before publishing: the export, its chunks' parts, a
        writer's spool files. All of it in one folder, so that whatever ends the run (a full disk,
        a cancel, SIGKILL), `discard_temp` removes all it left."""
        folder = self.temp_folder() / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def discard_temp(self, run_id: str) -> int:
        """Remove what a run left in the temp folder; returns how many files."""
        folder = self.temp_folder() / run_id
        files = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return files

    def stale_temp_files(self, older_than_seconds: float) -> list[Path]:
        """Runs' temp folders (named by run id) in which nothing changed for `older_than_seconds`."""
        folder, cutoff = self.temp_folder(), time.time() - older_than_seconds
        entries = list(folder.iterdir()) if folder.exists() else []
        return [p for p in entries if max(_mtimes(p)) < cutoff]

    @abstractmethod
    def publish(self, temp_path: Path, key: str) -> str:
        """Move a finished temp file to `key` atomically; return its URI."""

    @abstractmethod
    def delete(self, uri: str) -> int:
        """Delete a published file; returns the bytes freed (0 if it was already gone). Raises
        StorageError when it cannot tell: the file may still be there."""

    @abstractmethod
    def files_under(self, prefix: str) -> Iterator[StoredFile]:
        """Every published file whose key starts with `prefix/`."""

    def signed_url(self, uri: str, seconds: int) -> str | None:
        """A URL anyone can GET for `seconds`, or None where the storage cannot sign."""
        return None


class LocalStorage(ExportStorage):
    root: str | None = Field(
        default=None,
        description="Folder for finished exports. Unset: EXPORT_PLATFORM_STORAGE_URL, else .export_platform/exports.",
    )

    def folder(self) -> Path:
        root = self.root or os.environ.get(STORAGE_URL_ENV) or str(platform_home() / "exports")
        return Path(root.removeprefix("file://")).resolve()

    def temp_folder(self) -> Path:
        # Inside the storage folder, so that publishing is a rename on one filesystem.
        return self.folder() / TEMP_FOLDER

    def publish(self, temp_path: Path, key: str) -> str:
        target = self.folder() / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, target)
        return target.as_uri()

    @staticmethod
    def _file_path(uri: str) -> Path:
        # publish's Path.as_uri() percent-encodes '@', spaces and accents (alice@example.com, Données).
        return Path(unquote(urlparse(uri).path)).resolve()

    def _path(self, uri: str) -> Path:
        path = self._file_path(uri)
        if not path.is_relative_to(self.folder()):
            raise StorageError(f"{uri} is not in the storage folder {self.folder()}")
        return path

    def delete(self, uri: str) -> int:
        path = self._path(uri)
        size = path.stat().st_size if path.exists() else 0
        path.unlink(missing_ok=True)
        return size

    def signed_url(self, uri: str, seconds: int) -> str | None:
        """A link to `export-platform serve` where EXPORT_PLATFORM_PUBLIC_URL says where it runs."""
        base = public_url()
        path = self._file_path(uri)
        if base is None or not path.is_relative_to(self.folder()):  # --output files are not served
            return None
        return file_url(base, Signer.from_env(), path.relative_to(self.folder()).as_posix(), seconds)

    def files_under(self, prefix: str) -> Iterator[StoredFile]:
        for path in sorted((self.folder() / prefix).rglob("*")):
            if path.is_file():
                stat = path.stat()
                yield StoredFile(path.as_uri(), stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))


class S3Storage(ExportStorage):
    """Any S3-compatible service. Endpoint and credentials come from the usual AWS variables
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION)."""

    url: str = Field(description="s3://bucket/prefix under which exports are stored.")
    staging_folder: str | None = Field(
        default=None, description="Local folder for files being written before upload (default .export_platform/staging)."
    )

    _client = PrivateAttr(default=None)

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", config=Config(signature_version="s3v4"))
        return self._client

    def _bucket_and_prefix(self) -> tuple[str, str]:
        parsed = urlparse(self.url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"expected s3://bucket/prefix, got {self.url!r}")
        return parsed.netloc, parsed.path.strip("/")

    def _location(self, uri: str) -> tuple[str, str]:
        parsed = urlparse(uri)
        bucket, prefix = self._bucket_and_prefix()
        if parsed.netloc != bucket or not parsed.path.lstrip("/").startswith(prefix):
            raise StorageError(f"{uri} is not under {self.url}")
        return bucket, parsed.path.lstrip("/")

    def temp_folder(self) -> Path:
        return Path(self.staging_folder or platform_home() / "staging").resolve()

    def publish(self, temp_path: Path, key: str) -> str:
        bucket, prefix = self._bucket_and_prefix()
        object_key = f"{prefix}/{key}" if prefix else key
        # upload_file streams the file in multipart chunks: memory stays flat, and the object
        # becomes visible only when the upload completes.
        self.client().upload_file(str(temp_path), bucket, object_key)
        temp_path.unlink()
        return f"s3://{bucket}/{object_key}"

    def delete(self, uri: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._location(uri)
        try:
            try:
                size = self.client().head_object(Bucket=bucket, Key=key)["ContentLength"]
            except ClientError as error:
                # Only "not found" means gone. A HEAD reply has no body, so a missing bucket looks
                # the same: ask the bucket, which raises if it is the bucket that is missing.
                if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
                self.client().head_bucket(Bucket=bucket)
                return 0
            self.client().delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as error:  # denied, bad credentials, unreachable: it may be there
            raise StorageError(f"could not delete {uri}: {error}") from error
        return size

    def files_under(self, prefix: str) -> Iterator[StoredFile]:
        bucket, root = self._bucket_and_prefix()
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{root}/{prefix}/" if root else f"{prefix}/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield StoredFile(f"s3://{bucket}/{item['Key']}", item["Size"], item["LastModified"])

    def signed_url(self, uri: str, seconds: int) -> str | None:
        bucket, key = self._location(uri)
        return self.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )


def storage_for(url: str | None) -> ExportStorage:
    """The storage resource for EXPORT_PLATFORM_STORAGE_URL: s3://… or a local folder."""
    if url and url.startswith("s3://"):
        return S3Storage(url=url)
    if public_url() is not None:
        Signer.from_env()  # a missing signing key is an error when the code location loads, not at publish
    return LocalStorage()
