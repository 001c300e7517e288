"""gRPC edge of the index service: validate, convert once, call the store, convert back."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from pydantic import Field, model_validator

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.index.v1 import replication_service_pb2 as rpb
from contentembed.index.v1 import replication_service_pb2_grpc as rpb_grpc
from contentembed.services.common.auth import ADMIN_ROLE, SEARCH_ROLE
from contentembed.services.common.budget import AnswerSize, MemoryBudget
from contentembed.services.common.errors import FailedPrecondition, InvalidArgument
from contentembed.services.common.filters import check_filter
from contentembed.services.common.interceptor import interrupt_of
from contentembed.services.common.metadata import (
    SearchServiceSettings,
    check_answer_size,
    check_metadata,
)
from contentembed.services.common.paging import PageTokens, page_size_of
from contentembed.services.common.protoconv import (
    dict_to_struct,
    matrix_from_pb,
    struct_to_dict,
    vector_from_pb,
    vector_to_pb,
)
from contentembed.services.common.server import run_service
from contentembed.services.common.validation import (
    shown,
    validate_ids,
    validate_space_id,
    validate_top_k,
)
from contentembed.services.common.vectors import FLOAT32_LE
from contentembed.services.index.bundles import UploadLimits
from contentembed.services.index.collection import HitColumns, HnswCollection, SearchHit
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.lease import FileLease, LeaseStore
from contentembed.services.index.primary import ReplicationTimings
from contentembed.services.index.replica_group import PRIMARY, LeaseTimings, ReplicaGroup
from contentembed.services.index.replica_metrics import ReplicationCollector
from contentembed.services.index.replication import Follower
from contentembed.services.index.replication_service import GrpcReplicaPeer, ReplicationServicer
from contentembed.services.index.shard import ShardPosition, claim_data_dir
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import Durability
from contentembed.services.index.wire import (
    candidate_from_pb,
    candidate_to_pb,
    lexical_from_pb,
    lexical_to_pb,
    params_from_pb,
    split_header,
    write_chunks,
)

ResponseT = TypeVar("ResponseT", bound=Message)
# A hit's encoding beyond its id and metadata bytes: field tags and lengths, 4 score bytes.
PACKED_HIT_OVERHEAD_BYTES = 12
FRAMING_BYTES = 3  # a repeated message field's tag and length


class IndexSettings(SearchServiceSettings):
    shard_index: int = Field(0, ge=0, description="This shard's number, 0-based.")
    shard_index_from_hostname: bool = Field(
        False,
        description="Take the shard number from the hostname: the number after its last "
        "'-' (a Kubernetes StatefulSet pod index-3 is shard 3). Start-up fails if the "
        "hostname does not end in one; --shard-index must then be left unset.",
    )
    shard_count: int = Field(1, ge=1, le=4096, description="How many shards share the ids.")
    max_items_per_upsert: int = Field(10_000, ge=1)
    hnsw_m: int = Field(16, ge=2, le=128)
    hnsw_ef_construction: int = Field(200, ge=1)
    hnsw_ef_search: int = Field(100, ge=1)
    max_ef: int = Field(10_000, ge=1, description="Largest per-request ef.")
    max_queries_per_batch: int = Field(1024, ge=1)
    max_search_cpu_s: float = Field(
        2.0,
        gt=0,
        description="Most CPU one Search or SearchBatch may need, estimated before any vector "
        "is compared (queries x the vectors each compares, from ef, top_k, exact and the "
        "filter's share); above, INVALID_ARGUMENT SEARCH_TOO_COSTLY.",
    )
    initial_capacity: int = Field(1024, ge=1)
    max_collections: int = Field(
        1000, ge=1,
        description="Collections one shard holds at most (each costs memory and files even "
        "when empty); beyond, CreateCollection is RESOURCE_EXHAUSTED TOO_MANY_COLLECTIONS.",
    )
    data_dir: Path | None = Field(
        None, description="Where collections are kept durably; unset keeps them in memory only."
    )
    wal_sync: Literal["always", "interval", "never"] = Field(
        "always",
        description="always: fsync each write before acknowledging it (survives power loss); "
        "interval: fsync at most every --wal-sync-interval-ms; never: leave it to the OS. All "
        "three survive kill -9 of the process.",
    )
    wal_sync_interval_ms: float = Field(50.0, gt=0)
    bundle_root: Path | None = Field(
        None, description="Bundles are loaded only from below this directory."
    )
    snapshot_every_ops: int = Field(
        50_000, ge=1, description="Write requests that make a background snapshot due."
    )
    snapshot_every_items: int = Field(
        10_000,
        ge=1,
        description="Items written (upserted or deleted) that make a background snapshot due, "
        "or --snapshot-share of the collection when that is more. After a crash the items "
        "written since the last snapshot are replayed (about 0.4-1 ms each at 384 dimensions "
        "on two cores): this bounds recovery time.",
    )
    snapshot_share: float = Field(
        0.05, ge=0, le=1,
        description="A share of the collection's items whose writes make a snapshot due, when "
        "more than --snapshot-every-items (snapshots of large collections hold writes back "
        "for seconds).",
    )
    snapshot_wal_bytes: int = Field(
        256 << 20, ge=1, description="WAL bytes written that make a background snapshot due."
    )
    snapshot_interval_s: float = Field(
        600.0, gt=0,
        description="A collection written to since its last snapshot is snapshotted at least "
        "this often (one is also written at shutdown).",
    )
    max_upload_bytes: int = Field(
        16 << 30, ge=1, description="Largest bundle part UploadBundle takes (sum of its files)."
    )
    upload_ttl_s: float = Field(
        3600.0, gt=0, description="Staged uploads not loaded within this long are removed."
    )
    replica_id: str = Field(
        "",
        description="This replica's id in its shard's replica group (unset: the shard is this "
        "one process, as without replicas). Needs --data-dir and --replica-peers.",
    )
    replica_peers: list[str] = Field(
        [], description="The shard's other replicas as id=host:port, comma-separated."
    )
    replicas_per_shard: int = Field(
        1, ge=1, le=16,
        description="With --shard-index-from-hostname: pods are numbered shard x R + replica "
        "(a StatefulSet of shards x R pods); the replica id is that number's remainder and the "
        "peers come from --replica-peer-template.",
    )
    replica_peer_template: str = Field(
        "", description="With --replicas-per-shard: a peer's host:port, {ordinal} replaced by "
        "its pod number (index-{ordinal}.index:50051).",
    )
    replica_lease: Literal["file", "kubernetes"] = Field(
        "file",
        description="Where the shard's lease (who is primary) lives: a file every replica "
        "shares (--replica-lease-file), or a coordination.k8s.io Lease.",
    )
    replica_lease_file: Path | None = Field(None, description="The shared lease file.")
    replica_lease_name: str = Field(
        "", description="The Kubernetes Lease's name (default contentembed-index-<shard>)."
    )
    replica_lease_namespace: str = Field(
        "", description="The Lease's namespace (default the pod's own)."
    )
    replica_lease_duration_s: float = Field(
        3.0, gt=0, description="A primary that stops renewing its lease is replaced after this long."
    )

    @model_validator(mode="after")
    def _shard_in_range(self) -> IndexSettings:
        if self.shard_index_from_hostname:
            if "shard_index" in self.model_fields_set:
                raise ValueError("give --shard-index or --shard-index-from-hostname, not both")
            hostname = socket.gethostname()
            ordinal = shard_index_of_hostname(hostname)
            self.shard_index, replica = divmod(ordinal, self.replicas_per_shard)
            if self.replicas_per_shard > 1:
                if "{ordinal}" not in self.replica_peer_template:
                    raise ValueError("--replicas-per-shard needs --replica-peer-template with {ordinal}")
                first = self.shard_index * self.replicas_per_shard
                self.replica_id = str(replica)
                self.replica_peers = [
                    f"{n}={self.replica_peer_template.replace('{ordinal}', str(first + n))}"
                    for n in range(self.replicas_per_shard) if n != replica
                ]
            if self.shard_index >= self.shard_count:
                raise ValueError(
                    f"hostname {hostname!r} makes this shard {self.shard_index}, but "
                    f"shard_count is {self.shard_count}: set CONTENTEMBED_SHARD_COUNT to the "
                    "StatefulSet's replicas"
                )
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} must be below shard_count {self.shard_count}")
        if self.replica_id:
            if self.data_dir is None:
                raise ValueError("--replica-id needs --data-dir: replicas ship their write-ahead logs")
            if self.replica_lease == "file" and self.replica_lease_file is None:
                raise ValueError("--replica-lease file needs --replica-lease-file")
            replica_peers(self.replica_peers, self.replica_id)
        return self


def shard_index_of_hostname(hostname: str) -> int:
    """The number after the last '-' of a hostname (StatefulSet pod ``index-3`` -> 3)."""
    name = hostname.split(".", 1)[0]
    _, dash, number = name.rpartition("-")
    if not dash or not number.isascii() or not number.isdigit():
        raise ValueError(
            f"--shard-index-from-hostname: hostname {hostname!r} does not end in -<number> "
            "(a StatefulSet pod name such as index-3)"
        )
    return int(number)


def replica_peers(entries: list[str], own_id: str) -> dict[str, str]:
    """id -> host:port from --replica-peers; ValueError for a malformed or repeated entry."""
    peers: dict[str, str] = {}
    for entry in entries:
        replica, equals, endpoint = entry.partition("=")
        if not equals or not replica or not endpoint or replica == own_id or replica in peers:
            raise ValueError(f"--replica-peers: {entry!r} must be id=host:port, one per other replica")
        peers[replica] = endpoint
    return peers


def check_space(collection: HnswCollection, space_id: str, *, what: str) -> None:
    """Vectors of another space would be answered with meaningless neighbours."""
    if space_id and space_id != collection.space_id:
        raise FailedPrecondition(
            f"{what} is in space {shown(space_id)}, collection {collection.name!r} "
            f"is in space {collection.space_id}",
            reason="SPACE_MISMATCH",
        )


LIST_COLLECTIONS = "ListCollections"  # the scope of its page tokens
RpcMethod = Callable[..., Any]


def replicated_write(method: RpcMethod) -> RpcMethod:
    """A write RPC: taken by the shard's primary, answered once its replicas hold it."""
    @functools.wraps(method)
    def write(self: IndexService, request: Any, context: grpc.ServicerContext) -> Any:
        with self._writing():
            return method(self, request, context)
    return write


def replica_read(method: RpcMethod) -> RpcMethod:
    """A read RPC: answered by any replica that holds every acknowledged write."""
    @functools.wraps(method)
    def read(self: IndexService, request: Any, context: grpc.ServicerContext) -> Any:
        self._reading()
        return method(self, request, context)
    return read


def replica_group(settings: IndexSettings, store: CollectionStore) -> ReplicaGroup:
    """The shard's replica group as the settings describe it."""
    assert settings.data_dir is not None
    timings = ReplicationTimings()
    lease_timings = LeaseTimings(settings.replica_lease_duration_s,
                                 settings.replica_lease_duration_s / 3)
    follower = Follower(store, settings.replica_id, settings.data_dir,
                        in_sync_timeout_s=2 * settings.replica_lease_duration_s)
    peers = [GrpcReplicaPeer(replica, endpoint, settings, store, timings.rpc_timeout_s)
             for replica, endpoint in replica_peers(settings.replica_peers, settings.replica_id).items()]
    if settings.replica_lease == "kubernetes":
        from contentembed.services.index.lease_k8s import KubernetesLease  # the client is big

        lease: LeaseStore = KubernetesLease.from_cluster(
            settings.replica_lease_namespace or None,
            settings.replica_lease_name or f"contentembed-index-{settings.shard_index}")
    else:
        assert settings.replica_lease_file is not None
        lease = FileLease(settings.replica_lease_file)
    return ReplicaGroup(store, follower, lease, list(peers), lease_timings, timings)
READ_METHODS = frozenset(
    {"GetCollection", "ListCollections", "Search", "SearchBatch", "GetItems", "ListItems"}
)


class IndexService(pb_grpc.IndexServiceServicer):
    name = "index"

    def __init__(self, settings: IndexSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.shard = ShardPosition(settings.shard_index, settings.shard_count)
        durability = None
        if settings.data_dir is not None:
            durability = Durability(
                settings.data_dir,
                settings.wal_sync,
                settings.wal_sync_interval_ms / 1000.0,
                settings.snapshot_every_ops,
                settings.snapshot_every_items,
                settings.snapshot_share,
                settings.snapshot_wal_bytes,
                settings.snapshot_interval_s,
            )
        self.answers = MemoryBudget(settings.max_answer_memory_bytes)
        self.page_tokens = PageTokens.from_setting(settings.page_token_secret)
        self.store = CollectionStore(
            HnswParams(settings.hnsw_m, settings.hnsw_ef_construction, settings.hnsw_ef_search),
            settings.initial_capacity,
            durability,
            settings.bundle_root,
            settings.metadata_limits,
            UploadLimits(settings.max_upload_bytes, settings.upload_ttl_s),
            settings.max_collections,
        )
        self.replicas = replica_group(settings, self.store) if settings.replica_id else None
        if self.replicas is not None:
            registry.register(ReplicationCollector(self.replicas, settings.shard_index))

    # -- lifecycle -------------------------------------------------------------------
    def register(self, server: grpc.Server) -> list[str]:
        pb_grpc.add_IndexServiceServicer_to_server(self, server)
        names = [pb.DESCRIPTOR.services_by_name["IndexService"].full_name]
        group = self.replicas
        if group is not None:
            rpb_grpc.add_ReplicationServiceServicer_to_server(ReplicationServicer(group), server)
            names.append(rpb.DESCRIPTOR.services_by_name["ReplicationService"].full_name)
        return names

    def required_role(self, method: str) -> str | None:
        """Reads need a search key, everything that changes the shard an admin key."""
        return SEARCH_ROLE if method.rsplit("/", 1)[-1] in READ_METHODS else ADMIN_ROLE

    def load(self) -> None:
        """Recovers durable collections (snapshot + WAL); a corrupt file keeps the shard
        NOT_SERVING rather than serving with data missing; so does a data directory
        written as another shard, or under another shard count."""
        if self.settings.data_dir is not None:
            claim_data_dir(self.settings.data_dir, self.shard)
        self.store.load()
        if self.replicas is not None:
            self.replicas.start()

    def close(self) -> None:
        if self.replicas is not None:
            self.replicas.stop()
            for peer in self.replicas.peers:
                peer.close()  # type: ignore[attr-defined]
        self.store.close()

    def ready(self) -> bool:
        """Readiness (Kubernetes rolls the next pod only after): a replica is ready once
        it holds every acknowledged write of its shard."""
        return self.replicas is None or self.replicas.in_sync

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around a write: the primary's to take, acknowledged once its in-sync replicas
        hold it (NOT_PRIMARY on a follower)."""
        if self.replicas is None:
            yield
            return
        with self.replicas.write():
            yield

    def _reading(self) -> None:
        """A follower answers reads once it holds every acknowledged write."""
        if self.replicas is not None:
            self.replicas.require_readable()

    # -- conversions ----------------------------------------------------------------
    def _shard_pb(self) -> pb.ShardInfo:
        return pb.ShardInfo(
            shard_index=self.shard.index,
            shard_count=self.shard.count,
            max_top_k=self.settings.max_top_k,
            max_queries_per_batch=self.settings.max_queries_per_batch,
            max_ids_per_call=self.settings.max_items_per_upsert,
            max_ef=self.settings.max_ef,
            max_message_bytes=self.settings.max_message_bytes,
            replica=self._replica_pb(),
        )

    def _replica_pb(self) -> pb.ReplicaInfo:
        group = self.replicas
        if group is None:
            return pb.ReplicaInfo(primary=True, in_sync=True)
        return pb.ReplicaInfo(
            replica_id=group.replica_id, primary=group.role == PRIMARY, term=group.term,
            in_sync=group.in_sync, in_sync_replicas=group.in_sync_replicas(),
            primary_id=group.replica_id if group.role == PRIMARY else group.follower.primary_id,
        )

    def _collection_pb(self, collection: HnswCollection) -> pb.Collection:
        alias = self.store.alias(collection.name)
        versions, every = dict(alias.versions), alias.every_version()  # copies: they may change
        return pb.Collection(
            name=collection.name,
            space_id=collection.space_id,
            dim=collection.dim,
            metric=pb.METRIC_COSINE,
            hnsw=pb.HnswParams(
                m=collection.params.m,
                ef_construction=collection.params.ef_construction,
                ef_search=collection.params.ef_search,
            ),
            item_count=collection.item_count,
            version=collection.version,
            shard=self._shard_pb(),
            versions=sorted(versions),
            version_spaces={version: c.space_id for version, c in every.items()},
            pending_versions=sorted(v for v, c in every.items() if c.pending),
            versions_fingerprint=alias.fingerprint,
            version_digests={version: c.bundle_digest for version, c in versions.items()},
            lexical=lexical_to_pb(collection.lexical_params),
            candidate=candidate_to_pb(alias.candidate),
        )

    # -- RPCs -----------------------------------------------------------------------
    @replicated_write
    def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext):
        if request.metric not in (pb.METRIC_UNSPECIFIED, pb.METRIC_COSINE):
            raise InvalidArgument(f"metric {request.metric} is not supported; use METRIC_COSINE")
        validate_space_id(request.space_id)
        collection, created = self.store.create(
            request.name,
            request.space_id,
            request.dim,
            params_from_pb(request.hnsw, self.store.default_params),
            exist_ok=request.exist_ok,
            lexical=lexical_from_pb(request.lexical),
        )
        return pb.CreateCollectionResponse(collection=self._collection_pb(collection), created=created)

    @replica_read
    def GetCollection(self, request: pb.GetCollectionRequest, context: grpc.ServicerContext):
        return pb.GetCollectionResponse(collection=self._collection_pb(self.store.get(request.name)))

    @replica_read
    def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext):
        page_size = page_size_of(request.page_size)
        after = (self.page_tokens.read(LIST_COLLECTIONS, request.page_token)
                 if request.page_token else request.start_after)
        collections, more = self.store.list_page(page_size, after)
        token = self.page_tokens.issue(LIST_COLLECTIONS, collections[-1].name) if more and collections else ""
        return pb.ListCollectionsResponse(
            collections=[self._collection_pb(c) for c in collections], next_page_token=token,
            shard=self._shard_pb(),
        )

    @replicated_write
    def DeleteCollection(self, request: pb.DeleteCollectionRequest, context: grpc.ServicerContext):
        self.store.delete(request.name)
        return pb.DeleteCollectionResponse(shard=self._shard_pb())

    @replicated_write
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext):
        serving = self.store.get(request.collection)
        items = request.items
        if not items:
            raise InvalidArgument("items: at least one item is required", reason="EMPTY_BATCH")
        if len(items) > self.settings.max_items_per_upsert:
            raise InvalidArgument(
                f"items: {len(items)} items exceed the limit of {self.settings.max_items_per_upsert}"
            )
        ids = [item.id for item in items]
        validate_ids(ids, what="items")  # a malformed id is INVALID_ARGUMENT, not WRONG_SHARD
        self.shard.check_owns(ids, what="items")
        if not serving.dense:
            return self._upsert_lexical_only(request, ids)
        # The versions written are the store's to pick (by space); their dimension is
        # checked there. Here: one dimension for the whole request.
        dim = items[0].vector.dim or serving.dim
        vectors = np.empty((len(items), dim), dtype=np.float32)
        for position, item in enumerate(items):
            if item.vector.dim != dim:
                raise InvalidArgument(
                    f"items[{position}]: vector has dimension {item.vector.dim}, "
                    f"items[0] has {dim}",
                    reason="DIMENSION_MISMATCH",
                )
            vectors[position] = vector_from_pb(item.vector, what=f"items[{position}].vector")
        metadata = [struct_to_dict(item.metadata) for item in items]
        for position, values in enumerate(metadata):
            check_metadata(values, self.settings.metadata_limits, what=f"items[{position}].metadata")
        texts = [item.text for item in items]  # the store checks their size
        upserted = self.store.upsert(
            request.collection, ids, vectors, metadata, request.space_id,
            request.versions_fingerprint, texts if any(texts) else None,
        )
        return pb.UpsertResponse(upserted_count=upserted, shard=self._shard_pb())

    def _upsert_lexical_only(self, request: pb.UpsertRequest, ids: list[str]) -> pb.UpsertResponse:
        """Items of a lexical-only collection: text (required, checked by the collection)
        and metadata, no vector."""
        for position, item in enumerate(request.items):
            if item.vector.dim or item.vector.data:  # an empty Vector message is no vector
                raise InvalidArgument(
                    f"items[{position}]: collection {request.collection!r} is lexical-only; "
                    "send text without a vector",
                    reason="VECTOR_NOT_EXPECTED",
                )
        metadata = [struct_to_dict(item.metadata) for item in request.items]
        for position, values in enumerate(metadata):
            check_metadata(values, self.settings.metadata_limits, what=f"items[{position}].metadata")
        upserted = self.store.upsert(
            request.collection, ids, None, metadata, request.space_id,
            request.versions_fingerprint, [item.text for item in request.items],
        )
        return pb.UpsertResponse(upserted_count=upserted, shard=self._shard_pb())

    @replicated_write
    def DeleteItems(self, request: pb.DeleteItemsRequest, context: grpc.ServicerContext):
        self.store.get(request.collection)
        if not request.ids:
            raise InvalidArgument("ids: at least one id is required", reason="EMPTY_BATCH")
        validate_ids(request.ids, what="ids", unique=False)
        deleted = self.store.delete_items(request.collection, list(request.ids))
        return pb.DeleteItemsResponse(deleted_count=deleted, shard=self._shard_pb())

    def _searchable(self, request) -> HnswCollection:
        """Checks shared by Search and SearchBatch; returns the collection."""
        validate_top_k(request.top_k, self.settings.max_top_k)
        if request.ef > self.settings.max_ef:
            raise InvalidArgument(
                f"ef must be at most {self.settings.max_ef}, got {request.ef}",
                reason="EF_OUT_OF_RANGE",
            )
        collection = self.store.get(request.collection, request.version)
        check_space(collection, request.space_id, what="query vector")
        return collection

    def _filter(self, request) -> dict:
        """The request's metadata filter, within the bounds of metadata itself and in the
        filter grammar (common/filters.py)."""
        metadata_filter = struct_to_dict(request.filter)
        check_metadata(metadata_filter, self.settings.metadata_limits, what="filter", kind="FILTER")
        check_filter(metadata_filter)
        return metadata_filter

    def _fitting(self, response: ResponseT, advice: str) -> ResponseT:
        """The response, once it is known to fit in one message."""
        check_answer_size(response.ByteSize(), self.settings.max_message_bytes, what=advice)
        return response

    def _query(self, collection: HnswCollection, vector, what: str) -> np.ndarray:
        collection.require_dense()  # before the dimension: 0 would only say "mismatch"
        if vector.dim != collection.dim:
            raise InvalidArgument(
                f"{what}: vector has dimension {vector.dim}, "
                f"collection {collection.name!r} has {collection.dim}",
                reason="DIMENSION_MISMATCH",
            )
        return vector_from_pb(vector, what=what)

    def _query_matrix(self, collection: HnswCollection, batch: types_pb2.VectorBatch) -> np.ndarray:
        collection.require_dense()
        if batch.dim != collection.dim:
            raise InvalidArgument(
                f"query_batch: vectors have dimension {batch.dim}, "
                f"collection {collection.name!r} has {collection.dim}",
                reason="DIMENSION_MISMATCH",
            )
        return matrix_from_pb(batch, what="query_batch")

    @staticmethod
    def _hits_pb(hits: list[SearchHit], size: AnswerSize) -> list[pb.Hit]:
        # No Struct for items without metadata: it is most of a hit's encoding cost.
        built = [
            pb.Hit(id=h.id, score=h.score, metadata=dict_to_struct(h.metadata) if h.metadata else None)
            for h in hits
        ]
        size.add(sum(hit.ByteSize() + FRAMING_BYTES for hit in built))
        return built

    @staticmethod
    def _packed_pb(columns: HitColumns, size: AnswerSize) -> pb.PackedHits:
        # JSON (C-encoded) rather than a Struct built in Python per hit.
        metadata_json = [
            json.dumps(m, ensure_ascii=False, separators=(",", ":")) if m else ""
            for m in columns.metadata
        ]
        # Counted before the message is built: one query's hits are the most built
        # beyond the limit before the answer is refused.
        size.add(
            sum(len(item_id.encode()) for item_id in columns.ids)
            + sum(len(text.encode()) for text in metadata_json)
            + len(columns.ids) * PACKED_HIT_OVERHEAD_BYTES
        )
        return pb.PackedHits(
            ids=columns.ids,
            scores=columns.scores.astype(FLOAT32_LE).tobytes(),
            metadata_json=metadata_json,
        )

    def _search(self, collection: HnswCollection, queries: np.ndarray | None,
                texts: list[str] | None, metadata_filter: dict, request,
                context: grpc.ServicerContext) -> tuple[list[HitColumns], list[HitColumns]]:
        """The collection's search under the call's interrupt and the CPU budget."""
        return collection.search_columns(
            queries, texts, request.top_k, request.ef, metadata_filter, request.exact,
            interrupt=interrupt_of(context), max_cpu_s=self.settings.max_search_cpu_s,
        )

    @replica_read
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext):
        """A query vector (hits), a text (lexical_hits), or both in one call: each
        retriever answers on its own, with the same top_k and filter."""
        dense = request.HasField("query")
        if not dense and not request.text:
            raise InvalidArgument("give a query vector, a text, or both", reason="MISSING_QUERY")
        collection = self._searchable(request)
        metadata_filter = self._filter(request)
        query = self._query(collection, request.query, "query")[None, :] if dense else None
        hits, lexical_hits = self._search(
            collection, query, [request.text] if request.text else None, metadata_filter,
            request, context,
        )
        with self.settings.answer_size("lower top_k", self.answers) as size:
            response = pb.SearchResponse(
                space_id=collection.space_id, version=collection.version, shard=self._shard_pb()
            )
            if request.packed:
                if hits:
                    response.packed_hits.CopyFrom(self._packed_pb(hits[0], size))
                if lexical_hits:
                    response.packed_lexical_hits.CopyFrom(self._packed_pb(lexical_hits[0], size))
            else:
                response.hits.extend(self._hits_pb(hits[0].hits(), size) if hits else [])
                response.lexical_hits.extend(
                    self._hits_pb(lexical_hits[0].hits(), size) if lexical_hits else []
                )
            return self._fitting(response, "lower top_k")

    @replica_read
    def SearchBatch(self, request: pb.SearchBatchRequest, context: grpc.ServicerContext):
        """Query vectors, texts, or both paired by position (texts: none, one per vector,
        or a lexical-only batch without vectors)."""
        collection = self._searchable(request)
        matrix = request.HasField("query_batch")
        if matrix and request.queries:
            raise InvalidArgument(
                "set queries or query_batch, not both", reason="BATCH_MISMATCH"
            )
        vectors = request.query_batch.count if matrix else len(request.queries)
        texts = len(request.texts)
        if not vectors and not texts:
            raise InvalidArgument("queries: at least one query is required", reason="EMPTY_BATCH")
        if vectors and texts and texts != vectors:
            raise InvalidArgument(
                f"texts: {texts} for {vectors} query vectors; send none, one per query "
                "vector, or texts without query vectors",
                reason="BATCH_MISMATCH",
            )
        size = max(vectors, texts)
        if size > self.settings.max_queries_per_batch:
            raise InvalidArgument(
                f"queries: {size} exceed the limit of {self.settings.max_queries_per_batch}",
                reason="BATCH_TOO_LARGE",
            )
        metadata_filter = self._filter(request)
        if matrix:
            queries = self._query_matrix(collection, request.query_batch) if vectors else None
        else:
            queries = np.stack([
                self._query(collection, q, f"queries[{i}]") for i, q in enumerate(request.queries)
            ]) if vectors else None
        results, lexical = self._search(
            collection, queries, list(request.texts) if texts else None, metadata_filter,
            request, context,
        )
        none = HitColumns.of([])
        results = results or [none] * size
        lexical = lexical or [none] * size
        advice = "send fewer queries per batch or lower top_k"
        with self.settings.answer_size(advice, self.answers) as answer:
            if request.packed:
                answers = [
                    pb.QueryHits(
                        packed_hits=self._packed_pb(hits, answer) if vectors else None,
                        packed_lexical_hits=self._packed_pb(lexical_hits, answer) if texts else None,
                    )
                    for hits, lexical_hits in zip(results, lexical)
                ]
            else:
                answers = [
                    pb.QueryHits(hits=self._hits_pb(hits.hits(), answer),
                                 lexical_hits=self._hits_pb(lexical_hits.hits(), answer))
                    for hits, lexical_hits in zip(results, lexical)
                ]
            response = pb.SearchBatchResponse(
                results=answers,
                space_id=collection.space_id,
                version=collection.version,
                shard=self._shard_pb(),
            )
            return self._fitting(response, advice)

    @replica_read
    def GetItems(self, request: pb.GetItemsRequest, context: grpc.ServicerContext):
        collection = self.store.get(request.collection)
        if not request.ids:
            raise InvalidArgument("ids: at least one id is required", reason="EMPTY_BATCH")
        if len(request.ids) > self.settings.max_items_per_upsert:
            raise InvalidArgument(f"ids: at most {self.settings.max_items_per_upsert} per call")
        validate_ids(request.ids, what="ids", unique=False)
        items = collection.get(list(request.ids))
        found = {item.id for item in items}
        advice = "ask for fewer ids per call"
        with self.settings.answer_size(advice, self.answers) as size:
            built = []
            for item in items:
                # No vector for an item of a lexical-only collection: it has none.
                message = pb.Item(
                    id=item.id, vector=vector_to_pb(item.vector) if item.vector.size else None,
                    metadata=dict_to_struct(item.metadata), text=item.text,
                )
                size.add(message.ByteSize() + FRAMING_BYTES)
                built.append(message)
            response = pb.GetItemsResponse(
                items=built, missing_ids=[i for i in request.ids if i not in found]
            )
            return self._fitting(response, advice)

    @replica_read
    def ListItems(self, request: pb.ListItemsRequest, context: grpc.ServicerContext):
        collection = self.store.get(request.collection)
        scope = f"ListItems/{request.collection}"
        page_size = page_size_of(request.page_size)
        after = self.page_tokens.read(scope, request.page_token)
        ids, more = collection.list_ids(after, page_size)
        metadata = {item.id: item.metadata for item in collection.get(ids)}
        with self.settings.answer_size("lower page_size", self.answers) as size:
            listed = [
                pb.ListedItem(id=i, metadata=dict_to_struct(metadata[i])) for i in ids if i in metadata
            ]
            size.add(sum(item.ByteSize() + FRAMING_BYTES for item in listed))
            response = pb.ListItemsResponse(
                items=listed,
                next_page_token=self.page_tokens.issue(scope, ids[-1]) if more and ids else "",
            )
            return self._fitting(response, "lower page_size")

    # -- bundles and versions --------------------------------------------------------
    @replicated_write
    def LoadBundle(self, request: pb.LoadBundleRequest, context: grpc.ServicerContext):
        collection, manifest = self.store.load_bundle(
            request.collection, request.version, request.path, request.upload_id
        )
        return pb.LoadBundleResponse(
            collection=self._collection_pb(self.store.get(request.collection)),
            item_count=int(manifest["count"]),
            space_id=collection.space_id,
        )

    @replicated_write
    def ActivateVersion(self, request: pb.ActivateVersionRequest, context: grpc.ServicerContext):
        serving, previous = self.store.activate(request.collection, request.version)
        return pb.ActivateVersionResponse(
            collection=self._collection_pb(serving), previous_version=previous
        )

    @replicated_write
    def RollbackVersion(self, request: pb.RollbackVersionRequest, context: grpc.ServicerContext):
        serving, rolled_back = self.store.rollback(request.collection)
        return pb.RollbackVersionResponse(
            collection=self._collection_pb(serving), rolled_back_version=rolled_back
        )

    @replicated_write
    def UploadBundle(self, request_iterator: Iterator[pb.UploadBundleRequest], context: grpc.ServicerContext):
        header, chunks = split_header(request_iterator, "an upload")
        with self.store.begin_upload(header.collection, header.version, header.manifest) as upload:
            write_chunks(upload, chunks)
            staged = self.store.finish_upload(upload)
        return pb.UploadBundleResponse(
            upload_id=staged.upload_id,
            item_count=staged.item_count,
            space_id=staged.space_id,
            digest=staged.digest,
            shard=self._shard_pb(),
        )

    @replicated_write
    def BeginVersion(self, request: pb.BeginVersionRequest, context: grpc.ServicerContext):
        if request.space_id:
            validate_space_id(request.space_id)
        _, created = self.store.begin_version(
            request.collection, request.version, request.space_id, request.dim
        )
        return pb.BeginVersionResponse(
            collection=self._collection_pb(self.store.get(request.collection)), created=created
        )

    @replicated_write
    def SetCandidate(self, request: pb.SetCandidateRequest, context: grpc.ServicerContext):
        serving = self.store.set_candidate(request.collection, candidate_from_pb(request.candidate))
        return pb.SetCandidateResponse(collection=self._collection_pb(serving))

    @replicated_write
    def DeleteVersion(self, request: pb.DeleteVersionRequest, context: grpc.ServicerContext):
        serving = self.store.delete_version(request.collection, request.version)
        return pb.DeleteVersionResponse(collection=self._collection_pb(serving))


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def pin_malloc_mmap_threshold(threshold: int = 128 * 1024) -> None:
    """Large temporaries (an upsert's vectors, normalised copies) go to mmap and back to
    the OS when freed. glibc otherwise raises the threshold after the first such free and
    keeps later ones on its heap: measured, +7 MiB of RSS per 20k x 384 vectors upserted,
    the difference between 1.1x and 1.3x of the index's own size."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def main(argv: list[str] | None = None) -> int:
    pin_malloc_mmap_threshold()
    return run_service(IndexSettings, IndexService, argv)
