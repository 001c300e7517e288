from contentembed.common.v1 import types_pb2 as _types_pb2
from contentembed.index.v1 import index_service_pb2 as _index_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_ROLE_UNSPECIFIED: _ClassVar[ReplicaRole]
    REPLICA_ROLE_PRIMARY: _ClassVar[ReplicaRole]
    REPLICA_ROLE_FOLLOWER: _ClassVar[ReplicaRole]
REPLICA_ROLE_UNSPECIFIED: ReplicaRole
REPLICA_ROLE_PRIMARY: ReplicaRole
REPLICA_ROLE_FOLLOWER: ReplicaRole

class ReplicaVersion(_message.Message):
    __slots__ = ("collection", "version", "space_id", "dim", "hnsw", "lexical", "pending", "bundle_digest", "seq", "term", "item_count", "content_sha256")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    space_id: str
    dim: int
    hnsw: _index_service_pb2.HnswParams
    lexical: _types_pb2.LexicalConfig
    pending: bool
    bundle_digest: str
    seq: int
    term: int
    item_count: int
    content_sha256: str
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., space_id: _Optional[str] = ..., dim: _Optional[int] = ..., hnsw: _Optional[_Union[_index_service_pb2.HnswParams, _Mapping]] = ..., lexical: _Optional[_Union[_types_pb2.LexicalConfig, _Mapping]] = ..., pending: _Optional[bool] = ..., bundle_digest: _Optional[str] = ..., seq: _Optional[int] = ..., term: _Optional[int] = ..., item_count: _Optional[int] = ..., content_sha256: _Optional[str] = ...) -> None: ...

class ReplicaAlias(_message.Message):
    __slots__ = ("collection", "active", "previous", "candidate")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    active: str
    previous: str
    candidate: _index_service_pb2.CandidateState
    def __init__(self, collection: _Optional[str] = ..., active: _Optional[str] = ..., previous: _Optional[str] = ..., candidate: _Optional[_Union[_index_service_pb2.CandidateState, _Mapping]] = ...) -> None: ...

class ReplicaState(_message.Message):
    __slots__ = ("replica_id", "term", "catalog_seq", "aliases", "versions", "in_sync", "role")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    term: int
    catalog_seq: int
    aliases: _containers.RepeatedCompositeFieldContainer[ReplicaAlias]
    versions: _containers.RepeatedCompositeFieldContainer[ReplicaVersion]
    in_sync: bool
    role: ReplicaRole
    def __init__(self, replica_id: _Optional[str] = ..., term: _Optional[int] = ..., catalog_seq: _Optional[int] = ..., aliases: _Optional[_Iterable[_Union[ReplicaAlias, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[ReplicaVersion, _Mapping]]] = ..., in_sync: _Optional[bool] = ..., role: _Optional[_Union[ReplicaRole, str]] = ...) -> None: ...

class GetReplicaStateRequest(_message.Message):
    __slots__ = ("term", "digests")
    TERM_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    term: int
    digests: bool
    def __init__(self, term: _Optional[int] = ..., digests: _Optional[bool] = ...) -> None: ...

class GetReplicaStateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ReplicaState
    def __init__(self, state: _Optional[_Union[ReplicaState, _Mapping]] = ...) -> None: ...

class SyncCatalogRequest(_message.Message):
    __slots__ = ("term", "primary_id", "catalog_seq", "aliases", "versions")
    TERM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    term: int
    primary_id: str
    catalog_seq: int
    aliases: _containers.RepeatedCompositeFieldContainer[ReplicaAlias]
    versions: _containers.RepeatedCompositeFieldContainer[ReplicaVersion]
    def __init__(self, term: _Optional[int] = ..., primary_id: _Optional[str] = ..., catalog_seq: _Optional[int] = ..., aliases: _Optional[_Iterable[_Union[ReplicaAlias, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[ReplicaVersion, _Mapping]]] = ...) -> None: ...

class SyncCatalogResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ReplicaState
    def __init__(self, state: _Optional[_Union[ReplicaState, _Mapping]] = ...) -> None: ...

class ShippedRecord(_message.Message):
    __slots__ = ("collection", "version", "record")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    collection: str
    version: str
    record: bytes
    def __init__(self, collection: _Optional[str] = ..., version: _Optional[str] = ..., record: _Optional[bytes] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("term", "primary_id", "records", "in_sync")
    TERM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    term: int
    primary_id: str
    records: _containers.RepeatedCompositeFieldContainer[ShippedRecord]
    in_sync: bool
    def __init__(self, term: _Optional[int] = ..., primary_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[ShippedRecord, _Mapping]]] = ..., in_sync: _Optional[bool] = ...) -> None: ...

class ReplicateResponse(_message.Message):
    __slots__ = ("term",)
    TERM_FIELD_NUMBER: _ClassVar[int]
    term: int
    def __init__(self, term: _Optional[int] = ...) -> None: ...

class InstallSnapshotRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    chunk: _index_service_pb2.FileChunk
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., chunk: _Optional[_Union[_index_service_pb2.FileChunk, _Mapping]] = ...) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("term", "primary_id", "version", "manifest")
    TERM_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    term: int
    primary_id: str
    version: ReplicaVersion
    manifest: bytes
    def __init__(self, term: _Optional[int] = ..., primary_id: _Optional[str] = ..., version: _Optional[_Union[ReplicaVersion, _Mapping]] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class InstallSnapshotResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class TransferPrimaryRequest(_message.Message):
    __slots__ = ("successor_id",)
    SUCCESSOR_ID_FIELD_NUMBER: _ClassVar[int]
    successor_id: str
    def __init__(self, successor_id: _Optional[str] = ...) -> None: ...

class TransferPrimaryResponse(_message.Message):
    __slots__ = ("term",)
    TERM_FIELD_NUMBER: _ClassVar[int]
    term: int
    def __init__(self, term: _Optional[int] = ...) -> None: ...
