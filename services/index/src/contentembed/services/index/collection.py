"""One hnswlib collection bound to one embedding space. Pure index code: no grpc.

hnswlib checks almost nothing (dimension, NaN, duplicate labels, k > count), is not safe
for writes concurrent with queries, and has one index-wide ef, so every check and all
locking live here: searches share a read lock, writes (and searches with their own ef)
take the write lock.

Every item keeps the text it was embedded from (if it was sent one), so a new model can
embed it again; a lexical collection also indexes that text for BM25 (lexical.py), under
the same labels and the same locks, so both indexes always hold the same items.

A lexical-only collection (LexicalParams.lexical_only; dim 0, space_id "") has no hnswlib
index at all (``_index`` is None): items carry text and no vector, labels map ids exactly
as in a dense collection (handed out in order, never reused; with no hnswlib slots there
is nothing vacant to reuse), and dense searches are FAILED_PRECONDITION DENSE_NOT_ENABLED.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import hnswlib
import numpy as np

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.common.interrupt import NEVER, Interrupt
from contentembed.services.common.rwlock import ReadWriteLock
from contentembed.services.common.validation import shown, validate_ids
from contentembed.services.common.vectors import l2_normalize, reject_zero_rows
from contentembed.services.index.cost import SearchShape, check_search_cost
from contentembed.services.index.lexical import (
    LexicalIndex,
    LexicalParams,
    check_text,
    check_texts,
)
from contentembed.services.index.payload import PayloadIndex, matching_labels
from contentembed.services.index.persistence import CorruptData, WalRecord, write_manifest

LIVE_VERSION = "live"
NO_METADATA: Mapping[str, Any] = MappingProxyType({})
# A filter matching at most this share of the items is answered by exact search over the
# matches (perfect recall, cheap); a wider one by HNSW with a filter callback.
EXACT_FILTER_SHARE = 0.05
EXACT_FILTER_MAX = 5000
INITIAL_ALLOCATION_BYTES = 2 << 20
# Items of one upsert applied under one hold of the write lock (see ``upsert``).
APPLY_SLICE = 256
# Dense work between two looks at the caller's interrupt: HNSW queries go to hnswlib in
# chunks of about CHUNK_S, an exact search reads stored vectors in blocks of this size.
CHUNK_S = 0.02
FIRST_CHUNK_QUERIES = 16
MAX_CHUNK_QUERIES = 256
# hnswlib searches a batch on one thread when it has at most four queries per thread: a
# chunk is never smaller than that, or a batch of costly queries would use one core.
PARALLEL_CHUNK_QUERIES = 4 * len(os.sched_getaffinity(0)) + 1
EXACT_BLOCK_BYTES = 1 << 20


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


@dataclass(frozen=True)
class HitColumns:
    """One query's hits as columns, best first: what a packed answer is built from,
    without an object per hit (for 100 queries x 10 hits those objects cost about a
    fifth of the HNSW search itself)."""

    ids: list[str]
    scores: np.ndarray  # float64, one per id
    metadata: list[dict[str, Any]]

    @classmethod
    def of(cls, hits: Sequence[SearchHit]) -> HitColumns:
        return cls(
            [h.id for h in hits],
            np.fromiter((h.score for h in hits), dtype=np.float64, count=len(hits)),
            [h.metadata for h in hits],
        )

    def hits(self) -> list[SearchHit]:
        return [SearchHit(*hit) for hit in zip(self.ids, self.scores.tolist(), self.metadata)]


@dataclass(frozen=True)
class StoredItem:
    id: str
    vector: np.ndarray
    metadata: dict[str, Any]
    text: str = ""  # "" when the item was written without text


Journal = Callable[[WalRecord], None]


class HnswCollection:
    """Cosine HNSW over L2-normalized vectors with string ids and per-item metadata."""

    def __init__(
        self,
        name: str,
        space_id: str,
        dim: int,
        params: HnswParams,
        initial_capacity: int = 1024,
        version: str = LIVE_VERSION,
        lexical: LexicalParams | None = None,
    ) -> None:
        self.name = name
        self.space_id = space_id
        self.dim = dim
        self.params = params
        self.version = version
        self.journal: Journal | None = None
        self.seq = 0  # last write applied; snapshots and the WAL are ordered by it
        # sha256 of the bundle part's manifest this version was installed from; "" for a
        # collection built online. Written into every snapshot manifest of the version.
        self.bundle_digest = ""
        # Only for a pending version (BeginVersion): ids deleted while it waits for its
        # bundle, which may hold them. None for every other version.
        self.tombstones: set[str] | None = None
        lexical_only = lexical is not None and lexical.lexical_only
        if lexical_only != (dim == 0):
            raise ValueError(f"dim 0 is for lexical-only collections only (dim {dim}, {lexical})")
        self._index: hnswlib.Index | None = None
        if not lexical_only:
            self._index = hnswlib.Index(space="cosine", dim=dim)
            self._index.init_index(
                # Allocated at once: bounded in bytes too, so that an empty collection of
                # a large dimension does not hold hundreds of MiB (it grows as items come).
                max_elements=max(1, min(initial_capacity,
                                        INITIAL_ALLOCATION_BYTES // (4 * dim + 8 * params.m + 64))),
                ef_construction=params.ef_construction,
                M=params.m,
                allow_replace_deleted=True,  # deleted slots are reused: churn does not grow memory
            )
            self._index.set_ef(params.ef_search)
        self._label_of: dict[str, int] = {}
        # label -> id as a list (labels are dense and never reused): a dict would cost about
        # 100 bytes more per item, a third of a 384-d vector's graph overhead.
        self._id_of: list[str | None] = []
        self._metadata: dict[int, dict[str, Any]] = {}
        # Labels by metadata value, so a filter costs what it matches (payload.py).
        self._payload = PayloadIndex()
        # label -> text, for items written with one (kept by every collection; indexed by
        # a lexical one, whose documents are keyed by the same labels).
        self._text: dict[int, str] = {}
        self._lexical = LexicalIndex(lexical) if lexical is not None else None
        self._next_label = 0
        self._vacant = 0  # deleted slots hnswlib may reuse
        self._lock = ReadWriteLock()
        # Writers queue here first: a snapshot holds it (with a read lock) to keep writes
        # out, while searches still pass; a writer waiting inside the writer-preferring
        # RW lock would otherwise hold every search up behind the snapshot.
        self._writers = threading.Lock()

    @property
    def item_count(self) -> int:
        return len(self._label_of)

    @property
    def pending(self) -> bool:
        return self.tombstones is not None

    @property
    def dense(self) -> bool:
        """False for a lexical-only collection: no vectors, no dense search."""
        return self._index is not None

    def require_dense(self) -> None:
        """FAILED_PRECONDITION DENSE_NOT_ENABLED for a lexical-only collection."""
        if self._index is None:
            raise FailedPrecondition(
                f"collection {self.name!r} is lexical-only: it has no vectors; "
                "search it by text",
                reason="DENSE_NOT_ENABLED",
            )

    @property
    def lexical_params(self) -> LexicalParams | None:
        """How the lexical index analyses text; None for a dense-only collection."""
        return None if self._lexical is None else self._lexical.params

    # -- writes ----------------------------------------------------------------------
    def _checked(
        self, ids: Sequence[str], vectors: np.ndarray | None, texts: Sequence[str] | None
    ) -> np.ndarray:
        """The vectors L2-normalized, once ids, shape and texts are known to be valid. A
        lexical-only collection takes no vectors (None or n x 0) and needs every text."""
        if self._index is None:
            return self._checked_lexical_only(ids, vectors, texts)
        if vectors is None:
            raise InvalidArgument(
                f"vectors: collection {self.name!r} needs {len(ids)} x {self.dim}, got none",
                reason="DIMENSION_MISMATCH",
            )
        if vectors.ndim != 2 or vectors.shape != (len(ids), self.dim):
            raise InvalidArgument(
                f"vectors: expected {len(ids)} x {self.dim}, got {'x'.join(map(str, vectors.shape))}",
                reason="DIMENSION_MISMATCH",
            )
        validate_ids(ids, what="items")
        check_texts(texts, len(ids))
        reject_zero_rows(vectors, what="items")
        return l2_normalize(vectors)

    def _checked_lexical_only(
        self, ids: Sequence[str], vectors: np.ndarray | None, texts: Sequence[str] | None
    ) -> np.ndarray:
        if vectors is not None and vectors.size:
            raise InvalidArgument(
                f"collection {self.name!r} is lexical-only: items carry text, not vectors",
                reason="VECTOR_NOT_EXPECTED",
            )
        validate_ids(ids, what="items")
        check_texts(texts, len(ids))
        # An item without text could never be found (there is nothing else to search by).
        for position, text in enumerate(texts or [""] * len(ids)):
            if not text:
                raise InvalidArgument(
                    f"items[{position}]: collection {self.name!r} is lexical-only, every "
                    "item needs text",
                    reason="TEXT_REQUIRED",
                )
        return np.empty((len(ids), 0), dtype=np.float32)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray | None,
        metadata: Sequence[dict[str, Any]],
        texts: Sequence[str] | None = None,
    ) -> int:
        """Inserts or replaces; an id keeps exactly one live vector, and the text given
        with it ("" or no texts: none, and an earlier text is dropped). Journaled first.

        Applied in slices of APPLY_SLICE items, each under the write lock on its own:
        inserting 10,000 items into HNSW takes seconds, and searches of the collection
        waited out the whole write (19 s measured, replacing 10,000 384-d items), where now
        they wait for one slice. A search between slices sees part of the write; the write
        is acknowledged, and snapshotted, only once all of it is applied (writers, and
        snapshots, queue on ``_writers`` meanwhile)."""
        vectors = self._checked(ids, vectors, texts)
        # Only writes that carry text log it: the others stay as they were before texts.
        logged = list(texts) if texts is not None and any(texts) else None
        with self._writers:
            with self._lock.write():
                record = WalRecord(
                    self.seq + 1, "upsert", list(ids), vectors, [dict(m) for m in metadata], logged
                )
                if self.journal is not None:
                    self.journal(record)
            for start in range(0, len(ids), APPLY_SLICE):
                with self._lock.write():
                    self._apply_upsert(record.slice(start, start + APPLY_SLICE))
        return len(ids)

    def bulk_insert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray | None,
        metadata: Sequence[Mapping[str, Any]],
        texts: Sequence[str] | None = None,
    ) -> int:
        """Fills an empty collection in the given order on one thread (labels 0..n-1): the
        same items in the same order give the same index.bin byte for byte, which is what
        makes a batch build's bundle reproducible. Not journaled; one write (seq + 1)."""
        vectors = self._checked(ids, vectors, texts)
        with self._writers, self._lock.write():
            if self._next_label:
                raise ValueError("bulk_insert fills an empty collection only")
            if self._index is not None:
                if len(ids) > self._index.get_max_elements():
                    self._index.resize_index(len(ids))
                if len(ids):
                    labels = np.arange(len(ids), dtype=np.uint64)
                    self._index.add_items(vectors, labels, num_threads=1)
            self._label_of = {item_id: label for label, item_id in enumerate(ids)}
            self._id_of = list(ids)
            self._metadata = {label: dict(m) for label, m in enumerate(metadata) if m}
            self._payload = PayloadIndex.of(self._metadata.items())
            self._text = {label: text for label, text in enumerate(texts or ()) if text}
            if self._lexical is not None:
                self._lexical.write((), self._text.items())
            self._next_label = len(ids)
            self.seq += 1
        return len(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Soft-deletes known ids (their slots get reused); unknown ids are ignored, except
        by a pending version, which journals them all as tombstones: the bundle installed
        into it later may hold them. Returns how many ids existed here."""
        with self._writers, self._lock.write():
            unique = list(dict.fromkeys(ids))
            known = [i for i in unique if i in self._label_of]
            logged = unique if self.pending else known
            if not logged:
                return 0
            record = WalRecord(self.seq + 1, "delete", logged)
            if self.journal is not None:
                self.journal(record)
            self._apply_delete(record)
            return len(known)

    def replay(self, record: WalRecord) -> None:
        """Applies a logged write during recovery (not journaled again)."""
        if record.seq <= self.seq:
            return  # already in the snapshot
        with self._lock.write():
            if record.op == "upsert":
                self._apply_upsert(record)
            else:
                self._apply_delete(record)

    def _apply_upsert(self, record: WalRecord) -> None:
        assert record.vectors is not None and record.metadata is not None
        if self._index is None:
            self._label_lexical_only(record.ids)
        else:
            self._add_vectors(record)
        texts = record.texts or [""] * len(record.ids)
        removed: list[int] = []  # labels whose lexical document goes
        added: list[tuple[int, str]] = []
        for position, item_id in enumerate(record.ids):
            label = self._label_of[item_id]
            previous = self._metadata.get(label)
            if previous is not None:
                self._payload.remove(label, previous)
            if record.metadata[position]:
                self._metadata[label] = record.metadata[position]
                self._payload.add(label, record.metadata[position])
            elif previous is not None:
                # Most catalogs have many items without metadata: nothing is stored for them.
                del self._metadata[label]
            old, new = self._text.get(label), texts[position]
            if new:
                self._text[label] = new
            else:
                self._text.pop(label, None)
            if old != (new or None):  # a rewrite with the same text keeps its document
                if old is not None:
                    removed.append(label)
                if new:
                    added.append((label, new))
        if self._lexical is not None and (removed or added):
            self._lexical.write(removed, added)
        if self.tombstones is not None:
            self.tombstones.difference_update(record.ids)  # written again: alive after all
        self.seq = record.seq

    def _add_vectors(self, record: WalRecord) -> None:
        """Writes the record's vectors into hnswlib, giving new ids the next labels."""
        assert self._index is not None and record.vectors is not None
        existing = [p for p, i in enumerate(record.ids) if i in self._label_of]
        fresh = [p for p, i in enumerate(record.ids) if i not in self._label_of]
        if existing:
            labels = np.array([self._label_of[record.ids[p]] for p in existing], dtype=np.uint64)
            self._index.add_items(record.vectors[existing], labels, num_threads=-1)
        if fresh:
            needed = self._index.get_current_count() + max(0, len(fresh) - self._vacant)
            capacity = self._index.get_max_elements()
            if needed > capacity:
                self._index.resize_index(max(needed, capacity * 2))
            labels = np.arange(self._next_label, self._next_label + len(fresh), dtype=np.uint64)
            # replace_deleted only for new labels: on a live label hnswlib would duplicate it.
            self._index.add_items(
                record.vectors[fresh], labels, num_threads=-1, replace_deleted=True
            )
            self._vacant = max(0, self._vacant - len(fresh))
            for position, label in zip(fresh, labels):
                self._label_of[record.ids[position]] = int(label)
                self._id_of.append(record.ids[position])
            self._next_label += len(fresh)

    def _label_lexical_only(self, ids: Sequence[str]) -> None:
        """New ids get the next labels, as in _add_vectors (never reused either: the
        label list stays the id list snapshots store, deleted labels as None)."""
        for item_id in ids:
            if item_id not in self._label_of:
                self._label_of[item_id] = self._next_label
                self._id_of.append(item_id)
                self._next_label += 1

    def _apply_delete(self, record: WalRecord) -> None:
        if self.tombstones is not None:
            self.tombstones.update(record.ids)
        removed: list[int] = []
        for item_id in record.ids:
            label = self._label_of.pop(item_id, None)
            if label is None:
                continue
            self._id_of[label] = None
            previous = self._metadata.pop(label, None)
            if previous is not None:
                self._payload.remove(label, previous)
            if self._text.pop(label, None) is not None:
                removed.append(label)
            if self._index is not None:
                self._index.mark_deleted(label)
                self._vacant += 1
        if self._lexical is not None and removed:
            self._lexical.write(removed, ())
        self.seq = record.seq

    def absorb(self, pending: HnswCollection) -> None:
        """Applies a pending version's net state on top of this one (a bundle loaded into
        it): its live items are newer than the bundle's catalog and replace them, its
        tombstones delete. Not journaled: the caller snapshots the result, whose seq is
        above every record of the pending version's log. Holds the pending version's
        writer lock throughout, so its state cannot move while it is copied."""
        with pending._writers, pending._lock.read(), self._writers, self._lock.write():
            ids = [i for i in pending._id_of if i is not None]
            if ids:
                labels = [pending._label_of[i] for i in ids]
                vectors = pending._vectors_locked(labels)
                metadata = [dict(pending._metadata.get(label, NO_METADATA)) for label in labels]
                texts = [pending._text.get(label, "") for label in labels]
                self._apply_upsert(WalRecord(self.seq + 1, "upsert", ids, vectors, metadata,
                                             texts if any(texts) else None))
            if pending.tombstones:
                self._apply_delete(WalRecord(self.seq + 1, "delete", sorted(pending.tombstones)))
            self.seq = max(self.seq, pending.seq) + 1

    def settle(self) -> None:
        """Commits the lexical writes no search has committed yet: after a WAL replay or an
        install (thousands of documents), so the first search does not wait for them."""
        if self._lexical is not None:
            with self._lock.read():
                self._lexical.searcher()

    # -- reads -----------------------------------------------------------------------
    def _vectors_locked(self, labels: Sequence[int]) -> np.ndarray:
        """The stored vectors of live labels (n x 0 for a lexical-only collection)."""
        if self._index is None:
            return np.empty((len(labels), 0), dtype=np.float32)
        return np.asarray(self._index.get_items(labels), dtype=np.float32)

    def _check_query(self, queries: np.ndarray) -> np.ndarray:
        self.require_dense()
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidArgument(
                f"query: expected dimension {self.dim}, got {queries.shape[-1] if queries.ndim else 0}",
                reason="DIMENSION_MISMATCH",
            )
        reject_zero_rows(queries, what="query")
        return l2_normalize(queries)

    def search(
        self,
        query: np.ndarray,
        top_k: int,
        ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> list[SearchHit]:
        return self.search_batch(query.reshape(1, -1), top_k, ef, metadata_filter, exact)[0]

    def search_batch(
        self,
        queries: np.ndarray,
        top_k: int,
        ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> list[list[SearchHit]]:
        return self.search_both(queries, None, top_k, ef, metadata_filter, exact)[0]

    def search_lexical_batch(
        self,
        texts: Sequence[str],
        top_k: int,
        metadata_filter: Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """BM25 hits for each query text, best first (score: BM25 over this collection's
        term statistics). A text with no terms left after analysis has no hits. The filter
        is part of each query (exact: top_k matching hits whenever that many match).
        FAILED_PRECONDITION LEXICAL_NOT_ENABLED on a collection without a lexical index."""
        return self.search_both(None, texts, top_k, metadata_filter=metadata_filter)[1]

    def search_both(
        self,
        queries: np.ndarray | None,
        texts: Sequence[str] | None,
        top_k: int,
        ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> tuple[list[list[SearchHit]], list[list[SearchHit]]]:
        """(dense hits per query vector, lexical hits per text); a retriever not asked
        (None) answers []. As ``search_columns``, one object per hit."""
        dense, lexical = self.search_columns(queries, texts, top_k, ef, metadata_filter, exact)
        return [c.hits() for c in dense], [c.hits() for c in lexical]

    def search_columns(
        self,
        queries: np.ndarray | None,
        texts: Sequence[str] | None,
        top_k: int,
        ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        exact: bool = False,
        interrupt: Interrupt = NEVER,
        max_cpu_s: float | None = None,
    ) -> tuple[list[HitColumns], list[HitColumns]]:
        """(dense hits per query vector, lexical hits per text) as columns; a retriever
        not asked (None) answers []. Both answer under one lock, from the same state of
        the collection, with the filter's matching labels found once.

        The dense part's cost is estimated once the filter's matches are known and
        refused above ``max_cpu_s`` (cost.py: SEARCH_TOO_COSTLY) before any vector is
        compared. The work runs in chunks with ``interrupt`` checked between them: a
        cancelled or late call stops within one chunk (Cancelled, DeadlineExceeded)."""
        if queries is not None:
            queries = self._check_query(queries)
        if texts is not None:
            if self._lexical is None:
                raise FailedPrecondition(
                    f"collection {self.name!r} (version {self.version}) has no lexical index; "
                    "create it with lexical enabled to search by text",
                    reason="LEXICAL_NOT_ENABLED",
                )
            for position, text in enumerate(texts):
                check_text(text, what=f"texts[{position}]")
        custom_ef = queries is not None and bool(ef) and ef != self.params.ef_search and not exact
        # ef is index-wide in hnswlib: a request with its own ef searches alone, so its
        # ef never leaks into a concurrent search.
        with self._lock.write() if custom_ef else self._lock.read():
            allowed = self._allowed_locked(metadata_filter, interrupt)
            dense: list[HitColumns] = []
            if queries is not None:
                exact = exact or self._exact_is_cheaper(allowed)
                check_search_cost(
                    SearchShape(len(queries), self.dim, self.item_count, top_k,
                                ef if custom_ef else self.params.ef_search, exact,
                                None if allowed is None else len(allowed)),
                    max_cpu_s,
                )
                if exact:
                    dense = self._exact_locked(queries, top_k, allowed, interrupt)
                else:
                    dense = self._dense_locked(
                        queries, top_k, ef if custom_ef else 0, allowed, interrupt
                    )
            lexical = [] if texts is None else [
                HitColumns.of(hits)
                for hits in self._lexical_locked(texts, top_k, allowed, interrupt)
            ]
            return dense, lexical

    def _exact_is_cheaper(self, allowed: list[int] | None) -> bool:
        """A filter matching few items is answered exactly over its matches: perfect
        recall, and cheaper than a graph walk that skips most nodes."""
        return allowed is not None and len(allowed) <= min(
            EXACT_FILTER_MAX, EXACT_FILTER_SHARE * self.item_count
        )

    def _dense_locked(
        self,
        queries: np.ndarray,
        top_k: int,
        custom_ef: int,
        allowed: list[int] | None,
        interrupt: Interrupt,
    ) -> list[HitColumns]:
        """HNSW hits of normalized queries, under the lock search_columns holds (the
        write lock when ``custom_ef`` is set). The queries go to hnswlib in chunks sized to
        take about CHUNK_S each, the interrupt checked between chunks."""
        assert self._index is not None  # _check_query refused a lexical-only collection
        live = self.item_count if allowed is None else len(allowed)
        k = min(top_k, live)
        if k == 0:
            return [HitColumns.of([]) for _ in queries]
        if custom_ef:
            self._index.set_ef(max(custom_ef, k))
        allowed_set = None if allowed is None else set(allowed)
        columns: list[HitColumns] = []
        size = FIRST_CHUNK_QUERIES
        try:
            while len(columns) < len(queries):
                interrupt.check()
                chunk = queries[len(columns): len(columns) + size]
                started = time.perf_counter()
                try:
                    labels, distances = self._index.knn_query(
                        chunk,
                        k=k,
                        # Batches use every core; a filter callback is Python, so one thread.
                        num_threads=1 if allowed_set is not None or len(chunk) == 1 else -1,
                        filter=None if allowed_set is None else allowed_set.__contains__,
                    )
                except RuntimeError:
                    # hnswlib raises when the graph yields fewer than k points (many
                    # deletions, a narrow filter, small ef); exact search answers.
                    columns.extend(self._exact_locked(chunk, top_k, allowed, interrupt))
                    continue
                columns.extend(self._columns(labels, distances))
                per_query = (time.perf_counter() - started) / len(chunk)
                size = max(PARALLEL_CHUNK_QUERIES,
                           min(MAX_CHUNK_QUERIES, int(CHUNK_S / max(per_query, 1e-7))))
        finally:
            if custom_ef:
                self._index.set_ef(self.params.ef_search)
        return columns

    def _columns(self, labels: np.ndarray, distances: np.ndarray) -> list[HitColumns]:
        id_of, metadata = self._id_of, self._metadata
        scores = 1.0 - distances.astype(np.float64)  # float64: as SearchHit always had it
        columns = []
        for row_labels, row_scores in zip(labels.tolist(), scores):
            ids = [id_of[label] for label in row_labels]
            columns.append(HitColumns(
                ids,  # type: ignore[arg-type]  # a label hnswlib returns is live: its id is set
                row_scores,
                [metadata.get(label, NO_METADATA) for label in row_labels],
            ))
        return columns

    def _allowed_locked(
        self, metadata_filter: Mapping[str, Any] | None, interrupt: Interrupt = NEVER
    ) -> list[int] | None:
        """The labels whose metadata matches the filter, ascending; None without a
        filter. Planned on the payload index: the cost follows the matches."""
        if not metadata_filter:
            return None
        return matching_labels(self._payload, self._metadata, metadata_filter, interrupt)

    def _lexical_locked(
        self, texts: Sequence[str], top_k: int, allowed_labels: list[int] | None,
        interrupt: Interrupt = NEVER,
    ) -> list[list[SearchHit]]:
        """BM25 hits per text, under the read (or write) lock search_both holds."""
        assert self._lexical is not None  # search_both refused a collection without one
        allowed = None if allowed_labels is None else frozenset(allowed_labels)
        results = []
        for text in texts:
            interrupt.check()
            hits = self._lexical.search(text, top_k, allowed)
            results.append([
                SearchHit(item_id, score, self._metadata.get(label, NO_METADATA))
                for label, score in hits
                if (item_id := self._id_of[label]) is not None  # never: deletes commit first
            ])
        return results

    def exact_search(self, query: np.ndarray, top_k: int) -> list[SearchHit]:
        """Brute force over the same vectors: the reference for recall audits."""
        return self.search(query, top_k, exact=True)

    def _exact_locked(
        self,
        queries: np.ndarray,
        top_k: int,
        allowed: Sequence[int] | None,
        interrupt: Interrupt = NEVER,
    ) -> list[HitColumns]:
        """Brute force for normalized queries over every item (or the allowed ones):
        their vectors read back in blocks of about EXACT_BLOCK_BYTES, each block compared
        with every query at once, the best top_k per query kept as the blocks go (the
        interrupt checked between blocks). Equal scores rank by label."""
        assert self._index is not None
        labels = np.fromiter(
            self._label_of.values() if allowed is None else allowed, dtype=np.uint64
        )
        labels.sort()
        k = min(top_k, len(labels))
        if k == 0:
            return [HitColumns.of([]) for _ in queries]
        rows = max(1, min(EXACT_BLOCK_BYTES // (4 * self.dim),
                          EXACT_BLOCK_BYTES // (8 * len(queries))))
        best_scores = np.empty((len(queries), 0), dtype=np.float32)
        best_labels = np.empty((len(queries), 0), dtype=np.uint64)
        for start in range(0, len(labels), rows):
            interrupt.check()
            block = labels[start:start + rows]
            stored = l2_normalize(np.asarray(self._index.get_items(block), dtype=np.float32))
            scores = np.concatenate([best_scores, queries @ stored.T], axis=1)
            candidates = np.concatenate(
                [best_labels, np.broadcast_to(block, (len(queries), len(block)))], axis=1
            )
            if scores.shape[1] > k:
                keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                scores = np.take_along_axis(scores, keep, axis=1)
                candidates = np.take_along_axis(candidates, keep, axis=1)
            best_scores, best_labels = scores, candidates
        columns = []
        for row_scores, row_labels in zip(best_scores, best_labels):
            order = np.lexsort((row_labels, -row_scores))
            ranked = row_labels[order].tolist()
            columns.append(HitColumns(
                [self._id_of[label] for label in ranked],  # type: ignore[misc]
                row_scores[order].astype(np.float64),
                [self._metadata.get(label, NO_METADATA) for label in ranked],
            ))
        return columns

    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """The stored items among ids, in request order (unknown ids are left out)."""
        with self._lock.read():
            found = [i for i in ids if i in self._label_of]
            if not found:
                return []
            labels = [self._label_of[i] for i in found]
            vectors = self._vectors_locked(labels)
            return [
                StoredItem(i, vectors[n], self._metadata.get(label, NO_METADATA),
                           self._text.get(label, ""))
                for n, (i, label) in enumerate(zip(found, labels))
            ]

    def metadata_items(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(id, metadata) of every item that has metadata; for checks at load time, before
        the collection is shared (no lock)."""
        for label, values in self._metadata.items():
            item_id = self._id_of[label]
            assert item_id is not None  # checked when the snapshot was loaded
            yield item_id, values

    def list_ids(self, after: str, limit: int) -> tuple[list[str], bool]:
        """Ids in lexical order after ``after``; True when more follow."""
        with self._lock.read():
            ids = sorted(i for i in self._label_of if i > after)
        return ids[:limit], len(ids) > limit

    # -- snapshots -------------------------------------------------------------------
    def write_snapshot(self, directory: Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """index.bin + items.json + manifest.json (sha256 of each) into an empty directory;
        a lexical-only collection has no index.bin.

        hnswlib's save_index reports no I/O error, so the file is loaded back and its
        element count checked before the manifest (which makes the snapshot valid) exists.
        """
        directory.mkdir(parents=True, exist_ok=False)
        index_path = directory / "index.bin"
        with self._writers, self._lock.read():
            if self._index is not None:
                self._index.save_index(str(index_path))
            items = {
                "ids": self._id_of,
                "metadata": [[label, meta] for label, meta in self._metadata.items()],
                "next_label": self._next_label,
                "vacant": self._vacant,
            }
            if self._text:  # absent when empty: snapshots of text-less items stay as before
                items["texts"] = [[label, text] for label, text in sorted(self._text.items())]
            (directory / "items.json").write_text(json.dumps(items, separators=(",", ":")))
            manifest = {
                "format": "contentembed-index/v1",
                "collection": self.name,
                "version": self.version,
                "space_id": self.space_id,
                "dim": self.dim,
                "metric": "cosine",
                "hnsw": {"m": self.params.m, "ef_construction": self.params.ef_construction,
                         "ef_search": self.params.ef_search},
                "count": self.item_count,
                "elements": 0 if self._index is None else self._index.get_current_count(),
                "seq": self.seq,
                **({"bundle_digest": self.bundle_digest} if self.bundle_digest else {}),
                # The lexical index itself is not in the snapshot: it is rebuilt from the
                # texts in items.json, which the digests cover.
                **({"lexical": self._lexical.params.to_json()} if self._lexical else {}),
                **(extra or {}),
            }
        if self._index is None:
            return write_manifest(directory, manifest)
        check = hnswlib.Index(space="cosine", dim=self.dim)
        try:
            check.load_index(str(index_path), max_elements=0)
        except RuntimeError as error:
            raise OSError(f"snapshot {index_path} did not read back: {error}") from None
        if check.get_current_count() != manifest["elements"]:
            raise OSError(f"snapshot {index_path} read back with a wrong element count")
        return write_manifest(directory, manifest)

    @classmethod
    def from_snapshot(cls, directory: Path, manifest: Mapping[str, Any], name: str) -> HnswCollection:
        """Loads a snapshot whose manifest was verified (persistence.verify_manifest).

        The checksums prove the files are the ones the writer made, not that the writer
        made them right (a batch job's bundle, a snapshot of an older release): the parts
        are checked against each other too, so a snapshot that would fail searches later
        is refused now (CorruptData) and never activated or recovered into.
        """
        try:
            params = HnswParams(**manifest["hnsw"])
            check_hnsw_params(params)
            dim = int(manifest["dim"])
            seq, count = int(manifest["seq"]), int(manifest["count"])
            space_id = str(manifest["space_id"])
            elements = manifest.get("elements")  # snapshots before it existed lack it
            elements = None if elements is None else int(elements)
            lexical = LexicalParams.from_json(manifest.get("lexical"))
        except (KeyError, TypeError, ValueError, InvalidArgument) as error:
            raise CorruptData(f"{directory}: manifest is malformed ({error})") from None
        lexical_only = lexical is not None and lexical.lexical_only
        if lexical_only != (dim == 0):
            raise CorruptData(f"{directory}: dim {dim} with lexical config {lexical}")
        if lexical_only:
            assert lexical is not None
            return cls._from_lexical_only_snapshot(directory, manifest, name, params, lexical)
        stored_dim = hnsw_file_dim(directory / "index.bin")
        if stored_dim != dim:
            raise CorruptData(f"{directory}: index.bin holds {stored_dim}-d vectors, manifest says {dim}")
        collection = cls(name, space_id, dim, params, 1, version=manifest.get("version", LIVE_VERSION))
        try:
            index = hnswlib.Index(space="cosine", dim=collection.dim)
            index.load_index(str(directory / "index.bin"), max_elements=0, allow_replace_deleted=True)
            # NaN and Infinity are not JSON (Python reads them anyway): metadata holding them
            # could not be sent back in a protobuf Struct.
            raw = json.loads((directory / "items.json").read_bytes(), parse_constant=_not_json)
        except (RuntimeError, ValueError) as error:
            raise CorruptData(f"{directory}: {error}") from None
        try:
            items = SnapshotItems.parse(raw)
            items.check_against(index, count, elements)
        except CorruptData as error:
            raise CorruptData(f"{directory}: {error}") from None
        index.set_ef(params.ef_search)
        collection._index = index
        collection._id_of = items.ids
        collection._label_of = items.label_of
        collection._metadata = items.metadata
        collection._payload = PayloadIndex.of(items.metadata.items())
        collection._text = items.texts
        if lexical is not None:
            # Derived state, rebuilt from the verified texts (LexicalIndex.build commits).
            collection._lexical = LexicalIndex.build(lexical, items.texts.items())
        collection._next_label = len(items.ids)
        collection._vacant = items.vacant
        collection.seq = seq
        # Set on a shard's own snapshots of an installed version; a bundle part's manifest
        # has none (its digest is the sha256 of that manifest, known to whoever loads it).
        collection.bundle_digest = str(manifest.get("bundle_digest", ""))
        return collection

    @classmethod
    def _from_lexical_only_snapshot(
        cls, directory: Path, manifest: Mapping[str, Any], name: str, params: HnswParams,
        lexical: LexicalParams,
    ) -> HnswCollection:
        """items.json alone: every live item must have its text (nothing else finds it),
        no slot is vacant (there are no hnswlib slots) and the counts agree."""
        try:
            seq, count = int(manifest["seq"]), int(manifest["count"])
            space_id = str(manifest["space_id"])
            raw = json.loads((directory / "items.json").read_bytes(), parse_constant=_not_json)
            items = SnapshotItems.parse(raw)
        except (KeyError, TypeError, ValueError, RecursionError) as error:
            raise CorruptData(f"{directory}: {error}") from None
        except CorruptData as error:
            raise CorruptData(f"{directory}: {error}") from None
        if space_id:
            raise CorruptData(f"{directory}: a lexical-only snapshot in space {shown(space_id)}")
        if len(items.label_of) != count:
            raise CorruptData(f"{directory}: {len(items.label_of)} items, the manifest says {count}")
        if items.vacant or int(manifest.get("elements", 0)):
            raise CorruptData(f"{directory}: a lexical-only snapshot with vector slots")
        if set(items.texts) != set(items.label_of.values()):
            raise CorruptData(f"{directory}: lexical-only items without text")
        collection = cls(name, "", 0, params, 1, version=manifest.get("version", LIVE_VERSION),
                         lexical=lexical)
        collection._id_of = items.ids
        collection._label_of = items.label_of
        collection._metadata = items.metadata
        collection._payload = PayloadIndex.of(items.metadata.items())
        collection._text = items.texts
        collection._lexical = LexicalIndex.build(lexical, items.texts.items())
        collection._next_label = len(items.ids)
        collection.seq = seq
        collection.bundle_digest = str(manifest.get("bundle_digest", ""))
        return collection


def _not_json(constant: str) -> None:
    raise ValueError(f"items.json holds {constant}, which is not JSON")


# Vectors read back per call while checking a snapshot: bounded memory at any dimension.
CHECK_CHUNK_BYTES = 16 << 20


@dataclass
class SnapshotItems:
    """items.json of a snapshot, parsed and checked on its own."""

    ids: list[str | None]  # by label; None for a deleted one
    label_of: dict[str, int]
    metadata: dict[int, dict[str, Any]]
    vacant: int
    texts: dict[int, str]

    @classmethod
    def parse(cls, raw: Any) -> SnapshotItems:
        if not isinstance(raw, dict):
            raise CorruptData("items.json is not an object")
        ids, pairs, next_label, vacant = (
            raw.get("ids"), raw.get("metadata"), raw.get("next_label"), raw.get("vacant")
        )
        if not isinstance(ids, list) or not isinstance(pairs, list):
            raise CorruptData("items.json: ids and metadata must be lists")
        if not _is_count(next_label) or not _is_count(vacant):
            raise CorruptData("items.json: next_label and vacant must be non-negative integers")
        # Labels are handed out in order and never reused, one ids entry each.
        if next_label != len(ids):
            raise CorruptData(f"items.json: next_label is {next_label} but {len(ids)} labels exist")
        label_of: dict[str, int] = {}
        for label, item_id in enumerate(ids):
            if item_id is None:
                continue
            if not isinstance(item_id, str) or not item_id:
                raise CorruptData(f"items.json: label {label} has an invalid id")
            if label_of.setdefault(item_id, label) != label:
                raise CorruptData(f"items.json: id {shown(item_id)} appears twice")
        metadata: dict[int, dict[str, Any]] = {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and _is_count(pair[0])
                    and isinstance(pair[1], dict)):
                raise CorruptData("items.json: metadata entries must be [label, object]")
            label, values = pair
            if label >= len(ids) or ids[label] is None:
                raise CorruptData(f"items.json: metadata for label {label}, which holds no item")
            if label in metadata:
                raise CorruptData(f"items.json: metadata for label {label} appears twice")
            metadata[label] = values
        pairs = raw.get("texts", [])  # snapshots before texts existed have none
        if not isinstance(pairs, list):
            raise CorruptData("items.json: texts must be a list")
        texts: dict[int, str] = {}
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and _is_count(pair[0])
                    and isinstance(pair[1], str) and pair[1]):
                raise CorruptData("items.json: texts entries must be [label, non-empty string]")
            label, text = pair
            if label >= len(ids) or ids[label] is None:
                raise CorruptData(f"items.json: text for label {label}, which holds no item")
            if label in texts:
                raise CorruptData(f"items.json: text for label {label} appears twice")
            try:  # a bundle's texts did not pass through Upsert's checks
                check_text(text, what=f"label {label}")
            except InvalidArgument as error:
                raise CorruptData(f"items.json: {error.message}") from None
            texts[label] = text
        return cls(ids, label_of, metadata, vacant, texts)

    def check_against(self, index: hnswlib.Index, count: int, elements: int | None) -> None:
        """Every live item has a vector that searches can find, every element of the index
        has an item or is deleted, and the counts agree with the manifest."""
        live = len(self.label_of)
        if live != count:
            raise CorruptData(f"{live} items, the manifest says {count}")
        stored = index.get_current_count()
        if elements is not None and stored != elements:
            raise CorruptData(f"index.bin holds {stored} elements, the manifest says {elements}")
        # Each element is a live item or a deleted slot waiting to be reused.
        if stored != live + self.vacant:
            raise CorruptData(
                f"index.bin holds {stored} elements for {live} items and {self.vacant} vacant slots"
            )
        labels = np.fromiter(index.get_ids_list(), dtype=np.uint64, count=stored)
        if stored and int(labels.max()) >= len(self.ids):
            raise CorruptData(
                f"index.bin has label {int(labels.max())}, items.json only {len(self.ids)} labels"
            )
        live_labels = np.fromiter(self.label_of.values(), dtype=np.uint64, count=live)
        if not np.isin(live_labels, labels).all():
            raise CorruptData("items without a vector in index.bin")
        # A vacant slot still answering searches would be a hit without an id.
        for label in labels[np.isin(labels, live_labels, invert=True)].tolist():
            try:
                index.get_items([label])
            except RuntimeError:
                continue  # marked deleted, as it must be
            raise CorruptData(f"label {label} is searchable but holds no item")
        # And a live item must not be marked deleted (get_items refuses those); its
        # vector must be finite for scores to mean anything.
        chunk = max(1, CHECK_CHUNK_BYTES // (4 * index.dim))
        for start in range(0, live, chunk):
            try:
                vectors = index.get_items(live_labels[start : start + chunk])
            except RuntimeError:
                raise CorruptData("items whose vector index.bin marks deleted") from None
            if not np.isfinite(vectors).all():
                raise CorruptData("index.bin holds vectors that are not finite")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# hnswlib's file starts with six size_t: offsetLevel0, max_elements, cur_element_count,
# size_data_per_element, label_offset, offsetData; vector bytes = label_offset - offsetData.
HNSW_HEADER = struct.Struct("<6Q")
MAX_M = 128
MAX_EF = 100_000


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


def check_hnsw_params(params: HnswParams) -> None:
    """hnswlib accepts values that fail later, at the first insert: refuse them up front."""
    if not 2 <= params.m <= MAX_M:
        raise InvalidArgument(f"hnsw.m must be 2..{MAX_M}, got {params.m}", reason="BAD_HNSW_PARAMS")
    for name, value in (("ef_construction", params.ef_construction), ("ef_search", params.ef_search)):
        if not 1 <= value <= MAX_EF:
            raise InvalidArgument(
                f"hnsw.{name} must be 1..{MAX_EF}, got {value}", reason="BAD_HNSW_PARAMS"
            )
