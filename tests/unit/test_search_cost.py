"""A collection's search is refused before it runs when its estimated cost is above the
budget, answers the same whatever chunks it runs in, and stops between chunks when its
caller goes away."""

from __future__ import annotations

import numpy as np
import pytest

from contentembed.services.common.errors import Cancelled, InvalidArgument
from contentembed.services.common.interrupt import Interrupt
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.cost import SearchShape, check_search_cost
from contentembed.services.index.dense import HnswParams

DIM = 16


def collection_of(count: int, seed: int = 0) -> tuple[HnswCollection, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    collection = HnswCollection("c", "s@1", DIM, HnswParams(m=8, ef_construction=40), count)
    collection.upsert([f"i{n}" for n in range(count)], vectors,
                      [{"n": n, "even": n % 2 == 0} for n in range(count)])
    return collection, vectors


class CountingInterrupt(Interrupt):
    """Says "gone" from its ``after``-th check on."""

    def __init__(self, after: int) -> None:
        object.__setattr__(self, "checks", [])
        object.__setattr__(self, "after", after)

    def check(self) -> None:
        self.checks.append(1)
        if len(self.checks) >= self.after:
            raise Cancelled("the caller went away")


def test_the_worst_batch_is_refused_before_it_runs_and_says_what_fits() -> None:
    worst = SearchShape(queries=1024, dim=384, items=100_000, top_k=1000, ef=10_000, exact=False)
    with pytest.raises(InvalidArgument) as caught:
        check_search_cost(worst, 1.0)
    assert caught.value.reason == "SEARCH_TOO_COSTLY"
    assert "--max-search-cpu-s" in caught.value.message
    fits = int(caught.value.metadata["queries_that_fit"])
    check_search_cost(SearchShape(fits, 384, 100_000, 1000, 10_000, False), 1.0)
    # An ordinary batch is far below the budget.
    check_search_cost(SearchShape(64, 384, 100_000, 10, 100, False), 1.0)
    # An exact search pays for reading every candidate back.
    with pytest.raises(InvalidArgument):
        check_search_cost(SearchShape(1, 384, 1_000_000, 10, 100, True), 1.0)
    check_search_cost(SearchShape(1, 384, 1_000_000, 10, 100, True, allowed=1000), 1.0)


def test_a_collection_refuses_a_costly_search_before_comparing_any_vector() -> None:
    collection, vectors = collection_of(2000)
    with pytest.raises(InvalidArgument) as caught:
        collection.search_columns(vectors[:500], None, 500, ef=2000, max_cpu_s=1e-6)
    assert caught.value.reason == "SEARCH_TOO_COSTLY"
    dense, _ = collection.search_columns(vectors[:2], None, 5, max_cpu_s=1.0)
    assert [c.ids[0] for c in dense] == ["i0", "i1"]


def test_exact_search_in_blocks_answers_as_brute_force_ties_by_label() -> None:
    collection, vectors = collection_of(3000)
    # A duplicate of item 7 ties with it: the lower label ranks first.
    collection.upsert(["dup"], vectors[7:8], [{}])
    queries = vectors[[7, 100, 2999]]
    dense, _ = collection.search_columns(queries, None, 10, exact=True)
    normalized = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for query, columns in zip(queries, dense):
        scores = normalized @ (query / np.linalg.norm(query))
        expected = [f"i{n}" for n in np.argsort(-scores, kind="stable")[:10]]
        if expected[0] == "i7":
            expected = ["i7", "dup", *expected[1:9]]
        assert columns.ids == expected
    # A filter's matches only, still exact.
    dense, _ = collection.search_columns(queries[:1], None, 5, metadata_filter={"even": False})
    assert dense[0].ids[0] == "i7" and all(int(i[1:]) % 2 for i in dense[0].ids if i != "dup")


def test_an_exact_search_stops_between_blocks_when_the_caller_goes_away() -> None:
    collection, vectors = collection_of(50_000)  # four blocks of 16-d vectors
    interrupt = CountingInterrupt(after=2)
    with pytest.raises(Cancelled):
        collection.search_columns(vectors[:1], None, 10, exact=True, interrupt=interrupt)
    assert len(interrupt.checks) == 2


def test_a_batch_stops_between_chunks_and_a_filter_scan_between_chunks_of_items() -> None:
    collection, vectors = collection_of(5000)
    queries = np.repeat(vectors, 4, axis=0)  # 20k queries: many chunks
    interrupt = CountingInterrupt(after=2)
    with pytest.raises(Cancelled):
        collection.search_columns(queries, None, 10, interrupt=interrupt)
    assert len(interrupt.checks) == 2
    # A range filter is not in the payload index: the scan checks between chunks.
    interrupt = CountingInterrupt(after=2)
    with pytest.raises(Cancelled):
        collection.search_columns(vectors[:1], None, 10, metadata_filter={"n": {"$gte": 0}},
                                  interrupt=interrupt)
    assert len(interrupt.checks) == 2


def test_chunked_batches_answer_as_single_searches() -> None:
    collection, vectors = collection_of(1000)
    queries = vectors[:300]
    batched, _ = collection.search_columns(queries, None, 5)
    alone = [collection.search_columns(q[None, :], None, 5)[0][0] for q in queries[:20]]
    assert [c.ids for c in batched[:20]] == [c.ids for c in alone]
    assert len(batched) == 300
