from contentembed.common.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedInput(_message.Message):
    __slots__ = ("text", "image")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: _types_pb2.Image
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[_types_pb2.Image, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[EmbedInput]
    def __init__(self, inputs: _Optional[_Iterable[_Union[EmbedInput, _Mapping]]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("vectors", "space_id", "truncated")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SPACE_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    vectors: _types_pb2.VectorBatch
    space_id: str
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, vectors: _Optional[_Union[_types_pb2.VectorBatch, _Mapping]] = ..., space_id: _Optional[str] = ..., truncated: _Optional[_Iterable[bool]] = ...) -> None: ...

class GetEncoderInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetEncoderInfoResponse(_message.Message):
    __slots__ = ("modality", "space", "backend", "max_batch_size", "max_input_bytes", "max_input_tokens")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    modality: _types_pb2.Modality
    space: _types_pb2.Space
    backend: str
    max_batch_size: int
    max_input_bytes: int
    max_input_tokens: int
    def __init__(self, modality: _Optional[_Union[_types_pb2.Modality, str]] = ..., space: _Optional[_Union[_types_pb2.Space, _Mapping]] = ..., backend: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_input_bytes: _Optional[int] = ..., max_input_tokens: _Optional[int] = ...) -> None: ...
