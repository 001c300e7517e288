"""Rolling a new version of a collection out: candidates under shadow traffic and a
canary share, promotion, rollback, and the versions a build opens and drops. Pure: no
grpc.

The canary draw happens here, before the search (``Rollout.assign``); the shadow copy is
a search observer (``ShadowMirror``) that runs after the answer and off the request path,
so neither can change what the caller gets from the version it was assigned.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from contentembed.services.common.errors import (
    ContentEmbedError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from contentembed.services.common.validation import shown, validate_collection_name
from contentembed.services.gateway.background import BackgroundPool
from contentembed.services.gateway.ingest import WritePlans
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.ports import (
    CandidateInfo,
    ShardCollection,
    ShardPort,
    is_lexical_only,
    outcomes_of,
    wait_all,
)
from contentembed.services.gateway.routing import CollectionSpaces, EncoderRouter
from contentembed.services.gateway.search import (
    Query,
    Retrieval,
    Searcher,
    SearchOutcome,
    ignore_cancel,
)

log = logging.getLogger(__name__)

SHADOW_TIMEOUT_S = 10.0  # a shadow copy runs after the answer: no caller waits on it
CANDIDATE_PAGE = 200  # collections per ListCollections page when reading candidates back


def overlap_at_k(primary: Sequence[str], candidate: Sequence[str]) -> float:
    """Share of the primary's ids the candidate also returned (1.0 for two empty answers)."""
    if not primary:
        return 1.0 if not candidate else 0.0
    return len(set(primary) & set(candidate)) / len(primary)


def rank_correlation(primary: Sequence[str], candidate: Sequence[str]) -> float | None:
    """Spearman's rho of the ids both returned, ranked within each answer; None below 2."""
    common = [item for item in primary if item in set(candidate)]
    n = len(common)
    if n < 2:
        return None
    candidate_rank = {item: rank for rank, item in enumerate(i for i in candidate if i in set(common))}
    squared = sum((rank - candidate_rank[item]) ** 2 for rank, item in enumerate(common))
    return 1.0 - 6.0 * squared / (n * (n * n - 1))


@dataclass
class ShadowStats:
    queries: int = 0
    failures: int = 0
    canary_queries: int = 0
    overlap_sum: float = 0.0
    rank_sum: float = 0.0
    rank_count: int = 0
    latency_delta_sum_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, primary: Sequence[str], candidate: Sequence[str], latency_delta_ms: float) -> float:
        overlap = overlap_at_k(primary, candidate)
        rho = rank_correlation(primary, candidate)
        with self._lock:
            self.queries += 1
            self.overlap_sum += overlap
            if rho is not None:
                self.rank_sum += rho
                self.rank_count += 1
            self.latency_delta_sum_ms += latency_delta_ms
        return overlap

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1

    def record_canary(self) -> None:
        with self._lock:
            self.canary_queries += 1

    def means(self) -> tuple[float, float, float]:
        """(mean overlap@k, mean rank correlation, mean latency delta ms)."""
        with self._lock:
            n = max(self.queries, 1)
            return (
                self.overlap_sum / n,
                self.rank_sum / max(self.rank_count, 1),
                self.latency_delta_sum_ms / n,
            )


@dataclass
class Candidate:
    version: str
    space_id: str
    shadow_fraction: float
    canary_weight: float
    stats: ShadowStats = field(default_factory=ShadowStats)


class Candidates:
    """The candidate of each collection that has one; shared by rollout, the shadow
    observer and the collection summaries."""

    def __init__(self) -> None:
        self._by_collection: dict[str, Candidate] = {}
        self._lock = threading.Lock()

    def get(self, collection: str) -> Candidate | None:
        with self._lock:
            return self._by_collection.get(collection)

    def set(self, collection: str, candidate: Candidate) -> None:
        with self._lock:
            self._by_collection[collection] = candidate

    def drop(self, collection: str, version: str | None = None) -> None:
        """Forgets the collection's candidate (only if it is ``version``, when given)."""
        with self._lock:
            current = self._by_collection.get(collection)
            if current is not None and (version is None or current.version == version):
                del self._by_collection[collection]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_collection)

    def version_of(self, collection: str) -> str:
        candidate = self.get(collection)
        return candidate.version if candidate else ""

    def __contains__(self, collection: str) -> bool:
        return self.get(collection) is not None


@dataclass(frozen=True)
class Assignment:
    """Which version answers one query: the serving one (``version`` empty, the space
    looked up) or, for the canary share, the candidate."""

    version: str = ""
    space_id: str | None = None
    candidate: Candidate | None = None

    @property
    def canary(self) -> bool:
        return self.candidate is not None and self.version == self.candidate.version


class ShadowMirror:
    """A search observer: a ``shadow_fraction`` share of the answers served by the serving
    version is repeated against the candidate on a background thread and compared; a
    canary answer is counted. A full queue skips the copy; the answer is never touched.

    Shadow copies compare the dense retrievers only. A candidate differs from the serving
    version in its embedding model (or its build of the vectors); the BM25 side is the same
    texts through the same analyzer. So a hybrid answer's copy runs dense on the candidate
    and is compared with the primary's dense candidates (the same page of them), which
    the fused lists would blur with the lexical side's agreement, and which needs no
    lexical index on the candidate; a lexical answer is not mirrored at all (no model to
    compare). The latency delta of a hybrid copy then leaves out the primary's BM25 work
    only as far as the shard did it in parallel with HNSW."""

    def __init__(
        self,
        searcher: Searcher,
        background: BackgroundPool,
        metrics: GatewayMetrics,
        draw: random.Random,
    ) -> None:
        self.searcher = searcher
        self.background = background
        self.metrics = metrics
        self._draw = draw

    def after_search(self, query: Query, outcome: SearchOutcome, assignment: Assignment) -> None:
        candidate = assignment.candidate
        if candidate is None:
            return
        if assignment.canary:
            candidate.stats.record_canary()
        elif outcome.mode is not Retrieval.LEXICAL and self._draw.random() < candidate.shadow_fraction:
            self.mirror(query, candidate, outcome)

    def mirror(self, query: Query, candidate: Candidate, primary: SearchOutcome) -> None:
        shadow_query = replace(
            query, allow_partial=False, register_cancel=ignore_cancel,
            retrieval=replace(query.retrieval, mode=Retrieval.DENSE),
        )
        if primary.mode is Retrieval.HYBRID:
            # Dense against dense: the primary's dense candidates, paged as the query pages
            # (the threshold was on the fused score: neither side applies it).
            primary_hits = primary.dense_candidates[query.offset:query.offset + query.top_k]
            shadow_query = replace(shadow_query, score_threshold=None)
        else:
            primary_hits = primary.hits
        primary_ids = [hit.id for hit in primary_hits]
        primary_ms = primary.encode_ms + primary.search_ms

        def run() -> None:
            shadow_query_now = replace(shadow_query, deadline=time.monotonic() + SHADOW_TIMEOUT_S)
            try:
                shadow = self.searcher.search_one(
                    shadow_query_now, query.collection, candidate.version, candidate.space_id
                )
                overlap = candidate.stats.record(
                    primary_ids, [hit.id for hit in shadow.hits],
                    shadow.encode_ms + shadow.search_ms - primary_ms,
                )
                self.metrics.shadow_overlap.labels(query.collection, candidate.version).observe(overlap)
            except ContentEmbedError as error:
                candidate.stats.record_failure()
                log.info("shadow query failed",
                         extra={"collection": query.collection, "error": error.message})

        self.background.offload(run, "gateway.shadow_search")


class Rollout:
    def __init__(
        self,
        shards: Sequence[ShardPort],
        router: EncoderRouter,
        spaces: CollectionSpaces,
        write_plans: WritePlans,
        candidates: Candidates,
        draw: random.Random,
    ) -> None:
        self.shards = list(shards)
        self.router = router
        self.spaces = spaces
        self.write_plans = write_plans
        self.candidates = candidates
        self._draw = draw

    def assign(self, collection: str) -> Assignment:
        """The canary draw: the candidate for a ``canary_weight`` share of queries."""
        candidate = self.candidates.get(collection)
        if candidate is not None and self._draw.random() < candidate.canary_weight:
            return Assignment(candidate.version, candidate.space_id, candidate)
        return Assignment(candidate=candidate)

    @staticmethod
    def refuse_lexical_only(collection: str, per_shard: Sequence[ShardCollection]) -> None:
        """Versions are builds of the vectors by a model: a collection without vectors has
        none to build, shadow or canary."""
        if any(is_lexical_only(c.lexical) for c in per_shard):
            raise FailedPrecondition(
                f"collection {shown(collection)} is lexical-only: it has no vectors, so no "
                "model versions to build, shadow, canary or promote",
                reason="LEXICAL_ONLY",
            )

    def version_space(self, collection: str, version: str, deadline: float) -> str:
        """The space of a version loaded on every shard (for searches of that version)."""
        per_shard = wait_all([s.get_collection(collection, deadline) for s in self.shards])
        if not all(version in c.versions for c in per_shard):
            pending = any(version in c.pending_versions for c in per_shard)
            raise FailedPrecondition(
                f"version {shown(version)} of {shown(collection)} is "
                + ("pending: its bundle is not published yet" if pending
                   else "not loaded on every shard"),
                reason="VERSION_PENDING" if pending else "VERSION_NOT_LOADED",
            )
        spaces = {c.version_spaces[version] for c in per_shard}
        if len(spaces) != 1:
            raise FailedPrecondition(f"shards disagree on the space of version {shown(version)}")
        return spaces.pop()

    # -- candidates: shadow, canary, promotion ----------------------------------------
    def set_candidate(
        self, collection: str, version: str, shadow_fraction: float, canary_weight: float,
        deadline: float,
    ) -> None:
        validate_collection_name(collection)
        for name, share in (("shadow_fraction", shadow_fraction), ("canary_weight", canary_weight)):
            if not 0.0 <= share <= 1.0:
                raise InvalidArgument(f"{name} must be between 0 and 1, got {share}")
        if not version:
            wait_all([s.set_candidate(collection, None, deadline) for s in self.shards])
            self.candidates.drop(collection)
            return
        per_shard = wait_all([s.get_collection(collection, deadline) for s in self.shards])
        self.refuse_lexical_only(collection, per_shard)
        space = self.version_space(collection, version, deadline)
        if any(c.version == version for c in per_shard):
            raise FailedPrecondition(f"version {shown(version)} is already serving", reason="ALREADY_SERVING")
        self.router.info_for_space(space)  # a candidate no encoder can query is refused now
        # Kept on the shards: every gateway (and this one after a restart) reads it back in
        # its refresh, so they all shadow and canary alike. A shard that fails leaves the
        # call failed; repeating it finishes the job.
        shared = CandidateInfo(version, shadow_fraction, canary_weight)
        wait_all([s.set_candidate(collection, shared, deadline) for s in self.shards])
        self.candidates.set(collection, Candidate(version, space, shadow_fraction, canary_weight))

    def refresh_candidates(self, deadline: float) -> None:
        """Takes the candidates the shards keep (the first shard's word: every call that
        sets one writes all of them), keeping the shadow statistics of a candidate that
        did not change."""
        seen: dict[str, tuple[CandidateInfo, str]] = {}
        after, more = "", True
        while more:
            page, more = self.shards[0].list_collections(CANDIDATE_PAGE, after, deadline).result()
            for collection in page:
                candidate = collection.candidate
                if candidate is not None and candidate.version in collection.version_spaces:
                    seen[collection.name] = (candidate, collection.version_spaces[candidate.version])
            after = page[-1].name if page else after
            more = more and bool(page)
        for name in self.candidates.names():
            if name not in seen:
                self.candidates.drop(name)
        for name, (shared, space) in seen.items():
            current = self.candidates.get(name)
            if current is None or (current.version, current.space_id, current.shadow_fraction,
                                   current.canary_weight) != (shared.version, space,
                                                              shared.shadow_fraction,
                                                              shared.canary_weight):
                self.candidates.set(name, Candidate(shared.version, space, shared.shadow_fraction,
                                                    shared.canary_weight))

    def shadow_report(self, collection: str, deadline: float) -> tuple[Candidate, str]:
        """(candidate with its stats, the serving version)."""
        validate_collection_name(collection)
        candidate = self.candidates.get(collection)
        if candidate is None:
            raise NotFound(f"collection {shown(collection)} has no candidate", reason="NO_CANDIDATE")
        primary = self.shards[0].get_collection(collection, deadline).result().version
        return candidate, primary

    def promote(self, collection: str, deadline: float) -> tuple[str, str]:
        """(previous version, new serving version). Each shard flips atomically; a failure
        leaves the candidate in place so the promotion can be retried."""
        validate_collection_name(collection)
        candidate = self.candidates.get(collection)
        if candidate is None:
            raise FailedPrecondition(
                f"collection {shown(collection)} has no candidate to promote", reason="NO_CANDIDATE"
            )
        previous = outcomes_of(
            [s.activate_version(collection, candidate.version, deadline) for s in self.shards]
        )
        failures = [o for o in previous if isinstance(o, ContentEmbedError)]
        if failures:
            # Flip the shards that did flip back, so the collection never serves two
            # versions (possibly two spaces) at once; the candidate stays for a retry.
            undo = [
                shard.activate_version(collection, before, deadline)
                for shard, before in zip(self.shards, previous)
                if isinstance(before, str) and before != candidate.version
            ]
            wait_all(undo)
            self.spaces.forget(collection)
            raise failures[0]
        self.candidates.drop(collection)
        self.spaces.forget(collection)
        return str(previous[0]), candidate.version

    def rollback(self, collection: str, deadline: float) -> str:
        validate_collection_name(collection)
        versions = wait_all([s.rollback_version(collection, deadline) for s in self.shards])
        self.spaces.forget(collection)
        return versions[0]

    # -- versions a build opens and drops ---------------------------------------------
    def begin_version(
        self, collection: str, version: str, space_id: str, deadline: float
    ) -> tuple[list[ShardCollection], bool]:
        """Opens a pending version on every shard: (each shard's collection, whether any
        shard created it). A shard that fails leaves none opened by this call on the
        others, so no shard pays for writes to a version nobody builds."""
        validate_collection_name(collection)
        if not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        self.refuse_lexical_only(
            collection, wait_all([s.get_collection(collection, deadline) for s in self.shards])
        )
        # Online writes are embedded into the version's space: an encoder must serve it.
        info = self.router.info_for_space(space_id)
        opened = outcomes_of(
            [s.begin_version(collection, version, space_id, info.dim, deadline) for s in self.shards]
        )
        self.write_plans.forget(collection)
        failures = [o for o in opened if isinstance(o, ContentEmbedError)]
        if failures:
            undo = [
                shard.delete_version(collection, version, deadline)
                for shard, outcome in zip(self.shards, opened)
                if isinstance(outcome, tuple) and outcome[1]
            ]
            outcomes_of(undo)
            raise failures[0]
        return (
            [c for c, _ in opened],  # type: ignore[misc]
            any(created for _, created in opened),  # type: ignore[misc]
        )

    def delete_version(self, collection: str, version: str, deadline: float) -> None:
        """Drops a non-serving version everywhere; a shard that no longer has it is fine."""
        validate_collection_name(collection)
        dropped = outcomes_of([s.delete_version(collection, version, deadline) for s in self.shards])
        self.write_plans.forget(collection)
        self.candidates.drop(collection, version)
        failures = [
            o for o in dropped
            if isinstance(o, ContentEmbedError) and o.reason != "VERSION_NOT_FOUND"
        ]
        if failures:
            raise failures[0]
        if all(isinstance(o, ContentEmbedError) for o in dropped):
            raise dropped[0]  # type: ignore[misc]  # no shard had it
