from __future__ import annotations

import numpy as np

from contentembed.services.gateway.cache import EmbeddingCache, cache_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_lru_and_space_drop() -> None:
    clock = Clock()
    cache = EmbeddingCache(ttl_s=10, max_entries=2, clock=clock)
    a, b, c = (cache_key("s1", "text", t) for t in ("a", "b", "c"))
    cache.put(a, np.ones(3), False)
    cache.put(b, np.zeros(3), True)
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, np.ones(3), False)  # evicts b, the least recently used
    assert cache.get(b) is None and cache.get(a) is not None
    clock.now = 11
    assert cache.get(a) is None  # expired
    cache.put(cache_key("s2", "text", "x"), np.ones(3), False)
    cache.put(cache_key("s1", "image", b"png"), np.ones(3), False)
    assert cache.drop_space("s1") == 1 and len(cache) == 1
    assert (cache.hits, cache.misses) == (2, 2)


def test_keys_separate_spaces_modalities_and_contents() -> None:
    keys = {
        cache_key("s1", "text", "red"),
        cache_key("s2", "text", "red"),
        cache_key("s1", "image", b"red"),
        cache_key("s1", "text", "Red"),
    }
    assert len(keys) == 4


def test_cached_vectors_cannot_be_changed_by_callers() -> None:
    cache = EmbeddingCache(ttl_s=10, max_entries=5)
    vector = np.ones(3, dtype=np.float32)
    key = cache_key("s", "text", "q")
    cache.put(key, vector, False)
    vector[0] = 42
    assert cache.get(key).vector[0] == 1.0
