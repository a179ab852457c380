"""Files that readers in other threads and processes see whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BoundedFolder:
    """Blobs stored as files named by the full SHA-256 of their key, shared by the processes of one machine.

    Bounded by total size: the least recently used files (by mtime, touched on every hit) go first. A
    file system fault (folder replaced by a file, read-only disk, no space) never raises: a read misses
    and a write is skipped, each counted in `errors` and logged once per kind of fault.
    """

    def __init__(self, folder: str | Path, max_bytes: int, suffix: str):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.suffix = suffix
        self.hits = self.misses = self.errors = 0
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()}{self.suffix}"

    def read(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as exc:
            self.fault("read", exc)
            return None
        with contextlib.suppress(OSError):  # another worker may have evicted it since
            os.utime(path)  # recently used: evicted last
        self.hits += 1
        return data

    def write(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        try:
            write_atomic(self.path(key), data)
            self._trim()
        except OSError as exc:
            self.fault("write", exc)

    def discard(self, key: str) -> None:
        """Delete a file whose content proved unusable (truncated, foreign, not an image)."""
        self.errors += 1
        with contextlib.suppress(OSError):
            self.path(key).unlink(missing_ok=True)

    def fault(self, action: str, exc: OSError) -> None:
        self.errors += 1
        kind = f"{action}:{type(exc).__name__}"
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning("cannot %s files in %s (%s); going on without them", action, self.folder,
                           exc.strerror or exc)

    def _trim(self) -> None:
        """Delete the least recently used files until the folder fits `max_bytes`."""
        with self._lock:
            files = []
            for path in self.folder.glob(f"*{self.suffix}"):
                with contextlib.suppress(FileNotFoundError):  # another worker deleted it meanwhile
                    stat = path.stat()
                    files.append((stat.st_mtime, stat.st_size, path))
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size

    def stats(self) -> dict:
        try:
            sizes = [p.stat().st_size for p in self.folder.glob(f"*{self.suffix}")] if self.folder.is_dir() else []
        except OSError:
            sizes = []
        return {"files": len(sizes), "bytes": sum(sizes), "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "errors": self.errors}
