"""Merging shard answers. Pure: no grpc, no protobuf."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

RRF_K = 60  # the constant of Cormack et al. (2009); damps the weight of the very first ranks


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    shard_index: int
    metadata: dict[str, Any] = field(default_factory=dict)
    collection: str = ""
    # Each retriever's own score and rank (from 1) in its list merged over the shards, set
    # on the gateway's answer: which retriever found the hit, and how well. None / 0: that
    # retriever did not have it among its candidates.
    dense_score: float | None = None
    lexical_score: float | None = None
    dense_rank: int = 0
    lexical_rank: int = 0


def merge_top_k(shard_answers: Iterable[Iterable[Hit]], top_k: int) -> list[Hit]:
    """Best ``top_k`` hits by cosine score over all shards, one per id.

    Ties are broken by id so the same inputs always give the same order, whatever
    order the shards answered in.
    """
    best: dict[tuple[str, str], Hit] = {}
    for hits in shard_answers:
        for hit in hits:
            key = (hit.collection, hit.id)
            current = best.get(key)
            if current is None or hit.score > current.score:
                best[key] = hit
    return heapq.nsmallest(
        top_k, best.values(), key=lambda hit: (-hit.score, hit.collection, hit.id)
    )


def reciprocal_rank_fusion(ranked_lists: Iterable[list[Hit]], top_k: int) -> list[Hit]:
    """Fuses rankings whose scores are not comparable (different spaces): each hit scores
    sum(1 / (RRF_K + rank)) over the lists it appears in, rank counted from 1."""
    fused: dict[tuple[str, str], float] = {}
    first: dict[tuple[str, str], Hit] = {}
    for hits in ranked_lists:
        for rank, hit in enumerate(hits, start=1):
            key = (hit.collection, hit.id)
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(key, hit)
    order = heapq.nsmallest(top_k, fused, key=lambda key: (-fused[key], key))
    return [replace(first[key], score=fused[key]) for key in order]
