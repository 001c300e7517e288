from contentembed.common.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectionSummary(_message.Message):
    __slots__ = ("name", "space_id", "dim", "item_count", "shard_count", "version", "versions", "pending_versions", "version_spaces", "candidate_version", "serving_versions", "lexical")
    class VersionSpacesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_SPACES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    space_id: str
    dim: int
    item_count: int
    shard_count: int
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    pending_versions: _containers.RepeatedScalarFieldContainer[str]
    version_spaces: _containers.ScalarMap[str, str]
    candidate_version: str
    serving_versions: _containers.RepeatedScalarFieldContainer[str]
    lexical: _types_pb2.LexicalConfig
    def __init__(self, name: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., item_count: _Optional[int] = ..., shard_count: _Optional[int] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., pending_versions: _Optional[_Iterable[str]] = ..., version_spaces: _Optional[_Mapping[str, str]] = ..., candidate_version: _Optional[str] = ..., serving_versions: _Optional[_Iterable[str]] = ..., lexical: _Optional[_Union[_types_pb2.LexicalConfig, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "exist_ok", "space_id", "modality", "model", "lexical")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    exist_ok: bool
    space_id: str
    modality: _types_pb2.Modality
    model: str
    lexical: _types_pb2.LexicalConfig
    def __init__(self, name: _Optional[str] = ..., exist_ok: _Optional[bool] = ..., space_id: _Optional[str] = ..., modality: _Optional[_Union[_types_pb2.Modality, str]] = ..., model: _Optional[str] = ..., lexical: _Optional[_Union[_types_pb2.LexicalConfig, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection", "created")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionSummary
    created: bool
    def __init__(self, collection: _Optional[_Union[CollectionSummary, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionSummary
    def __init__(self, collection: _Optional[_Union[CollectionSummary, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionSummary]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "image", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    image: _types_pb2.Image
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[_Union[_types_pb2.Image, _Mapping]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertDocumentsRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class UpsertDocumentsResponse(_message.Message):
    __slots__ = ("upserted_count", "truncated_ids")
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_IDS_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    truncated_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, upserted_count: _Optional[int] = ..., truncated_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

class SetCandidateRequest(_message.Message):
    __slots__ = ("collection", "version", "shadow_fraction", "canary_weight")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    shadow_fraction: float
    canary_weight: float
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., shadow_fraction: _Optional[float] = ..., canary_weight: _Optional[float] = ...) -> None: ...

class SetCandidateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetShadowReportRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class GetShadowReportResponse(_message.Message):
    __slots__ = ("primary_version", "candidate_version", "candidate_space_id", "queries", "failures", "mean_overlap_at_k", "mean_rank_correlation", "mean_latency_delta_ms", "canary_queries")
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    MEAN_OVERLAP_AT_K_FIELD_NUMBER: _ClassVar[int]
    MEAN_RANK_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_DELTA_MS_FIELD_NUMBER: _ClassVar[int]
    CANARY_QUERIES_FIELD_NUMBER: _ClassVar[int]
    primary_version: str
    candidate_version: str
    candidate_space_id: str
    queries: int
    failures: int
    mean_overlap_at_k: float
    mean_rank_correlation: float
    mean_latency_delta_ms: float
    canary_queries: int
    def __init__(self, primary_version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., candidate_space_id: _Optional[str] = ..., queries: _Optional[int] = ..., failures: _Optional[int] = ..., mean_overlap_at_k: _Optional[float] = ..., mean_rank_correlation: _Optional[float] = ..., mean_latency_delta_ms: _Optional[float] = ..., canary_queries: _Optional[int] = ...) -> None: ...

class PromoteCandidateRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class PromoteCandidateResponse(_message.Message):
    __slots__ = ("previous_version", "version")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    previous_version: str
    version: str
    def __init__(self, previous_version: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class RollbackCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class RollbackCollectionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ListSpacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EncoderSpace(_message.Message):
    __slots__ = ("space", "modality", "address", "backend", "max_batch_size", "max_input_bytes")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    space: _types_pb2.Space
    modality: _types_pb2.Modality
    address: str
    backend: str
    max_batch_size: int
    max_input_bytes: int
    def __init__(self, space: _Optional[_Union[_types_pb2.Space, _Mapping]] = ..., modality: _Optional[_Union[_types_pb2.Modality, str]] = ..., address: _Optional[str] = ..., backend: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_input_bytes: _Optional[int] = ...) -> None: ...

class ListSpacesResponse(_message.Message):
    __slots__ = ("encoders",)
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    encoders: _containers.RepeatedCompositeFieldContainer[EncoderSpace]
    def __init__(self, encoders: _Optional[_Iterable[_Union[EncoderSpace, _Mapping]]] = ...) -> None: ...

class ListShardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardEndpoint(_message.Message):
    __slots__ = ("shard_index", "address")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    address: str
    def __init__(self, shard_index: _Optional[int] = ..., address: _Optional[str] = ...) -> None: ...

class ListShardsResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardEndpoint]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardEndpoint, _Mapping]]] = ...) -> None: ...

class BeginVersionRequest(_message.Message):
    __slots__ = ("collection", "version", "space_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    space_id: str
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., space_id: _Optional[str] = ...) -> None: ...

class BeginVersionResponse(_message.Message):
    __slots__ = ("collection", "created")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionSummary
    created: bool
    def __init__(self, collection: _Optional[_Union[CollectionSummary, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

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
    collection: CollectionSummary
    def __init__(self, collection: _Optional[_Union[CollectionSummary, _Mapping]] = ...) -> None: ...
