"""Synchronous client for the gateway's SearchService and AdminService."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

try:  # optional: the SDK does not depend on OpenTelemetry, but joins a caller's trace
    from opentelemetry import propagate as otel_propagate
except ImportError:  # pragma: no cover - depends on the installation
    otel_propagate = None

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as search_pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ApiError(Exception):
    """A failed call: canonical code name, server message and machine-readable reason."""

    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ApiError:
        code = error.code().name  # type: ignore[attr-defined]
        return cls(code, error.details() or code, error_reason(error))  # type: ignore[attr-defined]


def call_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed call carries, or None. A status whose code the
    transport overrode (trailers over the size limit come back as RESOURCE_EXHAUSTED) is
    ignored rather than raised as the ValueError of rpc_status.from_call."""
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None


def error_reason(error: grpc.RpcError) -> str:
    """The ``ErrorInfo.reason`` of a failed call's ``google.rpc.Status``, or ""."""
    status = call_status(error)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason
    return ""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any]
    shard_index: int
    collection: str = ""


@dataclass(frozen=True)
class ShardResult:
    shard_index: int
    ok: bool
    error: str
    hit_count: int
    latency_ms: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    space_id: str
    version: str
    partial: bool
    shards: list[ShardResult]
    latency_ms: dict[str, float] = field(default_factory=dict)
    query_truncated: bool = False
    cache_hit: bool = False
    fused: bool = False
    # The versions that answered and the spaces searched, as lists (``version`` and
    # ``space_id`` join them with ","), sorted.
    versions: list[str] = field(default_factory=list)
    space_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    space_id: str
    dim: int
    item_count: int
    shard_count: int
    version: str
    # Loaded on every shard; pending ones (opened by a build, waiting for its bundle).
    versions: list[str] = field(default_factory=list)
    pending_versions: list[str] = field(default_factory=list)
    version_spaces: dict[str, str] = field(default_factory=dict)
    candidate_version: str = ""
    # Each shard's serving version, sorted and unique (``version`` joins them with ",").
    serving_versions: list[str] = field(default_factory=list)


def listed(values: Sequence[str], joined: str) -> list[str]:
    """The list field, or for a gateway that predates it, the comma-joined string split."""
    return list(values) if values else [part for part in joined.split(",") if part]


MODALITIES = {"text": types_pb2.MODALITY_TEXT, "image": types_pb2.MODALITY_IMAGE}
MODALITY_NAMES = {number: name for name, number in MODALITIES.items()}


@dataclass(frozen=True)
class EncoderSpace:
    """An encoder the gateway routes to."""

    space_id: str
    model_id: str
    model_revision: str
    dim: int
    modality: str  # "text" or "image"
    address: str
    backend: str
    max_batch_size: int
    max_input_bytes: int


@dataclass(frozen=True)
class ShardEndpoint:
    shard_index: int
    address: str


@dataclass(frozen=True)
class ShadowReport:
    primary_version: str
    candidate_version: str
    candidate_space_id: str
    queries: int
    failures: int
    mean_overlap_at_k: float
    mean_rank_correlation: float
    mean_latency_delta_ms: float
    canary_queries: int


def _struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if values:
        struct.update(dict(values))
    return struct


def _collection(message: admin_pb.CollectionSummary) -> CollectionInfo:
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
    )


def open_channel(
    target: str,
    *,
    tls_ca_file: str | Path | None = None,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
) -> grpc.Channel:
    """A channel with the SDK's message limits; TLS when ``tls_ca_file`` is given (mutual
    TLS with a client cert and key)."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls_ca_file is None:
        return grpc.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca_file).read_bytes(),
        private_key=Path(tls_key_file).read_bytes() if tls_key_file else None,
        certificate_chain=Path(tls_cert_file).read_bytes() if tls_cert_file else None,
    )
    return grpc.secure_channel(target, credentials, options=options)


def channel_from_env(target: str) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
    """(channel, call metadata) configured like client_from_env: for batch jobs that talk
    to encoders and shards directly."""
    api_key = os.environ.get("CONTENTEMBED_API_KEY")
    channel = open_channel(
        target,
        tls_ca_file=os.environ.get("CONTENTEMBED_TLS_CA_FILE"),
        tls_cert_file=os.environ.get("CONTENTEMBED_TLS_CERT_FILE"),
        tls_key_file=os.environ.get("CONTENTEMBED_TLS_KEY_FILE"),
    )
    return channel, ((("x-api-key", api_key),) if api_key else ())


def trace_headers() -> list[tuple[str, str]]:
    """The caller's current trace context (W3C traceparent, ...) when it has one and
    OpenTelemetry is installed, so the services' spans join the caller's trace. Written
    by the caller's own (global) propagator: its application decides the format."""
    if otel_propagate is None:
        return []
    carrier: dict[str, str] = {}
    otel_propagate.inject(carrier)
    return list(carrier.items())


class Client:
    """``with Client("127.0.0.1:50051") as client: client.search("products", text="...")``.

    Every call has a deadline (``timeout`` seconds unless the call gives its own); failures
    raise ``ApiError`` with the canonical code name.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        timeout: float = DEFAULT_TIMEOUT_S,
        channel: grpc.Channel | None = None,
        *,
        api_key: str | None = None,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
    ) -> None:
        """TLS when ``tls_ca_file`` is given (mutual TLS with a client cert and key);
        ``api_key`` is sent as ``x-api-key`` on every call."""
        self.target = target
        self.timeout = timeout
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._channel = channel or open_channel(
            target, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file
        )
        self._search = search_grpc.SearchServiceStub(self._channel)
        self._admin = admin_grpc.AdminServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=(*self._metadata, *trace_headers()),
            )
        except grpc.RpcError as error:
            raise ApiError.from_rpc_error(error) from None

    # -- search ----------------------------------------------------------------------
    def search(
        self,
        collection: str,
        text: str | None = None,
        *,
        image: bytes | None = None,
        top_k: int = 10,
        allow_partial: bool = False,
        also_collections: Sequence[str] = (),
        version: str = "",
        exact: bool = False,
        timeout: float | None = None,
    ) -> SearchResult:
        """Nearest items to a text or an encoded image. ``also_collections`` searches more
        collections at once (cosine merge within a space, rank fusion across spaces).
        ``version`` searches a loaded version other than the serving one; ``exact`` uses
        brute force instead of HNSW (the reference for recall)."""
        if (text is None) == (image is None):
            raise ValueError("give exactly one of text or image")
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
        )
        if text is not None:
            request.text = text
        else:
            request.image.data = image  # type: ignore[assignment]
        response = self._call(self._search.Search, request, timeout)
        return SearchResult(
            hits=[
                Hit(h.id, h.score, json_format.MessageToDict(h.metadata), h.shard_index, h.collection)
                for h in response.hits
            ],
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
        )

    # -- collections -----------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        *,
        space_id: str = "",
        modality: str = "text",
        exist_ok: bool = False,
        timeout: float | None = None,
    ) -> tuple[CollectionInfo, bool]:
        """space_id: one an encoder serves (e.g. a CLIP or pixels space for images);
        empty: the space of the only encoder of ``modality`` ("text" or "image")."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {modality!r}")
        response = self._call(
            self._admin.CreateCollection,
            admin_pb.CreateCollectionRequest(
                name=name, exist_ok=exist_ok, space_id=space_id, modality=MODALITIES[modality]
            ),
            timeout,
        )
        return _collection(response.collection), response.created

    def get_collection(self, name: str, *, timeout: float | None = None) -> CollectionInfo:
        response = self._call(
            self._admin.GetCollection, admin_pb.GetCollectionRequest(name=name), timeout
        )
        return _collection(response.collection)

    def list_collections(
        self, *, page_size: int = 100, timeout: float | None = None
    ) -> Iterator[CollectionInfo]:
        """Every collection, following page tokens."""
        # A page token, not a password.
        token = ""  # nosec B105
        while True:
            response = self._call(
                self._admin.ListCollections,
                admin_pb.ListCollectionsRequest(page_size=page_size, page_token=token),
                timeout,
            )
            yield from (_collection(c) for c in response.collections)
            token = response.next_page_token
            if not token:
                return

    def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        self._call(self._admin.DeleteCollection, admin_pb.DeleteCollectionRequest(name=name), timeout)

    # -- documents -------------------------------------------------------------------
    def upsert_documents(
        self,
        collection: str,
        documents: Iterable[Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> tuple[int, list[str]]:
        """Documents are mappings with ``id``, ``text`` or ``image`` (encoded bytes) and
        optional ``metadata``. Returns (how many were written, ids the model truncated)."""
        request = admin_pb.UpsertDocumentsRequest(collection=collection)
        for doc in documents:
            message = request.documents.add(id=str(doc["id"]), metadata=_struct(doc.get("metadata")))
            if "image" in doc:
                message.image.data = doc["image"]
            else:
                message.text = str(doc["text"])
        response = self._call(self._admin.UpsertDocuments, request, timeout)
        return response.upserted_count, list(response.truncated_ids)

    def delete_documents(
        self, collection: str, ids: Iterable[str], *, timeout: float | None = None
    ) -> int:
        response = self._call(
            self._admin.DeleteDocuments,
            admin_pb.DeleteDocumentsRequest(collection=collection, ids=list(ids)),
            timeout,
        )
        return response.deleted_count

    # -- model rollout: candidate, shadow, canary, promote, rollback ------------------
    def set_candidate(
        self,
        collection: str,
        version: str,
        *,
        shadow_fraction: float = 0.0,
        canary_weight: float = 0.0,
        timeout: float | None = None,
    ) -> None:
        """Names a loaded version as candidate (empty version: clears it)."""
        self._call(
            self._admin.SetCandidate,
            admin_pb.SetCandidateRequest(
                collection=collection,
                version=version,
                shadow_fraction=shadow_fraction,
                canary_weight=canary_weight,
            ),
            timeout,
        )

    def shadow_report(self, collection: str, *, timeout: float | None = None) -> ShadowReport:
        response = self._call(
            self._admin.GetShadowReport, admin_pb.GetShadowReportRequest(collection=collection), timeout
        )
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

    def promote_candidate(self, collection: str, *, timeout: float | None = None) -> tuple[str, str]:
        """(previous version, serving version)."""
        response = self._call(
            self._admin.PromoteCandidate, admin_pb.PromoteCandidateRequest(collection=collection), timeout
        )
        return response.previous_version, response.version

    def rollback_collection(self, collection: str, *, timeout: float | None = None) -> str:
        """Returns the version serving after the rollback."""
        response = self._call(
            self._admin.RollbackCollection,
            admin_pb.RollbackCollectionRequest(collection=collection),
            timeout,
        )
        return response.version

    # -- topology and versions -------------------------------------------------------
    def list_spaces(self, *, timeout: float | None = None) -> list[EncoderSpace]:
        """The encoders the gateway routes to, with the space each embeds into."""
        response = self._call(self._admin.ListSpaces, admin_pb.ListSpacesRequest(), timeout)
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

    def list_shards(self, *, timeout: float | None = None) -> list[ShardEndpoint]:
        """The index shards the gateway fans out to, in shard order."""
        response = self._call(self._admin.ListShards, admin_pb.ListShardsRequest(), timeout)
        return [ShardEndpoint(s.shard_index, s.address) for s in response.shards]

    def begin_version(
        self, collection: str, version: str, space_id: str, *, timeout: float | None = None
    ) -> tuple[CollectionInfo, bool]:
        """Opens a pending version on every shard: it receives every online write (embedded
        into ``space_id``) until a bundle is published into it. Returns (collection, created)."""
        response = self._call(
            self._admin.BeginVersion,
            admin_pb.BeginVersionRequest(collection=collection, version=version, space_id=space_id),
            timeout,
        )
        return _collection(response.collection), response.created

    def delete_version(
        self, collection: str, version: str, *, timeout: float | None = None
    ) -> CollectionInfo:
        """Drops a version that is not serving (pending, candidate or previous) everywhere."""
        response = self._call(
            self._admin.DeleteVersion,
            admin_pb.DeleteVersionRequest(collection=collection, version=version),
            timeout,
        )
        return _collection(response.collection)

    # -- health ----------------------------------------------------------------------
    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """grpc.health.v1 status name: SERVING, NOT_SERVING, ..."""
        response = self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def client_from_env(target: str, timeout: float = DEFAULT_TIMEOUT_S) -> Client:
    """A Client configured from CONTENTEMBED_API_KEY and CONTENTEMBED_TLS_{CA,CERT,KEY}_FILE."""
    return Client(
        target,
        timeout,
        api_key=os.environ.get("CONTENTEMBED_API_KEY"),
        tls_ca_file=os.environ.get("CONTENTEMBED_TLS_CA_FILE"),
        tls_cert_file=os.environ.get("CONTENTEMBED_TLS_CERT_FILE"),
        tls_key_file=os.environ.get("CONTENTEMBED_TLS_KEY_FILE"),
    )
