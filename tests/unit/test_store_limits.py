"""What one admin request may make a shard hold: collections are capped, and an empty
collection of a large dimension does not allocate hundreds of MiB up front."""

from __future__ import annotations

import numpy as np
import pytest

from contentembed.services.common.errors import InvalidArgument, ResourceExhausted
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.store import MAX_DIM, CollectionStore


def test_collections_are_capped_per_shard() -> None:
    store = CollectionStore(HnswParams(), max_collections=3)
    for n in range(3):
        store.create(f"c{n}", "s@1", 8)
    with pytest.raises(ResourceExhausted) as caught:
        store.create("c3", "s@1", 8)
    assert caught.value.reason == "TOO_MANY_COLLECTIONS" and caught.value.retry_after_s is None
    assert store.create("c1", "s@1", 8, exist_ok=True)[1] is False  # an existing one is fine
    store.delete("c0")
    store.create("c3", "s@1", 8)


def test_dimensions_above_4096_are_refused_and_the_first_allocation_is_bounded() -> None:
    with pytest.raises(InvalidArgument) as caught:
        CollectionStore(HnswParams()).create("wide", "s@1", MAX_DIM + 1)
    assert caught.value.reason == "BAD_DIM"
    collection = HnswCollection("c", "s@1", MAX_DIM, HnswParams(), initial_capacity=1024)
    assert collection._index.capacity * MAX_DIM * 4 <= 2 << 20  # 2 MiB, not 16
    # It still grows as items come.
    vectors = np.random.default_rng(0).normal(size=(200, MAX_DIM)).astype(np.float32)
    collection.upsert([f"i{n}" for n in range(200)], vectors, [{}] * 200)
    assert collection.item_count == 200
