"""The index service over real gRPC on port 0."""

from __future__ import annotations

import re
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.protoconv import dict_to_struct
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test

DIM = 8


def vec(values: np.ndarray | list[float]) -> types_pb2.Vector:
    array = np.asarray(values, dtype="<f4")
    return types_pb2.Vector(data=array.tobytes(), dim=array.size, dtype=types_pb2.DTYPE_FLOAT32)


@pytest.fixture(scope="module")
def index_runtime():
    with running_service(IndexService, settings_for_test(IndexSettings, shard_index=1, shard_count=2)) as runtime:
        yield runtime


@pytest.fixture
def stub(index_runtime, channel_to) -> pb_grpc.IndexServiceStub:
    return pb_grpc.IndexServiceStub(channel_to(index_runtime.address))


def own_ids(count: int, shard: int = 1, shards: int = 2) -> list[str]:
    """Ids that hash to this test's shard (1 of 2)."""
    ids = (f"item-{i}" for i in range(10 * count + 100))
    return [i for i in ids if shard_for_id(i, shards) == shard][:count]


@pytest.fixture
def collection(stub: pb_grpc.IndexServiceStub, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
    stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="space@1", dim=DIM))
    yield name
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_health_reflection_and_metrics(index_runtime, channel_to) -> None:
    channel = channel_to(index_runtime.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "contentembed.index.v1.IndexService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"contentembed.index.v1.IndexService", "grpc.health.v1.Health"} <= names

    stub = pb_grpc.IndexServiceStub(channel)
    with pytest.raises(grpc.RpcError):
        stub.GetCollection(pb.GetCollectionRequest(name="missing"))
    body = urllib.request.urlopen(f"http://127.0.0.1:{index_runtime.metrics_port}/metrics").read().decode()
    assert 'contentembed_rpc_duration_seconds_count{code="NOT_FOUND",method="GetCollection",service="index"}' in body


def test_upsert_then_search_finds_nearest_and_reports_shard(stub, collection) -> None:
    ids = own_ids(4)
    vectors = np.eye(DIM, dtype=np.float32)[:4]
    response = stub.Upsert(
        pb.UpsertRequest(
            collection=collection,
            space_id="space@1",
            items=[pb.Item(id=i, vector=vec(v)) for i, v in zip(ids, vectors)],
        )
    )
    assert response.upserted_count == 4
    assert (response.shard.shard_index, response.shard.shard_count) == (1, 2)
    found = stub.Search(pb.SearchRequest(collection=collection, query=vec(vectors[2]), top_k=2))
    assert found.hits[0].id == ids[2]
    assert found.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert found.space_id == "space@1" and found.version == "live"
    info = stub.GetCollection(pb.GetCollectionRequest(name=collection)).collection
    assert info.item_count == 4


def invalid_calls(collection: str) -> list:
    good = own_ids(2)
    return [
        ("Search", pb.SearchRequest(collection=collection, query=vec([1] * DIM), top_k=0), "TOP_K_OUT_OF_RANGE"),
        ("Search", pb.SearchRequest(collection=collection, query=vec([1] * DIM), top_k=100_000), "TOP_K_OUT_OF_RANGE"),
        ("Search", pb.SearchRequest(collection=collection, query=vec([1] * 3), top_k=1), "DIMENSION_MISMATCH"),
        ("Search", pb.SearchRequest(collection=collection, query=vec([np.nan] * DIM), top_k=1), "VECTOR_NOT_FINITE"),
        ("Search", pb.SearchRequest(collection=collection, query=vec([0] * DIM), top_k=1), "VECTOR_ZERO"),
        ("Upsert", pb.UpsertRequest(collection=collection, items=[pb.Item(id=good[0], vector=vec([np.inf] * DIM))]), "VECTOR_NOT_FINITE"),
        ("Upsert", pb.UpsertRequest(collection=collection, items=[pb.Item(id=good[0], vector=vec([1] * (DIM + 1)))]), "DIMENSION_MISMATCH"),
        ("Upsert", pb.UpsertRequest(collection=collection, items=[pb.Item(id=good[0], vector=vec([1] * DIM))] * 2), "DUPLICATE_ID"),
        ("Upsert", pb.UpsertRequest(collection=collection, items=[]), "EMPTY_BATCH"),
        ("Upsert", pb.UpsertRequest(collection=collection, items=[pb.Item(id="", vector=vec([1] * DIM))]), "EMPTY_ID"),
        ("CreateCollection", pb.CreateCollectionRequest(name="bad name!", space_id="s", dim=4), "BAD_COLLECTION_NAME"),
        ("CreateCollection", pb.CreateCollectionRequest(name="nodim", space_id="s", dim=0), "BAD_DIM"),
        ("CreateCollection", pb.CreateCollectionRequest(name="m1", space_id="s", dim=4, hnsw=pb.HnswParams(m=1)), "BAD_HNSW_PARAMS"),
        ("CreateCollection", pb.CreateCollectionRequest(name="huge", space_id="s", dim=4, hnsw=pb.HnswParams(ef_construction=10**9)), "BAD_HNSW_PARAMS"),
    ]


def test_invalid_input_gets_invalid_argument_and_changes_nothing(stub, collection) -> None:
    for method, request, reason in invalid_calls(collection):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, reason)
        assert error_reason(caught.value) == reason, caught.value.details()
        assert caught.value.details()  # a message a person can read
    assert stub.GetCollection(pb.GetCollectionRequest(name=collection)).collection.item_count == 0


def test_lookup_and_state_errors(stub, collection) -> None:
    cases = [
        (stub.Search, pb.SearchRequest(collection="nope", query=vec([1] * DIM), top_k=1), grpc.StatusCode.NOT_FOUND),
        (stub.Search, pb.SearchRequest(collection=collection, query=vec([1] * DIM), top_k=1, space_id="other@2"), grpc.StatusCode.FAILED_PRECONDITION),
        (stub.Upsert, pb.UpsertRequest(collection=collection, items=[pb.Item(id=own_ids(1, shard=0)[0], vector=vec([1] * DIM))]), grpc.StatusCode.FAILED_PRECONDITION),
        (stub.CreateCollection, pb.CreateCollectionRequest(name=collection, space_id="space@1", dim=DIM), grpc.StatusCode.ALREADY_EXISTS),
        (stub.CreateCollection, pb.CreateCollectionRequest(name=collection, space_id="other@2", dim=DIM, exist_ok=True), grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for method, request, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            method(request)
        assert caught.value.code() == code, caught.value.details()
    again = stub.CreateCollection(pb.CreateCollectionRequest(name=collection, space_id="space@1", dim=DIM, exist_ok=True))
    assert again.created is False


def test_list_collections_pages_through_all(stub) -> None:
    names = [f"page-{i:02d}" for i in range(7)]
    for name in names:
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s", dim=4))
    try:
        seen, token = [], ""
        while True:
            page = stub.ListCollections(pb.ListCollectionsRequest(page_size=3, page_token=token))
            assert len(page.collections) <= 3
            seen += [c.name for c in page.collections]
            token = page.next_page_token
            if not token:
                break
        assert [n for n in seen if n.startswith("page-")] == names
        # Tokens are signed: one written by hand (the base64 of a name, what tokens were)
        # is refused, and so is an edited one.
        import base64

        forged = base64.urlsafe_b64encode(b"page-03").decode()
        first = stub.ListCollections(pb.ListCollectionsRequest(page_size=3)).next_page_token
        for token in (forged, "x" + first, first[:-2] + ("AA" if not first.endswith("AA") else "BB")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListCollections(pb.ListCollectionsRequest(page_size=3, page_token=token))
            assert error_reason(caught.value) == "BAD_PAGE_TOKEN"
    finally:
        for name in names:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def test_delete_items_removes_from_search(stub, collection) -> None:
    ids = own_ids(3)
    stub.Upsert(pb.UpsertRequest(collection=collection, items=[pb.Item(id=i, vector=vec(np.eye(DIM)[n])) for n, i in enumerate(ids)]))
    deleted = stub.DeleteItems(pb.DeleteItemsRequest(collection=collection, ids=[ids[0], "never-there"]))
    assert deleted.deleted_count == 1
    hits = stub.Search(pb.SearchRequest(collection=collection, query=vec(np.eye(DIM)[0]), top_k=10)).hits
    assert ids[0] not in [h.id for h in hits] and len(hits) == 2


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    return (centers[rng.integers(0, 50, n)] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)


def upsert_all(stub, collection: str, ids: list[str], vectors: np.ndarray, metadata=None) -> None:
    for start in range(0, len(ids), 2000):
        stub.Upsert(pb.UpsertRequest(collection=collection, items=[
            pb.Item(id=i, vector=vec(v), metadata=dict_to_struct((metadata or {}).get(i, {})))
            for i, v in zip(ids[start:start + 2000], vectors[start:start + 2000])
        ]))


def test_recall_at_10_against_numpy_exact_on_20k_clustered(stub, collection) -> None:
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection))
    stub.CreateCollection(pb.CreateCollectionRequest(name=collection, space_id="space@1", dim=64))
    points = clustered(20_200, 64, seed=5)
    vectors, queries = points[:20_000], points[20_000:]
    ids = own_ids(20_000)
    upsert_all(stub, collection, ids, vectors)
    normalized = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = 0
    for query in queries:
        hits = stub.Search(pb.SearchRequest(collection=collection, query=vec(query), top_k=10)).hits
        exact = np.argsort(-(normalized @ (query / np.linalg.norm(query))))[:10]
        found += len({h.id for h in hits} & {ids[i] for i in exact})
    assert found / (10 * len(queries)) >= 0.98


def test_exact_mode_and_batch_search_agree_with_numpy(stub, collection) -> None:
    points = clustered(600, DIM, seed=6)
    ids = own_ids(500)
    upsert_all(stub, collection, ids, points[:500])
    normalized = points[:500] / np.linalg.norm(points[:500], axis=1, keepdims=True)
    queries = points[500:520]
    batch = stub.SearchBatch(pb.SearchBatchRequest(
        collection=collection, queries=[vec(q) for q in queries], top_k=5, exact=True))
    assert len(batch.results) == len(queries)
    for query, result in zip(queries, batch.results):
        expected = [ids[i] for i in np.argsort(-(normalized @ (query / np.linalg.norm(query))))[:5]]
        assert [h.id for h in result.hits] == expected
        single = stub.Search(pb.SearchRequest(collection=collection, query=vec(query), top_k=5, exact=True))
        assert [h.id for h in single.hits] == expected


@pytest.mark.parametrize("share", [0.02, 0.5])  # exact path for narrow filters, HNSW callback for wide
def test_metadata_filter_returns_only_matches(stub, collection, share: float) -> None:
    points = clustered(1000, DIM, seed=7)
    ids = own_ids(1000)
    rng = np.random.default_rng(1)
    colour = {i: ("red" if rng.random() < share else "blue") for i in ids}
    upsert_all(stub, collection, ids, points, {i: {"colour": c, "n": 1} for i, c in colour.items()})
    reds = [n for n, i in enumerate(ids) if colour[i] == "red"]
    normalized = points / np.linalg.norm(points, axis=1, keepdims=True)
    query = points[reds[0]] + 0.1
    hits = stub.Search(pb.SearchRequest(
        collection=collection, query=vec(query), top_k=10, filter=dict_to_struct({"colour": "red"}))).hits
    assert hits and all(h.metadata["colour"] == "red" for h in hits)
    expected = sorted(reds, key=lambda n: -(normalized[n] @ (query / np.linalg.norm(query))))[:10]
    assert len({h.id for h in hits} & {ids[n] for n in expected}) >= 9
    none = stub.Search(pb.SearchRequest(
        collection=collection, query=vec(query), top_k=10, filter=dict_to_struct({"colour": "green"})))
    assert list(none.hits) == []


def test_get_and_list_items(stub, collection) -> None:
    ids = sorted(own_ids(25))
    vectors = clustered(25, DIM, seed=8)
    upsert_all(stub, collection, ids, vectors, {i: {"rank": n} for n, i in enumerate(ids)})
    got = stub.GetItems(pb.GetItemsRequest(collection=collection, ids=[ids[3], "nope", ids[0]]))
    assert [i.id for i in got.items] == [ids[3], ids[0]] and list(got.missing_ids) == ["nope"]
    stored = np.frombuffer(got.items[0].vector.data, "<f4")
    np.testing.assert_allclose(stored, vectors[3] / np.linalg.norm(vectors[3]), atol=1e-6)
    listed, token = [], ""
    while True:
        page = stub.ListItems(pb.ListItemsRequest(collection=collection, page_size=10, page_token=token))
        listed += [(i.id, i.metadata["rank"]) for i in page.items]
        token = page.next_page_token
        if not token:
            break
    assert listed == [(i, n) for n, i in enumerate(ids)]
    # A token of this collection's listing does not page another collection.
    token = stub.ListItems(pb.ListItemsRequest(collection=collection, page_size=10)).next_page_token
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListItems(pb.ListItemsRequest(collection="other", page_size=10, page_token=token))
    assert error_reason(caught.value) in ("BAD_PAGE_TOKEN", "COLLECTION_NOT_FOUND")
    stub.CreateCollection(pb.CreateCollectionRequest(name="other", space_id="s", dim=DIM))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListItems(pb.ListItemsRequest(collection="other", page_size=10, page_token=token))
        assert error_reason(caught.value) == "BAD_PAGE_TOKEN"
    finally:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="other"))


LONG_NAME = "n" * 8000
HUGE_ID = "i" * 100_000


def test_oversized_strings_get_a_clear_short_error(stub, collection) -> None:
    """Errors repeat only a prefix of the caller's string: echoed whole, the status would
    outgrow the trailer limit and reach the caller as an opaque RESOURCE_EXHAUSTED."""
    invalid, failed, missing = (
        grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND
    )
    query = vec([1] * DIM)
    cases = [
        (stub.GetCollection, pb.GetCollectionRequest(name=LONG_NAME), invalid, "BAD_COLLECTION_NAME"),
        (stub.CreateCollection, pb.CreateCollectionRequest(name=LONG_NAME, space_id="s", dim=4), invalid, "BAD_COLLECTION_NAME"),
        (stub.DeleteCollection, pb.DeleteCollectionRequest(name=LONG_NAME), invalid, "BAD_COLLECTION_NAME"),
        (stub.Search, pb.SearchRequest(collection=LONG_NAME, query=query, top_k=1), invalid, "BAD_COLLECTION_NAME"),
        (stub.Upsert, pb.UpsertRequest(collection=LONG_NAME, items=[pb.Item(id="a", vector=query)]), invalid, "BAD_COLLECTION_NAME"),
        (stub.ActivateVersion, pb.ActivateVersionRequest(collection=LONG_NAME, version="v"), invalid, "BAD_COLLECTION_NAME"),
        (stub.LoadBundle, pb.LoadBundleRequest(collection=LONG_NAME, version="v", path="p"), invalid, "BAD_COLLECTION_NAME"),
        (stub.CreateCollection, pb.CreateCollectionRequest(name="spacey", space_id=LONG_NAME, dim=4), invalid, "BAD_SPACE_ID"),
        (stub.Upsert, pb.UpsertRequest(collection=collection, items=[pb.Item(id=HUGE_ID, vector=query)]), invalid, "ID_TOO_LONG"),
        (stub.DeleteItems, pb.DeleteItemsRequest(collection=collection, ids=[HUGE_ID]), invalid, "ID_TOO_LONG"),
        (stub.GetItems, pb.GetItemsRequest(collection=collection, ids=[HUGE_ID]), invalid, "ID_TOO_LONG"),
        (stub.LoadBundle, pb.LoadBundleRequest(collection=collection, version=LONG_NAME, path="p"), invalid, "BAD_VERSION"),
        (stub.Search, pb.SearchRequest(collection=collection, query=query, top_k=1, space_id=LONG_NAME), failed, "SPACE_MISMATCH"),
        (stub.Search, pb.SearchRequest(collection=collection, query=query, top_k=1, version=LONG_NAME), missing, "VERSION_NOT_FOUND"),
        (stub.ActivateVersion, pb.ActivateVersionRequest(collection=collection, version=LONG_NAME), missing, "VERSION_NOT_FOUND"),
    ]
    for method, request, code, reason in cases:
        with pytest.raises(grpc.RpcError) as caught:
            method(request)
        assert (caught.value.code(), error_reason(caught.value)) == (code, reason), caught.value.details()[:200]
        assert len(caught.value.details()) < 300, caught.value.details()[:200]
        assert "characters)" in caught.value.details() or reason == "ID_TOO_LONG"
    assert stub.GetCollection(pb.GetCollectionRequest(name=collection)).collection.item_count == 0


@pytest.mark.parametrize("magnitude", [3e38, float(np.finfo(np.float32).max), 1e-39, 1e-45])
def test_huge_and_tiny_vectors_keep_their_direction(stub, collection, magnitude) -> None:
    """Normalising must not overflow (3e38 squared is inf in float32) or underflow."""
    ids = own_ids(3)
    directions = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [1, -1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]], "<f4")
    stub.Upsert(pb.UpsertRequest(collection=collection, items=[
        pb.Item(id=i, vector=vec(d * np.float32(magnitude))) for i, d in zip(ids, directions)]))
    stored = stub.GetItems(pb.GetItemsRequest(collection=collection, ids=ids)).items
    for item, direction in zip(stored, directions):
        unit = direction / np.linalg.norm(direction)
        np.testing.assert_allclose(np.frombuffer(item.vector.data, "<f4"), unit, atol=1e-6)
    for item_id, direction in zip(ids, directions):
        query = vec(direction * np.float32(magnitude))
        for exact in (False, True):
            hit = stub.Search(pb.SearchRequest(collection=collection, query=query, top_k=1, exact=exact)).hits[0]
            assert hit.id == item_id and hit.score == pytest.approx(1.0, abs=1e-5)


def nested(levels: int) -> dict:
    values: dict = {"leaf": 1}
    for _ in range(levels - 1):
        values = {"k": values}
    return values


def test_metadata_beyond_the_limits_is_refused_and_changes_nothing(stub, collection) -> None:
    ids = own_ids(2)
    cases = [
        # The probe: two items with 9 MiB each made every search with top_k >= 2 exceed
        # the 16 MiB message limit, on a healthy shard.
        ({"blob": "x" * (9 << 20)}, "METADATA_TOO_LARGE"),
        ({"blob": "x" * 8192}, "METADATA_TOO_LARGE"),  # the default limit is 8 KiB encoded
        (nested(9), "METADATA_TOO_DEEP"),  # the default depth is 8
        ({"a": [[[[[[[[1]]]]]]]]}, "METADATA_TOO_DEEP"),
        ({"price": float("nan")}, "METADATA_NOT_FINITE"),
        ({"a": [1, {"b": float("-inf")}]}, "METADATA_NOT_FINITE"),
    ]
    for values, reason in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Upsert(pb.UpsertRequest(collection=collection, items=[
                pb.Item(id=ids[0], vector=vec([1] * DIM)),
                pb.Item(id=ids[1], vector=vec([1] * DIM), metadata=dict_to_struct(values)),
            ]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert error_reason(caught.value) == reason and "items[1].metadata" in caught.value.details()
        assert len(caught.value.details()) < 300
    assert stub.GetCollection(pb.GetCollectionRequest(name=collection)).collection.item_count == 0

    within = {"blob": "x" * 8000, "tags": [nested(6)]}
    stub.Upsert(pb.UpsertRequest(collection=collection, items=[
        pb.Item(id=i, vector=vec(np.eye(DIM)[n]), metadata=dict_to_struct(within)) for n, i in enumerate(ids)]))
    hits = stub.Search(pb.SearchRequest(collection=collection, query=vec([1] * DIM), top_k=2)).hits
    assert len(hits) == 2 and all(len(h.metadata.fields["blob"].string_value) == 8000 for h in hits)


def test_filters_beyond_the_limits_are_refused(stub, collection) -> None:
    ids = own_ids(1)
    stub.Upsert(pb.UpsertRequest(collection=collection, items=[
        pb.Item(id=ids[0], vector=vec([1] * DIM), metadata=dict_to_struct({"price": 3}))]))
    cases = [
        ({"price": float("nan")}, "FILTER_NOT_FINITE"),  # was INTERNAL: MessageToDict refuses NaN
        ({"price": float("inf")}, "FILTER_NOT_FINITE"),
        (nested(9), "FILTER_TOO_DEEP"),
        ({"blob": "x" * 9000}, "FILTER_TOO_LARGE"),  # larger than any item's metadata: never matches
    ]
    for values, reason in cases:
        for call in (
            lambda f: stub.Search(pb.SearchRequest(collection=collection, query=vec([1] * DIM), top_k=1, filter=f)),
            lambda f: stub.SearchBatch(pb.SearchBatchRequest(collection=collection, queries=[vec([1] * DIM)], top_k=1, filter=f)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call(dict_to_struct(values))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert error_reason(caught.value) == reason


def test_a_filter_on_a_flag_does_not_match_a_count(stub, collection) -> None:
    ids = own_ids(3)
    stub.Upsert(pb.UpsertRequest(collection=collection, items=[
        pb.Item(id=i, vector=vec(np.eye(DIM)[n]), metadata=dict_to_struct(m))
        for n, (i, m) in enumerate(zip(ids, [{"flag": True}, {"flag": 1}, {"flag": [1, {"x": False}]}]))]))

    def matching(values) -> list[str]:
        hits = stub.Search(pb.SearchRequest(collection=collection, query=vec([1] * DIM), top_k=3,
                                            filter=dict_to_struct(values))).hits
        return sorted(h.id for h in hits)

    assert matching({"flag": 1}) == [ids[1]]
    assert matching({"flag": True}) == [ids[0]]
    assert matching({"flag": [1, {"x": False}]}) == [ids[2]]
    assert matching({"flag": [True, {"x": 0}]}) == []


def test_answers_that_would_not_fit_one_message_say_what_to_change(channel_to) -> None:
    settings = settings_for_test(IndexSettings, max_message_bytes=1 << 20, max_top_k=10)
    with running_service(IndexService, settings) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.CreateCollection(pb.CreateCollectionRequest(name="big", space_id="s@1", dim=DIM))
        rng = np.random.default_rng(3)
        ids = [f"id-{i}" for i in range(150)]
        for chunk in (ids[:75], ids[75:]):  # each request within the 1 MiB limit
            stub.Upsert(pb.UpsertRequest(collection="big", items=[
                pb.Item(id=i, vector=vec(rng.normal(size=DIM)), metadata=dict_to_struct({"blob": "x" * 8000}))
                for i in chunk]))
        assert len(stub.Search(pb.SearchRequest(collection="big", query=vec([1] * DIM), top_k=10)).hits) == 10
        calls = [
            (stub.SearchBatch, pb.SearchBatchRequest(collection="big", queries=[vec(rng.normal(size=DIM)) for _ in range(20)], top_k=10), "fewer queries"),
            (stub.GetItems, pb.GetItemsRequest(collection="big", ids=ids), "fewer ids"),
        ]
        for method, request, advice in calls:
            with pytest.raises(grpc.RpcError) as caught:
                method(request)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(caught.value) == "ANSWER_TOO_LARGE" and advice in caught.value.details()
