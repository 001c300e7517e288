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


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero.

    Any finite float32 row keeps its direction: each row is first divided by its largest
    absolute value, so the sum of squares can neither overflow (3e38 squared is inf in
    float32, which would turn the row into zeros) nor underflow (1e-39 squared is 0,
    which would make a subnormal row look like a zero vector).
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    # max/min instead of abs(): no full-size temporary just to find the peak.
    peak = np.maximum(matrix.max(axis=-1, keepdims=True), -matrix.min(axis=-1, keepdims=True))
    scaled = matrix / np.where(peak > 0, peak, np.float32(1))  # every value now in [-1, 1]
    norms = np.linalg.norm(scaled, axis=-1, keepdims=True)  # >= 1 wherever the row is not zero
    scaled /= np.where(norms > 0, norms, np.float32(1))
    return scaled


def reject_zero_rows(matrix: np.ndarray, *, what: str = "vectors") -> None:
    """Cosine similarity is undefined for a zero vector. Tested element-wise, not by the
    norm: a row of tiny (subnormal) values has a float32 norm of 0 but a direction."""
    zero = np.flatnonzero(~np.any(matrix != 0, axis=-1))
    if zero.size:
        raise InvalidArgument(
            f"{what}[{int(zero[0])}]: zero vector has no direction", reason="VECTOR_ZERO"
        )
