"""Where finished files go: one interface, a local folder or an S3-compatible bucket.

Every export is first written to a local temp file; `publish` then makes it visible under its
final key in one step (a rename on one filesystem, or an S3 upload that only appears once it is
complete), so nobody ever reads a partial file.

Files are named by their key relative to the storage root (resources/storage_keys.py), which the
request row keeps as `file_key`. `file_uri` names the same file absolutely, for people and
applications: a `file://` URI (percent-encoded, as RFC 8089 has it) or `s3://bucket/key` (as the
AWS CLI takes it). The platform reads a URI back only for rows written before keys, in one place
(`key_of`).
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

from ..errors import ExportPlatformError
from ..links import Signer, file_url, public_url
from ..home import platform_home
from .storage_keys import valid_key

STORAGE_URL_ENV = "EXPORT_PLATFORM_STORAGE_URL"
# Folders a run's `output_path` may write into, separated by os.pathsep (as PATH is).
OUTPUT_FOLDERS_ENV = "EXPORT_PLATFORM_OUTPUT_FOLDERS"
TEMP_FOLDER = ".tmp"


class StorageError(ExportPlatformError):
    """The storage cannot do what was asked with a file (a key or URI outside it, a failed delete or upload)."""


class OutputRefused(StorageError):
    """An `output_path` outside the folders this host lets runs write into."""


def file_uri_path(uri: str) -> Path | None:
    """The local path a `file://` URI names, percent-decoded; None for any other URI."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _mtimes(path: Path) -> list[float]:
    return [path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))] if path.is_dir() else [path.stat().st_mtime]


def tree_size(path: Path) -> int:
    """Bytes in a file, or in the files under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredFile:
    key: str
    bytes: int
    modified: datetime


def _checked(key: str) -> str:
    if not valid_key(key):
        raise StorageError(f"{key!r} is not a storage key")
    return key


class ExportStorage(dg.ConfigurableResource, ABC):
    retention_days: int = Field(
        default=7, description="Days a finished export is kept; the retention cleanup deletes it after."
    )
    download_url_seconds: int = Field(
        default=24 * 3600, description="How long a signed download URL stays valid (where the storage can sign)."
    )
    output_folders: str | None = Field(
        default=None,
        description="Local folders a run's output_path may write into, separated by ':'. Unset: "
        "EXPORT_PLATFORM_OUTPUT_FOLDERS, else none, and output_path is refused (`export-platform run --output` "
        "allows its own target).",
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

    def output_target(self, output_path: str) -> Path:
        """Where a run's `output_path` writes, symlinks followed, if that lies inside an allowed
        folder: a Launchpad user must not write or replace files anywhere the worker can."""
        listed = self.output_folders if self.output_folders is not None else os.environ.get(OUTPUT_FOLDERS_ENV, "")
        folders = [Path(f).resolve() for f in listed.split(os.pathsep) if f.strip()]
        target = Path(output_path).resolve()
        if not any(target.parent.is_relative_to(folder) for folder in folders):
            allowed = ", ".join(map(str, folders)) or f"none ({OUTPUT_FOLDERS_ENV} is not set)"
            raise OutputRefused(f"{target} is not in a folder runs may write into (allowed: {allowed})")
        return target

    @abstractmethod
    def uri(self, key: str) -> str:
        """The file's URI, as the request row's `file_uri` shows it."""

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """The key a URI of this storage names (rows written before keys); StorageError if the URI
        names no file of this storage."""

    @abstractmethod
    def publish(self, temp_path: Path, key: str) -> str:
        """Move a finished temp file to `key` atomically; return its URI."""

    @abstractmethod
    def delete(self, key: str) -> int:
        """Delete a published file; returns the bytes freed (0 if it was already gone). Raises
        StorageError when it cannot tell: the file may still be there."""

    @abstractmethod
    def files_under(self, prefix: str) -> Iterator[StoredFile]:
        """Every published file whose key starts with `prefix/`."""

    def signed_url(self, key: str, seconds: int) -> str | None:
        """A URL anyone can GET for `seconds`, or None where the storage cannot sign."""
        return None

    def recorded_key(self, file_key: str | None, file_uri: str | None) -> str:
        """The key of the file a request row records. Its `file_key`, if the row's `file_uri` says
        it was published to this storage (a row of a former storage root or bucket is refused,
        never taken for a file that is gone); rows from before keys have only the URI."""
        if file_key is None:
            if file_uri is None:
                raise StorageError("the request records no file")
            return _checked(self.key_of(file_uri))
        if file_uri is not None and self.uri(_checked(file_key)) != file_uri:
            self.key_of(file_uri)  # raises, naming this storage, for a row of another one
            raise StorageError(f"the row's file_key {file_key!r} and file_uri {file_uri} name different files")
        return _checked(file_key)

    def delete_request_file(self, file_key: str | None, file_uri: str | None) -> int:
        """Delete the file a request row records (by its `file_key` and `file_uri`): what retention
        and an application's delete share. Returns the bytes freed."""
        return self.delete(self.recorded_key(file_key, file_uri))


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

    def _path(self, key: str) -> Path:
        """The file of `key`, whose folders (symlinks followed) lie inside the storage folder."""
        root = self.folder()
        path = root / _checked(key)
        if not path.parent.resolve().is_relative_to(root):
            raise StorageError(f"{key} leads out of the storage folder {root}")
        return path

    def uri(self, key: str) -> str:
        return (self.folder() / key).as_uri()

    def key_of(self, uri: str) -> str:
        path, root = file_uri_path(uri), self.folder()
        if path is None or not path.is_relative_to(root):
            raise StorageError(f"{uri} is not in the storage folder {root}")
        return path.relative_to(root).as_posix()

    def publish(self, temp_path: Path, key: str) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, target)
        return self.uri(key)

    def delete(self, key: str) -> int:
        path = self._path(key)
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            return 0
        path.unlink(missing_ok=True)
        return size

    def signed_url(self, key: str, seconds: int) -> str | None:
        """A link to `export-platform serve` where EXPORT_PLATFORM_PUBLIC_URL says where it runs."""
        base = public_url()
        return None if base is None else file_url(base, Signer.from_env(), _checked(key), seconds)

    def files_under(self, prefix: str) -> Iterator[StoredFile]:
        root = self.folder()
        for path in sorted((root / prefix).rglob("*")):
            if path.is_file():
                stat = path.stat()
                key = path.relative_to(root).as_posix()
                yield StoredFile(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc))


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

    def _object_key(self, key: str) -> str:
        _, prefix = self._bucket_and_prefix()
        return f"{prefix}/{_checked(key)}" if prefix else _checked(key)

    def uri(self, key: str) -> str:
        bucket, _ = self._bucket_and_prefix()
        return f"s3://{bucket}/{self._object_key(key)}"

    def key_of(self, uri: str) -> str:
        # s3:// URIs hold the object key as it is (no percent-encoding): nothing to decode.
        bucket, prefix = self._bucket_and_prefix()
        start = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
        if not uri.startswith(start):
            raise StorageError(f"{uri} is not under {self.url}")
        return uri.removeprefix(start)

    def temp_folder(self) -> Path:
        return Path(self.staging_folder or platform_home() / "staging").resolve()

    def publish(self, temp_path: Path, key: str) -> str:
        bucket, _ = self._bucket_and_prefix()
        # upload_file streams the file in multipart chunks: memory stays flat, and the object
        # becomes visible only when the upload completes.
        self.client().upload_file(str(temp_path), bucket, self._object_key(key))
        temp_path.unlink()
        return self.uri(key)

    def delete(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._bucket_and_prefix()[0], self._object_key(key)
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
            raise StorageError(f"could not delete s3://{bucket}/{key}: {error}") from error
        return size

    def files_under(self, prefix: str) -> Iterator[StoredFile]:
        bucket, root = self._bucket_and_prefix()
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{root}/{prefix}/" if root else f"{prefix}/"
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(f"{root}/") if root else item["Key"]
                yield StoredFile(key, item["Size"], item["LastModified"])

    def signed_url(self, key: str, seconds: int) -> str | None:
        bucket, _ = self._bucket_and_prefix()
        return self.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": self._object_key(key)}, ExpiresIn=seconds
        )


def storage_for(url: str | None, **fields) -> ExportStorage:
    """The storage resource for EXPORT_PLATFORM_STORAGE_URL: s3://… or a local folder; `fields`
    are the resource's own (e.g. output_folders)."""
    if url and url.startswith("s3://"):
        return S3Storage(url=url, **fields)
    if public_url() is not None:
        Signer.from_env()  # a missing signing key is an error when the code location loads, not at publish
    return LocalStorage(**fields)
