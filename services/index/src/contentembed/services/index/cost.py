"""What a search will cost, estimated before the vectors are touched, and the per-call
budget it is held to. Pure index code: no grpc.

A search's CPU grows with what the caller chooses: queries per batch, ef, top_k (a
search at top_k k explores at least k candidates), exact search, and a filter (HNSW with
a filter explores until enough allowed items are found: about 1/share as many nodes). At
the service's maximums one SearchBatch would compare vectors for tens of seconds, so the
estimate is made first and a call above ``--max-search-cpu-s`` is refused at once
(INVALID_ARGUMENT SEARCH_TOO_COSTLY) with what to change, instead of after the work.

The figures are seconds of one core per unit of work, measured with hnswlib 0.8.0 on the
2-core development machine (``bench/bench_limits.py`` measures them again and prints the
estimate beside the time each worst request took). They err high: a refused search would
have taken at least a good part of the budget, an admitted one at most the budget.

Not counted here, because they are bounded by the collection and checked for the
caller's interrupt as they run: the scan of the items' metadata for a filter the payload
index cannot decide (payload.py), and tantivy's BM25 searches (each text at most 64 KiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contentembed.services.common.errors import InvalidArgument

# One HNSW search at ef compares the query with about this many stored vectors per unit
# of ef (more at small ef: the upper layers, the first neighbours), never more than the
# collection holds. Measured at 100k x 384: 22 per ef at ef 100, 8 at 1,000, 4 at 10,000.
COMPARISONS_PER_EF = 25
COMPARISONS_FIXED = 1000
# Seconds per comparison per dimension, from runs at 50k x 384 on the development machine
# (bench/bench_limits.py prints estimate and measurement side by side), rounded up so that
# the estimate errs high (1-3x what was measured, which varied 1.5x between runs): the
# graph walk, heap and cache misses included (0.11-0.35 us per 384-d comparison, the more
# the higher ef); reading a stored vector back for an exact search (hnswlib's get_items
# builds a Python float per component: 10-17 us per 384-d vector); and the matrix product
# of an exact search.
GRAPH_S_PER_DIM = 0.35e-6 / 384
FETCH_S_PER_DIM = 18e-6 / 384
PRODUCT_S_PER_DIM = 0.5e-9
HEAP_FACTOR = 0.15  # per doubling of ef above 100
# Each hit of the answer: its id and metadata looked up, the metadata encoded as JSON,
# the packed message built (measured 1-3 us).
ANSWER_S_PER_HIT = 3e-6
# A filter's callback, once per node a filtered HNSW search visits (a Python call).
FILTER_CALLBACK_S = 0.1e-6


@dataclass(frozen=True)
class SearchShape:
    """What decides a dense search's cost."""

    queries: int
    dim: int
    items: int  # live items in the collection
    top_k: int
    ef: int  # the effective ef (the collection's default when the request gave none)
    exact: bool
    allowed: int | None = None  # items the filter allows; None: no filter

    def cpu_s(self) -> float:
        """Estimated seconds of one core for the dense part of the search and the
        answer it makes."""
        if self.queries == 0 or self.items == 0:
            return 0.0
        candidates = self.items if self.allowed is None else self.allowed
        return self._search_s(candidates) + self.queries * min(self.top_k, candidates) * ANSWER_S_PER_HIT

    def _search_s(self, candidates: int) -> float:
        if self.exact:
            # Every candidate's vector is read once per call and compared with each query.
            return candidates * self.dim * (FETCH_S_PER_DIM + self.queries * PRODUCT_S_PER_DIM)
        ef = max(self.ef, self.top_k)
        explored = COMPARISONS_PER_EF * ef + COMPARISONS_FIXED
        # A larger ef keeps larger heaps: each comparison costs more (0.45-0.55 us per
        # 384-d comparison measured at ef 10,000).
        per_comparison = self.dim * GRAPH_S_PER_DIM * (1 + HEAP_FACTOR * max(0.0, math.log2(ef / 100)))
        if self.allowed is not None and self.allowed < self.items:
            # Only allowed nodes count towards ef: the walk visits about 1/share as many.
            share = max(self.allowed, 1) / self.items
            explored = explored / share
            per_comparison += FILTER_CALLBACK_S
        return self.queries * min(self.items, explored) * per_comparison


def check_search_cost(shape: SearchShape, max_cpu_s: float | None) -> None:
    """INVALID_ARGUMENT SEARCH_TOO_COSTLY when the estimate exceeds the budget (None:
    unlimited), naming the estimate, the budget and what would lower it."""
    if max_cpu_s is None:
        return
    estimate = shape.cpu_s()
    if estimate <= max_cpu_s:
        return
    if shape.exact:
        advice = (f"an exact search reads back every candidate's vector ({shape.allowed or shape.items}"
                  " here): narrow the filter or search approximately")
    else:
        advice = "send fewer queries per call, lower ef or top_k, or widen the filter"
    # Of a batch, how many queries would fit: the caller can split by it.
    fits = math.floor(max_cpu_s / (estimate / shape.queries)) if shape.queries > 1 else 0
    raise InvalidArgument(
        f"this search would take about {estimate:.1f} s of CPU ({shape.queries} "
        f"quer{'y' if shape.queries == 1 else 'ies'}, ef {max(shape.ef, shape.top_k)}, "
        f"{shape.items} items), above the limit of {max_cpu_s:g} s (--max-search-cpu-s): "
        f"{advice}" + (f"; {fits} of these queries fit in one call" if fits else ""),
        reason="SEARCH_TOO_COSTLY",
        metadata={"estimated_cpu_s": f"{estimate:.3f}", "limit_cpu_s": f"{max_cpu_s:g}",
                  "queries_that_fit": fits},
    )
