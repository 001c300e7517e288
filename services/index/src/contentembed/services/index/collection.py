"""One collection bound to one embedding space. Pure index code: no grpc.

Ids, metadata and texts live here, the vectors in a DenseIndex (dense.py) under the same
labels. That index checks and locks nothing, so every check and all locking live here:
searches share a read lock, writes (and searches with their own ef, which is index-wide)
take the write lock.

Every item keeps the text it was embedded from (if it was sent one), so a new model can
embed it again; a lexical collection also indexes that text for BM25 (lexical.py), under
the same labels and the same locks, so both indexes always hold the same items.

A lexical-only collection (LexicalParams.lexical_only; dim 0, space_id "") has no dense
index at all (``_index`` is None): items carry text and no vector, labels map ids exactly
as in a dense collection (handed out in order, never reused; with no dense index there
is no vacant slot to reuse), and dense searches are FAILED_PRECONDITION DENSE_NOT_ENABLED.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.common.interrupt import NEVER, Interrupt
from contentembed.services.common.rwlock import ReadWriteLock
from contentembed.services.common.validation import validate_ids
from contentembed.services.common.vectors import l2_normalize, reject_zero_rows
from contentembed.services.index.cost import SearchShape, check_search_cost
from contentembed.services.index.dense import (
    DenseIndex,
    HnswIndex,
    HnswParams,
    check_hnsw_params,
    exact_knn,
)
from contentembed.services.index.lexical import (
    LexicalIndex,
    LexicalParams,
    check_text,
    check_texts,
)
from contentembed.services.index.payload import PayloadIndex, matching_labels
from contentembed.services.index.persistence import CorruptData, WalRecord, write_manifest
from contentembed.services.index.snapshot import (
    SnapshotItems,
    read_dense,
    read_lexical_only,
    write_items,
)

LIVE_VERSION = "live"
NO_METADATA: Mapping[str, Any] = MappingProxyType({})
# A filter matching at most this share of the items is answered by exact search over the
# matches (perfect recall, cheap); a wider one by HNSW with a filter callback.
EXACT_FILTER_SHARE = 0.05
EXACT_FILTER_MAX = 5000
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


# Logs a new write before it is applied, and returns it as logged: stamped with the term
# of the primary that wrote it.
Journal = Callable[[WalRecord], WalRecord]


@dataclass(frozen=True)
class VersionDigest:
    """What two replicas of a version compare: equal digests, equal contents."""

    count: int
    seq: int
    sha256: str  # over ids, vectors, texts and metadata, in id order


def merged_upserts(records: Sequence[WalRecord], limit: int) -> list[WalRecord]:
    """Consecutive upserts of distinct ids joined into one record (the last one's seq and
    term) of at most ``limit`` items: applying them together costs one index insert where
    a replica catching up on many small writes paid one each, and ends in the same state
    (no id is written twice in a joined run, so order within it does not matter)."""
    joined: list[WalRecord] = []
    run: list[WalRecord] = []
    ids: set[str] = set()

    def flush() -> None:
        if len(run) == 1:
            joined.append(run[0])
        elif run:
            texts = None
            if any(r.texts is not None for r in run):
                texts = [t for r in run for t in (r.texts or [""] * len(r.ids))]
            joined.append(WalRecord(
                run[-1].seq, "upsert", [i for r in run for i in r.ids],
                np.concatenate([r.vectors for r in run]),  # type: ignore[misc]
                [m for r in run for m in (r.metadata or [])], texts, run[-1].term,
            ))
        run.clear()
        ids.clear()

    for record in records:
        fits = (record.op == "upsert" and len(ids) + len(record.ids) <= limit
                and ids.isdisjoint(record.ids)
                and (not run or run[0].vectors.shape[1] == record.vectors.shape[1]))  # type: ignore[union-attr]
        if not fits:
            flush()
        if record.op == "upsert" and len(record.ids) < limit:
            run.append(record)
            ids.update(record.ids)
        else:
            joined.append(record)
    flush()
    return joined


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
        self.term = 0  # the term of that write (WalRecord.term)
        # sha256 of the bundle part's manifest this version was installed from; "" for a
        # collection built online. Written into every snapshot manifest of the version.
        self.bundle_digest = ""
        # Only for a pending version (BeginVersion): ids deleted while it waits for its
        # bundle, which may hold them. None for every other version.
        self.tombstones: set[str] | None = None
        lexical_only = lexical is not None and lexical.lexical_only
        if lexical_only != (dim == 0):
            raise ValueError(f"dim 0 is for lexical-only collections only (dim {dim}, {lexical})")
        self._index: DenseIndex | None = (
            None if lexical_only else HnswIndex.create(dim, params, initial_capacity)
        )
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
                    record = self.journal(record)
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
                self._index.fill(vectors)
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
                record = self.journal(record)
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

    def apply_shipped(self, records: Sequence[WalRecord],
                      log: Callable[[list[WalRecord]], object]) -> int:
        """Applies writes another replica logged (seq and term as they are), in order,
        after ``log`` made them durable here together; those already applied are skipped.
        Each must follow the one before: a gap is refused (ValueError) before anything is
        logged, since what it skipped would be missing for good. Returns how many applied."""
        with self._writers:
            fresh = [r for r in records if r.seq > self.seq]
            for expected, record in enumerate(fresh, start=self.seq + 1):
                if record.seq != expected:
                    raise ValueError(f"record {record.seq} does not follow {expected - 1}")
            if not fresh:
                return 0
            with self._lock.write():
                log(fresh)
            for record in merged_upserts(fresh, APPLY_SLICE):
                for start in range(0, len(record.ids), APPLY_SLICE):
                    with self._lock.write():
                        if record.op == "upsert":
                            self._apply_upsert(record.slice(start, start + APPLY_SLICE))
                        else:
                            self._apply_delete(record)
                            break
        return len(fresh)

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
        self.seq, self.term = record.seq, record.term

    def _add_vectors(self, record: WalRecord) -> None:
        """Writes the record's vectors into the dense index, giving new ids the next labels."""
        assert self._index is not None and record.vectors is not None
        existing = [p for p, i in enumerate(record.ids) if i in self._label_of]
        fresh = [p for p, i in enumerate(record.ids) if i not in self._label_of]
        if existing:
            labels = np.array([self._label_of[record.ids[p]] for p in existing], dtype=np.uint64)
            self._index.replace(labels, record.vectors[existing])
        if fresh:
            labels = np.arange(self._next_label, self._next_label + len(fresh), dtype=np.uint64)
            self._index.add(labels, record.vectors[fresh])
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
        if self._lexical is not None and removed:
            self._lexical.write(removed, ())
        self.seq, self.term = record.seq, record.term

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
        return self._index.vectors(labels)

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
        # ef is index-wide: a request with its own ef searches alone, so its ef never
        # leaks into a concurrent search.
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
        write lock when ``custom_ef`` is set). The queries go to the index in chunks sized
        to take about CHUNK_S each, the interrupt checked between chunks."""
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
                found = self._index.knn_query(
                    chunk,
                    k=k,
                    # Batches use every core; a filter callback is Python, so one thread.
                    num_threads=1 if allowed_set is not None or len(chunk) == 1 else -1,
                    allowed=None if allowed_set is None else allowed_set.__contains__,
                )
                if found is None:  # fewer than k found: exact search answers
                    columns.extend(self._exact_locked(chunk, top_k, allowed, interrupt))
                    continue
                columns.extend(self._columns(*found))
                per_query = (time.perf_counter() - started) / len(chunk)
                size = max(PARALLEL_CHUNK_QUERIES,
                           min(MAX_CHUNK_QUERIES, int(CHUNK_S / max(per_query, 1e-7))))
        finally:
            if custom_ef:
                self._index.reset_ef()
        return columns

    def _columns(self, labels: np.ndarray, scores: np.ndarray) -> list[HitColumns]:
        """Hits per query from ranked live labels and their scores (float64), one row each."""
        id_of, metadata = self._id_of, self._metadata
        columns = []
        for row_labels, row_scores in zip(labels.tolist(), scores):
            ids = [id_of[label] for label in row_labels]
            columns.append(HitColumns(
                ids,  # type: ignore[arg-type]  # a label the index returns is live: its id is set
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
        """Brute force for normalized queries over every item (or the allowed ones), their
        vectors read back in blocks of about EXACT_BLOCK_BYTES (dense.exact_knn). Equal
        scores rank by label."""
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
        return self._columns(*exact_knn(self._index, queries, labels, k, rows, interrupt))

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

    def digest(self) -> VersionDigest:
        """Count, seq and a sha256 over every item (id, stored vector, text, metadata) in
        id order: two replicas of a version hold the same items exactly when these agree."""
        hasher = hashlib.sha256()
        with self._lock.read():
            ids = sorted(self._label_of)
            for start in range(0, len(ids), 1024):
                chunk = ids[start:start + 1024]
                labels = [self._label_of[i] for i in chunk]
                vectors = self._vectors_locked(labels)
                for item_id, label, vector in zip(chunk, labels, vectors):
                    hasher.update(json.dumps(
                        [item_id, self._text.get(label, ""), self._metadata.get(label) or {}],
                        sort_keys=True, separators=(",", ":"),
                    ).encode())
                    hasher.update(np.ascontiguousarray(vector, dtype="<f4").tobytes())
            return VersionDigest(len(ids), self.seq, hasher.hexdigest())

    def list_ids(self, after: str, limit: int) -> tuple[list[str], bool]:
        """Ids in lexical order after ``after``; True when more follow."""
        with self._lock.read():
            ids = sorted(i for i in self._label_of if i > after)
        return ids[:limit], len(ids) > limit

    # -- snapshots -------------------------------------------------------------------
    def write_snapshot(self, directory: Path, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """index.bin + items.json + manifest.json (sha256 of each) into an empty directory;
        a lexical-only collection has no index.bin.

        index.bin is read back (DenseIndex.check_saved) before the manifest, which makes
        the snapshot valid, exists.
        """
        directory.mkdir(parents=True, exist_ok=False)
        index_path = directory / "index.bin"
        with self._writers, self._lock.read():
            if self._index is not None:
                self._index.save(index_path)
            write_items(directory / "items.json", self._id_of, self._metadata, self._next_label,
                        0 if self._index is None else self._index.vacant, self._text)
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
                "elements": 0 if self._index is None else self._index.count,
                "seq": self.seq,
                **({"term": self.term} if self.term else {}),
                **({"bundle_digest": self.bundle_digest} if self.bundle_digest else {}),
                # The lexical index itself is not in the snapshot: it is rebuilt from the
                # texts in items.json, which the digests cover.
                **({"lexical": self._lexical.params.to_json()} if self._lexical else {}),
                **(extra or {}),
            }
        if self._index is not None:
            self._index.check_saved(index_path, manifest["elements"])
        return write_manifest(directory, manifest)

    @classmethod
    def from_snapshot(cls, directory: Path, manifest: Mapping[str, Any], name: str) -> HnswCollection:
        """Loads a snapshot whose manifest was verified (persistence.verify_manifest).

        The checksums prove the files are the ones the writer made, not that the writer
        made them right (a batch job's bundle, a snapshot of an older release): the parts
        are checked against each other too (snapshot.py), so a snapshot that would fail
        searches later is refused now (CorruptData) and never activated or recovered into.
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
        version = manifest.get("version", LIVE_VERSION)
        if lexical_only:
            items = read_lexical_only(directory, manifest, space_id, count)
            collection = cls(name, "", 0, params, 1, version=version, lexical=lexical)
        else:
            index, items = read_dense(directory, dim, params, count, elements)
            collection = cls(name, space_id, dim, params, 1, version=version)
            collection._index = index
        collection._restore(items, lexical)
        collection.seq = seq
        collection.term = int(manifest.get("term", 0))
        # Set on a shard's own snapshots of an installed version; a bundle part's manifest
        # has none (its digest is the sha256 of that manifest, known to whoever loads it).
        collection.bundle_digest = str(manifest.get("bundle_digest", ""))
        return collection

    def _restore(self, items: SnapshotItems, lexical: LexicalParams | None) -> None:
        """Takes a loaded snapshot's checked items as this new collection's state."""
        self._id_of = items.ids
        self._label_of = items.label_of
        self._metadata = items.metadata
        self._payload = PayloadIndex.of(items.metadata.items())
        self._text = items.texts
        if lexical is not None:
            # Derived state, rebuilt from the verified texts (LexicalIndex.build commits).
            self._lexical = LexicalIndex.build(lexical, items.texts.items())
        self._next_label = len(items.ids)
