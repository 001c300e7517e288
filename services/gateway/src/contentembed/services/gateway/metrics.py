"""Gateway metrics: stage latency, cache, and retrieval quality (coverage). No grpc."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contentembed.services.common.metrics import LATENCY_BUCKETS
from contentembed.services.gateway.merge import Hit

LEXICAL = "lexical"  # the mode label of BM25-only answers (search.Retrieval.LEXICAL)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, coverage_floor: float) -> None:
        self.coverage_floor = coverage_floor
        self.stage_seconds = Histogram(
            "contentembed_search_stage_seconds",
            "Time per search stage (encode, search, merge) by retrieval mode (dense, lexical, "
            "hybrid; lexical answers have no encode stage).",
            ["stage", "mode"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.shard_batch_queries = Histogram(
            "contentembed_shard_batch_queries",
            "Searches per coalesced SearchBatch call to a shard (searches beyond "
            "shard_max_in_flight wait and go out together); _count is the batches.",
            ["shard"],
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        # Shards served by replica groups only (--index-endpoints a:1|a:2).
        self.replica_outstanding = Gauge(
            "contentembed_shard_replica_outstanding",
            "Calls to one replica of a replicated shard started and not yet ended (reads go "
            "to the in-sync replica with the fewest).",
            ["shard", "replica"],
            registry=registry,
        )
        self.replica_retries = Counter(
            "contentembed_shard_replica_retries",
            "Calls a replica failed that were tried again: a read on another in-sync "
            "replica, a write on the primary after a refresh.",
            ["shard", "replica", "operation"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "contentembed_query_cache_lookups",
            "Query-embedding cache lookups by result (hit, miss).",
            ["result"],
            registry=registry,
        )
        self.cache_evictions = Counter(
            "contentembed_query_cache_space_drops",
            "Cache entries dropped because an encoder's space changed.",
            registry=registry,
        )
        self.queries = Counter(
            "contentembed_search_queries",
            "Answered searches per collection and retrieval mode (dense, lexical, hybrid).",
            ["collection", "mode"],
            registry=registry,
        )
        self.covered = Counter(
            "contentembed_search_covered_queries",
            "Answered searches with a hit whose cosine (dense score) is at or above the "
            "coverage floor, or, for lexical answers (no cosine), with any hit (a BM25 match); "
            "covered / queries is the coverage.",
            ["collection", "mode"],
            registry=registry,
        )
        self.partial = Counter(
            "contentembed_search_partial_answers",
            "Searches answered without every shard.",
            ["collection"],
            registry=registry,
        )

        self.shadow_overlap = Histogram(
            "contentembed_shadow_overlap_at_k",
            "Overlap@k of a candidate version with the primary on mirrored queries.",
            ["collection", "candidate"],
            registry=registry,
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
        )
        self.shadow_skipped = Counter(
            "contentembed_shadow_skipped_queries",
            "Background queries (shadow, recall audits) skipped: their queue was full.",
            registry=registry,
        )

        self.sampled_recall = Histogram(
            "contentembed_sampled_recall_at_k",
            "Recall@k of answered searches against exact search, on a sample of queries.",
            ["collection"],
            registry=registry,
            buckets=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0),
        )
        self.drift_cosine = Gauge(
            "contentembed_query_drift_cosine",
            "Cosine of the recent mean query embedding to the reference mean (1: no drift).",
            ["space"],
            registry=registry,
        )
        self.drift_psi = Gauge(
            "contentembed_query_drift_psi",
            "Population stability index of recent queries' similarity to the reference "
            "centroid (< 0.1 stable, > 0.25 drifted).",
            ["space"],
            registry=registry,
        )
        self.catalog_coverage = Gauge(
            "contentembed_catalog_coverage_ratio",
            "Share of the collection returned by some search in the rolling window.",
            ["collection"],
            registry=registry,
        )

    def observe_search(
        self, collection: str, mode: str, hits: Sequence[Hit], partial: bool
    ) -> None:
        """Counts an answered search. Coverage compares cosine with the floor: the dense
        score of the hits, not the answer's score, which is a fusion score for hybrid (and
        for collections of several spaces) and BM25 for lexical."""
        self.queries.labels(collection, mode).inc()
        if mode == LEXICAL:
            covered = bool(hits)
        else:
            covered = any(
                hit.dense_score is not None and hit.dense_score >= self.coverage_floor
                for hit in hits
            )
        if covered:
            self.covered.labels(collection, mode).inc()
        if partial:
            self.partial.labels(collection).inc()
