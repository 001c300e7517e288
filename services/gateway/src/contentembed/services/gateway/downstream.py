"""The gRPC adapter of the gateway's ports (``ports.py``): typed clients for the encoders
and the index shards.

They convert protobuf to the ports' types at this one edge; the search, ingest and
rollout modules work on numpy arrays and dataclasses and never see grpc.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as encoder_pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as encoder_grpc
from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.index.v1 import replication_service_pb2 as replication_pb
from contentembed.index.v1 import replication_service_pb2_grpc as replication_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.downstream import (
    PendingCall,
    error_from_rpc,
    open_channel,
    remaining_timeout,
    start_call,
)
from contentembed.services.common.errors import Internal
from contentembed.services.common.protoconv import (
    dict_to_struct,
    matrix_from_pb,
    struct_to_dict,
    vector_from_pb,
    vector_to_pb,
)
from contentembed.services.common.tracing import Tracing
from contentembed.services.gateway.merge import Hit
from contentembed.services.gateway.ports import (
    IMAGE,
    TEXT,
    CandidateInfo,
    Embedded,
    EncoderInfo,
    LexicalConfig,
    ReplicaStatus,
    ShardAnswer,
    ShardBatchAnswer,
    ShardCollection,
    ShardLimits,
    StoredItem,
)

MODALITY_NAMES = {types_pb2.MODALITY_TEXT: TEXT, types_pb2.MODALITY_IMAGE: IMAGE}
ENCODER_SERVICE = encoder_pb.DESCRIPTOR.services_by_name["EncoderService"].full_name
INDEX_SERVICE = index_pb.DESCRIPTOR.services_by_name["IndexService"].full_name
REPLICATION_SERVICE = replication_pb.DESCRIPTOR.services_by_name["ReplicationService"].full_name


def _replica_info(shard: index_pb.ShardInfo) -> ReplicaStatus | None:
    """Which replica answered and its standing; None from a shard too old to say."""
    if not shard.HasField("replica"):
        return None
    info = shard.replica
    return ReplicaStatus(
        replica_id=info.replica_id, primary=info.primary, term=info.term, in_sync=info.in_sync,
        in_sync_replicas=tuple(info.in_sync_replicas), primary_id=info.primary_id,
    )


def _collection(message: index_pb.Collection) -> ShardCollection:
    return ShardCollection(
        name=message.name,
        space_id=message.space_id,
        dim=message.dim,
        item_count=message.item_count,
        version=message.version,
        version_spaces=dict(message.version_spaces),
        versions=tuple(message.versions),
        pending_versions=tuple(message.pending_versions),
        versions_fingerprint=message.versions_fingerprint,
        version_digests=dict(message.version_digests),
        lexical=LexicalConfig(message.lexical.language, message.lexical.lexical_only)
        if message.lexical.enabled else None,
        candidate=CandidateInfo(message.candidate.version, message.candidate.shadow_fraction,
                                message.candidate.canary_weight)
        if message.candidate.version else None,
    )


def _hits(hits: Sequence[index_pb.Hit], shard_index: int, collection: str) -> list[Hit]:
    return [Hit(h.id, h.score, shard_index, struct_to_dict(h.metadata), collection) for h in hits]


def _answer_hits(
    answer: Any, packed_field: str, plain_field: str, shard_index: int, collection: str
) -> list[Hit]:
    """The hits of a shard answer: its packed columns, or its per-hit messages when the
    shard predates packed answers (a rolling upgrade: it ignores the request's flag)."""
    if not answer.HasField(packed_field):
        return _hits(getattr(answer, plain_field), shard_index, collection)
    packed: index_pb.PackedHits = getattr(answer, packed_field)
    scores = np.frombuffer(packed.scores, dtype="<f4")
    if not len(scores) == len(packed.ids) == len(packed.metadata_json):
        raise Internal(
            f"shard {shard_index} answered {len(packed.ids)} ids with {len(scores)} scores "
            f"and {len(packed.metadata_json)} metadata entries"
        )
    return [
        Hit(item_id, score, shard_index, json.loads(metadata) if metadata else {}, collection)
        for item_id, score, metadata in zip(packed.ids, scores.tolist(), packed.metadata_json)
    ]


class EncoderClient:
    def __init__(self, endpoint: str, settings: ServiceSettings) -> None:
        self.endpoint = endpoint
        self.label = f"encoder {endpoint}"
        # Replaced by the runtime's (GatewayService.use_tracing) before any call.
        self.tracing = Tracing.off()
        self._channel = open_channel(endpoint, settings)
        self._stub = encoder_grpc.EncoderServiceStub(self._channel)

    def info(self, deadline: float, wait_for_ready: bool = False) -> EncoderInfo:
        try:
            response = self._stub.GetEncoderInfo(
                encoder_pb.GetEncoderInfoRequest(),
                timeout=remaining_timeout(deadline, self.label),
                wait_for_ready=wait_for_ready,
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.label) from None
        return EncoderInfo(
            space_id=response.space.space_id,
            dim=response.space.dim,
            max_batch_size=response.max_batch_size,
            max_input_bytes=response.max_input_bytes,
            backend=response.backend,
            modality=MODALITY_NAMES.get(response.modality, "unknown"),
            model_id=response.space.model_id,
            model_revision=response.space.model_revision,
        )

    def embed(self, contents: Sequence[str | bytes], deadline: float) -> PendingCall[Any, Embedded]:
        """Texts (str) or encoded images (bytes), one vector each, in order."""
        request = encoder_pb.EmbedRequest(
            inputs=[
                encoder_pb.EmbedInput(text=c)
                if isinstance(c, str)
                else encoder_pb.EmbedInput(image=types_pb2.Image(data=c))
                for c in contents
            ]
        )
        future = start_call(
            self.tracing, self._stub.Embed, f"/{ENCODER_SERVICE}/Embed", request,
            remaining_timeout(deadline, self.label), self.endpoint,
            {"contentembed.inputs": len(contents)},
        )

        def convert(response: encoder_pb.EmbedResponse) -> Embedded:
            return Embedded(
                vectors=matrix_from_pb(response.vectors, what=f"{self.label} vectors"),
                space_id=response.space_id,
                truncated=list(response.truncated),
            )

        return PendingCall(future, convert, self.label)

    def close(self) -> None:
        self._channel.close()


class IndexShardClient:
    def __init__(self, shard_index: int, endpoint: str, settings: ServiceSettings) -> None:
        self.shard_index = shard_index
        self.endpoint = endpoint
        self.label = f"index shard {shard_index} ({endpoint})"
        # Replaced by the runtime's (GatewayService.use_tracing) before any call.
        self.tracing = Tracing.off()
        self._channel = open_channel(endpoint, settings)
        self._stub = index_grpc.IndexServiceStub(self._channel)
        # Asked only when the shard has replicas (replicas.ReplicatedShard): a stub costs
        # nothing until it is called.
        self._replication = replication_grpc.ReplicationServiceStub(self._channel)
        self._wait_for_ready = False

    def patient(self) -> IndexShardClient:
        """This client on the same channel, its calls waiting (within their deadline) for
        a channel that is reconnecting instead of failing at once: for a read retried on
        another replica, which may have come back a moment ago (gRPC fails calls fast for
        up to its 1 s reconnect backoff)."""
        twin = copy.copy(self)
        twin._wait_for_ready = True
        return twin

    def _call(
        self, method: str, request: Any, deadline: float, convert: Any,
        service: str = INDEX_SERVICE, **kwargs: Any,
    ):
        """Starts IndexService/``method`` (or ReplicationService's); the result converted
        by ``convert``."""
        stub = self._replication if service == REPLICATION_SERVICE else self._stub
        if self._wait_for_ready:
            kwargs.setdefault("wait_for_ready", True)
        future = start_call(
            self.tracing, getattr(stub, method), f"/{service}/{method}", request,
            remaining_timeout(deadline, self.label), self.endpoint,
            {"contentembed.shard_index": self.shard_index}, **kwargs,
        )
        return PendingCall(future, convert, self.label)

    def replica_state(self, deadline: float) -> PendingCall[Any, ReplicaStatus]:
        """This replica's role, term and in_sync, as an observer asks (term 0): answered
        even while the replica is not ready for reads."""
        request = replication_pb.GetReplicaStateRequest(term=0)

        def convert(response: replication_pb.GetReplicaStateResponse) -> ReplicaStatus:
            state = response.state
            return ReplicaStatus(
                replica_id=state.replica_id,
                primary=state.role == replication_pb.REPLICA_ROLE_PRIMARY,
                term=state.term,
                in_sync=state.in_sync,
            )

        return self._call(
            "GetReplicaState", request, deadline, convert, service=REPLICATION_SERVICE
        )

    def search(
        self,
        collection: str,
        query: np.ndarray | None,
        space_id: str,
        top_k: int,
        deadline: float,
        version: str = "",
        exact: bool = False,
        ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        text: str = "",
    ) -> PendingCall[Any, ShardAnswer]:
        request = index_pb.SearchRequest(
            collection=collection,
            query=None if query is None else vector_to_pb(query),
            top_k=top_k,
            space_id=space_id,
            version=version,
            exact=exact,
            ef=ef,
            text=text,
            packed=True,
        )
        if metadata_filter:
            request.filter.CopyFrom(dict_to_struct(metadata_filter))

        def convert(response: index_pb.SearchResponse) -> ShardAnswer:
            return ShardAnswer(
                shard_index=self.shard_index,
                hits=_answer_hits(response, "packed_hits", "hits", self.shard_index, collection),
                space_id=response.space_id,
                version=response.version,
                lexical_hits=_answer_hits(
                    response, "packed_lexical_hits", "lexical_hits", self.shard_index, collection
                ),
                encoded_bytes=response.ByteSize(),
            )

        return self._call("Search", request, deadline, convert)

    def search_batch(
        self,
        collection: str,
        queries: np.ndarray | None,
        space_id: str,
        top_k: int,
        deadline: float,
        ef: int = 0,
        metadata_filter: Mapping[str, Any] | None = None,
        texts: Sequence[str] = (),
    ) -> PendingCall[Any, ShardBatchAnswer]:
        request = index_pb.SearchBatchRequest(
            collection=collection,
            # One Vector per query rather than query_batch: a shard that predates
            # query_batch would read it as a batch without vectors.
            queries=[] if queries is None else [vector_to_pb(row) for row in queries],
            top_k=top_k,
            space_id=space_id,
            ef=ef,
            texts=list(texts),
            packed=True,
        )
        if metadata_filter:
            request.filter.CopyFrom(dict_to_struct(metadata_filter))

        def convert(response: index_pb.SearchBatchResponse) -> ShardBatchAnswer:
            results = tuple(
                _answer_hits(result, "packed_hits", "hits", self.shard_index, collection)
                for result in response.results
            )
            lexical = tuple(
                _answer_hits(
                    result, "packed_lexical_hits", "lexical_hits", self.shard_index, collection
                )
                for result in response.results
            ) if texts else ()
            return ShardBatchAnswer(
                shard_index=self.shard_index,
                hits=[hit for hits in results for hit in hits],
                space_id=response.space_id,
                version=response.version,
                lexical_hits=[hit for hits in lexical for hit in hits],
                encoded_bytes=response.ByteSize(),
                results=results,
                lexical_results=lexical,
            )

        return self._call("SearchBatch", request, deadline, convert)

    def get_vector(
        self, collection: str, item_id: str, deadline: float
    ) -> PendingCall[Any, np.ndarray | None]:
        request = index_pb.GetItemsRequest(collection=collection, ids=[item_id])

        def convert(response: index_pb.GetItemsResponse) -> np.ndarray | None:
            for item in response.items:
                if item.id == item_id:
                    return vector_from_pb(item.vector, what=f"{self.label} item {item_id!r}")
            return None

        return self._call("GetItems", request, deadline, convert)

    def get_items(
        self, collection: str, ids: Sequence[str], deadline: float
    ) -> PendingCall[Any, list[StoredItem]]:
        request = index_pb.GetItemsRequest(collection=collection, ids=list(ids))

        def convert(response: index_pb.GetItemsResponse) -> list[StoredItem]:
            return [
                StoredItem(
                    id=item.id,
                    # None stored (a lexical-only collection): an empty vector.
                    vector=vector_from_pb(item.vector, what=f"{self.label} item {item.id!r}")
                    if item.HasField("vector") else np.empty(0, dtype=np.float32),
                    metadata=struct_to_dict(item.metadata),
                    shard_index=self.shard_index,
                    text=item.text,
                )
                for item in response.items
            ]

        return self._call("GetItems", request, deadline, convert)

    def upsert(
        self,
        collection: str,
        space_id: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        deadline: float,
        versions_fingerprint: str = "",
        texts: Sequence[str] | None = None,
    ) -> PendingCall[Any, int]:
        """Writes every version of the collection in ``space_id``, each item with its text;
        with a fingerprint, the shard refuses (ABORTED VERSIONS_CHANGED) when its versions
        changed since."""
        request = index_pb.UpsertRequest(
            collection=collection,
            space_id=space_id,
            versions_fingerprint=versions_fingerprint,
            items=[
                # A lexical-only collection's items carry no vector (an empty row).
                index_pb.Item(id=i, vector=vector_to_pb(v) if v.size else None,
                              metadata=dict_to_struct(m), text=t)
                for i, v, m, t in zip(ids, vectors, metadata, texts or [""] * len(ids))
            ],
        )
        return self._call("Upsert", request, deadline, lambda r: r.upserted_count)

    def delete_items(self, collection: str, ids: Sequence[str], deadline: float):
        request = index_pb.DeleteItemsRequest(collection=collection, ids=list(ids))
        return self._call("DeleteItems", request, deadline, lambda r: r.deleted_count)

    def create_collection(
        self, name: str, space_id: str, dim: int, exist_ok: bool, deadline: float,
        lexical: LexicalConfig | None = None,
    ) -> PendingCall[Any, tuple[ShardCollection, bool]]:
        request = index_pb.CreateCollectionRequest(
            name=name, space_id=space_id, dim=dim, metric=index_pb.METRIC_COSINE, exist_ok=exist_ok,
            lexical=None if lexical is None
            else types_pb2.LexicalConfig(
                enabled=True, language=lexical.language, lexical_only=lexical.lexical_only
            ),
        )
        return self._call(
            "CreateCollection", request, deadline, lambda r: (_collection(r.collection), r.created)
        )

    def get_collection(self, name: str, deadline: float) -> PendingCall[Any, ShardCollection]:
        request = index_pb.GetCollectionRequest(name=name)
        return self._call("GetCollection", request, deadline, lambda r: _collection(r.collection))

    def limits(self, deadline: float) -> PendingCall[Any, ShardLimits]:
        """The shard's request limits and the answering replica's standing (one small
        ListCollections call)."""
        request = index_pb.ListCollectionsRequest(page_size=1)
        return self._call(
            "ListCollections",
            request,
            deadline,
            lambda r: ShardLimits(
                r.shard.max_top_k, r.shard.max_queries_per_batch, r.shard.max_ids_per_call,
                r.shard.max_ef, _replica_info(r.shard),
            ),
        )

    def list_collections(
        self, page_size: int, after: str, deadline: float
    ) -> PendingCall[Any, tuple[list[ShardCollection], bool]]:
        request = index_pb.ListCollectionsRequest(page_size=page_size, start_after=after)
        return self._call(
            "ListCollections",
            request,
            deadline,
            lambda r: ([_collection(c) for c in r.collections], bool(r.next_page_token)),
        )

    def activate_version(self, name: str, version: str, deadline: float) -> PendingCall[Any, str]:
        """Returns the version that served before."""
        request = index_pb.ActivateVersionRequest(collection=name, version=version)
        return self._call("ActivateVersion", request, deadline, lambda r: r.previous_version)

    def rollback_version(self, name: str, deadline: float) -> PendingCall[Any, str]:
        """Returns the version now serving."""
        request = index_pb.RollbackVersionRequest(collection=name)
        return self._call("RollbackVersion", request, deadline, lambda r: r.collection.version)

    def begin_version(
        self, name: str, version: str, space_id: str, dim: int, deadline: float
    ) -> PendingCall[Any, tuple[ShardCollection, bool]]:
        request = index_pb.BeginVersionRequest(
            collection=name, version=version, space_id=space_id, dim=dim
        )
        return self._call(
            "BeginVersion", request, deadline, lambda r: (_collection(r.collection), r.created)
        )

    def delete_version(
        self, name: str, version: str, deadline: float
    ) -> PendingCall[Any, ShardCollection]:
        request = index_pb.DeleteVersionRequest(collection=name, version=version)
        return self._call("DeleteVersion", request, deadline, lambda r: _collection(r.collection))

    def set_candidate(
        self, name: str, candidate: CandidateInfo | None, deadline: float
    ) -> PendingCall[Any, ShardCollection]:
        state = index_pb.CandidateState(
            version=candidate.version, shadow_fraction=candidate.shadow_fraction,
            canary_weight=candidate.canary_weight,
        ) if candidate is not None else index_pb.CandidateState()
        request = index_pb.SetCandidateRequest(collection=name, candidate=state)
        return self._call("SetCandidate", request, deadline, lambda r: _collection(r.collection))

    def delete_collection(self, name: str, deadline: float) -> PendingCall[Any, None]:
        request = index_pb.DeleteCollectionRequest(name=name)
        return self._call("DeleteCollection", request, deadline, lambda r: None)

    def close(self) -> None:
        self._channel.close()
