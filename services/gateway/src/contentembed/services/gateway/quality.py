"""Retrieval-quality monitors: query drift per space and catalog coverage per collection.
Pure: numpy, no grpc."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

PSI_BINS = np.linspace(-1.0, 1.0, 21)
PSI_EPSILON = 1e-4


def population_stability_index(reference: np.ndarray, recent: np.ndarray) -> float:
    """PSI between two samples of similarities in [-1, 1]: sum (r - e) * ln(r / e) over bins.
    Rule of thumb: < 0.1 stable, 0.1-0.25 moving, > 0.25 drifted."""
    expected = np.histogram(reference, PSI_BINS)[0] / max(len(reference), 1) + PSI_EPSILON
    actual = np.histogram(recent, PSI_BINS)[0] / max(len(recent), 1) + PSI_EPSILON
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftMonitor:
    """Query drift of one space: the first ``reference_size`` queries are the reference;
    the last ``window`` queries are compared with it by the cosine of their mean vectors
    and by the PSI of their similarities to the reference centroid."""

    def __init__(self, reference_size: int = 500, window: int = 500) -> None:
        self.reference_size = reference_size
        self._reference: list[np.ndarray] = []
        self._centroid: np.ndarray | None = None
        self._reference_similarities: np.ndarray | None = None
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, vector: np.ndarray) -> None:
        with self._lock:
            if self._centroid is None:
                self._reference.append(np.asarray(vector, dtype=np.float32))
                if len(self._reference) >= self.reference_size:
                    matrix = np.stack(self._reference)
                    mean = matrix.mean(axis=0)
                    self._centroid = mean / max(np.linalg.norm(mean), 1e-12)
                    self._reference_similarities = matrix @ self._centroid
                    self._reference = []
            else:
                self._recent.append(np.asarray(vector, dtype=np.float32))

    def measure(self) -> tuple[float, float] | None:
        """(cosine of recent mean to reference mean, PSI), or None until both exist."""
        with self._lock:
            if self._centroid is None or len(self._recent) < 2:
                return None
            recent = np.stack(self._recent)
            centroid = self._centroid
            reference_similarities = self._reference_similarities
        mean = recent.mean(axis=0)
        cosine = float(mean @ centroid / max(np.linalg.norm(mean), 1e-12))
        return cosine, population_stability_index(reference_similarities, recent @ centroid)


class CatalogCoverage:
    """Distinct ids returned per collection in a rolling window of ``window_s`` seconds."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._lock = threading.Lock()

    def observe(self, collection: str, ids: Iterable[str]) -> None:
        now = self._clock()
        with self._lock:
            seen = self._seen[collection]
            for item_id in ids:
                seen[item_id] = now

    def distinct(self, collection: str) -> int:
        horizon = self._clock() - self.window_s
        with self._lock:
            seen = self._seen.get(collection, {})
            for item_id in [i for i, at in seen.items() if at < horizon]:
                del seen[item_id]
            return len(seen)

    def collections(self) -> list[str]:
        with self._lock:
            return list(self._seen)
