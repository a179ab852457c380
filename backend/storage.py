"""Where generated files (depth maps, synthetic images) go, and the URL Label Studio shows them under.

Default: files under OUTPUT_DIR, served by Label Studio's local-files storage, so the URL is
`/data/local-files/?d=<path relative to LOCAL_FILES_DOCUMENT_ROOT>` (start Label Studio with
LOCAL_FILES_SERVING_ENABLED=true and the same LOCAL_FILES_DOCUMENT_ROOT, and add a Local Files
storage for that folder to the project). With OUTPUT_URL set, URLs are OUTPUT_URL + relative path
(any web server or an S3-compatible bucket synced from OUTPUT_DIR).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from .annotations import write_atomic
from .errors import BackendError
from .settings import Settings


class StorageError(BackendError):
    status = 507


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
        path = self.root / relative
        try:
            write_atomic(path, data)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}", "OUTPUT_DIR")
        return path, self.url(path)
