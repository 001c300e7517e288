"""Merging shard answers. Pure: no grpc, no protobuf."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    shard_index: int
    metadata: dict[str, Any] = field(default_factory=dict)


def merge_top_k(shard_answers: Iterable[Iterable[Hit]], top_k: int) -> list[Hit]:
    """Best ``top_k`` hits by cosine score over all shards, one per id.

    Ties are broken by id so the same inputs always give the same order, whatever
    order the shards answered in.
    """
    best: dict[str, Hit] = {}
    for hits in shard_answers:
        for hit in hits:
            current = best.get(hit.id)
            if current is None or hit.score > current.score:
                best[hit.id] = hit
    return heapq.nsmallest(top_k, best.values(), key=lambda hit: (-hit.score, hit.id))
