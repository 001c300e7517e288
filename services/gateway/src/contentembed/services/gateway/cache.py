"""Query-embedding cache: TTL + size-bounded LRU keyed by (space, modality, content digest).
Pure: no grpc."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CacheKey = tuple[str, str, str]  # space id, modality, sha256 of the content


@dataclass(frozen=True)
class CachedEmbedding:
    vector: np.ndarray
    truncated: bool
    expires: float


def cache_key(space_id: str, modality: str, content: str | bytes) -> CacheKey:
    data = content.encode("utf-8") if isinstance(content, str) else content
    return space_id, modality, hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    def __init__(
        self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, CachedEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> CachedEmbedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires <= self._clock():
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: CacheKey, vector: np.ndarray, truncated: bool) -> None:
        if self.max_entries <= 0 or self.ttl_s <= 0:
            return
        vector = np.array(vector, dtype=np.float32)  # own copy: callers may reuse buffers
        vector.flags.writeable = False
        with self._lock:
            self._entries[key] = CachedEmbedding(vector, truncated, self._clock() + self.ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop_space(self, space_id: str) -> int:
        """Forgets a space's entries (its encoder's model changed); returns how many."""
        with self._lock:
            stale = [key for key in self._entries if key[0] == space_id]
            for key in stale:
                del self._entries[key]
            return len(stale)

    def __len__(self) -> int:
        return len(self._entries)
