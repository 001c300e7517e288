from contentembed.common.v1 import types_pb2 as _types_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PartialResultPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTIAL_RESULT_POLICY_UNSPECIFIED: _ClassVar[PartialResultPolicy]
    PARTIAL_RESULT_POLICY_FAIL: _ClassVar[PartialResultPolicy]
    PARTIAL_RESULT_POLICY_ALLOW: _ClassVar[PartialResultPolicy]

class RetrievalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_MODE_UNSPECIFIED: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_DENSE: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_LEXICAL: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_HYBRID: _ClassVar[RetrievalMode]

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]
    FUSION_METHOD_MINMAX: _ClassVar[FusionMethod]
PARTIAL_RESULT_POLICY_UNSPECIFIED: PartialResultPolicy
PARTIAL_RESULT_POLICY_FAIL: PartialResultPolicy
PARTIAL_RESULT_POLICY_ALLOW: PartialResultPolicy
RETRIEVAL_MODE_UNSPECIFIED: RetrievalMode
RETRIEVAL_MODE_DENSE: RetrievalMode
RETRIEVAL_MODE_LEXICAL: RetrievalMode
RETRIEVAL_MODE_HYBRID: RetrievalMode
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_RRF: FusionMethod
FUSION_METHOD_MINMAX: FusionMethod

class RetrievalOptions(_message.Message):
    __slots__ = ("mode", "fusion", "rrf_k", "alpha", "depth")
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    mode: RetrievalMode
    fusion: FusionMethod
    rrf_k: int
    alpha: float
    depth: int
    def __init__(self, mode: _Optional[_Union[RetrievalMode, str]] = ..., fusion: _Optional[_Union[FusionMethod, str]] = ..., rrf_k: _Optional[int] = ..., alpha: _Optional[float] = ..., depth: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "text", "image", "item_id", "vector", "top_k", "partial_result_policy", "also_collections", "version", "exact", "ef", "offset", "score_threshold", "filter", "vector_space_id", "metadata_fields", "omit_metadata", "retrieval")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_RESULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    ALSO_COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELDS_FIELD_NUMBER: _ClassVar[int]
    OMIT_METADATA_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    text: str
    image: _types_pb2.Image
    item_id: str
    vector: _types_pb2.Vector
    top_k: int
    partial_result_policy: PartialResultPolicy
    also_collections: _containers.RepeatedScalarFieldContainer[str]
    version: str
    exact: bool
    ef: int
    offset: int
    score_threshold: float
    filter: _struct_pb2.Struct
    vector_space_id: str
    metadata_fields: _containers.RepeatedScalarFieldContainer[str]
    omit_metadata: bool
    retrieval: RetrievalOptions
    def __init__(self, collection: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[_Union[_types_pb2.Image, _Mapping]] = ..., item_id: _Optional[str] = ..., vector: _Optional[_Union[_types_pb2.Vector, _Mapping]] = ..., top_k: _Optional[int] = ..., partial_result_policy: _Optional[_Union[PartialResultPolicy, str]] = ..., also_collections: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., exact: _Optional[bool] = ..., ef: _Optional[int] = ..., offset: _Optional[int] = ..., score_threshold: _Optional[float] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector_space_id: _Optional[str] = ..., metadata_fields: _Optional[_Iterable[str]] = ..., omit_metadata: _Optional[bool] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "metadata", "shard_index", "collection", "dense_score", "lexical_score", "dense_rank", "lexical_rank")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    DENSE_RANK_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_RANK_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    metadata: _struct_pb2.Struct
    shard_index: int
    collection: str
    dense_score: float
    lexical_score: float
    dense_rank: int
    lexical_rank: int
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., shard_index: _Optional[int] = ..., collection: _Optional[str] = ..., dense_score: _Optional[float] = ..., lexical_score: _Optional[float] = ..., dense_rank: _Optional[int] = ..., lexical_rank: _Optional[int] = ...) -> None: ...

class ShardResult(_message.Message):
    __slots__ = ("shard_index", "ok", "error", "hit_count", "latency_ms")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HIT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    ok: bool
    error: str
    hit_count: int
    latency_ms: float
    def __init__(self, shard_index: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., hit_count: _Optional[int] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class LatencyBreakdown(_message.Message):
    __slots__ = ("encode_ms", "search_ms", "merge_ms", "total_ms")
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    MERGE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    encode_ms: float
    search_ms: float
    merge_ms: float
    total_ms: float
    def __init__(self, encode_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., merge_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "space_id", "version", "partial", "shards", "latency", "query_truncated", "cache_hit", "fused", "versions", "space_ids", "mode", "fusion")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    QUERY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SPACE_IDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    space_id: str
    version: str
    partial: bool
    shards: _containers.RepeatedCompositeFieldContainer[ShardResult]
    latency: LatencyBreakdown
    query_truncated: bool
    cache_hit: bool
    fused: bool
    versions: _containers.RepeatedScalarFieldContainer[str]
    space_ids: _containers.RepeatedScalarFieldContainer[str]
    mode: RetrievalMode
    fusion: FusionMethod
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., space_id: _Optional[str] = ..., version: _Optional[str] = ..., partial: _Optional[bool] = ..., shards: _Optional[_Iterable[_Union[ShardResult, _Mapping]]] = ..., latency: _Optional[_Union[LatencyBreakdown, _Mapping]] = ..., query_truncated: _Optional[bool] = ..., cache_hit: _Optional[bool] = ..., fused: _Optional[bool] = ..., versions: _Optional[_Iterable[str]] = ..., space_ids: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ..., fusion: _Optional[_Union[FusionMethod, str]] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class StoredDocument(_message.Message):
    __slots__ = ("id", "metadata", "vector", "shard_index", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    metadata: _struct_pb2.Struct
    vector: _types_pb2.Vector
    shard_index: int
    text: str
    def __init__(self, id: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Union[_types_pb2.Vector, _Mapping]] = ..., shard_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "missing_ids")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[StoredDocument]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents: _Optional[_Iterable[_Union[StoredDocument, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("collection", "texts", "top_k", "partial_result_policy", "ef", "filter", "retrieval")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_RESULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    partial_result_policy: PartialResultPolicy
    ef: int
    filter: _struct_pb2.Struct
    retrieval: RetrievalOptions
    def __init__(self, collection: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., partial_result_policy: _Optional[_Union[PartialResultPolicy, str]] = ..., ef: _Optional[int] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...
