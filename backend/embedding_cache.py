"""Image embeddings keyed by engine fingerprint + image content hash: in-process LRU, or Redis."""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections import OrderedDict
from typing import Protocol

import numpy as np

from .segmenter import Embedding
from .settings import Settings

logger = logging.getLogger(__name__)


def cache_key(fingerprint: str, image_key: str) -> str:
    return f"sam:emb:{fingerprint}:{image_key}"


def serialize(embedding: Embedding) -> bytes:
    features = np.ascontiguousarray(embedding.features)
    header = json.dumps(
        {
            "dtype": features.dtype.str,
            "shape": list(features.shape),
            "original_size": list(embedding.original_size),
            "input_size": list(embedding.input_size),
        }
    ).encode()
    return struct.pack("<I", len(header)) + header + features.tobytes()


def deserialize(blob: bytes) -> Embedding:
    (length,) = struct.unpack_from("<I", blob)
    header = json.loads(blob[4 : 4 + length])
    payload = bytearray(blob[4 + length :])  # writable: torch refuses read-only buffers
    features = np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
    return Embedding(
        features=features,
        original_size=tuple(header["original_size"]),
        input_size=tuple(header["input_size"]),
    )


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


class RedisCache:
    """Embeddings in Redis, shared by every worker process and machine; entries expire after `ttl` seconds.

    A small in-process LRU in front keeps the embeddings this worker used last (entries never change:
    the key is the content hash), so a burst of clicks on one image does not fetch it again each time.
    """

    def __init__(self, url: str, ttl: int, local_bytes: int = 128 * 1024 * 1024):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl = ttl
        self.local = MemoryCache(local_bytes)
        self.hits = self.misses = self.errors = 0

    def get(self, key: str) -> Embedding | None:
        embedding = self.local.get(key)
        if embedding is not None:
            return embedding
        try:
            blob = self.client.get(key)
        except Exception as exc:  # an unreachable cache must not fail the click: compute instead
            self.errors += 1
            logger.warning("embedding cache unreachable (%s); computing the embedding", exc)
            return None
        if blob is None:
            self.misses += 1
            return None
        self.hits += 1
        embedding = deserialize(blob)
        self.local.put(key, embedding)
        return embedding

    def put(self, key: str, embedding: Embedding) -> None:
        self.local.put(key, embedding)
        try:
            self.client.set(key, serialize(embedding), ex=self.ttl)
        except Exception as exc:
            self.errors += 1
            logger.warning("embedding cache unreachable (%s); not stored", exc)

    def stats(self) -> dict:
        return {"kind": "redis", "hits": self.hits, "misses": self.misses, "errors": self.errors,
                "local": self.local.stats()}


def make_cache(settings: Settings) -> EmbeddingCache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.embedding_cache_ttl, settings.embedding_cache_local_mb << 20)
    return MemoryCache(settings.embedding_cache_mb << 20)
