"""gRPC edge of the gateway: SearchService (public) and AdminService."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import grpc
from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator, model_validator

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as search_pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc
from contentembed.services.common.auth import ADMIN_ROLE, SEARCH_ROLE
from contentembed.services.common.budget import AnswerSize, MemoryBudget
from contentembed.services.common.config import EndpointList, split_endpoints
from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.interceptor import caller_time_remaining
from contentembed.services.common.metadata import SearchServiceSettings, check_answer_size
from contentembed.services.common.protoconv import (
    dict_to_struct,
    struct_to_dict,
    vector_from_pb,
    vector_to_pb,
)
from contentembed.services.common.server import run_service
from contentembed.services.common.tracing import Tracing
from contentembed.services.common.validation import validate_ids
from contentembed.services.gateway.coalesce import CoalescingShard
from contentembed.services.gateway.downstream import (
    MODALITY_NAMES,
    EncoderClient,
    IndexShardClient,
)
from contentembed.services.gateway.fusion import MAX_RRF_K, Fusion, FusionParams
from contentembed.services.gateway.gateway import (
    BatchQuery,
    CollectionSummary,
    Document,
    Gateway,
    GatewayConfig,
    LexicalConfig,
    Query,
    Retrieval,
    RetrievalOptions,
    SearchOutcome,
)
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.ports import ReplicaPort, ShardPort
from contentembed.services.gateway.replicas import (
    REPLICA_SEPARATOR,
    ReplicatedShard,
    split_replicas,
)

PARTIAL_POLICIES = frozenset(search_pb.PartialResultPolicy.values())
# The fusion defaults live in FusionParams alone; the flags start from them.
FUSION_DEFAULTS = FusionParams()
RETRIEVAL_MODES: dict[int, Retrieval | None] = {
    search_pb.RETRIEVAL_MODE_UNSPECIFIED: None,
    search_pb.RETRIEVAL_MODE_DENSE: Retrieval.DENSE,
    search_pb.RETRIEVAL_MODE_LEXICAL: Retrieval.LEXICAL,
    search_pb.RETRIEVAL_MODE_HYBRID: Retrieval.HYBRID,
}
MODE_NUMBERS = {mode: number for number, mode in RETRIEVAL_MODES.items() if mode is not None}
FUSION_METHODS: dict[int, Fusion | None] = {
    search_pb.FUSION_METHOD_UNSPECIFIED: None,
    search_pb.FUSION_METHOD_RRF: Fusion.RRF,
    search_pb.FUSION_METHOD_MINMAX: Fusion.MINMAX,
}
FUSION_NUMBERS = {method: number for number, method in FUSION_METHODS.items() if method is not None}
MODALITY_NUMBERS = {name: number for number, name in MODALITY_NAMES.items()}
HIT_FRAMING_BYTES = 3  # a repeated message field's tag and length
SEARCH_SERVICE = search_pb.DESCRIPTOR.services_by_name["SearchService"].full_name
ADMIN_SERVICE = admin_pb.DESCRIPTOR.services_by_name["AdminService"].full_name


class GatewaySettings(SearchServiceSettings):
    encoder_endpoints: EndpointList = Field(
        default_factory=lambda: ["127.0.0.1:50052"],
        description="Encoders host:port, comma-separated; each reports its space and modality.",
    )
    index_endpoints: EndpointList = Field(
        default_factory=lambda: ["127.0.0.1:50061"],
        description="Index shards host:port, comma-separated, in shard order; a shard served "
        "by replicas lists them separated by '|' (a:1|a:2,b:1|b:2).",
    )
    # A gateway call mostly waits on an encoder and the shards, so the thread count is how
    # many queries it keeps in flight downstream: enough to fill the text-encoder's batches
    # (64), fewer than the encoder's own handler threads (128). Measured at 3x overload
    # with 1 s deadlines: 64 answered 0.89x of capacity; 256 swamped the encoder's threads
    # and answered 0.25x, most of the rest timing out there.
    max_workers: int = Field(64, ge=1, le=4096, description="gRPC handler threads.")
    max_documents_per_upsert: int = Field(1000, ge=1)
    max_queries_per_batch: int = Field(
        64, ge=1,
        description="Most texts per SearchBatch; at most the shards' max_queries_per_batch.",
    )
    max_ids_per_get: int = Field(
        1000, ge=1, description="Most ids per GetDocuments; at most the shards' max_items_per_upsert."
    )
    shard_max_in_flight: int = Field(
        4, ge=0,
        description="Search calls to one shard at once; searches beyond wait for one to end "
        "and go out together as one SearchBatch (at most max_queries_per_batch). 0: never "
        "coalesce.",
    )
    default_top_k: int = Field(
        10, ge=1, description="What a search's top_k 0 means; at most max_top_k."
    )
    max_ef: int = Field(
        10_000, ge=1,
        description="Largest per-search ef; must not exceed the index shards' max_ef (a search "
        "with an ef they refuse fails with their EF_OUT_OF_RANGE).",
    )
    default_timeout_s: float = Field(
        10.0, gt=0, description="Deadline for calls that arrive without one."
    )
    max_timeout_s: float = Field(120.0, gt=0, description="Longest deadline honoured.")
    downstream_wait_s: float = Field(
        600.0, gt=0, description="How long start-up waits for the encoder and shards."
    )

    cache_ttl_s: float = Field(60.0, ge=0, description="Query-embedding cache TTL; 0 disables.")
    cache_max_entries: int = Field(10_000, ge=0)
    encoder_refresh_s: float = Field(
        10.0, gt=0, description="How often encoders are asked which space they serve."
    )
    shadow_workers: int = Field(2, ge=1, description="Threads that run mirrored queries.")
    shadow_queue_limit: int = Field(
        64, ge=1, description="Mirrored queries waiting at most; beyond, they are skipped."
    )
    recall_sample_rate: float = Field(
        0.01, ge=0, le=1, description="Share of searches re-run exactly to measure recall@k."
    )
    drift_reference_size: int = Field(
        500, ge=2, description="First queries per space that form the drift reference."
    )
    drift_window: int = Field(500, ge=2, description="Recent queries compared with it.")
    catalog_window_s: float = Field(
        3600.0, gt=0, description="Window for the share of the catalog returned."
    )
    coverage_floor: float = Field(
        0.3, description="A search with a hit whose cosine is at least this counts as covered."
    )
    fusion: Literal["rrf", "minmax"] = Field(
        FUSION_DEFAULTS.method.value,
        description="How hybrid searches fuse the dense and lexical candidates unless the "
        "request says: reciprocal-rank fusion, or min-max scaled scores weighted by "
        "--fusion-alpha.",
    )
    rrf_k: int = Field(
        FUSION_DEFAULTS.rrf_k, ge=1, le=MAX_RRF_K,
        description="RRF's k (score = sum of 1 / (k + rank)) unless the request says.",
    )
    fusion_alpha: float = Field(
        FUSION_DEFAULTS.alpha, ge=0, le=1,
        description="Min-max fusion's weight of the dense scores (1: dense only, 0: lexical "
        "only) unless the request says.",
    )
    fusion_depth: int = Field(
        FUSION_DEFAULTS.depth, ge=1,
        description="Candidates each retriever contributes to a hybrid search (each shard is "
        "asked for that many) unless the request says; at most max_top_k is used, and never "
        "less than the request's offset + top_k.",
    )

    _split_endpoints = field_validator("index_endpoints", "encoder_endpoints", mode="before")(
        split_endpoints
    )

    @model_validator(mode="after")
    def _default_top_k_within_max(self) -> GatewaySettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError(
                f"default_top_k {self.default_top_k} is above max_top_k {self.max_top_k}"
            )
        return self

    @field_validator("index_endpoints", "encoder_endpoints")
    @classmethod
    def _at_least_one(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one endpoint is required")
        return value

    @field_validator("index_endpoints")
    @classmethod
    def _replicas_well_formed(cls, value: list[str]) -> list[str]:
        """Each shard's replicas, written back without spaces ("a:1 | a:2" is "a:1|a:2")."""
        return [REPLICA_SEPARATOR.join(split_replicas(entry)) for entry in value]

    @property
    def index_replicas(self) -> list[list[str]]:
        """Each shard's replica addresses, in shard order (one address: no replicas)."""
        return [split_replicas(entry) for entry in self.index_endpoints]


def deadline_of(context: grpc.ServicerContext, settings: GatewaySettings) -> float:
    """When downstream calls must be done, as a time.monotonic() value: the caller's
    deadline (a default when it sent none) less a margin to merge and answer. Waiting for
    a slow shard until the caller's own deadline would leave no time to send the partial
    answer the caller allowed, or a status that says which shard was late."""
    remaining = caller_time_remaining(context)
    if remaining is None:
        remaining = settings.default_timeout_s
    remaining = min(remaining, settings.max_timeout_s)
    return time.monotonic() + remaining - reply_margin_s(remaining)


def cancel_with(context: grpc.ServicerContext) -> Callable[[Callable[[], None]], None]:
    """Registers a downstream call's cancel to run when the caller goes away. A caller that
    left while the call was being started already ended the RPC: add_callback then refuses
    the callback, and the call is cancelled at once instead of running on unobserved."""

    def register(cancel: Callable[[], None]) -> None:
        if not context.add_callback(cancel):
            cancel()

    return register


def reply_margin_s(remaining: float) -> float:
    """A tenth of the time left, between 20 and 250 ms."""
    return min(0.25, max(0.02, 0.1 * remaining))


def lexical_pb(lexical: LexicalConfig | None) -> types_pb2.LexicalConfig | None:
    return None if lexical is None else types_pb2.LexicalConfig(
        enabled=True, language=lexical.language, lexical_only=lexical.lexical_only
    )


def retrieval_options(
    options: search_pb.RetrievalOptions,
) -> RetrievalOptions:
    """The request's retrieval options as Python values; the ranges are the domain's to
    check (Searcher.validate), an enum number this gateway does not know is refused here."""
    if options.mode not in RETRIEVAL_MODES:
        raise InvalidArgument(
            f"retrieval.mode {options.mode} is not a known mode", reason="UNKNOWN_ENUM_VALUE"
        )
    if options.fusion not in FUSION_METHODS:
        raise InvalidArgument(
            f"retrieval.fusion {options.fusion} is not a known method", reason="UNKNOWN_ENUM_VALUE"
        )
    return RetrievalOptions(
        mode=RETRIEVAL_MODES[options.mode],
        fusion=FUSION_METHODS[options.fusion],
        rrf_k=options.rrf_k,
        alpha=options.alpha if options.HasField("alpha") else None,
        depth=options.depth,
    )


def summary_pb(summary: CollectionSummary) -> admin_pb.CollectionSummary:
    return admin_pb.CollectionSummary(
        name=summary.name,
        space_id=summary.space_id,
        dim=summary.dim,
        item_count=summary.item_count,
        shard_count=summary.shard_count,
        version=summary.version,
        versions=summary.versions,
        pending_versions=summary.pending_versions,
        version_spaces=summary.version_spaces,
        candidate_version=summary.candidate_version,
        serving_versions=summary.serving_versions,
        lexical=lexical_pb(summary.lexical),
    )


def selected_metadata(
    metadata: dict[str, Any], fields: Sequence[str], omit: bool
) -> dict[str, Any]:
    """The part of a hit's metadata the caller asked for (all of it by default)."""
    if omit:
        return {}
    if not fields:
        return metadata
    return {key: metadata[key] for key in fields if key in metadata}


def search_response_pb(
    outcome: SearchOutcome, fields: Sequence[str] = (), omit_metadata: bool = False,
    size: AnswerSize | None = None,
) -> search_pb.SearchResponse:
    """The answer to one query; ``size`` counts its hits as they are built (refusing,
    ANSWER_TOO_LARGE, the moment they pass the message limit)."""
    hits = [
        search_pb.Hit(
            id=hit.id,
            score=hit.score,
            metadata=dict_to_struct(selected_metadata(hit.metadata, fields, omit_metadata)),
            shard_index=hit.shard_index,
            collection=hit.collection,
            dense_score=hit.dense_score,
            lexical_score=hit.lexical_score,
            dense_rank=hit.dense_rank,
            lexical_rank=hit.lexical_rank,
        )
        for hit in outcome.hits
    ]
    if size is not None:
        size.add(sum(hit.ByteSize() + HIT_FRAMING_BYTES for hit in hits))
    return search_pb.SearchResponse(
        hits=hits,
        space_id=outcome.space_id,
        version=outcome.version,
        partial=outcome.partial,
        shards=[
            search_pb.ShardResult(
                shard_index=s.shard_index,
                ok=s.ok,
                error=s.error,
                hit_count=s.hit_count,
                latency_ms=s.latency_ms,
            )
            for s in outcome.shards
        ],
        latency=search_pb.LatencyBreakdown(
            encode_ms=outcome.encode_ms,
            search_ms=outcome.search_ms,
            merge_ms=outcome.merge_ms,
            total_ms=outcome.encode_ms + outcome.search_ms + outcome.merge_ms,
        ),
        query_truncated=outcome.query_truncated,
        cache_hit=outcome.cache_hit,
        # Still only "collections of different spaces fused by rank"; a hybrid answer says
        # so in mode and fusion instead (its score is the fusion score either way).
        fused=outcome.fused,
        versions=outcome.versions,
        space_ids=outcome.space_ids,
        mode=MODE_NUMBERS[outcome.mode],
        fusion=search_pb.FUSION_METHOD_UNSPECIFIED if outcome.fusion is None
        else FUSION_NUMBERS[outcome.fusion],
    )


class SearchServicer(search_grpc.SearchServiceServicer):
    def __init__(self, gateway: Gateway, settings: GatewaySettings, answers: MemoryBudget) -> None:
        self.gateway = gateway
        self.settings = settings
        self.answers = answers  # shared by the answers being built at once

    def Search(self, request: search_pb.SearchRequest, context: grpc.ServicerContext):
        deadline = deadline_of(context, self.settings)
        query = request.WhichOneof("query")
        if query is None:
            raise InvalidArgument(
                "query: give text, image, item_id or vector", reason="EMPTY_QUERY"
            )
        if query == "item_id":
            validate_ids([request.item_id], what="item_id")
        vector = vector_from_pb(request.vector) if query == "vector" else None
        if request.partial_result_policy not in PARTIAL_POLICIES:
            # proto3 keeps unknown enum numbers: one from a newer client must not be
            # silently read as "fail".
            raise InvalidArgument(
                f"partial_result_policy {request.partial_result_policy} is not a known policy",
                reason="UNKNOWN_ENUM_VALUE",
            )
        outcome = self.gateway.search(
            Query(
                collection=request.collection,
                content=request.image.data if query == "image" else request.text,
                top_k=request.top_k,
                deadline=deadline,
                allow_partial=request.partial_result_policy == search_pb.PARTIAL_RESULT_POLICY_ALLOW,
                register_cancel=cancel_with(context),
                also_collections=list(request.also_collections),
                version=request.version,
                exact=request.exact,
                ef=request.ef,
                offset=request.offset,
                score_threshold=(
                    request.score_threshold if request.HasField("score_threshold") else None
                ),
                metadata_filter=struct_to_dict(request.filter),
                item_id=request.item_id,
                vector=vector,
                vector_space_id=request.vector_space_id,
                retrieval=retrieval_options(request.retrieval),
            )
        )
        # Hits carry the shards' metadata, bounded by the shards' own settings: when those
        # allow more than this gateway's, say so rather than fail in the transport.
        with self.settings.answer_size("lower top_k", self.answers) as size:
            response = search_response_pb(
                outcome, list(request.metadata_fields), request.omit_metadata, size
            )
            check_answer_size(response.ByteSize(), self.settings.max_message_bytes, what="lower top_k")
            return response


    def SearchBatch(self, request: search_pb.SearchBatchRequest, context: grpc.ServicerContext):
        if request.partial_result_policy not in PARTIAL_POLICIES:
            raise InvalidArgument(
                f"partial_result_policy {request.partial_result_policy} is not a known policy",
                reason="UNKNOWN_ENUM_VALUE",
            )
        retrieval = retrieval_options(request.retrieval)
        outcomes = self.gateway.search_batch(
            BatchQuery(
                collection=request.collection,
                texts=list(request.texts),
                top_k=request.top_k,
                deadline=deadline_of(context, self.settings),
                allow_partial=request.partial_result_policy == search_pb.PARTIAL_RESULT_POLICY_ALLOW,
                register_cancel=cancel_with(context),
                ef=request.ef,
                metadata_filter=struct_to_dict(request.filter),
                retrieval=retrieval,
            )
        )
        advice = "send fewer texts or lower top_k"
        with self.settings.answer_size(advice, self.answers) as size:
            response = search_pb.SearchBatchResponse(
                results=[search_response_pb(outcome, size=size) for outcome in outcomes]
            )
            check_answer_size(response.ByteSize(), self.settings.max_message_bytes, what=advice)
            return response

    def GetDocuments(self, request: search_pb.GetDocumentsRequest, context: grpc.ServicerContext):
        documents, missing = self.gateway.get_documents(
            request.collection, list(request.ids), deadline_of(context, self.settings),
            cancel_with(context),
        )
        advice = "ask for fewer ids"
        with self.settings.answer_size(advice, self.answers) as size:
            built = []
            for document in documents:
                message = search_pb.StoredDocument(
                    id=document.id,
                    metadata=dict_to_struct(document.metadata),
                    # A lexical-only collection stores none: no vector set.
                    vector=vector_to_pb(document.vector)
                    if request.with_vectors and document.vector.size else None,
                    shard_index=document.shard_index,
                    text=document.text,
                )
                size.add(message.ByteSize() + HIT_FRAMING_BYTES)
                built.append(message)
            response = search_pb.GetDocumentsResponse(documents=built, missing_ids=missing)
            check_answer_size(response.ByteSize(), self.settings.max_message_bytes, what=advice)
            return response


class AdminServicer(admin_grpc.AdminServiceServicer):
    def __init__(self, gateway: Gateway, settings: GatewaySettings) -> None:
        self.gateway = gateway
        self.settings = settings

    def CreateCollection(self, request: admin_pb.CreateCollectionRequest, context):
        modality = MODALITY_NAMES.get(request.modality or types_pb2.MODALITY_TEXT)
        if modality is None:
            raise InvalidArgument(
                f"modality {request.modality} is not a known modality", reason="UNKNOWN_ENUM_VALUE"
            )
        # A LexicalConfig that is not enabled is a dense collection, as one left unset.
        if request.lexical.lexical_only and not request.lexical.enabled:
            raise InvalidArgument(
                "lexical.lexical_only needs lexical.enabled: a lexical-only collection is "
                "its lexical index", reason="BAD_LEXICAL_CONFIG",
            )
        lexical = (
            LexicalConfig(request.lexical.language, request.lexical.lexical_only)
            if request.lexical.enabled else None
        )
        summary, created = self.gateway.create_collection(
            request.name, request.space_id, request.exist_ok, deadline_of(context, self.settings),
            modality, request.model, lexical,
        )
        return admin_pb.CreateCollectionResponse(collection=summary_pb(summary), created=created)

    def GetCollection(self, request: admin_pb.GetCollectionRequest, context):
        summary = self.gateway.get_collection(request.name, deadline_of(context, self.settings))
        return admin_pb.GetCollectionResponse(collection=summary_pb(summary))

    def ListCollections(self, request: admin_pb.ListCollectionsRequest, context):
        summaries, token = self.gateway.list_collections(
            request.page_size, request.page_token, deadline_of(context, self.settings)
        )
        return admin_pb.ListCollectionsResponse(
            collections=[summary_pb(s) for s in summaries], next_page_token=token
        )

    def DeleteCollection(self, request: admin_pb.DeleteCollectionRequest, context):
        self.gateway.delete_collection(request.name, deadline_of(context, self.settings))
        return admin_pb.DeleteCollectionResponse()

    def UpsertDocuments(self, request: admin_pb.UpsertDocumentsRequest, context):
        documents = []
        for position, document in enumerate(request.documents):
            content = document.WhichOneof("content")
            if content is None:
                raise InvalidArgument(
                    f"documents[{position}]: give text or image", reason="EMPTY_DOCUMENT"
                )
            documents.append(
                Document(
                    document.id,
                    document.text if content == "text" else document.image.data,
                    struct_to_dict(document.metadata),
                )
            )
        count, truncated = self.gateway.upsert_documents(
            request.collection, documents, deadline_of(context, self.settings)
        )
        return admin_pb.UpsertDocumentsResponse(upserted_count=count, truncated_ids=truncated)

    def DeleteDocuments(self, request: admin_pb.DeleteDocumentsRequest, context):
        deleted = self.gateway.delete_documents(
            request.collection, list(request.ids), deadline_of(context, self.settings)
        )
        return admin_pb.DeleteDocumentsResponse(deleted_count=deleted)

    def SetCandidate(self, request: admin_pb.SetCandidateRequest, context):
        self.gateway.set_candidate(
            request.collection,
            request.version,
            request.shadow_fraction,
            request.canary_weight,
            deadline_of(context, self.settings),
        )
        return admin_pb.SetCandidateResponse()

    def GetShadowReport(self, request: admin_pb.GetShadowReportRequest, context):
        candidate, primary = self.gateway.shadow_report(
            request.collection, deadline_of(context, self.settings)
        )
        stats = candidate.stats
        overlap, correlation, latency_delta = stats.means()
        return admin_pb.GetShadowReportResponse(
            primary_version=primary,
            candidate_version=candidate.version,
            candidate_space_id=candidate.space_id,
            queries=stats.queries,
            failures=stats.failures,
            mean_overlap_at_k=overlap,
            mean_rank_correlation=correlation,
            mean_latency_delta_ms=latency_delta,
            canary_queries=stats.canary_queries,
        )

    def PromoteCandidate(self, request: admin_pb.PromoteCandidateRequest, context):
        previous, version = self.gateway.promote(request.collection, deadline_of(context, self.settings))
        return admin_pb.PromoteCandidateResponse(previous_version=previous, version=version)

    def RollbackCollection(self, request: admin_pb.RollbackCollectionRequest, context):
        version = self.gateway.rollback(request.collection, deadline_of(context, self.settings))
        return admin_pb.RollbackCollectionResponse(version=version)

    def ListSpaces(self, request: admin_pb.ListSpacesRequest, context):
        return admin_pb.ListSpacesResponse(
            encoders=[
                admin_pb.EncoderSpace(
                    space=types_pb2.Space(
                        space_id=info.space_id,
                        model_id=info.model_id,
                        model_revision=info.model_revision,
                        dim=info.dim,
                        normalization=types_pb2.NORMALIZATION_L2,
                    ),
                    modality=MODALITY_NUMBERS.get(info.modality, types_pb2.MODALITY_UNSPECIFIED),
                    address=encoder.endpoint,
                    backend=info.backend,
                    max_batch_size=info.max_batch_size,
                    max_input_bytes=info.max_input_bytes,
                )
                for encoder, info in self.gateway.router.infos()
            ]
        )

    def ListShards(self, request: admin_pb.ListShardsRequest, context):
        return admin_pb.ListShardsResponse(
            shards=[
                admin_pb.ShardEndpoint(shard_index=shard.shard_index, address=shard.endpoint)
                for shard in self.gateway.shards
            ]
        )

    def BeginVersion(self, request: admin_pb.BeginVersionRequest, context):
        summary, created = self.gateway.begin_version(
            request.collection, request.version, request.space_id,
            deadline_of(context, self.settings),
        )
        return admin_pb.BeginVersionResponse(collection=summary_pb(summary), created=created)

    def DeleteVersion(self, request: admin_pb.DeleteVersionRequest, context):
        summary = self.gateway.delete_version(
            request.collection, request.version, deadline_of(context, self.settings)
        )
        return admin_pb.DeleteVersionResponse(collection=summary_pb(summary))


class GatewayService:
    name = "gateway"

    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.answers = MemoryBudget(settings.max_answer_memory_bytes)
        encoders = [EncoderClient(endpoint, settings) for endpoint in settings.encoder_endpoints]
        replicas = [
            [IndexShardClient(index, address, settings) for address in addresses]
            for index, addresses in enumerate(settings.index_replicas)
        ]
        # Kept as the adapters they are: tracing is set on them (use_tracing), a concern
        # of the gRPC side that the gateway's domain never sees.
        self.clients: list[EncoderClient | IndexShardClient] = [
            *encoders, *(client for clients in replicas for client in clients)
        ]
        metrics = GatewayMetrics(registry, settings.coverage_floor)

        def coalesced(client: IndexShardClient) -> ReplicaPort:
            """Each replica with a coalescer of its own: its slots are its own load."""
            if not settings.shard_max_in_flight:
                return client
            return CoalescingShard(  # type: ignore[return-value] - replica_state passes through
                client, settings.shard_max_in_flight, settings.max_queries_per_batch,
                metrics.shard_batch_queries.labels(str(client.shard_index)).observe,
                max_answer_bytes=settings.max_message_bytes,
            )

        searched: list[ShardPort] = []
        for index, (entry, clients) in enumerate(zip(settings.index_endpoints, replicas)):
            ports = [coalesced(client) for client in clients]
            if len(ports) == 1:  # one address: the shard as it always was
                searched.append(ports[0])
                continue
            group = ReplicatedShard(
                index, entry, ports,
                lambda endpoint, operation, shard=str(index):
                    metrics.replica_retries.labels(shard, endpoint, operation).inc(),
            )
            for replica in group.replicas:
                metrics.replica_outstanding.labels(str(index), replica.endpoint).set_function(
                    lambda replica=replica: replica.outstanding
                )
            searched.append(group)
        self.gateway = Gateway(
            encoders,
            searched,
            metrics,
            GatewayConfig(
                max_top_k=settings.max_top_k,
                default_top_k=settings.default_top_k,
                max_ef=settings.max_ef,
                max_documents_per_upsert=settings.max_documents_per_upsert,
                max_ids_per_get=settings.max_ids_per_get,
                max_queries_per_batch=settings.max_queries_per_batch,
                metadata_limits=settings.metadata_limits,
                page_token_secret=settings.page_token_secret,
                cache_ttl_s=settings.cache_ttl_s,
                cache_max_entries=settings.cache_max_entries,
                shadow_workers=settings.shadow_workers,
                shadow_queue_limit=settings.shadow_queue_limit,
                recall_sample_rate=settings.recall_sample_rate,
                drift_reference_size=settings.drift_reference_size,
                drift_window=settings.drift_window,
                catalog_window_s=settings.catalog_window_s,
                fusion=FusionParams(
                    method=Fusion(settings.fusion),
                    rrf_k=settings.rrf_k,
                    alpha=settings.fusion_alpha,
                    depth=settings.fusion_depth,
                ),
            ),
        )

    @staticmethod
    def required_role(method: str) -> str | None:
        """Search needs a search (or admin) key, everything on AdminService an admin key;
        health and reflection stay open for probes."""
        if method.startswith(f"/{SEARCH_SERVICE}/"):
            return SEARCH_ROLE
        if method.startswith(f"/{ADMIN_SERVICE}/"):
            return ADMIN_ROLE
        return None

    def use_tracing(self, tracing: Tracing) -> None:
        """The runtime's tracer: for the flows' own spans and the downstream calls'."""
        self.gateway.use_tracer(tracing.tracer)
        for client in self.clients:
            client.tracing = tracing

    def register(self, server: grpc.Server) -> list[str]:
        search_grpc.add_SearchServiceServicer_to_server(
            SearchServicer(self.gateway, self.settings, self.answers), server
        )
        admin_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.gateway, self.settings), server)
        return [SEARCH_SERVICE, ADMIN_SERVICE]

    def load(self) -> None:
        self.gateway.connect(
            time.monotonic() + self.settings.downstream_wait_s, self.settings.encoder_refresh_s
        )

    def close(self) -> None:
        self.gateway.close()


def main(argv: list[str] | None = None) -> int:
    return run_service(GatewaySettings, GatewayService, argv)
