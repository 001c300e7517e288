"""Retrieval-quality monitoring: query drift per space, catalog coverage per collection
and sampled recall@k, fed by every answer served (``QualityMonitor`` is a search
observer). Pure: numpy and the ports, no grpc."""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from contentembed.services.common.errors import ContentEmbedError
from contentembed.services.gateway.background import BackgroundPool
from contentembed.services.gateway.merge import merge_top_k
from contentembed.services.gateway.metrics import GatewayMetrics
from contentembed.services.gateway.ports import ShardPort, wait_all
from contentembed.services.gateway.search import Retrieval

if TYPE_CHECKING:
    from contentembed.services.gateway.rollout import Assignment
    from contentembed.services.gateway.search import Query, SearchOutcome

AUDIT_TIMEOUT_S = 10.0  # an exact re-run for recall is off the request path: no caller waits

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

    def forget(self, collection: str) -> None:
        with self._lock:
            self._seen.pop(collection, None)


class QualityMonitor:
    """Observes every answer served from the serving or canary version: drift of its
    space, coverage of its collection, and for a sampled share the recall@k against an
    exact search of the same shards and version, run in the background."""

    def __init__(
        self,
        shards: Sequence[ShardPort],
        metrics: GatewayMetrics,
        background: BackgroundPool,
        draw: random.Random,
        recall_sample_rate: float,
        drift_reference_size: int,
        drift_window: int,
        catalog_window_s: float,
    ) -> None:
        self.shards = list(shards)
        self.metrics = metrics
        self.background = background
        self._draw = draw
        self.recall_sample_rate = recall_sample_rate
        self._drift_sizes = (drift_reference_size, drift_window)
        self.drift: dict[str, DriftMonitor] = {}
        self.catalog = CatalogCoverage(catalog_window_s)

    def after_search(self, query: Query, outcome: SearchOutcome, assignment: Assignment) -> None:
        drift = self.drift.get(outcome.space_id)
        if drift is None:
            drift = self.drift.setdefault(outcome.space_id, DriftMonitor(*self._drift_sizes))
        if outcome.query_vector is not None:
            drift.observe(outcome.query_vector)
        self.catalog.observe(query.collection, (hit.id for hit in outcome.hits))
        # Recall of the HNSW answer against exact search: a fused or lexical answer is no
        # approximation of the exact dense one, so only dense answers are audited (the
        # draw is skipped too, so it stays where it was for everything else).
        if (outcome.hits and not query.reshapes_answer and outcome.mode is Retrieval.DENSE
                and self._draw.random() < self.recall_sample_rate):
            self.background.offload(
                lambda: self.audit_recall(query.collection, outcome, query.top_k),
                "gateway.recall_audit",
            )

    def audit_recall(self, collection: str, outcome: SearchOutcome, top_k: int) -> None:
        """Recall@k of the answer against exact search over the same shards and version."""
        deadline = time.monotonic() + AUDIT_TIMEOUT_S
        versions = outcome.versions
        calls = [
            shard.search(collection, outcome.query_vector, outcome.space_id, top_k, deadline,
                         versions[0] if len(versions) == 1 else "", exact=True)
            for shard in self.shards
        ]
        exact = merge_top_k((answer.hits for answer in wait_all(calls)), top_k)
        if exact:
            found = len({h.id for h in outcome.hits} & {h.id for h in exact}) / len(exact)
            self.metrics.sampled_recall.labels(collection).observe(found)

    def forget(self, collection: str) -> None:
        """A deleted collection: no more coverage kept, asked for or reported."""
        self.catalog.forget(collection)
        with contextlib.suppress(KeyError):
            self.metrics.catalog_coverage.remove(collection)

    def update_gauges(self, item_count: Callable[[str], int]) -> None:
        """Drift per space and catalog coverage per collection, for the metrics endpoint;
        ``item_count`` tells a collection's size (raising when the shards do not answer)."""
        for space, monitor in list(self.drift.items()):
            measured = monitor.measure()
            if measured is not None:
                self.metrics.drift_cosine.labels(space).set(measured[0])
                self.metrics.drift_psi.labels(space).set(measured[1])
        for collection in self.catalog.collections():
            try:
                size = item_count(collection)
            except ContentEmbedError as error:
                if error.code == "NOT_FOUND":  # deleted (here or through another gateway)
                    self.forget(collection)
                continue
            if size:
                self.metrics.catalog_coverage.labels(collection).set(
                    self.catalog.distinct(collection) / size
                )
