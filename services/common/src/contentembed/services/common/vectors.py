"""float32 little-endian bytes <-> numpy, with the checks hnswlib does not make."""

from __future__ import annotations

import numpy as np

from contentembed.services.common.errors import InvalidArgument

FLOAT32_LE = np.dtype("<f4")


def matrix_from_bytes(data: bytes, count: int, dim: int, *, what: str = "vectors") -> np.ndarray:
    """Reads a row-major count x dim float32 matrix; rejects size mismatches and NaN/inf."""
    if dim <= 0:
        raise InvalidArgument(f"{what}: dim must be positive, got {dim}")
    expected = count * dim * FLOAT32_LE.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"{what}: expected {expected} bytes ({count} x {dim} float32), got {len(data)}",
            reason="VECTOR_SIZE_MISMATCH",
        )
    matrix = np.frombuffer(data, dtype=FLOAT32_LE).reshape(count, dim)
    if not np.isfinite(matrix).all():
        bad_row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise InvalidArgument(
            f"{what}[{bad_row}]: contains NaN or infinity", reason="VECTOR_NOT_FINITE"
        )
    return matrix


def vector_from_bytes(data: bytes, dim: int, *, what: str = "vector") -> np.ndarray:
    return matrix_from_bytes(data, 1, dim, what=what)[0]


def to_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=FLOAT32_LE).tobytes()


def l2_normalize(matrix: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, eps)).astype(np.float32, copy=False)


def reject_zero_rows(matrix: np.ndarray, *, what: str = "vectors") -> None:
    """Cosine similarity is undefined for a zero vector."""
    norms = np.linalg.norm(matrix, axis=-1)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise InvalidArgument(
            f"{what}[{int(zero[0])}]: zero vector has no direction", reason="VECTOR_ZERO"
        )
