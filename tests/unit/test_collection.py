from __future__ import annotations

import threading

import numpy as np
import pytest

from contentembed.services.common.errors import InvalidArgument
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams


def clustered(n: int, dim: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    points = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return points.astype(np.float32)


def new_collection(dim: int = 8, capacity: int = 4) -> HnswCollection:
    return HnswCollection("c", "space@1", dim, HnswParams(), initial_capacity=capacity)


def test_upsert_search_replace_delete() -> None:
    collection = new_collection()
    vectors = np.eye(8, dtype=np.float32)[:5]
    collection.upsert([f"v{i}" for i in range(5)], vectors, [{"n": i} for i in range(5)])
    hits = collection.search(vectors[2], top_k=1)
    assert hits[0].id == "v2" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].metadata == {"n": 2}

    # Replacing keeps one live copy, with the new vector and metadata.
    collection.upsert(["v2"], np.eye(8, dtype=np.float32)[[7]], [{"n": "new"}])
    assert collection.item_count == 5
    hits = collection.search(np.eye(8, dtype=np.float32)[7], top_k=5)
    assert [h.id for h in hits].count("v2") == 1
    assert hits[0].id == "v2" and hits[0].metadata == {"n": "new"}

    assert collection.delete(["v2", "unknown"]) == 1
    assert collection.item_count == 4
    assert "v2" not in [h.id for h in collection.search(np.eye(8, dtype=np.float32)[7], top_k=10)]


def test_top_k_above_count_returns_what_exists() -> None:
    collection = new_collection()
    assert collection.search(np.ones(8, dtype=np.float32), top_k=10) == []
    collection.upsert(["a", "b"], np.eye(8, dtype=np.float32)[:2], [{}, {}])
    assert {h.id for h in collection.search(np.ones(8, dtype=np.float32), top_k=10)} == {"a", "b"}


def test_capacity_grows_past_initial_size() -> None:
    collection = new_collection(dim=16, capacity=4)
    vectors = clustered(300, 16)
    for start in range(0, 300, 50):
        collection.upsert(
            [f"i{j}" for j in range(start, start + 50)], vectors[start : start + 50], [{}] * 50
        )
    assert collection.item_count == 300
    assert collection.search(vectors[123], top_k=1)[0].id == "i123"


@pytest.mark.parametrize(
    ("ids", "vectors", "reason"),
    [
        (["a", "a"], np.ones((2, 8), np.float32), "DUPLICATE_ID"),
        (["a", ""], np.ones((2, 8), np.float32), "EMPTY_ID"),
        (["a"], np.zeros((1, 8), np.float32), "VECTOR_ZERO"),
        (["a"], np.ones((1, 7), np.float32), "DIMENSION_MISMATCH"),
    ],
)
def test_bad_upserts_change_nothing(ids: list[str], vectors: np.ndarray, reason: str) -> None:
    collection = new_collection()
    with pytest.raises(InvalidArgument) as caught:
        collection.upsert(ids, vectors, [{}] * len(ids))
    assert caught.value.reason == reason
    assert collection.item_count == 0


def test_query_dimension_is_checked() -> None:
    collection = new_collection()
    collection.upsert(["a"], np.ones((1, 8), np.float32), [{}])
    with pytest.raises(InvalidArgument, match="dimension"):
        collection.search(np.ones(9, np.float32), top_k=1)


def test_recall_against_exact_search() -> None:
    # Queries come from the same clusters as the data, held out of the index.
    points = clustered(5100, 32, seed=1)
    vectors, queries = points[:5000], points[5000:]
    collection = HnswCollection("c", "s", 32, HnswParams(), initial_capacity=1024)
    collection.upsert([str(i) for i in range(5000)], vectors, [{}] * 5000)
    found = 0
    for query in queries:
        approx = {h.id for h in collection.search(query, top_k=10)}
        exact = {h.id for h in collection.exact_search(query, top_k=10)}
        found += len(approx & exact)
    assert found / 1000 >= 0.98


def test_custom_ef_does_not_leak_into_the_default() -> None:
    vectors = clustered(2000, 16)
    collection = HnswCollection("c", "s", 16, HnswParams(ef_search=50))
    collection.upsert([str(i) for i in range(2000)], vectors, [{}] * 2000)
    before = collection.search(vectors[0], top_k=10)
    assert len(collection.search(vectors[0], top_k=10, ef=400)) == 10
    assert collection.search(vectors[0], top_k=10) == before


def test_concurrent_writes_deletes_and_searches_lose_nothing() -> None:
    collection = new_collection(dim=16, capacity=8)
    vectors = clustered(1600, 16, seed=3)
    errors: list[BaseException] = []

    def writer(part: int) -> None:
        try:
            for start in range(part * 400, part * 400 + 400, 20):
                ids = [f"w{j}" for j in range(start, start + 20)]
                collection.upsert(ids, vectors[start : start + 20], [{"part": part}] * 20)
                collection.delete(ids[:2])  # every batch loses its first two again
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    def reader() -> None:
        try:
            for i in range(300):
                assert len(collection.search(vectors[i], top_k=5)) <= 5
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"w{j}" for j in range(1600) if j % 20 >= 2}
    assert collection.item_count == len(expected) == 1440
    assert set(collection.list_ids("", 5000)[0]) == expected
    assert collection.search(vectors[1234], top_k=1)[0].id == "w1234"
    assert collection.search(vectors[1220], top_k=1)[0].id != "w1220"  # deleted


@pytest.mark.parametrize("share", [0.02, 0.5])  # exact path for narrow filters, HNSW for wide
def test_operator_filters_return_only_matches(share: float) -> None:
    n = 400
    vectors = clustered(n, 16, seed=3)
    collection = HnswCollection("c", "space@1", 16, HnswParams(), initial_capacity=n)
    cut = int(n * share)
    metadata = [{"rank": i, "kind": "a" if i % 2 else "b"} for i in range(n)]
    collection.upsert([f"v{i}" for i in range(n)], vectors, metadata)
    wanted = {"$and": [{"rank": {"$lt": cut}}, {"$or": [{"kind": "a"}, {"kind": {"$in": ["b"]}}]}]}
    hits = collection.search(vectors[0], top_k=10, metadata_filter=wanted)
    assert hits and all(h.metadata["rank"] < cut for h in hits)
    exact = collection.search(vectors[0], top_k=10, metadata_filter=wanted, exact=True)
    assert [h.id for h in exact][: len(hits)] == [h.id for h in hits] or share > 0.05
    assert collection.search(vectors[0], top_k=10, metadata_filter={"rank": {"$gt": n}}) == []
