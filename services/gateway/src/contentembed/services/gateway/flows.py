"""Search and ingest flows of the gateway. No grpc here: calls go through the ports in
``ports.py`` (implemented over gRPC by ``downstream.py``) and fail with domain errors.

Routing is by space: a collection is bound to a space (its serving version's), every
encoder reports the space and modality it serves, and a query is embedded by the encoder
of (collection space, query modality) — so a text query reaches an image collection only
through an encoder of the same space (CLIP), and never with vectors of another space.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Tracer

from contentembed.services.common.errors import (
    CLIENT_ERROR_CODES,
    ContentEmbedError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import (
    shown,
    validate_collection_name,
    validate_ids,
    validate_top_k,
)
from contentembed.services.gateway.cache import EmbeddingCache, cache_key
from contentembed.services.gateway.merge import Hit, merge_top_k, reciprocal_rank_fusion
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.ports import (
    IMAGE,
    TEXT,
    EncoderInfo,
    EncoderPort,
    Pending,
    ShardAnswer,
    ShardCollection,
    ShardPort,
    outcomes_of,
    wait_all,
)
from contentembed.services.gateway.quality import CatalogCoverage, DriftMonitor
from contentembed.services.gateway.shadow import Candidate
from contentembed.services.gateway.versions import VERSIONS_CHANGED, WRITE_PLAN_TTL_S, WritePlan

log = logging.getLogger(__name__)

RegisterCancel = Callable[[Callable[[], None]], Any]
NOT_RETRIED_AT_START = CLIENT_ERROR_CODES | {"UNAUTHENTICATED", "PERMISSION_DENIED"}
COLLECTION_SPACE_TTL_S = 5.0
SHADOW_TIMEOUT_S = 10.0
MAX_COLLECTIONS_PER_QUERY = 8
WRITE_ATTEMPTS = 3  # plans a write may be re-made with when versions change under it
CONNECT_ATTEMPT_S = 5.0  # one try of the start-up wait for encoders and shards


@dataclass(frozen=True)
class ShardOutcome:
    shard_index: int
    ok: bool
    error: str = ""
    hit_count: int = 0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    space_id: str
    version: str
    partial: bool
    shards: list[ShardOutcome]
    encode_ms: float
    search_ms: float
    merge_ms: float
    query_truncated: bool
    cache_hit: bool = False
    query_vector: np.ndarray | None = None
    fused: bool = False


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    space_id: str
    dim: int
    item_count: int
    shard_count: int
    version: str
    versions: list[str] = field(default_factory=list)  # loaded on every shard
    pending_versions: list[str] = field(default_factory=list)  # pending on some shard
    version_spaces: dict[str, str] = field(default_factory=dict)
    candidate_version: str = ""


@dataclass(frozen=True)
class Document:
    """A catalog entry: text (str) or an encoded image (bytes)."""

    id: str
    content: str | bytes
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return modality_of(self.content)


def summarize(per_shard: Sequence[ShardCollection], candidate: str = "") -> CollectionSummary:
    first = per_shard[0]
    versions = sorted({c.version for c in per_shard})
    loaded = set.intersection(*(set(c.versions) for c in per_shard))
    spaces: dict[str, str] = {}
    for collection in per_shard:
        spaces.update(collection.version_spaces)
    return CollectionSummary(
        name=first.name,
        space_id=first.space_id,
        dim=first.dim,
        item_count=sum(c.item_count for c in per_shard),
        shard_count=len(per_shard),
        version=",".join(versions),
        versions=sorted(loaded),
        pending_versions=sorted({v for c in per_shard for v in c.pending_versions}),
        version_spaces=spaces,
        candidate_version=candidate,
    )


def modality_of(content: str | bytes) -> str:
    return TEXT if isinstance(content, str) else IMAGE


class EncoderRouter:
    """Which encoder serves (space, modality), refreshed from the encoders themselves."""

    def __init__(self, encoders: Sequence[EncoderPort]) -> None:
        self.encoders = list(encoders)
        self._infos: dict[str, EncoderInfo] = {}
        self._lock = threading.Lock()

    def refresh(
        self, deadline: float, wait_for_ready: bool = False, require_all: bool = False
    ) -> set[str]:
        """Asks every encoder for its space; returns spaces an encoder stopped serving.
        An encoder that does not answer keeps its last route (it may be restarting),
        unless ``require_all``: then its error is raised once the others were asked."""
        changed: set[str] = set()
        errors: list[ContentEmbedError] = []
        for encoder in self.encoders:
            try:
                info = encoder.info(deadline, wait_for_ready=wait_for_ready)
            except ContentEmbedError as error:
                errors.append(error)
                continue
            with self._lock:
                old = self._infos.get(encoder.endpoint)
                if old is not None and old.space_id != info.space_id:
                    changed.add(old.space_id)
                    log.warning("encoder changed space", extra={
                        "encoder": encoder.endpoint, "old": old.space_id, "new": info.space_id})
                self._infos[encoder.endpoint] = info
        if errors and (require_all or not self._infos):
            raise errors[0]
        return changed

    def route(self, space_id: str, modality: str) -> tuple[EncoderPort, EncoderInfo]:
        with self._lock:
            for encoder in self.encoders:
                info = self._infos.get(encoder.endpoint)
                if info is not None and info.space_id == space_id and info.modality == modality:
                    return encoder, info
            served = sorted(f"{i.modality}:{i.space_id}" for i in self._infos.values())
        raise FailedPrecondition(
            f"no encoder embeds {modality} into space {shown(space_id)} (encoders serve: {served})",
            reason="NO_ENCODER_FOR_SPACE",
        )

    def default_space(self, modality: str = TEXT) -> EncoderInfo:
        """The space a collection gets when its creator names none: that of the only
        encoder of the modality (text unless said otherwise)."""
        with self._lock:
            matching = [i for i in self._infos.values() if i.modality == modality]
            if len(matching) == 1:
                return matching[0]
            choices = sorted(f"{i.modality}:{i.space_id}" for i in self._infos.values())
        raise FailedPrecondition(
            f"name the collection's space_id: {len(matching)} encoders embed {modality} "
            f"(encoders serve {choices})",
            reason="SPACE_REQUIRED",
        )

    def infos(self) -> list[tuple[EncoderPort, EncoderInfo]]:
        """Every encoder with what it last reported, in configuration order."""
        with self._lock:
            return [(e, self._infos[e.endpoint]) for e in self.encoders if e.endpoint in self._infos]

    def info_for_space(self, space_id: str) -> EncoderInfo:
        with self._lock:
            for info in self._infos.values():
                if info.space_id == space_id:
                    return info
            choices = sorted(i.space_id for i in self._infos.values())
        raise FailedPrecondition(
            f"no encoder serves space {shown(space_id)} (encoders serve {choices})",
            reason="NO_ENCODER_FOR_SPACE",
        )


class Gateway:
    def __init__(
        self,
        encoders: Sequence[EncoderPort],
        shards: Sequence[ShardPort],
        cache: EmbeddingCache,
        metrics: GatewayMetrics,
        max_top_k: int,
        max_documents_per_upsert: int,
        metadata_limits: MetadataLimits | None = None,
        shadow_workers: int = 2,
        shadow_queue_limit: int = 64,
        seed: int | None = None,
        recall_sample_rate: float = 0.0,
        drift_reference_size: int = 500,
        drift_window: int = 500,
        catalog_window_s: float = 3600.0,
    ) -> None:
        self.router = EncoderRouter(encoders)
        self.shards = list(shards)
        self.cache = cache
        self.metrics = metrics
        self.max_top_k = max_top_k
        self.max_documents_per_upsert = max_documents_per_upsert
        self.metadata_limits = metadata_limits or MetadataLimits()
        self._collection_spaces: dict[str, tuple[str, float]] = {}
        self._write_plans: dict[str, tuple[WritePlan, float]] = {}
        self.candidates: dict[str, Candidate] = {}
        self._random = random.Random(seed)
        self._shadow_pool = ThreadPoolExecutor(shadow_workers, thread_name_prefix="shadow")
        self._shadow_queue_limit = shadow_queue_limit
        self._shadow_pending = 0
        self._shadow_lock = threading.Lock()
        self.recall_sample_rate = recall_sample_rate
        self._drift_sizes = (drift_reference_size, drift_window)
        self.drift: dict[str, DriftMonitor] = {}
        self.catalog = CatalogCoverage(catalog_window_s)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        # The runtime's (GatewayService.use_tracing); spans of the stages of a request.
        self.tracer: Tracer = trace.NoOpTracer()

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
                wait_all([shard.list_collections(1, "", attempt) for shard in self.shards])
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
        self._refresher = threading.Thread(
            target=self._refresh_loop, args=(refresh_every_s,), name="encoder-routes", daemon=True
        )
        self._refresher.start()

    def _refresh_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.forget_spaces(self.router.refresh(time.monotonic() + every_s))
            except ContentEmbedError as error:
                log.warning("encoder refresh failed", extra={"error": error.message})
            self.update_quality_gauges(time.monotonic() + every_s)

    def forget_spaces(self, spaces: set[str]) -> None:
        """An encoder now serves another model: its old vectors must not be reused."""
        for space in spaces:
            dropped = self.cache.drop_space(space)
            self.metrics.cache_evictions.inc(dropped)

    def collection_space(self, name: str, deadline: float) -> str:
        cached = self._collection_spaces.get(name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        # Any shard knows the space: ask all, take the first answer, so one shard down does
        # not stop searches that allow partial results.
        calls = [shard.get_collection(name, deadline) for shard in self.shards]
        first_error: ContentEmbedError | None = None
        for call in calls:
            try:
                space = call.result().space_id
            except ContentEmbedError as error:
                if error.code in CLIENT_ERROR_CODES:
                    raise
                first_error = first_error or error
                continue
            self._collection_spaces[name] = (space, time.monotonic() + COLLECTION_SPACE_TTL_S)
            return space
        assert first_error is not None
        raise first_error

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

    # -- search ----------------------------------------------------------------------
    def embed_query(
        self, space: str, content: str | bytes, deadline: float, register_cancel: RegisterCancel
    ) -> tuple[np.ndarray, bool, bool]:
        """(vector, truncated, cache hit) for a query in ``space``."""
        modality = modality_of(content)
        key = cache_key(space, modality, content)
        cached = self.cache.get(key)
        self.metrics.cache_lookups.labels("hit" if cached else "miss").inc()
        if cached is not None:
            return cached.vector, cached.truncated, True
        encoder, _ = self.router.route(space, modality)
        call = encoder.embed([content], deadline)
        register_cancel(call.cancel)
        embedded = call.result()
        if embedded.space_id != space:
            # The encoder was redeployed with another model since routes were refreshed.
            self.forget_spaces(self.router.refresh(deadline) | {space})
            raise FailedPrecondition(
                f"{encoder.label} now embeds into {embedded.space_id}, collection space is "
                f"{space}: re-embed the collection or roll the encoder back",
                reason="SPACE_MISMATCH",
            )
        self.cache.put(key, embedded.vectors[0], embedded.truncated[0])
        return embedded.vectors[0], embedded.truncated[0], False

    def search(
        self,
        collection: str,
        content: str | bytes,
        top_k: int,
        allow_partial: bool,
        deadline: float,
        register_cancel: RegisterCancel,
        also_collections: Sequence[str] = (),
        version: str = "",
        exact: bool = False,
    ) -> SearchOutcome:
        """Answers from the serving version, or from the candidate for a canary share;
        mirrors a shadow share to the candidate off the request path. With more than one
        collection: merged by cosine within one space, fused by rank across spaces.

        A named ``version`` or ``exact`` search is an evaluation: it answers from exactly
        what was asked (no canary, no shadow copy) and feeds no quality metric."""
        names = list(dict.fromkeys([collection, *also_collections]))
        for name in names:
            validate_collection_name(name)
        if len(names) > MAX_COLLECTIONS_PER_QUERY:
            raise InvalidArgument(
                f"at most {MAX_COLLECTIONS_PER_QUERY} collections per query, got {len(names)}"
            )
        validate_top_k(top_k, self.max_top_k)
        if isinstance(content, str) and not content.strip():
            raise InvalidArgument("text: the query text is empty", reason="EMPTY_TEXT")
        if isinstance(content, bytes) and not content:
            raise InvalidArgument("image: the query image is empty", reason="EMPTY_IMAGE")
        if version or exact:
            if len(names) > 1:
                raise InvalidArgument(
                    "version and exact apply to one collection; leave also_collections empty",
                    reason="ONE_COLLECTION_ONLY",
                )
            space = self.version_space(collection, version, deadline) if version else None
            return self._search_once(
                collection, content, top_k, allow_partial, deadline, register_cancel,
                version, space, exact=exact,
            )
        if len(names) > 1:
            outcome = self._search_many(names, content, top_k, allow_partial, deadline, register_cancel)
            self.metrics.observe_search(
                collection, outcome.hits[0].score if outcome.hits else None, outcome.partial
            )
            return outcome
        candidate = self.candidates.get(collection)
        if candidate is not None and self._random.random() < candidate.canary_weight:
            outcome = self._search_once(
                collection, content, top_k, allow_partial, deadline, register_cancel,
                candidate.version, candidate.space_id,
            )
            candidate.stats.record_canary()
        else:
            outcome = self._search_once(
                collection, content, top_k, allow_partial, deadline, register_cancel
            )
            if candidate is not None and self._random.random() < candidate.shadow_fraction:
                self._mirror(collection, content, top_k, candidate, outcome)
        for stage, ms in (("encode", outcome.encode_ms), ("search", outcome.search_ms),
                          ("merge", outcome.merge_ms)):
            self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
        best = outcome.hits[0].score if outcome.hits else None
        self.metrics.observe_search(collection, best, outcome.partial)
        self._observe_quality(collection, outcome, top_k)
        return outcome

    def _observe_quality(self, collection: str, outcome: SearchOutcome, top_k: int) -> None:
        drift = self.drift.get(outcome.space_id)
        if drift is None:
            drift = self.drift.setdefault(outcome.space_id, DriftMonitor(*self._drift_sizes))
        if outcome.query_vector is not None:
            drift.observe(outcome.query_vector)
        self.catalog.observe(collection, (hit.id for hit in outcome.hits))
        if outcome.hits and self._random.random() < self.recall_sample_rate:
            self._offload(lambda: self._audit_recall(collection, outcome, top_k), "gateway.recall_audit")

    def _audit_recall(self, collection: str, outcome: SearchOutcome, top_k: int) -> None:
        """Recall@k of the answer against exact search over the same shards and version."""
        deadline = time.monotonic() + SHADOW_TIMEOUT_S
        versions = outcome.version.split(",")
        calls = [
            shard.search(collection, outcome.query_vector, outcome.space_id, top_k, deadline,
                         versions[0] if len(versions) == 1 else "", exact=True)
            for shard in self.shards
        ]
        exact = merge_top_k((answer.hits for answer in wait_all(calls)), top_k)
        if exact:
            found = len({h.id for h in outcome.hits} & {h.id for h in exact}) / len(exact)
            self.metrics.sampled_recall.labels(collection).observe(found)

    def update_quality_gauges(self, deadline: float) -> None:
        """Drift per space and catalog coverage per collection, for the metrics endpoint."""
        for space, monitor in list(self.drift.items()):
            measured = monitor.measure()
            if measured is not None:
                self.metrics.drift_cosine.labels(space).set(measured[0])
                self.metrics.drift_psi.labels(space).set(measured[1])
        for collection in self.catalog.collections():
            try:
                size = self.get_collection(collection, deadline).item_count
            except ContentEmbedError:
                continue
            if size:
                self.metrics.catalog_coverage.labels(collection).set(
                    self.catalog.distinct(collection) / size
                )

    def _search_many(
        self,
        names: Sequence[str],
        content: str | bytes,
        top_k: int,
        allow_partial: bool,
        deadline: float,
        register_cancel: RegisterCancel,
    ) -> SearchOutcome:
        outcomes = [
            self._search_once(name, content, top_k, allow_partial, deadline, register_cancel)
            for name in names
        ]
        started = time.perf_counter()
        spaces = sorted({o.space_id for o in outcomes})
        fused = len(spaces) > 1
        ranked = [o.hits for o in outcomes]
        hits = reciprocal_rank_fusion(ranked, top_k) if fused else merge_top_k(ranked, top_k)
        return SearchOutcome(
            hits=hits,
            space_id=",".join(spaces),
            version=",".join(sorted({o.version for o in outcomes})),
            partial=any(o.partial for o in outcomes),
            shards=[shard for o in outcomes for shard in o.shards],
            encode_ms=sum(o.encode_ms for o in outcomes),
            search_ms=sum(o.search_ms for o in outcomes),
            merge_ms=sum(o.merge_ms for o in outcomes) + (time.perf_counter() - started) * 1000,
            query_truncated=any(o.query_truncated for o in outcomes),
            cache_hit=all(o.cache_hit for o in outcomes),
            fused=fused,
        )

    def _search_once(
        self,
        collection: str,
        content: str | bytes,
        top_k: int,
        allow_partial: bool,
        deadline: float,
        register_cancel: RegisterCancel,
        version: str = "",
        space: str | None = None,
        exact: bool = False,
    ) -> SearchOutcome:
        started = time.perf_counter()
        space = space or self.collection_space(collection, deadline)
        with self.tracer.start_as_current_span(
            "gateway.embed_query", attributes={"contentembed.space_id": space}
        ) as span:
            vector, truncated, cache_hit = self.embed_query(space, content, deadline, register_cancel)
            span.set_attribute("contentembed.cache_hit", cache_hit)
        encoded = time.perf_counter()

        # The fan-out: each shard's call is a CLIENT span under this one.
        with self.tracer.start_as_current_span(
            "gateway.search_shards",
            attributes={"contentembed.collection": collection, "contentembed.shards": len(self.shards)},
        ) as span:
            calls = [
                shard.search(collection, vector, space, top_k, deadline, version, exact)
                for shard in self.shards
            ]
            for call in calls:
                register_cancel(call.cancel)
            try:
                answers, outcomes = self._gather_shards(calls, allow_partial, deadline)
            except FailedPrecondition:
                self._collection_spaces.pop(collection, None)  # a new version in another space
                raise
            span.set_attribute("contentembed.shards_failed", len(self.shards) - len(answers))
        searched = time.perf_counter()

        with self.tracer.start_as_current_span("gateway.merge"):
            hits = merge_top_k((answer.hits for answer in answers), top_k)
        merged = time.perf_counter()
        return SearchOutcome(
            hits=hits,
            space_id=space,
            version=",".join(sorted({answer.version for answer in answers})),
            partial=len(answers) < len(self.shards),
            shards=outcomes,
            encode_ms=(encoded - started) * 1000,
            search_ms=(searched - encoded) * 1000,
            merge_ms=(merged - searched) * 1000,
            query_truncated=truncated,
            cache_hit=cache_hit,
            query_vector=vector,
        )

    def _mirror(
        self,
        collection: str,
        content: str | bytes,
        top_k: int,
        candidate: Candidate,
        primary: SearchOutcome,
    ) -> None:
        """Runs the query against the candidate on a worker thread; a full queue skips it,
        so shadow traffic can never slow or fail the primary answer."""
        primary_ids = [hit.id for hit in primary.hits]
        primary_ms = primary.encode_ms + primary.search_ms

        def run() -> None:
            try:
                shadow = self._search_once(
                    collection, content, top_k, False, time.monotonic() + SHADOW_TIMEOUT_S,
                    lambda cancel: None, candidate.version, candidate.space_id,
                )
                overlap = candidate.stats.record(
                    primary_ids, [hit.id for hit in shadow.hits],
                    shadow.encode_ms + shadow.search_ms - primary_ms,
                )
                self.metrics.shadow_overlap.labels(collection, candidate.version).observe(overlap)
            except ContentEmbedError as error:
                candidate.stats.record_failure()
                log.info("shadow query failed", extra={"collection": collection, "error": error.message})

        self._offload(run, "gateway.shadow_search")

    def _offload(self, work: Callable[[], None], span_name: str) -> None:
        """Runs work off the request path; a full queue skips it (and counts the skip).

        Work for a traced request gets a trace of its own, linked to the request's span:
        as a child it would stretch a trace that ended when the caller got its answer."""
        with self._shadow_lock:
            if self._shadow_pending >= self._shadow_queue_limit:
                self.metrics.shadow_skipped.inc()
                return
            self._shadow_pending += 1
        origin = trace.get_current_span().get_span_context()

        def run() -> None:
            try:
                if origin.is_valid:
                    with self.tracer.start_as_current_span(
                        span_name, context=otel_context.Context(), links=[Link(origin)]
                    ):
                        work()
                else:
                    work()
            except ContentEmbedError as error:
                log.info("background query failed", extra={"error": error.message})
            finally:
                with self._shadow_lock:
                    self._shadow_pending -= 1

        self._shadow_pool.submit(run)

    def wait_for_shadow(self, timeout: float = 10.0) -> bool:
        """True once no shadow query is pending (for tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._shadow_lock:
                if self._shadow_pending == 0:
                    return True
            time.sleep(0.01)
        return False

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
            self.candidates.pop(collection, None)
            return
        space = self.version_space(collection, version, deadline)
        per_shard = wait_all([s.get_collection(collection, deadline) for s in self.shards])
        if any(c.version == version for c in per_shard):
            raise FailedPrecondition(f"version {shown(version)} is already serving", reason="ALREADY_SERVING")
        self.router.info_for_space(space)  # a candidate no encoder can query is refused now
        self.candidates[collection] = Candidate(version, space, shadow_fraction, canary_weight)

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
        outcomes = outcomes_of(
            [s.activate_version(collection, candidate.version, deadline) for s in self.shards]
        )
        failures = [o for o in outcomes if isinstance(o, ContentEmbedError)]
        if failures:
            # Flip the shards that did flip back, so the collection never serves two
            # versions (possibly two spaces) at once; the candidate stays for a retry.
            undo = [
                shard.activate_version(collection, previous, deadline)
                for shard, previous in zip(self.shards, outcomes)
                if isinstance(previous, str) and previous != candidate.version
            ]
            wait_all(undo)
            self._collection_spaces.pop(collection, None)
            raise failures[0]
        self.candidates.pop(collection, None)
        self._collection_spaces.pop(collection, None)
        return str(outcomes[0]), candidate.version

    def rollback(self, collection: str, deadline: float) -> str:
        validate_collection_name(collection)
        versions = wait_all([s.rollback_version(collection, deadline) for s in self.shards])
        self._collection_spaces.pop(collection, None)
        return versions[0]

    def _gather_shards(
        self,
        calls: Sequence[Pending[ShardAnswer]],
        allow_partial: bool,
        deadline: float,
    ) -> tuple[list[ShardAnswer], list[ShardOutcome]]:
        answers: list[ShardAnswer] = []
        outcomes: list[ShardOutcome] = []
        failures: list[ContentEmbedError] = []
        for shard, call in zip(self.shards, calls):
            try:
                answer = call.result()
            except ContentEmbedError as error:
                failures.append(error)
                # With its reason: UNAVAILABLE NOT_READY (a shard replaying its log, back
                # soon) reads differently from a shard that is down.
                label = error.code if error.reason == error.code else f"{error.code} {error.reason}"
                outcomes.append(
                    ShardOutcome(shard.shard_index, False, f"{label}: {error.message}",
                                 latency_ms=call.latency_ms)
                )
                continue
            answers.append(answer)
            outcomes.append(
                ShardOutcome(shard.shard_index, True, hit_count=len(answer.hits),
                             latency_ms=call.latency_ms)
            )
        # A request-level problem (unknown collection, wrong space) is the caller's to fix
        # and the same on every shard: report it, never a "partial" answer.
        for error in failures:
            if error.code in CLIENT_ERROR_CODES:
                raise error
        if failures and (not allow_partial or not answers):
            summary = "; ".join(error.message for error in failures)
            failed = f"{len(failures)} of {len(self.shards)} index shards failed: {summary}"
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(failed, reason="SHARDS_FAILED")
            raise Unavailable(failed, reason="SHARDS_FAILED")
        return answers, outcomes

    # -- collections -----------------------------------------------------------------
    def create_collection(
        self, name: str, space_id: str, exist_ok: bool, deadline: float, modality: str = TEXT
    ) -> tuple[CollectionSummary, bool]:
        validate_collection_name(name)
        info = (
            self.router.info_for_space(space_id) if space_id else self.router.default_space(modality)
        )
        results = wait_all(
            [s.create_collection(name, info.space_id, info.dim, exist_ok, deadline) for s in self.shards]
        )
        return self._summary([c for c, _ in results]), any(created for _, created in results)

    def _summary(self, per_shard: Sequence[ShardCollection]) -> CollectionSummary:
        candidate = self.candidates.get(per_shard[0].name)
        return summarize(per_shard, candidate.version if candidate else "")

    def get_collection(self, name: str, deadline: float) -> CollectionSummary:
        validate_collection_name(name)
        return self._summary(wait_all([s.get_collection(name, deadline) for s in self.shards]))

    # -- versions --------------------------------------------------------------------
    def begin_version(
        self, collection: str, version: str, space_id: str, deadline: float
    ) -> tuple[CollectionSummary, bool]:
        """Opens a pending version on every shard. A shard that fails leaves none opened by
        this call on the others, so no shard pays for writes to a version nobody builds."""
        validate_collection_name(collection)
        if not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        # Online writes are embedded into the version's space: an encoder must serve it.
        info = self.router.info_for_space(space_id)
        outcomes = outcomes_of(
            [s.begin_version(collection, version, space_id, info.dim, deadline) for s in self.shards]
        )
        self._write_plans.pop(collection, None)
        failures = [o for o in outcomes if isinstance(o, ContentEmbedError)]
        if failures:
            undo = [
                shard.delete_version(collection, version, deadline)
                for shard, outcome in zip(self.shards, outcomes)
                if isinstance(outcome, tuple) and outcome[1]
            ]
            outcomes_of(undo)
            raise failures[0]
        return (
            self._summary([c for c, _ in outcomes]),  # type: ignore[misc]
            any(created for _, created in outcomes),  # type: ignore[misc]
        )

    def delete_version(self, collection: str, version: str, deadline: float) -> CollectionSummary:
        """Drops a non-serving version everywhere; a shard that no longer has it is fine."""
        validate_collection_name(collection)
        outcomes = outcomes_of(
            [s.delete_version(collection, version, deadline) for s in self.shards]
        )
        self._write_plans.pop(collection, None)
        candidate = self.candidates.get(collection)
        if candidate is not None and candidate.version == version:
            self.candidates.pop(collection, None)
        failures = [
            o for o in outcomes
            if isinstance(o, ContentEmbedError) and o.reason != "VERSION_NOT_FOUND"
        ]
        if failures:
            raise failures[0]
        if all(isinstance(o, ContentEmbedError) for o in outcomes):
            raise outcomes[0]  # type: ignore[misc]  # no shard had it
        return self.get_collection(collection, deadline)

    def write_plan(self, collection: str, deadline: float, fresh: bool = False) -> WritePlan:
        cached = self._write_plans.get(collection)
        if cached is not None and not fresh and cached[1] > time.monotonic():
            return cached[0]
        plan = WritePlan.of(
            wait_all([s.get_collection(collection, deadline) for s in self.shards])
        )
        self._write_plans[collection] = (plan, time.monotonic() + WRITE_PLAN_TTL_S)
        return plan

    def list_collections(
        self, page_size: int, page_token: str, deadline: float
    ) -> tuple[list[CollectionSummary], str]:
        # Every shard holds every collection, so the same name-ordered page token
        # selects the same page on each.
        pages = wait_all(
            [s.list_collections(page_size, page_token, deadline) for s in self.shards]
        )
        by_name: dict[str, list[ShardCollection]] = defaultdict(list)
        for collections, _ in pages:
            for collection in collections:
                by_name[collection.name].append(collection)
        summaries = [self._summary(by_name[name]) for name in sorted(by_name)]
        return summaries, pages[0][1]

    def delete_collection(self, name: str, deadline: float) -> None:
        validate_collection_name(name)
        wait_all([s.delete_collection(name, deadline) for s in self.shards])
        self._collection_spaces.pop(name, None)
        self._write_plans.pop(name, None)
        self.candidates.pop(name, None)  # a re-created collection starts without one

    # -- documents -------------------------------------------------------------------
    def upsert_documents(
        self, collection: str, documents: Sequence[Document], deadline: float
    ) -> tuple[int, list[str]]:
        """Embeds and writes every document into every version of the collection (each in
        its own space); returns (count, ids whose text the serving model truncated).

        Acknowledged only when every shard acknowledged every space. A failure may leave
        some written: upserts are idempotent, so the caller retries the request. A version
        opened or dropped meanwhile makes a shard refuse the write (VERSIONS_CHANGED): the
        plan is made again and the write resent, so the new version misses nothing.
        """
        validate_collection_name(collection)
        if not documents:
            raise InvalidArgument("documents: at least one document is required", reason="EMPTY_BATCH")
        if len(documents) > self.max_documents_per_upsert:
            raise InvalidArgument(
                f"documents: {len(documents)} documents exceed the limit of "
                f"{self.max_documents_per_upsert} per request",
                reason="BATCH_TOO_LARGE",
            )
        validate_ids([d.id for d in documents], what="documents")
        for position, document in enumerate(documents):
            # The shards check it too; here a bad one is refused before anything is embedded.
            check_metadata(
                document.metadata, self.metadata_limits, what=f"documents[{position}].metadata"
            )
            if isinstance(document.content, str) and not document.content.strip():
                raise InvalidArgument(f"documents[{position}]: text is empty", reason="EMPTY_TEXT")
        embedded: dict[str, tuple[np.ndarray, list[bool]]] = {}
        for attempt in range(WRITE_ATTEMPTS):
            plan = self.write_plan(collection, deadline, fresh=attempt > 0)
            for space in plan.spaces():
                if space not in embedded:
                    with self.tracer.start_as_current_span(
                        "gateway.embed_documents",
                        attributes={"contentembed.space_id": space,
                                    "contentembed.documents": len(documents)},
                    ):
                        embedded[space] = self._embed_documents(plan, space, documents, deadline)
            try:
                # The fan-out of the writes: one CLIENT span per shard and space under it.
                with self.tracer.start_as_current_span(
                    "gateway.write_shards", attributes={"contentembed.attempt": attempt}
                ):
                    written = self._write_documents(collection, plan, documents, embedded, deadline)
            except ContentEmbedError as error:
                if error.reason != VERSIONS_CHANGED:
                    raise
                self._write_plans.pop(collection, None)
                continue
            truncated = embedded[plan.serving_space][1]
            return written, [d.id for d, cut in zip(documents, truncated) if cut]
        raise Unavailable(
            f"the versions of {shown(collection)} kept changing during the write; retry",
            reason=VERSIONS_CHANGED,
            retry_after_s=1.0,
        )

    def _embed_documents(
        self, plan: WritePlan, space: str, documents: Sequence[Document], deadline: float
    ) -> tuple[np.ndarray, list[bool]]:
        """Every document embedded into ``space`` by its encoders, in chunks of their batch size."""
        routes = {}
        for modality in {d.modality for d in documents}:
            try:
                routes[modality] = self.router.route(space, modality)
            except FailedPrecondition as error:
                if space == plan.serving_space:
                    raise
                versions = ", ".join(plan.versions_in(space))
                raise FailedPrecondition(
                    f"{error.message}; version(s) {versions} of this collection are in that "
                    f"space and must receive every write: deploy its encoder again, or drop "
                    f"them (contentembed retire COLLECTION VERSION)",
                    reason=error.reason,
                ) from None
        for position, document in enumerate(documents):
            _, info = routes[document.modality]
            size = len(document.content.encode("utf-8") if isinstance(document.content, str)
                       else document.content)
            if size > info.max_input_bytes:
                raise InvalidArgument(
                    f"documents[{position}]: {document.modality} is {size} bytes, above the "
                    f"encoder's limit of {info.max_input_bytes}",
                    reason="INPUT_TOO_LARGE",
                )
        vectors = np.empty((len(documents), 0), dtype=np.float32)
        truncated = [False] * len(documents)
        for modality, (encoder, info) in routes.items():
            positions = [p for p, d in enumerate(documents) if d.modality == modality]
            batch = max(info.max_batch_size, 1)
            chunks = [positions[i : i + batch] for i in range(0, len(positions), batch)]
            results = wait_all(
                [encoder.embed([documents[p].content for p in chunk], deadline) for chunk in chunks]
            )
            if any(e.space_id != space for e in results):
                raise FailedPrecondition(
                    f"{encoder.label} no longer embeds into {space}; retry", reason="SPACE_MISMATCH"
                )
            if vectors.shape[1] == 0:
                vectors = np.empty((len(documents), results[0].vectors.shape[1]), dtype=np.float32)
            for chunk, result in zip(chunks, results):
                vectors[chunk] = result.vectors
                for p, cut in zip(chunk, result.truncated):
                    truncated[p] = cut
        return vectors, truncated

    def _write_documents(
        self,
        collection: str,
        plan: WritePlan,
        documents: Sequence[Document],
        embedded: dict[str, tuple[np.ndarray, list[bool]]],
        deadline: float,
    ) -> int:
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, document in enumerate(documents):
            by_shard[shard_for_id(document.id, len(self.shards))].append(position)
        upserts = []
        for shard, positions in sorted(by_shard.items()):
            targets = plan.shards[shard]
            for space in sorted(targets.spaces):
                upserts.append(
                    self.shards[shard].upsert(
                        collection,
                        space,
                        [documents[p].id for p in positions],
                        embedded[space][0][positions],
                        [documents[p].metadata for p in positions],
                        deadline,
                        targets.fingerprint,
                    )
                )
        failures = [o for o in outcomes_of(upserts) if isinstance(o, ContentEmbedError)]
        # A stale plan shows as VERSIONS_CHANGED on some shard: that one decides (a retry
        # with a fresh plan), whatever another shard said first.
        for error in sorted(failures, key=lambda e: e.reason != VERSIONS_CHANGED):
            raise error
        return len(documents)

    def delete_documents(self, collection: str, ids: Sequence[str], deadline: float) -> int:
        validate_collection_name(collection)
        if not ids:
            raise InvalidArgument("ids: at least one id is required", reason="EMPTY_BATCH")
        validate_ids(ids, what="ids", unique=False)
        by_shard: dict[int, list[str]] = defaultdict(list)
        for item_id in dict.fromkeys(ids):
            by_shard[shard_for_id(item_id, len(self.shards))].append(item_id)
        calls = [
            self.shards[shard].delete_items(collection, shard_ids, deadline)
            for shard, shard_ids in sorted(by_shard.items())
        ]
        return sum(wait_all(calls))

    def close(self) -> None:
        self._stop.set()
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        for encoder in self.router.encoders:
            encoder.close()
        for shard in self.shards:
            shard.close()
