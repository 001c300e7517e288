from __future__ import annotations

from collections import Counter

import pytest

from contentembed.services.common.sharding import shard_for_id


def test_routing_is_pinned() -> None:
    # Changing the hash would strand every stored item on the wrong shard: these
    # values must never change.
    assert [shard_for_id(f"item-{i}", 4) for i in range(8)] == PINNED


PINNED = [1, 0, 3, 2, 1, 3, 2, 3]


def test_spreads_ids_evenly() -> None:
    counts = Counter(shard_for_id(f"doc-{i}", 4) for i in range(8000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 1800


def test_rejects_zero_shards() -> None:
    with pytest.raises(ValueError):
        shard_for_id("x", 0)
