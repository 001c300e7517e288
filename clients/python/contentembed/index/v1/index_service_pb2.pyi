from contentembed.common.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_COSINE: _ClassVar[Metric]
METRIC_UNSPECIFIED: Metric
METRIC_COSINE: Metric

class HnswParams(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("shard_index", "shard_count", "max_top_k", "max_queries_per_batch", "max_ids_per_call", "max_ef", "max_message_bytes", "replica")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_QUERIES_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_IDS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    MAX_EF_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    shard_count: int
    max_top_k: int
    max_queries_per_batch: int
    max_ids_per_call: int
    max_ef: int
    max_message_bytes: int
    replica: ReplicaInfo
    def __init__(self, shard_index: _Optional[int] = ..., shard_count: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_queries_per_batch: _Optional[int] = ..., max_ids_per_call: _Optional[int] = ..., max_ef: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., replica: _Optional[_Union[ReplicaInfo, _Mapping]] = ...) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("replica_id", "primary", "term", "in_sync", "in_sync_replicas", "primary_id")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_ID_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    primary: bool
    term: int
    in_sync: bool
    in_sync_replicas: _containers.RepeatedScalarFieldContainer[str]
    primary_id: str
    def __init__(self, replica_id: _Optional[str] = ..., primary: _Optional[bool] = ..., term: _Optional[int] = ..., in_sync: _Optional[bool] = ..., in_sync_replicas: _Optional[_Iterable[str]] = ..., primary_id: _Optional[str] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "space_id", "dim", "metric", "hnsw", "item_count", "version", "shard", "versions", "version_spaces", "pending_versions", "versions_fingerprint", "version_digests", "lexical", "candidate")
    class VersionSpacesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class VersionDigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_SPACES_FIELD_NUMBER: _ClassVar[int]
    PENDING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    space_id: str
    dim: int
    metric: Metric
    hnsw: HnswParams
    item_count: int
    version: str
    shard: ShardInfo
    versions: _containers.RepeatedScalarFieldContainer[str]
    version_spaces: _containers.ScalarMap[str, str]
    pending_versions: _containers.RepeatedScalarFieldContainer[str]
    versions_fingerprint: str
    version_digests: _containers.ScalarMap[str, str]
    lexical: _types_pb2.LexicalConfig
    candidate: CandidateState
    def __init__(self, name: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., item_count: _Optional[int] = ..., version: _Optional[str] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ..., versions: _Optional[_Iterable[str]] = ..., version_spaces: _Optional[_Mapping[str, str]] = ..., pending_versions: _Optional[_Iterable[str]] = ..., versions_fingerprint: _Optional[str] = ..., version_digests: _Optional[_Mapping[str, str]] = ..., lexical: _Optional[_Union[_types_pb2.LexicalConfig, _Mapping]] = ..., candidate: _Optional[_Union[CandidateState, _Mapping]] = ...) -> None: ...

class CandidateState(_message.Message):
    __slots__ = ("version", "shadow_fraction", "canary_weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: str
    shadow_fraction: float
    canary_weight: float
    def __init__(self, version: _Optional[str] = ..., shadow_fraction: _Optional[float] = ..., canary_weight: _Optional[float] = ...) -> None: ...

class SetCandidateRequest(_message.Message):
    __slots__ = ("collection", "candidate")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    candidate: CandidateState
    def __init__(self, collection: _Optional[str] = ..., candidate: _Optional[_Union[CandidateState, _Mapping]] = ...) -> None: ...

class SetCandidateResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "space_id", "dim", "metric", "hnsw", "exist_ok", "lexical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    space_id: str
    dim: int
    metric: Metric
    hnsw: HnswParams
    exist_ok: bool
    lexical: _types_pb2.LexicalConfig
    def __init__(self, name: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., hnsw: _Optional[_Union[HnswParams, _Mapping]] = ..., exist_ok: _Optional[bool] = ..., lexical: _Optional[_Union[_types_pb2.LexicalConfig, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection", "created")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    created: bool
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "start_after")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    start_after: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., start_after: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token", "shard")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    shard: ShardInfo
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("shard",)
    SHARD_FIELD_NUMBER: _ClassVar[int]
    shard: ShardInfo
    def __init__(self, shard: _Optional[_Union[ShardInfo, _Mapping]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "vector", "metadata", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: _types_pb2.Vector
    metadata: _struct_pb2.Struct
    text: str
    def __init__(self, id: _Optional[str] = ..., vector: _Optional[_Union[_types_pb2.Vector, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "items", "space_id", "versions_fingerprint")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    space_id: str
    versions_fingerprint: str
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., space_id: _Optional[str] = ..., versions_fingerprint: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted_count", "shard")
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    shard: ShardInfo
    def __init__(self, upserted_count: _Optional[int] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted_count", "shard")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    shard: ShardInfo
    def __init__(self, deleted_count: _Optional[int] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_k", "ef", "space_id", "exact", "filter", "version", "text", "packed")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: _types_pb2.Vector
    top_k: int
    ef: int
    space_id: str
    exact: bool
    filter: _struct_pb2.Struct
    version: str
    text: str
    packed: bool
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[_Union[_types_pb2.Vector, _Mapping]] = ..., top_k: _Optional[int] = ..., ef: _Optional[int] = ..., space_id: _Optional[str] = ..., exact: _Optional[bool] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[str] = ..., text: _Optional[str] = ..., packed: _Optional[bool] = ...) -> None: ...

class PackedHits(_message.Message):
    __slots__ = ("ids", "scores", "metadata_json")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    scores: bytes
    metadata_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., scores: _Optional[bytes] = ..., metadata_json: _Optional[_Iterable[str]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "space_id", "version", "shard", "lexical_hits", "packed_hits", "packed_lexical_hits")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_HITS_FIELD_NUMBER: _ClassVar[int]
    PACKED_HITS_FIELD_NUMBER: _ClassVar[int]
    PACKED_LEXICAL_HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    space_id: str
    version: str
    shard: ShardInfo
    lexical_hits: _containers.RepeatedCompositeFieldContainer[Hit]
    packed_hits: PackedHits
    packed_lexical_hits: PackedHits
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., space_id: _Optional[str] = ..., version: _Optional[str] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ..., lexical_hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., packed_hits: _Optional[_Union[PackedHits, _Mapping]] = ..., packed_lexical_hits: _Optional[_Union[PackedHits, _Mapping]] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("collection", "queries", "top_k", "ef", "space_id", "exact", "filter", "version", "texts", "packed", "query_batch")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    QUERY_BATCH_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[_types_pb2.Vector]
    top_k: int
    ef: int
    space_id: str
    exact: bool
    filter: _struct_pb2.Struct
    version: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    packed: bool
    query_batch: _types_pb2.VectorBatch
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[_types_pb2.Vector, _Mapping]]] = ..., top_k: _Optional[int] = ..., ef: _Optional[int] = ..., space_id: _Optional[str] = ..., exact: _Optional[bool] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., packed: _Optional[bool] = ..., query_batch: _Optional[_Union[_types_pb2.VectorBatch, _Mapping]] = ...) -> None: ...

class QueryHits(_message.Message):
    __slots__ = ("hits", "lexical_hits", "packed_hits", "packed_lexical_hits")
    HITS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_HITS_FIELD_NUMBER: _ClassVar[int]
    PACKED_HITS_FIELD_NUMBER: _ClassVar[int]
    PACKED_LEXICAL_HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    lexical_hits: _containers.RepeatedCompositeFieldContainer[Hit]
    packed_hits: PackedHits
    packed_lexical_hits: PackedHits
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., lexical_hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., packed_hits: _Optional[_Union[PackedHits, _Mapping]] = ..., packed_lexical_hits: _Optional[_Union[PackedHits, _Mapping]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results", "space_id", "version", "shard")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryHits]
    space_id: str
    version: str
    shard: ShardInfo
    def __init__(self, results: _Optional[_Iterable[_Union[QueryHits, _Mapping]]] = ..., space_id: _Optional[str] = ..., version: _Optional[str] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items", "missing_ids")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListedItem(_message.Message):
    __slots__ = ("id", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ListedItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[ListedItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LoadBundleRequest(_message.Message):
    __slots__ = ("collection", "version", "path", "upload_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    path: str
    upload_id: str
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., path: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class LoadBundleResponse(_message.Message):
    __slots__ = ("collection", "item_count", "space_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    item_count: int
    space_id: str
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., item_count: _Optional[int] = ..., space_id: _Optional[str] = ...) -> None: ...

class ActivateVersionRequest(_message.Message):
    __slots__ = ("collection", "version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ActivateVersionResponse(_message.Message):
    __slots__ = ("collection", "previous_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    previous_version: str
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., previous_version: _Optional[str] = ...) -> None: ...

class RollbackVersionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class RollbackVersionResponse(_message.Message):
    __slots__ = ("collection", "rolled_back_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    rolled_back_version: str
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., rolled_back_version: _Optional[str] = ...) -> None: ...

class UploadBundleRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: FileChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("collection", "version", "manifest")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    manifest: bytes
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("file", "offset", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadBundleResponse(_message.Message):
    __slots__ = ("upload_id", "item_count", "space_id", "digest", "shard")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    item_count: int
    space_id: str
    digest: str
    shard: ShardInfo
    def __init__(self, upload_id: _Optional[str] = ..., item_count: _Optional[int] = ..., space_id: _Optional[str] = ..., digest: _Optional[str] = ..., shard: _Optional[_Union[ShardInfo, _Mapping]] = ...) -> None: ...

class BeginVersionRequest(_message.Message):
    __slots__ = ("collection", "version", "space_id", "dim")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    space_id: str
    dim: int
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class BeginVersionResponse(_message.Message):
    __slots__ = ("collection", "created")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    created: bool
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DeleteVersionRequest(_message.Message):
    __slots__ = ("collection", "version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DeleteVersionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...
