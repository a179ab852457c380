"""Where generated files (depth maps, synthetic images) go, and the URL Label Studio shows them under.

Default: files under OUTPUT_DIR, served by Label Studio's local-files storage, so the URL is
`/data/local-files/?d=<path relative to LOCAL_FILES_DOCUMENT_ROOT>` (start Label Studio with
LOCAL_FILES_SERVING_ENABLED=true and the same LOCAL_FILES_DOCUMENT_ROOT, and add a Local Files
storage for that folder to the project). With OUTPUT_URL set, URLs are OUTPUT_URL + relative path
(any web server). With OUTPUT_S3_BUCKET set, files go to that S3-compatible bucket (endpoint
OUTPUT_S3_ENDPOINT_URL for MinIO and the like; credentials from the usual AWS_* variables) and the
URLs are `s3://bucket/key`, which Label Studio serves through the project's S3 storage (or
OUTPUT_URL + key when OUTPUT_URL is set).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from backend.core.errors import BackendError, InputError
from backend.core.files import write_atomic
from backend.core.settings import Settings


class StorageError(BackendError):
    status = 507


_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\Z")


def checked_key(relative: str) -> str:
    """`relative` if it is a plain relative key (letters, digits, '_', '-', '.', '/' between names; no '..',
    no leading '/' or '.'); InputError otherwise."""
    if not _KEY.match(relative) or ".." in relative or len(relative) > 512:
        raise InputError(f"not a safe storage key: {relative[:80]!r}", "storage")
    return relative


class LocalStorage:
    def __init__(self, settings: Settings):
        self.root = Path(settings.output_dir).resolve()
        self.url_prefix = settings.output_url.rstrip("/")
        self.document_root = (Path(settings.local_files_document_root).resolve()
                              if settings.local_files_document_root else None)

    def url(self, path: Path) -> str:
        if self.url_prefix:
            return f"{self.url_prefix}/{quote(path.relative_to(self.root).as_posix())}"
        if self.document_root is None or not path.is_relative_to(self.document_root):
            raise StorageError(
                f"{path} is not below LOCAL_FILES_DOCUMENT_ROOT ({self.document_root or 'unset'}): set OUTPUT_DIR "
                "inside it, or OUTPUT_URL to where OUTPUT_DIR is served", "OUTPUT_DIR")
        return "/data/local-files/?d=" + quote(path.relative_to(self.document_root).as_posix())

    def save(self, relative: str, data: bytes) -> tuple[Path, str]:
        """Write `data` atomically under the root; (path, URL). StorageError saying where on failure."""
        path = self.root / checked_key(relative)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(self.root)):
                raise StorageError(f"{relative} leads outside OUTPUT_DIR (a symlink?)", "OUTPUT_DIR")
            write_atomic(path, data)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}", "OUTPUT_DIR")
        return path, self.url(path)


class S3Storage:
    def __init__(self, settings: Settings):
        import boto3

        self.bucket = settings.output_s3_bucket
        self.prefix = settings.output_s3_prefix.strip("/")
        self.url_prefix = settings.output_url.rstrip("/")
        self.client = boto3.client("s3", endpoint_url=settings.output_s3_endpoint_url or None)

    def save(self, relative: str, data: bytes) -> tuple[PurePosixPath, str]:
        """Upload `data` (one PUT: readers never see a part); (key, URL). StorageError saying where on failure."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{self.prefix}/{checked_key(relative)}" if self.prefix else checked_key(relative)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write s3://{self.bucket}/{key}: {exc}", "OUTPUT_S3_BUCKET")
        url = f"{self.url_prefix}/{quote(key)}" if self.url_prefix else f"s3://{self.bucket}/{key}"
        return PurePosixPath(key), url


def make_storage(settings: Settings) -> LocalStorage | S3Storage:
    return S3Storage(settings) if settings.output_s3_bucket else LocalStorage(settings)
