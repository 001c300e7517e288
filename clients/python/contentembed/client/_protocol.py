"""Requests and results shared by the sync and the async client (no I/O here)."""

from __future__ import annotations

import array
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.client.errors import ApiError, ResourceExhaustedError
from contentembed.client.throttle import THROTTLED_RETRY_S
from contentembed.client.types import (
    CollectionInfo,
    Document,
    DocumentsResult,
    EncoderSpace,
    Hit,
    ImageDocument,
    SearchResult,
    ShadowReport,
    ShardEndpoint,
    ShardResult,
    StoredDocument,
    TextDocument,
)
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as search_pb

MODALITIES = {"text": types_pb2.MODALITY_TEXT, "image": types_pb2.MODALITY_IMAGE}
MODALITY_NAMES = {number: name for name, number in MODALITIES.items()}
RETRIEVAL_MODES = {
    "dense": search_pb.RETRIEVAL_MODE_DENSE,
    "lexical": search_pb.RETRIEVAL_MODE_LEXICAL,
    "hybrid": search_pb.RETRIEVAL_MODE_HYBRID,
}
RETRIEVAL_MODE_NAMES = {number: name for name, number in RETRIEVAL_MODES.items()}
FUSION_METHODS = {"rrf": search_pb.FUSION_METHOD_RRF, "minmax": search_pb.FUSION_METHOD_MINMAX}
FUSION_METHOD_NAMES = {number: name for name, number in FUSION_METHODS.items()}
# "" = english on the server; kept as the server reports it otherwise.
DEFAULT_LEXICAL_LANGUAGE = "english"

# Retried by default: transient unavailability; overload only when the server said when.
DEFAULT_RETRIES = 3
DEFAULT_INITIAL_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 2.0


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before retrying an idempotent call.

    Retried: UNAVAILABLE, and RESOURCE_EXHAUSTED that carries a RetryInfo delay (overload
    shedding; without a delay it is a size limit, which a retry cannot fix). The wait is
    the server's RetryInfo delay when it sent one, else jittered exponential backoff
    (half of ``initial * 2**attempt``, capped, plus a random share of the other half).
    The caller stops retrying where the wait would pass the call's deadline.
    """

    retries: int = DEFAULT_RETRIES
    initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S

    def delay(self, error: ApiError, attempt: int, idempotent: bool) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None: do not retry."""
        if not idempotent or attempt >= self.retries:
            return None
        if error.code == "UNAVAILABLE":
            pass
        elif error.code != "RESOURCE_EXHAUSTED" or error.retry_after_s is None:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # nosec B311


def throttled() -> ApiError:
    """A call the client refused to send (throttle.py): the gateway sheds load."""
    return ResourceExhaustedError(
        "not sent: the gateway is shedding load and this client throttles what it sends "
        "(see contentembed.client.throttle); retry later",
        reason="CLIENT_THROTTLED",
        retry_after_s=THROTTLED_RETRY_S,
    )


def struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if values:
        message.update(dict(values))
    return message


def collection_info(message: admin_pb.CollectionSummary) -> CollectionInfo:
    lexical = message.lexical.enabled
    return CollectionInfo(
        name=message.name,
        space_id=message.space_id,
        dim=message.dim,
        item_count=message.item_count,
        shard_count=message.shard_count,
        version=message.version,
        versions=list(message.versions),
        pending_versions=list(message.pending_versions),
        version_spaces=dict(message.version_spaces),
        candidate_version=message.candidate_version,
        serving_versions=listed(message.serving_versions, message.version),
        lexical=lexical,
        lexical_language=(message.lexical.language or DEFAULT_LEXICAL_LANGUAGE) if lexical else "",
        lexical_only=lexical and message.lexical.lexical_only,
    )


def listed(values: Sequence[str], joined: str) -> list[str]:
    """The list field, or for a gateway that predates it, the comma-joined string split."""
    return list(values) if values else [part for part in joined.split(",") if part]


def query_vector_pb(vector: Any) -> types_pb2.Vector:
    """A 1-D float sequence or array as a float32 little-endian Vector."""
    # No numpy needed: a numpy array converts like any sequence (1-D only).
    if getattr(vector, "ndim", 1) != 1:
        raise ValueError(f"vector: a 1-D sequence of floats, got shape {vector.shape}")
    values = array.array("f", (float(value) for value in vector))
    if not values:
        raise ValueError("vector: empty")
    if sys.byteorder != "little":
        values.byteswap()
    return types_pb2.Vector(
        data=values.tobytes(), dim=len(values), dtype=types_pb2.DTYPE_FLOAT32
    )


def retrieval_options(
    mode: str | None = None,
    fusion: str | None = None,
    alpha: float | None = None,
    rrf_k: int = 0,
    depth: int = 0,
) -> search_pb.RetrievalOptions | None:
    """The request's RetrievalOptions; None when every option is left to the gateway.

    Mode and fusion names are checked here (they become enum numbers); the ranges of
    alpha, rrf_k and depth are the gateway's to check (INVALID_ARGUMENT BAD_FUSION,
    TOP_K_OUT_OF_RANGE), since its limits are configurable.
    """
    if mode is not None and mode not in RETRIEVAL_MODES:
        raise ValueError(f"mode must be one of {list(RETRIEVAL_MODES)} or None, got {mode!r}")
    if fusion is not None and fusion not in FUSION_METHODS:
        raise ValueError(f"fusion must be one of {list(FUSION_METHODS)} or None, got {fusion!r}")
    if mode is None and fusion is None and alpha is None and not rrf_k and not depth:
        return None
    options = search_pb.RetrievalOptions(
        mode=RETRIEVAL_MODES[mode] if mode else search_pb.RETRIEVAL_MODE_UNSPECIFIED,
        fusion=FUSION_METHODS[fusion] if fusion else search_pb.FUSION_METHOD_UNSPECIFIED,
        rrf_k=rrf_k,
        depth=depth,
    )
    if alpha is not None:
        options.alpha = alpha
    return options


def search_request(
    collection: str,
    text: str | None,
    image: bytes | None,
    top_k: int,
    allow_partial: bool,
    also_collections: Sequence[str],
    version: str,
    exact: bool,
    ef: int = 0,
    offset: int = 0,
    score_threshold: float | None = None,
    metadata_filter: Mapping[str, Any] | None = None,
    item_id: str | None = None,
    vector: Any = None,
    vector_space_id: str = "",
    metadata_fields: Sequence[str] = (),
    omit_metadata: bool = False,
    retrieval: search_pb.RetrievalOptions | None = None,
) -> search_pb.SearchRequest:
    if sum(q is not None for q in (text, image, item_id, vector)) != 1:
        raise ValueError("give exactly one of text, image, item_id or vector")
    if vector is not None and not vector_space_id:
        raise ValueError("a vector query needs vector_space_id (the space it was embedded in)")
    request = search_pb.SearchRequest(
        collection=collection,
        top_k=top_k,
        partial_result_policy=(
            search_pb.PARTIAL_RESULT_POLICY_ALLOW
            if allow_partial
            else search_pb.PARTIAL_RESULT_POLICY_FAIL
        ),
        also_collections=list(also_collections),
        version=version,
        exact=exact,
        ef=ef,
        offset=offset,
        metadata_fields=list(metadata_fields),
        omit_metadata=omit_metadata,
    )
    if score_threshold is not None:
        request.score_threshold = score_threshold
    if metadata_filter:
        request.filter.update(metadata_filter)
    if retrieval is not None:
        request.retrieval.CopyFrom(retrieval)
    if text is not None:
        request.text = text
    elif item_id is not None:
        request.item_id = item_id
    elif vector is not None:
        request.vector.CopyFrom(query_vector_pb(vector))
        request.vector_space_id = vector_space_id
    else:
        request.image.data = image  # type: ignore[assignment]
    return request


def search_batch_request(
    collection: str,
    texts: Iterable[str],
    top_k: int,
    allow_partial: bool,
    ef: int,
    metadata_filter: Mapping[str, Any] | None,
    retrieval: search_pb.RetrievalOptions | None = None,
) -> search_pb.SearchBatchRequest:
    if isinstance(texts, str):
        raise ValueError("texts: a list of query texts, not one string")
    request = search_pb.SearchBatchRequest(
        collection=collection,
        texts=list(texts),
        top_k=top_k,
        partial_result_policy=(
            search_pb.PARTIAL_RESULT_POLICY_ALLOW
            if allow_partial
            else search_pb.PARTIAL_RESULT_POLICY_FAIL
        ),
        ef=ef,
    )
    if metadata_filter:
        request.filter.update(metadata_filter)
    if retrieval is not None:
        request.retrieval.CopyFrom(retrieval)
    return request


def hit(message: search_pb.Hit) -> Hit:
    return Hit(
        message.id,
        message.score,
        json_format.MessageToDict(message.metadata),
        message.shard_index,
        message.collection,
        dense_score=message.dense_score if message.HasField("dense_score") else None,
        lexical_score=message.lexical_score if message.HasField("lexical_score") else None,
        dense_rank=message.dense_rank or None,
        lexical_rank=message.lexical_rank or None,
    )


def search_result(response: search_pb.SearchResponse) -> SearchResult:
    return SearchResult(
        hits=[hit(h) for h in response.hits],
        space_id=response.space_id,
        version=response.version,
        partial=response.partial,
        shards=[
            ShardResult(s.shard_index, s.ok, s.error, s.hit_count, s.latency_ms)
            for s in response.shards
        ],
        latency_ms={
            "encode": response.latency.encode_ms,
            "search": response.latency.search_ms,
            "merge": response.latency.merge_ms,
            "total": response.latency.total_ms,
        },
        query_truncated=response.query_truncated,
        cache_hit=response.cache_hit,
        fused=response.fused,
        versions=listed(response.versions, response.version),
        space_ids=listed(response.space_ids, response.space_id),
        mode=RETRIEVAL_MODE_NAMES.get(response.mode, ""),
        fusion=FUSION_METHOD_NAMES.get(response.fusion, ""),
    )


def vector_values(vector: types_pb2.Vector) -> list[float]:
    """A float32 little-endian Vector as Python floats (no numpy needed)."""
    values = array.array("f")
    values.frombytes(vector.data)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


def documents_result(response: search_pb.GetDocumentsResponse, with_vectors: bool) -> DocumentsResult:
    return DocumentsResult(
        documents=[
            StoredDocument(
                d.id, json_format.MessageToDict(d.metadata), d.shard_index,
                vector_values(d.vector) if with_vectors else None,
                d.text,
            )
            for d in response.documents
        ],
        missing_ids=list(response.missing_ids),
    )


def create_collection_request(
    name: str, space_id: str, modality: str, exist_ok: bool, model: str = "",
    lexical: bool = False, language: str = "", lexical_only: bool = False,
) -> admin_pb.CreateCollectionRequest:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {modality!r}")
    if lexical_only:
        if space_id or model or modality != "text":
            # Refused before the call: the gateway would (BAD_LEXICAL_CONFIG).
            raise ValueError(
                "a lexical-only collection has no embedding space: leave space_id, model "
                "and modality unset"
            )
        lexical = True  # lexical_only implies the lexical index
    if language and not lexical:
        # A language only means something for the lexical index; dropping it silently
        # would create a dense-only collection the caller did not ask for.
        raise ValueError("language is for a lexical collection: give lexical=True with it")
    request = admin_pb.CreateCollectionRequest(
        name=name, exist_ok=exist_ok, space_id=space_id, modality=MODALITIES[modality],
        model=model,
    )
    if lexical:
        request.lexical.CopyFrom(
            types_pb2.LexicalConfig(enabled=True, language=language, lexical_only=lexical_only)
        )
    return request


def upsert_request(
    collection: str, documents: Iterable[Document]
) -> admin_pb.UpsertDocumentsRequest:
    request = admin_pb.UpsertDocumentsRequest(collection=collection)
    for doc in documents:
        if isinstance(doc, TextDocument):
            request.documents.add(id=doc.id, metadata=struct(doc.metadata), text=doc.text)
        elif isinstance(doc, ImageDocument):
            message = request.documents.add(id=doc.id, metadata=struct(doc.metadata))
            message.image.data = doc.image
        else:
            message = request.documents.add(id=str(doc["id"]), metadata=struct(doc.get("metadata")))
            if "image" in doc:
                message.image.data = doc["image"]
            else:
                message.text = str(doc["text"])
    return request


def shadow_report(response: admin_pb.GetShadowReportResponse) -> ShadowReport:
    return ShadowReport(
        primary_version=response.primary_version,
        candidate_version=response.candidate_version,
        candidate_space_id=response.candidate_space_id,
        queries=response.queries,
        failures=response.failures,
        mean_overlap_at_k=response.mean_overlap_at_k,
        mean_rank_correlation=response.mean_rank_correlation,
        mean_latency_delta_ms=response.mean_latency_delta_ms,
        canary_queries=response.canary_queries,
    )


def encoder_spaces(response: admin_pb.ListSpacesResponse) -> list[EncoderSpace]:
    return [
        EncoderSpace(
            space_id=e.space.space_id,
            model_id=e.space.model_id,
            model_revision=e.space.model_revision,
            dim=e.space.dim,
            modality=MODALITY_NAMES.get(e.modality, "unknown"),
            address=e.address,
            backend=e.backend,
            max_batch_size=e.max_batch_size,
            max_input_bytes=e.max_input_bytes,
        )
        for e in response.encoders
    ]


def shard_endpoints(response: admin_pb.ListShardsResponse) -> list[ShardEndpoint]:
    return [ShardEndpoint(s.shard_index, s.address) for s in response.shards]
