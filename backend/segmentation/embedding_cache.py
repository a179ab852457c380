"""Image embeddings keyed by engine fingerprint + image content hash: in-process LRU, in front of Redis or a
disk folder."""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np

from backend.core.files import BoundedFolder
from backend.core.logs import redact_paths
from backend.core.settings import Settings
from backend.segmentation.segmenter import Embedding

logger = logging.getLogger(__name__)


def cache_key(fingerprint: str, image_key: str) -> str:
    return f"sam:emb:{fingerprint}:{image_key}"


FORMAT = 2  # named arrays; a blob of another format is unusable (deleted and recomputed by the stores)


def serialize(embedding: Embedding) -> bytes:
    """A JSON header (format, sizes, each array's name, dtype and shape) and the arrays' raw bytes: no pickle."""
    arrays = {name: np.ascontiguousarray(array) for name, array in embedding.arrays.items()}
    header = json.dumps({
        "format": FORMAT,
        "original_size": list(embedding.original_size),
        "input_size": list(embedding.input_size),
        "arrays": [{"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
                   for name, array in arrays.items()],
    }).encode()
    return b"".join([struct.pack("<I", len(header)), header, *(array.tobytes() for array in arrays.values())])


def deserialize(blob: bytes) -> Embedding:
    (length,) = struct.unpack_from("<I", blob)
    header = json.loads(blob[4 : 4 + length])
    if header.get("format") != FORMAT:
        raise ValueError(f"embedding format {header.get('format')!r}, expected {FORMAT}")
    payload = bytearray(blob[4 + length :])  # writable: torch refuses read-only buffers
    specs = [(spec["name"], np.dtype(spec["dtype"]), spec["shape"], int(np.prod(spec["shape"], dtype=np.int64)))
             for spec in header["arrays"]]
    described = sum(count * dtype.itemsize for _, dtype, _, count in specs)
    if described != len(payload):
        raise ValueError(f"embedding payload of {len(payload)} bytes, the header describes {described}")
    arrays, offset = {}, 0
    for name, dtype, shape, count in specs:
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    features = arrays.pop("features")
    return Embedding(features=features, original_size=tuple(header["original_size"]),
                     input_size=tuple(header["input_size"]), extra=arrays)


class EmbeddingCache(Protocol):
    def get(self, key: str) -> Embedding | None: ...

    def put(self, key: str, embedding: Embedding) -> None: ...

    def stats(self) -> dict: ...


class MemoryCache:
    """Least-recently-used embeddings, bounded by their total size in bytes. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> Embedding | None:
        with self._lock:
            embedding = self._items.get(key)
            if embedding is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return embedding

    def put(self, key: str, embedding: Embedding) -> None:
        if embedding.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = embedding
            self._bytes += embedding.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def stats(self) -> dict:
        with self._lock:
            return {"kind": "memory", "items": len(self._items), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses}


class TieredCache:
    """A small in-process LRU in front of a store that other processes share (Redis, a disk folder).

    Entries never change (the key is the content hash), so a burst of clicks on one image is served from
    the front without fetching the embedding again each time.
    """

    def __init__(self, front: MemoryCache, back: EmbeddingCache):
        self.front = front
        self.back = back

    def get(self, key: str) -> Embedding | None:
        embedding = self.front.get(key)
        if embedding is None:
            embedding = self.back.get(key)
            if embedding is not None:
                self.front.put(key, embedding)
        return embedding

    def put(self, key: str, embedding: Embedding) -> None:
        self.front.put(key, embedding)
        self.back.put(key, embedding)

    def stats(self) -> dict:
        return {**self.back.stats(), "local": self.front.stats()}


class RedisStore:
    """Embeddings in Redis, shared by every worker process and machine; entries expire after `ttl` seconds.

    Faults degrade to computing, never to an error: an unreachable or stalled Redis answers within
    `timeout` seconds and is then left alone for `pause` seconds (every get a miss, every put skipped);
    a value that does not deserialize is deleted and missed. Each kind of fault is logged once per pause.
    """

    def __init__(self, url: str, ttl: int, timeout: float = 0.5, pause: float = 10.0):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.ttl = ttl
        self.pause = pause
        self.hits = self.misses = self.errors = 0
        self._down_until = 0.0

    def _fault(self, action: str, exc: Exception) -> None:
        self.errors += 1
        if time.monotonic() >= self._down_until:
            logger.warning("embedding cache unreachable (%s: %s); %s, and Redis is left alone for %g s", action,
                           exc, "computing the embedding" if action == "get" else "not stored", self.pause)
        self._down_until = time.monotonic() + self.pause

    def get(self, key: str) -> Embedding | None:
        if time.monotonic() < self._down_until:
            self.misses += 1
            return None
        try:
            blob = self.client.get(key)
        except Exception as exc:
            self._fault("get", exc)
            return None
        if blob is None:
            self.misses += 1
            return None
        try:
            embedding = deserialize(blob)
        except Exception as exc:  # a foreign or damaged value: drop it, compute again
            self.errors += 1
            logger.warning("embedding %s in Redis unusable (%s); deleted", key, exc)
            with contextlib.suppress(Exception):
                self.client.delete(key)
            return None
        self.hits += 1
        return embedding

    def put(self, key: str, embedding: Embedding) -> None:
        if time.monotonic() < self._down_until:
            return
        try:
            self.client.set(key, serialize(embedding), ex=self.ttl)
        except Exception as exc:
            self._fault("put", exc)

    def stats(self) -> dict:
        return {"kind": "redis", "hits": self.hits, "misses": self.misses, "errors": self.errors}


class DiskStore:
    """Embeddings as files in `folder`: shared by the worker processes of one machine and kept across
    restarts (precomputed embeddings survive a redeploy); LRU-bounded by total size. A file that cannot be
    read back (truncated, foreign) is deleted and missed; a folder fault only makes every get a miss."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.files = BoundedFolder(folder, max_bytes, ".emb")

    def _path(self, key: str) -> Path:
        return self.files.path(key)

    def get(self, key: str) -> Embedding | None:
        blob = self.files.read(key)
        if blob is None:
            return None
        try:
            return deserialize(blob)
        except Exception as exc:
            logger.warning("embedding file %s unusable (%s); deleted", self._path(key), exc)
            self.files.discard(key)
            return None

    def put(self, key: str, embedding: Embedding) -> None:
        self.files.write(key, serialize(embedding))

    def stats(self) -> dict:
        return {"kind": "disk", "folder": redact_paths(str(self.files.folder)), **self.files.stats()}


def make_cache(settings: Settings) -> EmbeddingCache:
    """Redis behind a per-worker LRU when REDIS_URL is set; else a disk folder behind the in-process LRU
    (EMBEDDING_DISK_MB > 0); else the in-process LRU alone."""
    if settings.redis_url:
        return TieredCache(MemoryCache(settings.embedding_cache_local_mb << 20),
                           RedisStore(settings.redis_url, settings.embedding_cache_ttl, settings.redis_timeout))
    front = MemoryCache(settings.embedding_cache_mb << 20)
    if settings.embedding_disk_mb > 0:
        return TieredCache(front, DiskStore(settings.embedding_disk_path, settings.embedding_disk_mb << 20))
    return front
