from __future__ import annotations

import numpy as np
import pytest

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.vectors import l2_normalize, reject_zero_rows

FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "row",
    [
        [3e38] * 8,  # the float32 sum of squares overflows to inf
        [FLOAT32_MAX, -FLOAT32_MAX, FLOAT32_MAX, 0, 0, 0, 0, 1],
        [1e-39] * 8,  # subnormal: the float32 sum of squares underflows to 0
        [1e-45, 0, 0, 0, 0, 0, 0, 0],  # the smallest float32 there is
        [1, 2, 3, 4, 5, 6, 7, 8],
    ],
)
def test_any_finite_row_keeps_its_direction(row) -> None:
    matrix = np.array([row], dtype=np.float32)
    unit = l2_normalize(matrix)
    exact = np.array(row, dtype=np.float64) / np.linalg.norm(np.array(row, dtype=np.float64))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit[0], exact, atol=1e-6)
    reject_zero_rows(matrix)  # has a direction, so it is not refused


def test_zero_rows_stay_zero_and_are_refused() -> None:
    matrix = np.array([[1, 0], [0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(l2_normalize(matrix), [[1, 0], [0, 0]])
    with pytest.raises(InvalidArgument) as caught:
        reject_zero_rows(matrix, what="items")
    assert caught.value.reason == "VECTOR_ZERO" and "items[1]" in caught.value.message
