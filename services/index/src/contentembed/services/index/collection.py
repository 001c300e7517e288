"""One hnswlib collection bound to one embedding space. Pure index code: no grpc.

hnswlib checks almost nothing (dimension, NaN, duplicate labels, k > count), so every
check lives here, before hnswlib sees the data.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hnswlib
import numpy as np

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.rwlock import ReadWriteLock
from contentembed.services.common.validation import validate_ids
from contentembed.services.common.vectors import l2_normalize, reject_zero_rows

LIVE_VERSION = "live"


@dataclass(frozen=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 100


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


class HnswCollection:
    """Cosine HNSW over L2-normalized vectors with string ids and per-item metadata."""

    def __init__(
        self,
        name: str,
        space_id: str,
        dim: int,
        params: HnswParams,
        initial_capacity: int = 1024,
    ) -> None:
        self.name = name
        self.space_id = space_id
        self.dim = dim
        self.params = params
        self.version = LIVE_VERSION
        self._index = hnswlib.Index(space="cosine", dim=dim)
        self._index.init_index(
            max_elements=initial_capacity, ef_construction=params.ef_construction, M=params.m
        )
        self._index.set_ef(params.ef_search)
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._metadata: dict[int, dict[str, Any]] = {}
        self._next_label = 0
        self._lock = ReadWriteLock()
        self._exact_fallbacks = 0
        self._stats_lock = threading.Lock()

    @property
    def item_count(self) -> int:
        return len(self._label_of)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
    ) -> int:
        """Inserts or replaces; an id keeps exactly one live vector."""
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise InvalidArgument(
                f"vectors: expected {len(ids)} x {self.dim}, got {'x'.join(map(str, vectors.shape))}",
                reason="DIMENSION_MISMATCH",
            )
        validate_ids(ids, what="items")
        reject_zero_rows(vectors, what="items")
        vectors = l2_normalize(vectors)
        with self._lock.write():
            labels = np.empty(len(ids), dtype=np.uint64)
            fresh = 0
            for position, item_id in enumerate(ids):
                label = self._label_of.get(item_id)
                if label is None:
                    label = self._next_label + fresh
                    fresh += 1
                labels[position] = label
            needed = self._next_label + fresh
            capacity = self._index.get_max_elements()
            if needed > capacity:
                self._index.resize_index(max(needed, capacity * 2))
            self._index.add_items(vectors, labels, num_threads=1)
            for position, item_id in enumerate(ids):
                label = int(labels[position])
                self._label_of[item_id] = label
                self._id_of[label] = item_id
                self._metadata[label] = dict(metadata[position])
            self._next_label = needed
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Soft-deletes known ids; unknown ids are ignored. Returns how many were live."""
        deleted = 0
        with self._lock.write():
            for item_id in dict.fromkeys(ids):
                label = self._label_of.pop(item_id, None)
                if label is None:
                    continue
                self._index.mark_deleted(label)
                del self._id_of[label]
                del self._metadata[label]
                deleted += 1
        return deleted

    def search(self, query: np.ndarray, top_k: int, ef: int = 0) -> list[SearchHit]:
        if query.shape != (self.dim,):
            raise InvalidArgument(
                f"query: expected dimension {self.dim}, got {query.shape[-1] if query.ndim else 0}",
                reason="DIMENSION_MISMATCH",
            )
        reject_zero_rows(query[None, :], what="query")
        query = l2_normalize(query[None, :])
        custom_ef = ef and ef != self.params.ef_search
        # ef is index-wide in hnswlib: a request with its own ef searches alone, so its
        # ef never leaks into a concurrent search.
        guard = self._lock.write() if custom_ef else self._lock.read()
        with guard:
            live = len(self._label_of)
            if live == 0:
                return []
            k = min(top_k, live)
            if custom_ef:
                self._index.set_ef(max(ef, k))
            try:
                labels, distances = self._index.knn_query(query, k=k, num_threads=1)
            except RuntimeError:
                # hnswlib raises when the graph yields fewer than k live points (many
                # deletions, tiny ef); exact search over the same vectors always answers.
                with self._stats_lock:
                    self._exact_fallbacks += 1
                return self._exact_locked(query[0], k)
            finally:
                if custom_ef:
                    self._index.set_ef(self.params.ef_search)
            return [
                SearchHit(self._id_of[int(label)], 1.0 - float(distance), self._metadata[int(label)])
                for label, distance in zip(labels[0], distances[0])
            ]

    def exact_search(self, query: np.ndarray, top_k: int) -> list[SearchHit]:
        """Brute force over the same vectors: the reference for recall audits."""
        query = l2_normalize(query.reshape(1, self.dim))[0]
        with self._lock.read():
            return self._exact_locked(query, min(top_k, len(self._label_of)))

    def _exact_locked(self, query: np.ndarray, k: int) -> list[SearchHit]:
        if k <= 0:
            return []
        labels = np.fromiter(self._id_of.keys(), dtype=np.uint64, count=len(self._id_of))
        stored = np.asarray(self._index.get_items(labels), dtype=np.float32)
        scores = l2_normalize(stored) @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            SearchHit(self._id_of[int(labels[i])], float(scores[i]), self._metadata[int(labels[i])])
            for i in order
        ]
