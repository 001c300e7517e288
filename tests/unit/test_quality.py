from __future__ import annotations

import numpy as np

from contentembed.services.gateway.monitoring import (
    CatalogCoverage,
    DriftMonitor,
    population_stability_index,
)
from contentembed.services.gateway.rollout import overlap_at_k, rank_correlation


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_drift_is_flat_for_the_same_distribution_and_rises_when_queries_move() -> None:
    rng = np.random.default_rng(0)
    topic_a, topic_b = rng.normal(size=32), rng.normal(size=32)
    same = DriftMonitor(reference_size=200, window=200)
    moved = DriftMonitor(reference_size=200, window=200)
    for vector in unit_rows(topic_a + 0.5 * rng.normal(size=(400, 32))):
        same.observe(vector)
    for vector in unit_rows(topic_a + 0.5 * rng.normal(size=(200, 32))):
        moved.observe(vector)
    for vector in unit_rows(topic_b + 0.5 * rng.normal(size=(200, 32))):
        moved.observe(vector)
    same_cosine, same_psi = same.measure()
    moved_cosine, moved_psi = moved.measure()
    assert same_cosine > 0.99 and same_psi < 0.1
    assert moved_cosine < 0.5 and moved_psi > 0.25


def test_psi_is_zero_for_identical_samples() -> None:
    sample = np.linspace(-0.9, 0.9, 100)
    assert population_stability_index(sample, sample) == 0.0


def test_catalog_coverage_forgets_outside_its_window() -> None:
    now = [0.0]
    coverage = CatalogCoverage(window_s=10, clock=lambda: now[0])
    coverage.observe("c", ["a", "b"])
    now[0] = 5
    coverage.observe("c", ["b", "c"])
    assert coverage.distinct("c") == 3
    now[0] = 12
    assert coverage.distinct("c") == 2  # "a" was last returned at 0


def test_overlap_and_rank_correlation() -> None:
    assert overlap_at_k(["a", "b", "c", "d"], ["b", "a", "x", "y"]) == 0.5
    assert rank_correlation(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert rank_correlation(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    assert rank_correlation(["a", "b"], ["x", "a"]) is None
