"""Lexical (BM25) retrieval on the index service over real gRPC on port 0: lexical
collections, item text, Search/SearchBatch by text, hybrid calls, and their errors."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.protoconv import dict_to_struct
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test

DIM = 8
ENGLISH = types_pb2.LexicalConfig(enabled=True, language="english")


def vec(values) -> types_pb2.Vector:
    array = np.asarray(values, dtype="<f4")
    return types_pb2.Vector(data=array.tobytes(), dim=array.size, dtype=types_pb2.DTYPE_FLOAT32)


def own_ids(count: int) -> list[str]:
    ids = (f"item-{i}" for i in range(10 * count + 100))
    return [i for i in ids if shard_for_id(i, 2) == 1][:count]


@pytest.fixture(scope="module")
def index_runtime():
    settings = settings_for_test(IndexSettings, shard_index=1, shard_count=2, max_queries_per_batch=4)
    with running_service(IndexService, settings) as runtime:
        yield runtime


@pytest.fixture
def stub(index_runtime, channel_to) -> pb_grpc.IndexServiceStub:
    return pb_grpc.IndexServiceStub(channel_to(index_runtime.address))


@pytest.fixture
def names(stub, request: pytest.FixtureRequest):
    """Collection names for this test; every one is deleted after it."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:50]
    made: list[str] = []

    def name(suffix: str = "") -> str:
        made.append(f"{base}{suffix}")
        return made[-1]

    yield name
    for made_name in made:
        try:
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=made_name))
        except grpc.RpcError:
            pass


DOCS = {
    "fox": ("the quick brown fox jumps", {"kind": "animal"}),
    "dog": ("a lazy dog sleeps all day", {"kind": "animal"}),
    "runner": ("she runs marathons", {"kind": "person"}),
    "cpp": ("C++ templates explained", {"kind": "book"}),
}


@pytest.fixture
def lexical(stub, names) -> tuple[str, dict[str, str]]:
    """A lexical collection holding DOCS under ids of this shard; returns (name, id of key)."""
    name = names()
    created = stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s@1", dim=DIM, lexical=ENGLISH))
    assert created.collection.lexical.enabled and created.collection.lexical.language == "english"
    ids = dict(zip(DOCS, own_ids(len(DOCS))))
    stub.Upsert(pb.UpsertRequest(collection=name, items=[
        pb.Item(id=ids[key], vector=vec(np.eye(DIM)[n]), metadata=dict_to_struct(meta), text=text)
        for n, (key, (text, meta)) in enumerate(DOCS.items())
    ]))
    return name, ids


def test_text_search_returns_bm25_lexical_hits(stub, lexical) -> None:
    name, ids = lexical
    response = stub.Search(pb.SearchRequest(collection=name, text="Running foxes", top_k=5))
    assert list(response.hits) == []  # no vector, no dense hits
    assert {h.id for h in response.lexical_hits} == {ids["fox"], ids["runner"]}  # stemmed
    assert all(h.score > 0 for h in response.lexical_hits)
    assert response.lexical_hits[0].metadata  # hits carry metadata, as dense hits do
    assert response.version == "live" and response.shard.shard_index == 1
    # Query syntax is plain text: a "-" excludes nothing, unbalanced quotes break nothing.
    syntax = stub.Search(pb.SearchRequest(collection=name, text='C++ -fox "unclosed (x:y', top_k=5))
    assert {h.id for h in syntax.lexical_hits} == {ids["cpp"], ids["fox"]}
    stop_words = stub.Search(pb.SearchRequest(collection=name, text="the and of", top_k=5))
    assert list(stop_words.lexical_hits) == []
    filtered = stub.Search(pb.SearchRequest(collection=name, text="fox dog", top_k=5,
                                            filter=dict_to_struct({"kind": "animal"})))
    assert {h.id for h in filtered.lexical_hits} == {ids["fox"], ids["dog"]}
    none = stub.Search(pb.SearchRequest(collection=name, text="fox dog", top_k=5,
                                        filter=dict_to_struct({"kind": "book"})))
    assert list(none.lexical_hits) == []


def test_hybrid_search_answers_both_retrievers_in_one_call(stub, lexical) -> None:
    name, ids = lexical
    response = stub.Search(pb.SearchRequest(collection=name, query=vec(np.eye(DIM)[3]), text="lazy dog", top_k=2))
    assert response.hits[0].id == ids["cpp"] and response.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.id for h in response.lexical_hits] == [ids["dog"]]


def test_search_batch_pairs_texts_with_vectors_or_runs_them_alone(stub, lexical) -> None:
    name, ids = lexical
    paired = stub.SearchBatch(pb.SearchBatchRequest(
        collection=name, queries=[vec(np.eye(DIM)[0]), vec(np.eye(DIM)[1])], texts=["marathon", ""], top_k=1,
    ))
    assert [r.hits[0].id for r in paired.results] == [ids["fox"], ids["dog"]]
    assert [[h.id for h in r.lexical_hits] for r in paired.results] == [[ids["runner"]], []]
    alone = stub.SearchBatch(pb.SearchBatchRequest(collection=name, texts=["templates", "sleeping dogs"], top_k=3))
    assert [[h.id for h in r.lexical_hits] for r in alone.results] == [[ids["cpp"]], [ids["dog"]]]
    assert all(list(r.hits) == [] for r in alone.results)
    dense = stub.SearchBatch(pb.SearchBatchRequest(collection=name, queries=[vec(np.eye(DIM)[2])], top_k=1))
    assert dense.results[0].hits[0].id == ids["runner"] and list(dense.results[0].lexical_hits) == []


def test_get_items_returns_text_and_writes_reach_the_lexical_index(stub, lexical) -> None:
    name, ids = lexical
    got = stub.GetItems(pb.GetItemsRequest(collection=name, ids=[ids["fox"], ids["cpp"]]))
    assert [i.text for i in got.items] == [DOCS["fox"][0], DOCS["cpp"][0]]
    # Replaced with other text: the old words no longer find it, the new ones do.
    stub.Upsert(pb.UpsertRequest(collection=name, items=[pb.Item(id=ids["fox"], vector=vec(np.eye(DIM)[0]), text="purple elephant")]))
    assert [h.id for h in stub.Search(pb.SearchRequest(collection=name, text="elephant", top_k=3)).lexical_hits] == [ids["fox"]]
    assert list(stub.Search(pb.SearchRequest(collection=name, text="quick brown", top_k=3)).lexical_hits) == []
    # Written without text: no text, no lexical document.
    stub.Upsert(pb.UpsertRequest(collection=name, items=[pb.Item(id=ids["fox"], vector=vec(np.eye(DIM)[0]))]))
    assert stub.GetItems(pb.GetItemsRequest(collection=name, ids=[ids["fox"]])).items[0].text == ""
    assert list(stub.Search(pb.SearchRequest(collection=name, text="elephant", top_k=3)).lexical_hits) == []
    stub.DeleteItems(pb.DeleteItemsRequest(collection=name, ids=[ids["dog"]]))
    assert list(stub.Search(pb.SearchRequest(collection=name, text="lazy dog", top_k=3)).lexical_hits) == []


def test_dense_collections_keep_text_and_refuse_text_search(stub, names) -> None:
    name = names()
    created = stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s@1", dim=DIM))
    assert not created.collection.lexical.enabled
    item_id = own_ids(1)[0]
    stub.Upsert(pb.UpsertRequest(collection=name, items=[pb.Item(id=item_id, vector=vec(np.ones(DIM)), text="kept")]))
    assert stub.GetItems(pb.GetItemsRequest(collection=name, ids=[item_id])).items[0].text == "kept"
    for call, request in (
        (stub.Search, pb.SearchRequest(collection=name, text="kept", top_k=1)),
        (stub.Search, pb.SearchRequest(collection=name, query=vec(np.ones(DIM)), text="kept", top_k=1)),
        (stub.SearchBatch, pb.SearchBatchRequest(collection=name, texts=["kept"], top_k=1)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "LEXICAL_NOT_ENABLED"


def test_create_validates_and_exist_ok_compares_the_lexical_config(stub, names) -> None:
    name = names()
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateCollection(pb.CreateCollectionRequest(
            name=name, space_id="s@1", dim=DIM, lexical=types_pb2.LexicalConfig(enabled=True, language="klingon")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "BAD_LEXICAL_LANGUAGE" and "german" in caught.value.details()

    german = types_pb2.LexicalConfig(enabled=True, language="German")
    created = stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s@1", dim=DIM, lexical=german))
    assert created.collection.lexical.language == "german"
    again = stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s@1", dim=DIM, lexical=german, exist_ok=True))
    assert again.created is False
    for other in (None, types_pb2.LexicalConfig(enabled=True, language="")):
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s@1", dim=DIM, lexical=other, exist_ok=True))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(caught.value) == "LEXICAL_MISMATCH"
    listed = {c.name: c for c in stub.ListCollections(pb.ListCollectionsRequest()).collections}
    assert listed[name].lexical.enabled and listed[name].lexical.language == "german"


def test_invalid_lexical_requests(stub, lexical) -> None:
    name, ids = lexical
    too_long = "x" * (64 * 1024 + 1)
    cases = [
        (stub.Search, pb.SearchRequest(collection=name, top_k=3), "MISSING_QUERY"),
        (stub.Search, pb.SearchRequest(collection=name, text=too_long, top_k=3), "TEXT_TOO_LONG"),
        (stub.Search, pb.SearchRequest(collection=name, text="fox", top_k=0), "TOP_K_OUT_OF_RANGE"),
        (stub.Search, pb.SearchRequest(collection=name, text="fox", top_k=3, filter=dict_to_struct({"$regex": 1})), "BAD_FILTER"),
        (stub.SearchBatch, pb.SearchBatchRequest(collection=name, queries=[vec(np.ones(DIM))] * 2, texts=["a"], top_k=3), "BATCH_MISMATCH"),
        (stub.SearchBatch, pb.SearchBatchRequest(collection=name, queries=[vec(np.ones(DIM))], texts=["a", "b"], top_k=3), "BATCH_MISMATCH"),
        (stub.SearchBatch, pb.SearchBatchRequest(collection=name, texts=["a"] * 5, top_k=3), "BATCH_TOO_LARGE"),
        (stub.SearchBatch, pb.SearchBatchRequest(collection=name, top_k=3), "EMPTY_BATCH"),
        (stub.SearchBatch, pb.SearchBatchRequest(collection=name, texts=["ok", too_long], top_k=3), "TEXT_TOO_LONG"),
        (stub.Upsert, pb.UpsertRequest(collection=name, items=[
            pb.Item(id=ids["fox"], vector=vec(np.ones(DIM)), text="new fox text"),
            pb.Item(id=ids["dog"], vector=vec(np.ones(DIM)), text=too_long)]), "TEXT_TOO_LONG"),
    ]
    for call, request, reason in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
        assert error_reason(caught.value) == reason, caught.value.details()
    # The refused upsert wrote nothing, not even its valid first item.
    assert stub.GetItems(pb.GetItemsRequest(collection=name, ids=[ids["fox"]])).items[0].text == DOCS["fox"][0]
    # A missing collection is still NOT_FOUND for a text search.
    with pytest.raises(grpc.RpcError) as caught:
        stub.Search(pb.SearchRequest(collection="nope", text="fox", top_k=3))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
