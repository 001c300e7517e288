"""Answering a query: embed it in the collection's space (through the cache), ask every
shard, merge. Pure: no grpc.

Three retrievals (``Retrieval``): dense (HNSW over the query's embedding), lexical (BM25
over the collection's lexical index; the query is not embedded) and hybrid (both, in one
call per shard, each retriever's candidates merged over the shards separately and then
fused by ``fusion.py``).

Side effects that do not change the answer — the canary draw, shadow copies, quality
monitors — are not here: the facade (``gateway.py``) asks rollout which version answers
before searching, and hands the answer to its observers after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Tracer

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from contentembed.services.common.filters import check_filter
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import (
    shown,
    validate_collection_name,
    validate_ids,
    validate_space_id,
    validate_top_k,
)
from contentembed.services.gateway.cache import EmbeddingCache, cache_key
from contentembed.services.gateway.fanout import AnswerT, ShardOutcome, gather_shards
from contentembed.services.gateway.fusion import (
    MAX_RRF_K,
    Fusion,
    FusionParams,
    as_hits,
    fuse,
    single_retriever,
)
from contentembed.services.gateway.merge import Hit, merge_top_k, reciprocal_rank_fusion
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.ports import IMAGE, TEXT, Pending, ShardPort, wait_all
from contentembed.services.gateway.routing import CollectionSpaces, EncoderRouter

if TYPE_CHECKING:
    from contentembed.services.gateway.rollout import Assignment

RegisterCancel = Callable[[Callable[[], None]], Any]
MAX_COLLECTIONS_PER_QUERY = 8


def modality_of(content: str | bytes) -> str:
    return TEXT if isinstance(content, str) else IMAGE


def ignore_cancel(cancel: Callable[[], None]) -> None:
    """For queries no caller waits on (shadow copies, audits): nothing to cancel them."""


class Retrieval(StrEnum):
    """Which retrievers answer; also the ``mode`` label of the search metrics."""

    DENSE = "dense"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class RetrievalOptions:
    """A request's retrieval options as the caller gave them; None or 0 is the gateway's
    default (``GatewayConfig.fusion``)."""

    # None: hybrid for a text query on one collection with a lexical index, else dense.
    mode: Retrieval | None = None
    fusion: Fusion | None = None
    rrf_k: int = 0
    alpha: float | None = None  # min-max weight of the dense scores
    depth: int = 0  # candidates per retriever, each shard asked for that many

    def fusion_params(self, defaults: FusionParams, max_top_k: int, least: int) -> FusionParams:
        """This request's fusion: its overrides over the defaults. The depth is never below
        ``least`` (offset + top_k: the page must lie within the candidates), and a default
        depth above max_top_k is cut to it (a request's own depth was checked)."""
        depth = self.depth or min(defaults.depth, max_top_k)
        return FusionParams(
            method=self.fusion or defaults.method,
            rrf_k=self.rrf_k or defaults.rrf_k,
            alpha=defaults.alpha if self.alpha is None else self.alpha,
            depth=max(depth, least),
        )


def ranked(hits: Sequence[Hit], *, lexical: bool) -> list[Hit]:
    """One retriever's merged list with that retriever's score and rank on every hit."""
    return as_hits(single_retriever(hits, lexical=lexical))


@dataclass(frozen=True)
class Query:
    collection: str
    content: str | bytes  # text, or an encoded image
    top_k: int
    deadline: float  # time.monotonic() value
    allow_partial: bool = False
    # Called with each downstream call's cancel, to run when the caller goes away.
    register_cancel: RegisterCancel = ignore_cancel
    also_collections: Sequence[str] = ()
    # A named version or an exact search is an evaluation: it answers from exactly what
    # was asked (no canary, no shadow copy) and feeds no quality metric.
    version: str = ""
    exact: bool = False
    # Search-time ef passed to every shard; 0: each collection's default.
    ef: int = 0
    # Ranks offset+1 .. offset+top_k of the merged ranking: shards are asked for depth.
    offset: int = 0
    # Hits scoring below it are dropped from the page; None: no threshold.
    score_threshold: float | None = None
    # Passed to every shard (grammar: common/filters.py); None or empty: every item.
    metadata_filter: Mapping[str, Any] | None = None
    # "More like this": the stored vector of this item of the collection is the query
    # (``content`` is unused), and the item is left out of the hits.
    item_id: str = ""
    # A query vector computed by the caller, in ``vector_space_id`` (``content`` is
    # unused): no encoder call, no cache; every collection searched must be in that space.
    vector: np.ndarray | None = None
    vector_space_id: str = ""
    # Dense, lexical or hybrid, and the fusion overrides (validated by Searcher.validate).
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)

    @property
    def by_vector(self) -> bool:
        return self.vector is not None

    @property
    def is_text(self) -> bool:
        """A text query: what the lexical retriever can answer (not an item, a vector or
        an image)."""
        return isinstance(self.content, str) and not self.item_id and self.vector is None

    @property
    def depth(self) -> int:
        """How many hits every shard is asked for, and the merge keeps, before the page."""
        return self.offset + self.top_k

    def page(self, ranked: Sequence[Hit]) -> list[Hit]:
        """This query's page of a merged ranking of ``depth`` hits, below the threshold
        dropped (the ranking is best first, so the threshold cuts a tail)."""
        hits = list(ranked[self.offset:self.offset + self.top_k])
        if self.score_threshold is not None:
            hits = [hit for hit in hits if hit.score >= self.score_threshold]
        return hits

    @property
    def reshapes_answer(self) -> bool:
        """A filter, a page past the first or a threshold: the answer is not the plain
        top_k, so comparing it with an unfiltered exact search says nothing of recall."""
        return bool(self.metadata_filter or self.offset or self.score_threshold is not None)

    @property
    def collections(self) -> list[str]:
        return list(dict.fromkeys([self.collection, *self.also_collections]))

    @property
    def is_evaluation(self) -> bool:
        return bool(self.version or self.exact)


@dataclass(frozen=True)
class BatchQuery:
    """Many query texts against the serving version of one collection."""

    collection: str
    texts: Sequence[str]
    top_k: int
    deadline: float
    allow_partial: bool = False
    register_cancel: RegisterCancel = ignore_cancel
    ef: int = 0
    metadata_filter: Mapping[str, Any] | None = None
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    space_id: str  # joined with "," over the spaces of a multi-collection search
    version: str  # joined with "," when shards or collections answered from several
    partial: bool
    shards: list[ShardOutcome]
    encode_ms: float
    search_ms: float
    merge_ms: float
    query_truncated: bool
    cache_hit: bool = False
    query_vector: np.ndarray | None = None
    fused: bool = False
    versions: list[str] = field(default_factory=list)  # those that answered, sorted
    space_ids: list[str] = field(default_factory=list)  # those searched, sorted
    # The retrieval that answered, and for hybrid the fusion method (None otherwise).
    # ``fused`` keeps its own meaning: collections of different spaces fused by rank.
    mode: Retrieval = Retrieval.DENSE
    fusion: Fusion | None = None
    # Hybrid only: the dense candidates merged over the shards, before fusion (what a
    # shadow copy compares with: see rollout.ShadowMirror).
    dense_candidates: list[Hit] = field(default_factory=list)


class SearchObserver(Protocol):
    """Told about every answer served from the serving or canary version, after it was
    made; it must not change it (shadow copies, quality monitors)."""

    def after_search(self, query: Query, outcome: SearchOutcome, assignment: Assignment) -> None: ...


class Searcher:
    def __init__(
        self,
        router: EncoderRouter,
        spaces: CollectionSpaces,
        shards: Sequence[ShardPort],
        cache: EmbeddingCache,
        metrics: GatewayMetrics,
        max_top_k: int,
        max_ef: int = 10_000,
        filter_limits: MetadataLimits | None = None,
        fusion: FusionParams | None = None,
    ) -> None:
        self.router = router
        self.spaces = spaces
        self.shards = list(shards)
        self.cache = cache
        self.metrics = metrics
        self.max_top_k = max_top_k
        self.max_ef = max_ef
        self.filter_limits = filter_limits or MetadataLimits()
        # The fusion defaults (GatewayConfig.fusion); a request may override each.
        self.fusion = fusion or FusionParams()
        # The runtime's (Gateway.use_tracer); spans of the stages of a request.
        self.tracer: Tracer = trace.NoOpTracer()

    def validate(self, query: Query) -> None:
        names = query.collections
        for name in names:
            validate_collection_name(name)
        if len(names) > MAX_COLLECTIONS_PER_QUERY:
            raise InvalidArgument(
                f"at most {MAX_COLLECTIONS_PER_QUERY} collections per query, got {len(names)}"
            )
        validate_top_k(query.top_k, self.max_top_k)
        if query.offset < 0 or query.depth > self.max_top_k:
            raise InvalidArgument(
                f"offset + top_k must be at most {self.max_top_k} (every shard is asked for "
                f"that many hits), got {query.offset} + {query.top_k}",
                reason="TOP_K_OUT_OF_RANGE",
            )
        self._check_search_options(query.ef, query.metadata_filter)
        self._check_retrieval(query.retrieval)
        if query.score_threshold is not None and not math.isfinite(query.score_threshold):
            raise InvalidArgument(
                f"score_threshold must be a finite number, got {query.score_threshold}",
                reason="BAD_SCORE_THRESHOLD",
            )
        mode = query.retrieval.mode
        if mode in (Retrieval.LEXICAL, Retrieval.HYBRID):
            if not query.is_text:
                raise InvalidArgument(
                    f"{mode} retrieval needs a text query, not an item_id, a vector or an "
                    "image (search those dense)",
                    reason="TEXT_QUERY_REQUIRED",
                )
            if len(names) > 1:
                raise InvalidArgument(
                    f"{mode} retrieval answers from one collection; leave also_collections "
                    "empty",
                    reason="ONE_COLLECTION_ONLY",
                )
        if query.item_id:
            validate_ids([query.item_id], what="item_id")
            if len(names) > 1 or query.version:
                raise InvalidArgument(
                    "item_id searches the serving version of one collection; leave version "
                    "and also_collections empty",
                    reason="ONE_COLLECTION_ONLY",
                )
        elif query.vector is not None:
            if not query.vector_space_id:
                raise InvalidArgument(
                    "vector_space_id: name the space of the query vector", reason="MISSING_SPACE"
                )
            validate_space_id(query.vector_space_id)
            if query.vector.ndim != 1 or not query.vector.size:
                raise InvalidArgument("vector: empty", reason="VECTOR_SIZE_MISMATCH")
            if not np.isfinite(query.vector).all():
                raise InvalidArgument(
                    "vector: contains NaN or infinity", reason="VECTOR_NOT_FINITE"
                )
        elif isinstance(query.content, str) and not query.content.strip():
            raise InvalidArgument("text: the query text is empty", reason="EMPTY_TEXT")
        if isinstance(query.content, bytes) and not query.content:
            raise InvalidArgument("image: the query image is empty", reason="EMPTY_IMAGE")
        if query.is_evaluation and len(names) > 1:
            raise InvalidArgument(
                "version and exact apply to one collection; leave also_collections empty",
                reason="ONE_COLLECTION_ONLY",
            )

    def validate_batch(self, batch: BatchQuery, max_queries: int) -> None:
        validate_collection_name(batch.collection)
        if not batch.texts:
            raise InvalidArgument("texts: at least one query text", reason="EMPTY_BATCH")
        if len(batch.texts) > max_queries:
            raise InvalidArgument(
                f"texts: at most {max_queries} queries per batch, got {len(batch.texts)}",
                reason="BATCH_TOO_LARGE",
            )
        for position, text in enumerate(batch.texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{position}]: the query text is empty",
                                      reason="EMPTY_TEXT")
        validate_top_k(batch.top_k, self.max_top_k)
        self._check_search_options(batch.ef, batch.metadata_filter)
        self._check_retrieval(batch.retrieval)

    def _check_retrieval(self, options: RetrievalOptions) -> None:
        """The fusion overrides, refused before any encoder or shard is called (even for
        a dense answer, which ignores them: a bad request is bad whatever answers it)."""
        if options.alpha is not None and not 0.0 <= options.alpha <= 1.0:  # NaN too
            raise InvalidArgument(
                f"retrieval.alpha must be between 0 and 1, got {options.alpha}",
                reason="BAD_FUSION",
            )
        if not 0 <= options.rrf_k <= MAX_RRF_K:
            raise InvalidArgument(
                f"retrieval.rrf_k must be between 1 and {MAX_RRF_K} (0: the default), got "
                f"{options.rrf_k}",
                reason="BAD_FUSION",
            )
        if not 0 <= options.depth <= self.max_top_k:
            raise InvalidArgument(
                f"retrieval.depth must be at most {self.max_top_k} (every shard is asked for "
                f"that many candidates per retriever), got {options.depth}",
                reason="TOP_K_OUT_OF_RANGE",
            )

    def resolve_mode(
        self, requested: Retrieval | None, text_on_one_collection: bool, collection: str,
        deadline: float,
    ) -> Retrieval:
        """The retrieval that answers. Unspecified: hybrid for a text query on one
        collection with a lexical index, dense otherwise. The lexical config comes from
        the same cached entry as the collection's space (no second shard call).

        A lexical-only collection answers lexical only: unspecified is lexical for a text
        query on it alone; whatever would need vectors (dense, hybrid, an item, a vector or
        an image query, several collections) is FAILED_PRECONDITION DENSE_NOT_ENABLED."""
        lexical = self.spaces.lexical_of(collection, deadline)
        if lexical is not None and lexical.lexical_only:
            if requested is Retrieval.LEXICAL or (requested is None and text_on_one_collection):
                return Retrieval.LEXICAL
            wanted = "an item, vector or image query or one over several collections"
            raise FailedPrecondition(
                f"collection {shown(collection)} is lexical-only (no vectors): "
                f"{requested or wanted} needs the dense side; search it with text, lexical",
                reason="DENSE_NOT_ENABLED",
            )
        if requested is Retrieval.DENSE or (requested is None and not text_on_one_collection):
            return Retrieval.DENSE
        if requested is None:
            return Retrieval.DENSE if lexical is None else Retrieval.HYBRID
        if lexical is None:
            raise FailedPrecondition(
                f"collection {shown(collection)} has no lexical index, which {requested} "
                "retrieval needs: search it dense, or create it with a lexical index",
                reason="LEXICAL_NOT_ENABLED",
            )
        return requested

    def _check_search_options(self, ef: int, metadata_filter: Mapping[str, Any]) -> None:
        """ef and the filter, shared by Search and SearchBatch: refused here, before any
        encoder or shard is called."""
        if not 0 <= ef <= self.max_ef:
            raise InvalidArgument(
                f"ef must be between 0 (the default) and {self.max_ef}, got {ef}",
                reason="EF_OUT_OF_RANGE",
            )
        if metadata_filter:
            check_metadata(metadata_filter, self.filter_limits, what="filter", kind="FILTER")
            check_filter(metadata_filter)

    def embed_texts(
        self, space: str, texts: Sequence[str], deadline: float, register_cancel: RegisterCancel,
    ) -> tuple[np.ndarray, list[bool], list[bool]]:
        """(vectors, truncated, cache hits) for the texts in ``space``: the cached ones from
        the cache, the others (each distinct text once) in the encoder's batches."""
        keys = [cache_key(space, TEXT, text) for text in texts]
        found: dict[str, tuple[np.ndarray, bool]] = {}
        hits = []
        for text, key in zip(texts, keys):
            cached = self.cache.get(key)
            self.metrics.cache_lookups.labels("hit" if cached else "miss").inc()
            hits.append(cached is not None)
            if cached is not None:
                found[text] = (cached.vector, cached.truncated)
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if missing:
            encoder, info = self.router.route(space, TEXT)
            size = max(1, info.max_batch_size)
            calls = [encoder.embed(missing[at:at + size], deadline)
                     for at in range(0, len(missing), size)]
            for call in calls:
                register_cancel(call.cancel)
            for at, embedded in zip(range(0, len(missing), size), wait_all(calls)):
                if embedded.space_id != space:
                    self.forget_spaces(self.router.refresh(deadline) | {space})
                    raise FailedPrecondition(
                        f"{encoder.label} now embeds into {embedded.space_id}, collection space "
                        f"is {space}: re-embed the collection or roll the encoder back",
                        reason="SPACE_MISMATCH",
                    )
                for text, vector, cut in zip(missing[at:], embedded.vectors, embedded.truncated):
                    found[text] = (vector, cut)
                    self.cache.put(cache_key(space, TEXT, text), vector, cut)
        vectors = np.vstack([found[text][0] for text in texts])
        return vectors, [found[text][1] for text in texts], hits

    def search_batch(self, batch: BatchQuery) -> list[SearchOutcome]:
        """Many texts against the serving version of one collection: one embedding pass for
        the uncached texts, one batch search per shard, a merge per query."""
        started = time.perf_counter()
        space = self.spaces.space_of(batch.collection, batch.deadline)
        mode = self.resolve_mode(batch.retrieval.mode, True, batch.collection, batch.deadline)
        vectors: np.ndarray | None = None
        truncated, cache_hits = [False] * len(batch.texts), [False] * len(batch.texts)
        if mode is not Retrieval.LEXICAL:
            vectors, truncated, cache_hits = self.embed_texts(
                space, batch.texts, batch.deadline, batch.register_cancel
            )
        encoded = time.perf_counter()
        fusion = (
            batch.retrieval.fusion_params(self.fusion, self.max_top_k, batch.top_k)
            if mode is Retrieval.HYBRID else None
        )
        depth = fusion.depth if fusion is not None else batch.top_k
        # One call per shard, the texts beside the vectors: both retrievers at once.
        calls = [
            shard.search_batch(batch.collection, vectors, space if vectors is not None else "",
                               depth, batch.deadline, batch.ef, batch.metadata_filter,
                               texts=batch.texts if mode is not Retrieval.DENSE else ())
            for shard in self.shards
        ]
        answers, outcomes = self._gather(
            batch.collection, calls, batch.allow_partial, batch.deadline, batch.register_cancel
        )
        searched = time.perf_counter()
        versions = sorted({answer.version for answer in answers})
        merged = [
            self._merge(
                mode, fusion, depth, batch.top_k,
                [answer.results[position] for answer in answers] if vectors is not None else [],
                [answer.lexical_results[position] for answer in answers]
                if mode is not Retrieval.DENSE else [],
            )
            for position in range(len(batch.texts))
        ]
        done = time.perf_counter()
        return [
            SearchOutcome(
                hits=hits,
                space_id=space,
                version=",".join(versions),
                partial=len(answers) < len(self.shards),
                shards=outcomes,
                encode_ms=(encoded - started) * 1000,
                search_ms=(searched - encoded) * 1000,
                merge_ms=(done - searched) * 1000,
                query_truncated=truncated[position],
                cache_hit=cache_hits[position],
                versions=versions,
                space_ids=[space],
                mode=mode,
                fusion=None if fusion is None else fusion.method,
                dense_candidates=dense,
            )
            for position, (hits, dense) in enumerate(merged)
        ]

    @staticmethod
    def _merge(
        mode: Retrieval,
        fusion: FusionParams | None,
        depth: int,
        limit: int,
        dense_lists: Sequence[Sequence[Hit]],
        lexical_lists: Sequence[Sequence[Hit]],
    ) -> tuple[list[Hit], list[Hit]]:
        """(the ranking of ``limit`` hits, the dense candidates of a hybrid answer) from the
        shards' lists. Each retriever's lists are merged over the shards on their own
        scale first (cosine with cosine, BM25 with BM25), to ``depth``; hybrid then fuses
        the two merged lists."""
        if mode is Retrieval.DENSE:
            return ranked(merge_top_k(dense_lists, limit), lexical=False), []
        if mode is Retrieval.LEXICAL:
            return ranked(merge_top_k(lexical_lists, limit), lexical=True), []
        assert fusion is not None
        dense = merge_top_k(dense_lists, depth)
        lexical = merge_top_k(lexical_lists, depth)
        return as_hits(fuse(dense, lexical, fusion, limit)), dense

    def _gather(
        self,
        collection: str,
        calls: Sequence[Pending[AnswerT]],
        allow_partial: bool,
        deadline: float,
        register_cancel: RegisterCancel,
    ) -> tuple[list[AnswerT], list[ShardOutcome]]:
        """The shards' answers under the partial-result policy; the calls are cancelled
        with the caller. A shard refusing the space means the collection moved to a
        version in another space: its cached space is forgotten."""
        for call in calls:
            register_cancel(call.cancel)
        try:
            return gather_shards(self.shards, calls, allow_partial, deadline)
        except FailedPrecondition:
            self.spaces.forget(collection)
            raise

    def forget_spaces(self, spaces: set[str]) -> None:
        """An encoder now serves another model: its old vectors must not be reused."""
        for space in spaces:
            dropped = self.cache.drop_space(space)
            self.metrics.cache_evictions.inc(dropped)

    def embed_query(self, space: str, query: Query) -> tuple[np.ndarray, bool, bool]:
        """(vector, truncated, cache hit) for the query in ``space``."""
        content = query.content
        modality = modality_of(content)
        key = cache_key(space, modality, content)
        cached = self.cache.get(key)
        self.metrics.cache_lookups.labels("hit" if cached else "miss").inc()
        if cached is not None:
            return cached.vector, cached.truncated, True
        encoder, _ = self.router.route(space, modality)
        call = encoder.embed([content], query.deadline)
        query.register_cancel(call.cancel)
        embedded = call.result()
        if embedded.space_id != space:
            # The encoder was redeployed with another model since routes were refreshed.
            self.forget_spaces(self.router.refresh(query.deadline) | {space})
            raise FailedPrecondition(
                f"{encoder.label} now embeds into {embedded.space_id}, collection space is "
                f"{space}: re-embed the collection or roll the encoder back",
                reason="SPACE_MISMATCH",
            )
        self.cache.put(key, embedded.vectors[0], embedded.truncated[0])
        return embedded.vectors[0], embedded.truncated[0], False

    def item_vector(self, collection: str, query: Query) -> np.ndarray:
        """The stored vector of the query's item, from the shard its id hashes to."""
        shard = self.shards[shard_for_id(query.item_id, len(self.shards))]
        call = shard.get_vector(collection, query.item_id, query.deadline)
        query.register_cancel(call.cancel)
        vector = call.result()
        if vector is None:
            raise NotFound(
                f"collection {shown(collection)} holds no item {shown(query.item_id)}",
                reason="ITEM_NOT_FOUND",
            )
        return vector

    def search_one(
        self, query: Query, collection: str, version: str = "", space: str | None = None,
        paged: bool = True,
    ) -> SearchOutcome:
        """One collection: its serving version's space unless ``space`` is given. With
        ``paged`` False, the whole merged ranking of ``query.depth`` hits (for a merge
        across collections, which pages after it)."""
        started = time.perf_counter()
        space = space or self.spaces.space_of(collection, query.deadline)
        mode = self.resolve_mode(
            query.retrieval.mode, query.is_text and len(query.collections) == 1, collection,
            query.deadline,
        )
        vector: np.ndarray | None
        if mode is Retrieval.LEXICAL:
            # BM25 needs no embedding: the encoder is not called, the cache not consulted.
            vector, truncated, cache_hit = None, False, False
        elif query.item_id:
            vector, truncated, cache_hit = self.item_vector(collection, query), False, False
        elif query.vector is not None:
            if query.vector_space_id != space:
                raise FailedPrecondition(
                    f"the query vector is in {shown(query.vector_space_id)}, collection "
                    f"{shown(collection)} is in {shown(space)}: embed the query in the "
                    "collection's space",
                    reason="SPACE_MISMATCH",
                )
            vector, truncated, cache_hit = query.vector, False, False
        else:
            with self.tracer.start_as_current_span(
                "gateway.embed_query", attributes={"contentembed.space_id": space}
            ) as span:
                vector, truncated, cache_hit = self.embed_query(space, query)
                span.set_attribute("contentembed.cache_hit", cache_hit)
        encoded = time.perf_counter()
        fusion = (
            query.retrieval.fusion_params(self.fusion, self.max_top_k, query.depth)
            if mode is Retrieval.HYBRID else None
        )

        # The fan-out: each shard's call is a CLIENT span under this one.
        with self.tracer.start_as_current_span(
            "gateway.search_shards",
            attributes={"contentembed.collection": collection, "contentembed.shards": len(self.shards),
                        "contentembed.retrieval": str(mode)},
        ) as span:
            # An item query finds the item itself too: one more, left out below. Hybrid
            # asks each retriever for its depth of candidates (never less than the page).
            if fusion is not None:
                depth = fusion.depth
            else:
                depth = query.depth + 1 if query.item_id else query.depth
            text = str(query.content) if mode is not Retrieval.DENSE else ""
            # One call per shard, with the vector and the text: both retrievers at once;
            # exact applies to the vector side, the filter to both.
            calls = [
                shard.search(collection, vector, space if vector is not None else "", depth,
                             query.deadline, version, query.exact, query.ef,
                             query.metadata_filter, text=text)
                for shard in self.shards
            ]
            answers, outcomes = self._gather(
                collection, calls, query.allow_partial, query.deadline, query.register_cancel
            )
            span.set_attribute("contentembed.shards_failed", len(self.shards) - len(answers))
        searched = time.perf_counter()

        with self.tracer.start_as_current_span("gateway.merge"):
            if query.item_id:
                hits = [hit for hit in merge_top_k((answer.hits for answer in answers), depth)
                        if hit.id != query.item_id][: query.depth]
                hits, dense = ranked(hits, lexical=False), []
            else:
                hits, dense = self._merge(
                    mode, fusion, depth, query.depth, [answer.hits for answer in answers],
                    [answer.lexical_hits for answer in answers],
                )
            if paged:
                hits = query.page(hits)
        merged = time.perf_counter()
        versions = sorted({answer.version for answer in answers})
        return SearchOutcome(
            hits=hits,
            space_id=space,
            version=",".join(versions),
            partial=len(answers) < len(self.shards),
            shards=outcomes,
            encode_ms=(encoded - started) * 1000,
            search_ms=(searched - encoded) * 1000,
            merge_ms=(merged - searched) * 1000,
            query_truncated=truncated,
            cache_hit=cache_hit,
            query_vector=vector,
            versions=versions,
            space_ids=[space],
            mode=mode,
            fusion=None if fusion is None else fusion.method,
            dense_candidates=dense,
        )

    def search_many(self, query: Query) -> SearchOutcome:
        """Several collections, each from its serving version, dense only: merged by
        cosine within one space (dense_rank: the rank in the merged list), fused by rank
        across spaces (their scores do not compare; dense_score and dense_rank stay those
        of the hit's own collection)."""
        answers = [self.search_one(query, name, paged=False) for name in query.collections]
        started = time.perf_counter()
        spaces = sorted({a.space_id for a in answers})
        fused = len(spaces) > 1
        lists = [a.hits for a in answers]
        depth = query.depth
        hits = query.page(
            reciprocal_rank_fusion(lists, depth) if fused
            else ranked(merge_top_k(lists, depth), lexical=False)
        )
        versions = sorted({v for a in answers for v in a.versions})
        return SearchOutcome(
            hits=hits,
            space_id=",".join(spaces),
            version=",".join(sorted({a.version for a in answers})),
            partial=any(a.partial for a in answers),
            shards=[shard for a in answers for shard in a.shards],
            encode_ms=sum(a.encode_ms for a in answers),
            search_ms=sum(a.search_ms for a in answers),
            merge_ms=sum(a.merge_ms for a in answers) + (time.perf_counter() - started) * 1000,
            query_truncated=any(a.query_truncated for a in answers),
            cache_hit=all(a.cache_hit for a in answers),
            fused=fused,
            versions=versions,
            space_ids=spaces,
        )
