"""The document cache: per-document encodings kept across requests, for families that declare them
(`Family.document_encodings`, late interaction), so a corpus reranked again and again is encoded once.

One cache per loaded model, bounded in bytes (`RerankerSettings.document_cache_bytes`, least recently used out
first). Entries are keyed by the artifact and serving plan (`scope`) and the family's content hash of the encoded
document, so two artifacts, or two plans of one artifact (timed under `auto`), never share an entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class DocumentCache:
    """A bytes-bounded LRU of numpy arrays, with hit, miss and eviction counts (thread-safe)."""

    def __init__(self, max_bytes: int, artifact: str = ""):
        self.max_bytes = max_bytes
        self.artifact = artifact  # what every key is prefixed with (the artifact's manifest hash)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def scope(self, plan: str) -> ScopedCache:
        """The cache as one serving plan of the artifact sees it (`families.base.EncodingCache`)."""
        return ScopedCache(self, f"{self.artifact}\n{plan}")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, namespace: str, key: bytes) -> np.ndarray | None:
        with self._lock:
            value = self._entries.get((namespace, key))
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end((namespace, key))
            self.hits += 1
            return value

    def put(self, namespace: str, key: bytes, value: np.ndarray) -> None:
        """Keep a read-only copy of `value`; one larger than the whole budget is not kept."""
        size = value.nbytes
        if size > self.max_bytes:
            return
        value = np.array(value, copy=True)
        value.flags.writeable = False  # callers share it
        with self._lock:
            old = self._entries.pop((namespace, key), None)
            if old is not None:
                self.bytes -= old.nbytes
            self._entries[(namespace, key)] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1


class ScopedCache:
    """One namespace of a DocumentCache (`families.base.EncodingCache`)."""

    def __init__(self, cache: DocumentCache, namespace: str):
        self.cache = cache
        self.namespace = namespace

    def get(self, key: bytes) -> np.ndarray | None:
        return self.cache.get(self.namespace, key)

    def put(self, key: bytes, value: np.ndarray) -> None:
        self.cache.put(self.namespace, key, value)
