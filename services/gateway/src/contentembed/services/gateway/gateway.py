"""The gateway's facade: what the servicers call. It wires the parts together and runs
the order of a search — rollout picks the version, the searcher answers, the observers
(shadow copies, quality monitors) see the answer after — and keeps the routes fresh.
Pure: no grpc; downstream services come in through the ports (``ports.py``).

The parts, one job each:
  routing.py           which encoder embeds into a space; which space a collection is in
  fanout.py            gathering shard answers; the partial-result policy
  search.py            embed, fan out, merge (one collection or several)
  ingest.py            upsert and delete documents into every version's space
  rollout.py           candidates, canary, shadow copies, promotion, rollback, versions
  monitoring.py        drift, catalog coverage, sampled recall
  collection_admin.py  create, describe, list, delete collections
  replicas.py          a shard served by replicas: reads spread, writes to the primary
  background.py        the bounded pool for work done after the answer
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from opentelemetry.trace import Tracer

from contentembed.services.common.errors import (
    CLIENT_ERROR_CODES,
    ContentEmbedError,
    FailedPrecondition,
    Unavailable,
)
from contentembed.services.common.metadata import MetadataLimits
from contentembed.services.common.paging import PageTokens
from contentembed.services.gateway.background import BackgroundPool
from contentembed.services.gateway.cache import EmbeddingCache
from contentembed.services.gateway.collection_admin import CollectionAdmin, CollectionSummary
from contentembed.services.gateway.fusion import FusionParams
from contentembed.services.gateway.ingest import Document, Ingest, WritePlans
from contentembed.services.gateway.lookup import Lookup
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.monitoring import QualityMonitor
from contentembed.services.gateway.ports import (
    TEXT,
    EncoderPort,
    LexicalConfig,
    ShardLimits,
    ShardPort,
    StoredItem,
    wait_all,
)
from contentembed.services.gateway.replicas import ReplicatedShard, refresh_groups
from contentembed.services.gateway.rollout import (
    Assignment,
    Candidate,
    Candidates,
    Rollout,
    ShadowMirror,
)
from contentembed.services.gateway.routing import CollectionSpaces, EncoderRouter
from contentembed.services.gateway.search import (
    BatchQuery,
    Query,
    RegisterCancel,
    Retrieval,
    RetrievalOptions,
    Searcher,
    SearchObserver,
    SearchOutcome,
    ignore_cancel,
)

log = logging.getLogger(__name__)

NOT_RETRIED_AT_START = CLIENT_ERROR_CODES | {"UNAUTHENTICATED", "PERMISSION_DENIED"}
CONNECT_ATTEMPT_S = 5.0  # one try of the start-up wait for encoders and shards

__all__ = [
    "BatchQuery", "CollectionSummary", "Document", "FusionParams", "Gateway", "GatewayConfig",
    "LexicalConfig", "Query", "Retrieval", "RetrievalOptions", "SearchOutcome",
]


@dataclass(frozen=True)
class GatewayConfig:
    max_top_k: int = 100
    # What a search's top_k 0 means; at most max_top_k.
    default_top_k: int = 10
    # The largest per-search ef; must not exceed the shards' max_ef.
    max_ef: int = 10_000
    max_documents_per_upsert: int = 1000
    # The most ids one GetDocuments asks for; must not exceed the shards' max_items_per_upsert.
    max_ids_per_get: int = 1000
    # The most texts one SearchBatch carries; must not exceed the shards' max_queries_per_batch.
    max_queries_per_batch: int = 64
    metadata_limits: MetadataLimits = field(default_factory=MetadataLimits)
    # Signs this gateway's page tokens; None: a random secret per process.
    page_token_secret: str | None = None
    cache_ttl_s: float = 60.0
    cache_max_entries: int = 10_000
    shadow_workers: int = 2
    shadow_queue_limit: int = 64
    # Seeds the draws (canary, shadow, recall sample), for tests that need them repeatable.
    seed: int | None = None
    recall_sample_rate: float = 0.0
    drift_reference_size: int = 500
    drift_window: int = 500
    catalog_window_s: float = 3600.0
    # How hybrid answers fuse by default (method, rrf_k, alpha, depth); a request may
    # override each (SearchRequest.retrieval). The values live in FusionParams only.
    fusion: FusionParams = field(default_factory=FusionParams)


class Gateway:
    def __init__(
        self,
        encoders: Sequence[EncoderPort],
        shards: Sequence[ShardPort],
        metrics: GatewayMetrics,
        config: GatewayConfig,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.shards = list(shards)
        self.router = EncoderRouter(encoders)
        self.cache = EmbeddingCache(config.cache_ttl_s, config.cache_max_entries)
        self.collection_spaces = CollectionSpaces(self.shards)
        self.candidates = Candidates()
        self.write_plans = WritePlans(self.shards)
        draw = random.Random(config.seed)  # one stream, so a seed fixes every draw
        self.background = BackgroundPool(
            config.shadow_workers, config.shadow_queue_limit, metrics.shadow_skipped.inc
        )
        self.searcher = Searcher(
            self.router, self.collection_spaces, self.shards, self.cache, metrics, config.max_top_k,
            config.max_ef, config.metadata_limits, config.fusion,
        )
        self.ingest = Ingest(
            self.router, self.shards, self.write_plans, config.max_documents_per_upsert,
            config.metadata_limits,
        )
        self.lookup = Lookup(self.shards, config.max_ids_per_get)
        self.rollout = Rollout(
            self.shards, self.router, self.collection_spaces, self.write_plans, self.candidates,
            draw,
        )
        self.collections = CollectionAdmin(
            self.router, self.shards, self.candidates.version_of, self._forget_collection,
            PageTokens.from_setting(config.page_token_secret),
        )
        self.monitoring = QualityMonitor(
            self.shards, metrics, self.background, draw, config.recall_sample_rate,
            config.drift_reference_size, config.drift_window, config.catalog_window_s,
        )
        # In this order: the shadow draw comes before the recall sample's.
        self.observers: list[SearchObserver] = [
            ShadowMirror(self.searcher, self.background, metrics, draw),
            self.monitoring,
        ]
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def use_tracer(self, tracer: Tracer) -> None:
        """The runtime's tracer, for the spans of the stages of requests."""
        self.searcher.tracer = tracer
        self.ingest.tracer = tracer
        self.background.tracer = tracer

    # -- readiness -------------------------------------------------------------------
    def connect(self, deadline: float, refresh_every_s: float) -> None:
        """Blocks until every encoder (it may still be loading its model) and every shard
        answers; the gateway turns SERVING only then. Then keeps the routes fresh."""
        log_after = 0.0
        while True:
            # Each try is short, so a downstream that never answers (a wrong address, a
            # port still closed) shows in the log every few seconds instead of the start
            # waiting silently for the whole --downstream-wait-s.
            attempt = min(deadline, time.monotonic() + CONNECT_ATTEMPT_S)
            try:
                self.router.refresh(attempt, wait_for_ready=True, require_all=True)
                self.refresh_replicas(attempt)
                limits = wait_all([shard.limits(attempt) for shard in self.shards])
            except ContentEmbedError as error:
                # A refused key or a bad request will not fix itself by waiting.
                if time.monotonic() + 0.5 >= deadline or error.code in NOT_RETRIED_AT_START:
                    raise Unavailable(f"downstream services not ready: {error.message}") from error
                if time.monotonic() >= log_after:
                    log.warning("waiting for downstream services", extra={"error": error.message})
                    log_after = time.monotonic() + CONNECT_ATTEMPT_S
                time.sleep(0.5)
                continue
            break
        self.check_limits(limits)
        self.refresh_candidates(deadline)  # a restarted gateway carries on a canary at once
        self._refresher = threading.Thread(
            target=self._refresh_loop, args=(refresh_every_s,), name="encoder-routes", daemon=True
        )
        self._refresher.start()

    def check_limits(self, limits: Sequence[ShardLimits]) -> None:
        """A request the gateway accepts must never be refused by a shard for its size:
        the gateway's limits may not exceed any shard's (a shard that does not say is
        trusted). Refused at start-up, naming the settings to change."""
        problems = []
        for shard, limit in zip(self.shards, limits):
            for name, ours, theirs in (
                ("max_top_k", self.config.max_top_k, limit.max_top_k),
                ("max_queries_per_batch", self.config.max_queries_per_batch,
                 limit.max_queries_per_batch),
                ("max_ids_per_get", self.config.max_ids_per_get, limit.max_ids_per_call),
                ("max_ef", self.config.max_ef, limit.max_ef),
            ):
                if theirs and ours > theirs:
                    problems.append(f"{name} {ours} > {theirs} of {shard.label}")

        if problems:
            raise FailedPrecondition(
                "the gateway's limits exceed its shards': " + "; ".join(problems)
                + " (lower the gateway's settings or raise the shards')",
                reason="LIMITS_EXCEED_SHARDS",
            )

    def refresh_replicas(self, deadline: float) -> None:
        """Learns the standing of the replicas of every shard served by a replica group
        (roles, terms, the in-sync set); shards of one address are not asked."""
        refresh_groups([s for s in self.shards if isinstance(s, ReplicatedShard)], deadline)

    def _refresh_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.refresh_replicas(time.monotonic() + every_s)
            try:
                self.searcher.forget_spaces(self.router.refresh(time.monotonic() + every_s))
            except ContentEmbedError as error:
                log.warning("encoder refresh failed", extra={"error": error.message})
            self.refresh_collections(time.monotonic() + every_s)

    def refresh_collections(self, deadline: float) -> None:
        """Keeps the collection spaces fresh, the candidates as the shards keep them, and
        the quality gauges current."""
        self.collection_spaces.refresh(deadline)
        self.refresh_candidates(deadline)
        self.monitoring.update_gauges(lambda name: self.collections.get(name, deadline).item_count)

    def refresh_candidates(self, deadline: float) -> None:
        try:
            self.rollout.refresh_candidates(deadline)
        except ContentEmbedError as error:  # the shards may be restarting: keep what we have
            log.warning("candidate refresh failed", extra={"error": error.message})

    def _forget_collection(self, name: str) -> None:
        self.collection_spaces.forget(name)
        self.monitoring.forget(name)
        self.write_plans.forget(name)
        self.candidates.drop(name)  # a re-created collection starts without one

    # -- search ----------------------------------------------------------------------
    def search(self, query: Query) -> SearchOutcome:
        """Answers from the serving version, or from the candidate for a canary share;
        then lets the observers see the answer (a shadow share mirrored to the candidate
        off the request path, quality monitors). With more than one collection: merged by
        cosine within one space, fused by rank across spaces.

        An evaluation (a named ``version``, or ``exact``) answers from exactly what was
        asked: no canary, no shadow copy, no quality metric. A top_k of 0 is the
        configured default_top_k.

        The retrieval (dense, lexical, hybrid) is the searcher's to decide per collection
        (``Searcher.resolve_mode``); the outcome says which answered."""
        if query.top_k == 0:
            query = replace(query, top_k=self.config.default_top_k)
        self.searcher.validate(query)
        if query.is_evaluation or query.item_id or (query.by_vector and len(query.collections) == 1):
            # An item's vector is not a query: it feeds no drift or quality metric, and it
            # is in the serving version's space, so no canary or shadow copy. A caller's
            # vector is in one space too: the serving version's (or the named version's).
            space = (
                self.rollout.version_space(query.collection, query.version, query.deadline)
                if query.version else None
            )
            return self.searcher.search_one(query, query.collection, query.version, space)
        if len(query.collections) > 1:
            outcome = self.searcher.search_many(query)
            self.metrics.observe_search(
                query.collection, outcome.mode, outcome.hits, outcome.partial
            )
            return outcome
        assignment = self.rollout.assign(query.collection)
        outcome = self.searcher.search_one(
            query, query.collection, assignment.version, assignment.space_id
        )
        stages = [("search", outcome.search_ms), ("merge", outcome.merge_ms)]
        if outcome.mode is not Retrieval.LEXICAL:  # BM25 alone embeds nothing
            stages.insert(0, ("encode", outcome.encode_ms))
        for stage, ms in stages:
            self.metrics.stage_seconds.labels(stage, outcome.mode).observe(ms / 1000)
        self.metrics.observe_search(query.collection, outcome.mode, outcome.hits, outcome.partial)
        self._tell_observers(query, outcome, assignment)
        return outcome

    def search_batch(self, batch: BatchQuery) -> list[SearchOutcome]:
        """One outcome per text, in order, from the serving version (no canary share, no
        shadow copy, no quality metric). A top_k of 0 is the configured default_top_k."""
        if batch.top_k == 0:
            batch = replace(batch, top_k=self.config.default_top_k)
        self.searcher.validate_batch(batch, self.config.max_queries_per_batch)
        return self.searcher.search_batch(batch)

    def _tell_observers(self, query: Query, outcome: SearchOutcome, assignment: Assignment) -> None:
        for observer in self.observers:
            observer.after_search(query, outcome, assignment)

    def wait_for_shadow(self, timeout: float = 10.0) -> bool:
        """True once no background work is pending (for tests and orderly shutdown)."""
        return self.background.wait_idle(timeout)

    # -- collections -----------------------------------------------------------------
    def create_collection(
        self, name: str, space_id: str, exist_ok: bool, deadline: float, modality: str = TEXT,
        model: str = "", lexical: LexicalConfig | None = None,
    ) -> tuple[CollectionSummary, bool]:
        """``lexical``: a BM25 index beside the vectors on every shard (a hybrid collection)."""
        created = self.collections.create(
            name, space_id, exist_ok, deadline, modality, model, lexical
        )
        # A name deleted and created again elsewhere may have a new space or lexical index.
        self.collection_spaces.forget(name)
        return created

    def get_collection(self, name: str, deadline: float) -> CollectionSummary:
        return self.collections.get(name, deadline)

    def list_collections(
        self, page_size: int, page_token: str, deadline: float
    ) -> tuple[list[CollectionSummary], str]:
        return self.collections.list(page_size, page_token, deadline)

    def delete_collection(self, name: str, deadline: float) -> None:
        self.collections.delete(name, deadline)

    # -- documents -------------------------------------------------------------------
    def upsert_documents(
        self, collection: str, documents: Sequence[Document], deadline: float
    ) -> tuple[int, list[str]]:
        return self.ingest.upsert_documents(collection, documents, deadline)

    def get_documents(
        self, collection: str, ids: Sequence[str], deadline: float,
        register_cancel: RegisterCancel = ignore_cancel,
    ) -> tuple[list[StoredItem], list[str]]:
        """The stored documents of ``ids`` in request order, and the missing ids."""
        return self.lookup.get_documents(collection, ids, deadline, register_cancel)

    def delete_documents(self, collection: str, ids: Sequence[str], deadline: float) -> int:
        return self.ingest.delete_documents(collection, ids, deadline)

    # -- rollout ---------------------------------------------------------------------
    def set_candidate(
        self, collection: str, version: str, shadow_fraction: float, canary_weight: float,
        deadline: float,
    ) -> None:
        self.rollout.set_candidate(collection, version, shadow_fraction, canary_weight, deadline)

    def shadow_report(self, collection: str, deadline: float) -> tuple[Candidate, str]:
        return self.rollout.shadow_report(collection, deadline)

    def promote(self, collection: str, deadline: float) -> tuple[str, str]:
        return self.rollout.promote(collection, deadline)

    def rollback(self, collection: str, deadline: float) -> str:
        return self.rollout.rollback(collection, deadline)

    def begin_version(
        self, collection: str, version: str, space_id: str, deadline: float
    ) -> tuple[CollectionSummary, bool]:
        per_shard, created = self.rollout.begin_version(collection, version, space_id, deadline)
        return self.collections.summary(per_shard), created

    def delete_version(self, collection: str, version: str, deadline: float) -> CollectionSummary:
        self.rollout.delete_version(collection, version, deadline)
        return self.collections.get(collection, deadline)

    def close(self) -> None:
        self._stop.set()
        self.background.close()
        for encoder in self.router.encoders:
            encoder.close()
        for shard in self.shards:
            shard.close()
