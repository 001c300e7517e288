"""Shadow and canary bookkeeping: how a candidate version answers compared with the
primary, on live queries. Pure: no grpc."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field


def overlap_at_k(primary: Sequence[str], candidate: Sequence[str]) -> float:
    """Share of the primary's ids the candidate also returned (1.0 for two empty answers)."""
    if not primary:
        return 1.0 if not candidate else 0.0
    return len(set(primary) & set(candidate)) / len(primary)


def rank_correlation(primary: Sequence[str], candidate: Sequence[str]) -> float | None:
    """Spearman's rho of the ids both returned, ranked within each answer; None below 2."""
    common = [item for item in primary if item in set(candidate)]
    n = len(common)
    if n < 2:
        return None
    candidate_rank = {item: rank for rank, item in enumerate(i for i in candidate if i in set(common))}
    squared = sum((rank - candidate_rank[item]) ** 2 for rank, item in enumerate(common))
    return 1.0 - 6.0 * squared / (n * (n * n - 1))


@dataclass
class ShadowStats:
    queries: int = 0
    failures: int = 0
    canary_queries: int = 0
    overlap_sum: float = 0.0
    rank_sum: float = 0.0
    rank_count: int = 0
    latency_delta_sum_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, primary: Sequence[str], candidate: Sequence[str], latency_delta_ms: float) -> float:
        overlap = overlap_at_k(primary, candidate)
        rho = rank_correlation(primary, candidate)
        with self._lock:
            self.queries += 1
            self.overlap_sum += overlap
            if rho is not None:
                self.rank_sum += rho
                self.rank_count += 1
            self.latency_delta_sum_ms += latency_delta_ms
        return overlap

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1

    def record_canary(self) -> None:
        with self._lock:
            self.canary_queries += 1

    def means(self) -> tuple[float, float, float]:
        """(mean overlap@k, mean rank correlation, mean latency delta ms)."""
        with self._lock:
            n = max(self.queries, 1)
            return (
                self.overlap_sum / n,
                self.rank_sum / max(self.rank_count, 1),
                self.latency_delta_sum_ms / n,
            )


@dataclass
class Candidate:
    version: str
    space_id: str
    shadow_fraction: float
    canary_weight: float
    stats: ShadowStats = field(default_factory=ShadowStats)
