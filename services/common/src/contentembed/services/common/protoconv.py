"""Conversions between protobuf messages and plain Python/numpy, used only at the
gRPC edges so that domain code sees dicts and arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import struct_pb2

from contentembed.common.v1 import types_pb2
from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.vectors import matrix_from_bytes, to_bytes, vector_from_bytes

ACCEPTED_DTYPES = (types_pb2.DTYPE_UNSPECIFIED, types_pb2.DTYPE_FLOAT32)


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The Struct as plain Python. Unlike json_format.MessageToDict this keeps NaN and
    infinities (which it refuses with a ValueError, an INTERNAL error to the caller), so
    that metadata.check_metadata can refuse them as the caller's mistake."""
    return {key: _value_to_python(value) for key, value in struct.fields.items()}


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":  # an unset Value reads as null, as in JSON
        return None
    return getattr(value, kind)


def dict_to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if values:
        struct.update(values)
    return struct


def _check_dtype(dtype: int, what: str) -> None:
    if dtype not in ACCEPTED_DTYPES:
        raise InvalidArgument(f"{what}: unsupported dtype {dtype}; v1 carries float32 only")


def vector_from_pb(vector: types_pb2.Vector, *, what: str = "vector") -> np.ndarray:
    _check_dtype(vector.dtype, what)
    return vector_from_bytes(vector.data, vector.dim, what=what)


def vector_to_pb(vector: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(data=to_bytes(vector), dim=int(vector.shape[-1]), dtype=types_pb2.DTYPE_FLOAT32)


def matrix_from_pb(batch: types_pb2.VectorBatch, *, what: str = "vectors") -> np.ndarray:
    _check_dtype(batch.dtype, what)
    return matrix_from_bytes(batch.data, batch.count, batch.dim, what=what)


def matrix_to_pb(matrix: np.ndarray) -> types_pb2.VectorBatch:
    count, dim = matrix.shape
    return types_pb2.VectorBatch(
        data=to_bytes(matrix), count=count, dim=dim, dtype=types_pb2.DTYPE_FLOAT32
    )
