"""A collection's vectors under its integer labels: the DenseIndex protocol and HnswIndex,
its hnswlib implementation. Pure index code: no grpc.

hnswlib checks almost nothing (dimension, NaN, duplicate labels, k > count), is not safe
for writes concurrent with queries, and has one index-wide ef: HnswIndex adds neither
checks nor locks, the collection (collection.py) makes every check and holds its lock
around every call (searches share a read lock, writes and searches with their own ef take
the write lock).

A deleted label stays in the graph, marked, until a new label takes its slot
(``allow_replace_deleted``): churn does not grow memory, and a snapshot records how many
slots are vacant.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import hnswlib
import numpy as np

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.interrupt import Interrupt
from contentembed.services.common.vectors import l2_normalize
from contentembed.services.index.persistence import CorruptData

INITIAL_ALLOCATION_BYTES = 2 << 20
# hnswlib's file starts with six size_t: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData; vector bytes = label_offset - offsetData.
HNSW_HEADER = struct.Struct("<6Q")
MAX_M = 128
MAX_EF = 100_000


@dataclass(frozen=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 100


def check_hnsw_params(params: HnswParams) -> None:
    """hnswlib accepts values that fail later, at the first insert: refuse them up front."""
    if not 2 <= params.m <= MAX_M:
        raise InvalidArgument(f"hnsw.m must be 2..{MAX_M}, got {params.m}", reason="BAD_HNSW_PARAMS")
    for name, value in (("ef_construction", params.ef_construction), ("ef_search", params.ef_search)):
        if not 1 <= value <= MAX_EF:
            raise InvalidArgument(
                f"hnsw.{name} must be 1..{MAX_EF}, got {value}", reason="BAD_HNSW_PARAMS"
            )


def hnsw_file_dim(path: Path) -> int:
    """The vector dimension an hnswlib index file was written with (float32)."""
    try:
        with path.open("rb") as handle:
            fields = HNSW_HEADER.unpack(handle.read(HNSW_HEADER.size))
    except (OSError, struct.error) as error:
        raise CorruptData(f"{path}: unreadable hnswlib header ({error})") from None
    label_offset, offset_data = fields[4], fields[5]
    if label_offset <= offset_data or (label_offset - offset_data) % 4:
        raise CorruptData(f"{path}: implausible hnswlib header")
    return (label_offset - offset_data) // 4


class DenseIndex(Protocol):
    """What a collection asks of its vector index, and nothing more: ids, metadata, texts,
    checks and locks stay in the collection, so a second implementation (or a replica
    applying shipped records) plugs in here without touching them.

    Vectors arrive L2-normalized and checked; no call overlaps a write (the collection's
    lock), and a search with its own ef runs alone (set_ef is index-wide)."""

    @property
    def dim(self) -> int: ...

    @property
    def count(self) -> int:
        """Elements held: live labels and deleted ones whose slot is not reused yet."""
        ...

    @property
    def vacant(self) -> int:
        """Deleted slots that new labels take before the index grows."""
        ...

    def fill(self, vectors: np.ndarray) -> None:
        """Writes vectors under labels 0..n-1 into an empty index, in order on one thread:
        the same vectors give the same saved file byte for byte."""
        ...

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Writes vectors under labels the index has never held, growing it when the
        vacant slots do not suffice."""
        ...

    def replace(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Writes new vectors under live labels."""
        ...

    def mark_deleted(self, label: int) -> None:
        """Takes a live label out of searches; its slot becomes vacant."""
        ...

    def knn_query(
        self,
        queries: np.ndarray,
        k: int,
        num_threads: int,
        allowed: Callable[[int], bool] | None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels, cosine similarities as float64) of the k nearest live labels per query,
        best first, only labels ``allowed`` accepts; None when fewer than k are found.
        num_threads -1 is every core."""
        ...

    def vectors(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of labels (float32, one row each); KeyError when one of them
        is not live."""
        ...

    def labels(self) -> np.ndarray:
        """Every element's label (uint64), deleted ones included."""
        ...

    def set_ef(self, ef: int) -> None:
        """The ef of the searches that follow, until reset_ef."""
        ...

    def reset_ef(self) -> None:
        """Back to the ef_search the index was made with."""
        ...

    def save(self, path: Path) -> None:
        """Writes the index to path."""
        ...

    def check_saved(self, path: Path, elements: int) -> None:
        """Reads back what save wrote (without the collection's lock): OSError unless it
        holds ``elements`` elements."""
        ...


class HnswIndex:
    """DenseIndex on an hnswlib cosine index whose deleted slots new labels reuse."""

    def __init__(self, index: hnswlib.Index, params: HnswParams) -> None:
        self._index = index
        self._params = params
        self.vacant = 0  # deleted slots hnswlib may reuse
        index.set_ef(params.ef_search)

    @classmethod
    def create(cls, dim: int, params: HnswParams, initial_capacity: int) -> HnswIndex:
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(
            # Allocated at once: bounded in bytes too, so that an empty collection of a
            # large dimension does not hold hundreds of MiB (it grows as items come).
            max_elements=max(1, min(initial_capacity,
                                    INITIAL_ALLOCATION_BYTES // (4 * dim + 8 * params.m + 64))),
            ef_construction=params.ef_construction,
            M=params.m,
            allow_replace_deleted=True,  # deleted slots are reused: churn does not grow memory
        )
        return cls(index, params)

    @classmethod
    def load(cls, path: Path, dim: int, params: HnswParams) -> HnswIndex:
        """The index a snapshot's index.bin holds; RuntimeError when hnswlib cannot read
        it. Its vacant count is the snapshot's items.json's to set."""
        index = hnswlib.Index(space="cosine", dim=dim)
        index.load_index(str(path), max_elements=0, allow_replace_deleted=True)
        return cls(index, params)

    @property
    def dim(self) -> int:
        return int(self._index.dim)

    @property
    def count(self) -> int:
        return int(self._index.get_current_count())

    @property
    def capacity(self) -> int:
        """Elements the index has room for before it is resized."""
        return int(self._index.get_max_elements())

    def fill(self, vectors: np.ndarray) -> None:
        if len(vectors) > self.capacity:
            self._index.resize_index(len(vectors))
        if len(vectors):
            labels = np.arange(len(vectors), dtype=np.uint64)
            self._index.add_items(vectors, labels, num_threads=1)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        needed = self.count + max(0, len(labels) - self.vacant)
        capacity = self.capacity
        if needed > capacity:
            self._index.resize_index(max(needed, capacity * 2))
        # replace_deleted only for new labels: on a live label hnswlib would duplicate it.
        self._index.add_items(vectors, labels, num_threads=-1, replace_deleted=True)
        self.vacant = max(0, self.vacant - len(labels))

    def replace(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_items(vectors, labels, num_threads=-1)

    def mark_deleted(self, label: int) -> None:
        self._index.mark_deleted(label)
        self.vacant += 1

    def knn_query(
        self,
        queries: np.ndarray,
        k: int,
        num_threads: int,
        allowed: Callable[[int], bool] | None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            labels, distances = self._index.knn_query(
                queries, k=k, num_threads=num_threads, filter=allowed
            )
        except RuntimeError:
            # hnswlib raises when the graph yields fewer than k points (many deletions, a
            # narrow filter, small ef).
            return None
        return labels, 1.0 - distances.astype(np.float64)  # float64: as SearchHit always had it

    def vectors(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._index.get_items(labels), dtype=np.float32)
        except RuntimeError as error:  # hnswlib's answer for a label marked deleted
            raise KeyError(str(error)) from None

    def labels(self) -> np.ndarray:
        return np.fromiter(self._index.get_ids_list(), dtype=np.uint64, count=self.count)

    def set_ef(self, ef: int) -> None:
        self._index.set_ef(ef)

    def reset_ef(self) -> None:
        self._index.set_ef(self._params.ef_search)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    def check_saved(self, path: Path, elements: int) -> None:
        """hnswlib's save_index reports no I/O error: the file is loaded back and its
        element count checked."""
        check = hnswlib.Index(space="cosine", dim=self.dim)
        try:
            check.load_index(str(path), max_elements=0)
        except RuntimeError as error:
            raise OSError(f"snapshot {path} did not read back: {error}") from None
        if check.get_current_count() != elements:
            raise OSError(f"snapshot {path} read back with a wrong element count")


def exact_knn(
    index: DenseIndex,
    queries: np.ndarray,
    labels: np.ndarray,
    k: int,
    rows: int,
    interrupt: Interrupt,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, cosine similarities as float64) of the k best of ``labels`` (sorted, live,
    at least k) per normalized query, best first, equal scores by label. Brute force over
    any DenseIndex: the vectors are read back ``rows`` at a time, each block compared with
    every query at once, the best k per query kept as the blocks go (the interrupt checked
    between blocks)."""
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_labels = np.empty((len(queries), 0), dtype=np.uint64)
    for start in range(0, len(labels), rows):
        interrupt.check()
        block = labels[start:start + rows]
        stored = l2_normalize(index.vectors(block))
        scores = np.concatenate([best_scores, queries @ stored.T], axis=1)
        candidates = np.concatenate(
            [best_labels, np.broadcast_to(block, (len(queries), len(block)))], axis=1
        )
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(scores, keep, axis=1)
            candidates = np.take_along_axis(candidates, keep, axis=1)
        best_scores, best_labels = scores, candidates
    ranked_labels = np.empty_like(best_labels)
    ranked_scores = np.empty(best_scores.shape, dtype=np.float64)
    for row, (row_scores, row_labels) in enumerate(zip(best_scores, best_labels)):
        order = np.lexsort((row_labels, -row_scores))
        ranked_labels[row], ranked_scores[row] = row_labels[order], row_scores[order]
    return ranked_labels, ranked_scores
