"""Lexical-only collections on the index service over real gRPC on port 0: created with
lexical {enabled, lexical_only} and no space, written with text and no vector, searched by
text; every dense or versioned call refused with its code and reason; a restart from the
data directory finds every written item."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.protoconv import dict_to_struct, struct_to_dict
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test

ONLY = types_pb2.LexicalConfig(enabled=True, language="english", lexical_only=True)
DOCS = {
    "fox": ("the quick brown fox jumps", {"kind": "animal"}),
    "dog": ("a lazy dog sleeps all day", {"kind": "animal"}),
    "runner": ("she runs marathons", {"kind": "person"}),
    "cpp": ("C++ templates explained", {"kind": "book"}),
}


def vec(values) -> types_pb2.Vector:
    array = np.asarray(values, dtype="<f4")
    return types_pb2.Vector(data=array.tobytes(), dim=array.size, dtype=types_pb2.DTYPE_FLOAT32)


def items() -> list[pb.Item]:
    return [pb.Item(id=key, text=text, metadata=dict_to_struct(meta)) for key, (text, meta) in DOCS.items()]


@pytest.fixture(scope="module")
def index_runtime():
    with running_service(IndexService, settings_for_test(IndexSettings)) as runtime:
        yield runtime


@pytest.fixture
def stub(index_runtime, channel_to) -> pb_grpc.IndexServiceStub:
    return pb_grpc.IndexServiceStub(channel_to(index_runtime.address))


@pytest.fixture
def name(stub, request: pytest.FixtureRequest):
    """A lexical-only collection holding DOCS, deleted after the test."""
    collection = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:50]
    created = stub.CreateCollection(pb.CreateCollectionRequest(name=collection, lexical=ONLY))
    assert created.created
    stub.Upsert(pb.UpsertRequest(collection=collection, items=items()))
    yield collection
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=collection))


def refused(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    return error.value.code(), error_reason(error.value)


def lexical_ids(stub, name: str, text: str, **kwargs) -> list[str]:
    response = stub.Search(pb.SearchRequest(collection=name, text=text, top_k=10, **kwargs))
    assert list(response.hits) == []
    return [h.id for h in response.lexical_hits]


def test_collection_reports_lexical_only_without_space_or_dim(stub, name) -> None:
    collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert collection.lexical.enabled and collection.lexical.lexical_only
    assert collection.lexical.language == "english"
    assert (collection.space_id, collection.dim, collection.item_count) == ("", 0, 4)
    again = stub.CreateCollection(pb.CreateCollectionRequest(name=name, lexical=ONLY, exist_ok=True))
    assert not again.created and again.collection.lexical.lexical_only


def test_text_search_batch_filters_and_writes(stub, name) -> None:
    assert set(lexical_ids(stub, name, "running foxes")) == {"fox", "runner"}
    assert lexical_ids(stub, name, "fox dog", filter=dict_to_struct({"kind": "book"})) == []
    batch = stub.SearchBatch(pb.SearchBatchRequest(collection=name, texts=["templates", "sleeping dogs"], top_k=3))
    assert [[h.id for h in r.lexical_hits] for r in batch.results] == [["cpp"], ["dog"]]
    assert batch.space_id == ""
    stub.Upsert(pb.UpsertRequest(collection=name, items=[pb.Item(id="fox", text="purple elephant")]))
    assert lexical_ids(stub, name, "elephant") == ["fox"] and lexical_ids(stub, name, "quick brown") == []
    assert stub.DeleteItems(pb.DeleteItemsRequest(collection=name, ids=["dog", "nope"])).deleted_count == 1
    assert lexical_ids(stub, name, "dog") == []
    listed = stub.ListItems(pb.ListItemsRequest(collection=name))
    assert [i.id for i in listed.items] == ["cpp", "fox", "runner"]
    assert struct_to_dict(listed.items[-1].metadata) == {"kind": "person"}


def test_get_items_returns_text_and_no_vector(stub, name) -> None:
    got = stub.GetItems(pb.GetItemsRequest(collection=name, ids=["runner", "missing", "cpp"]))
    assert [(i.id, i.text) for i in got.items] == [("runner", DOCS["runner"][0]), ("cpp", DOCS["cpp"][0])]
    assert all(not i.HasField("vector") for i in got.items)
    assert struct_to_dict(got.items[0].metadata) == {"kind": "person"}
    assert list(got.missing_ids) == ["missing"]


def test_create_refusals(stub) -> None:
    create = stub.CreateCollection
    for request in (
        pb.CreateCollectionRequest(name="bad1", lexical=ONLY, space_id="s@1"),
        pb.CreateCollectionRequest(name="bad2", lexical=ONLY, dim=8),
        pb.CreateCollectionRequest(name="bad3", lexical=ONLY, space_id="s@1", dim=8),
        pb.CreateCollectionRequest(name="bad4", space_id="s@1", dim=8,
                                   lexical=types_pb2.LexicalConfig(lexical_only=True)),
    ):
        assert refused(create, request) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_LEXICAL_CONFIG")
    names = [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections]
    assert not any(n.startswith("bad") for n in names)


def test_write_refusals(stub, name) -> None:
    upsert = stub.Upsert
    with_vector = pb.UpsertRequest(collection=name, items=[pb.Item(id="v", text="words", vector=vec([1, 0]))])
    assert refused(upsert, with_vector) == (grpc.StatusCode.INVALID_ARGUMENT, "VECTOR_NOT_EXPECTED")
    no_text = pb.UpsertRequest(collection=name, items=[pb.Item(id="t1", text="words"), pb.Item(id="t2")])
    assert refused(upsert, no_text) == (grpc.StatusCode.INVALID_ARGUMENT, "TEXT_REQUIRED")
    got = stub.GetItems(pb.GetItemsRequest(collection=name, ids=["v", "t1", "t2"]))
    assert list(got.items) == []  # nothing of a refused write was applied


def test_dense_search_and_version_refusals(stub, name) -> None:
    dense = pb.SearchRequest(collection=name, query=vec([1, 0, 0]), top_k=3)
    assert refused(stub.Search, dense) == (grpc.StatusCode.FAILED_PRECONDITION, "DENSE_NOT_ENABLED")
    hybrid = pb.SearchRequest(collection=name, query=vec([1, 0, 0]), text="fox", top_k=3)
    assert refused(stub.Search, hybrid) == (grpc.StatusCode.FAILED_PRECONDITION, "DENSE_NOT_ENABLED")
    batch = pb.SearchBatchRequest(collection=name, queries=[vec([1, 0])], top_k=3)
    assert refused(stub.SearchBatch, batch) == (grpc.StatusCode.FAILED_PRECONDITION, "DENSE_NOT_ENABLED")
    begin = pb.BeginVersionRequest(collection=name, version="v2", space_id="s@2", dim=8)
    assert refused(stub.BeginVersion, begin) == (grpc.StatusCode.FAILED_PRECONDITION, "LEXICAL_ONLY")
    load = pb.LoadBundleRequest(collection=name, version="v2", path="anywhere")
    assert refused(stub.LoadBundle, load) == (grpc.StatusCode.FAILED_PRECONDITION, "LEXICAL_ONLY")
    header = pb.UploadBundleRequest(header=pb.UploadHeader(collection=name, version="v2", manifest=b"{}"))
    assert refused(lambda r: stub.UploadBundle(iter([r])), header) == (
        grpc.StatusCode.FAILED_PRECONDITION, "LEXICAL_ONLY"
    )
    collection = stub.GetCollection(pb.GetCollectionRequest(name=name)).collection
    assert list(collection.versions) == ["live"] and list(collection.pending_versions) == []


def test_a_restart_finds_every_written_item(tmp_path, channel_to) -> None:
    settings = settings_for_test(IndexSettings, data_dir=tmp_path, snapshot_every_ops=3)
    written: dict[str, str] = {}
    with running_service(IndexService, settings) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs", lexical=ONLY))
        for batch in range(5):  # past several snapshots: snapshot + WAL on restart
            batch_items = [pb.Item(id=f"d{batch}-{i}", text=f"alpha{i} beta{batch}") for i in range(4)]
            stub.Upsert(pb.UpsertRequest(collection="docs", items=batch_items))
            written.update((i.id, i.text) for i in batch_items)
        stub.DeleteItems(pb.DeleteItemsRequest(collection="docs", ids=["d0-0"]))
        del written["d0-0"]
    assert list((tmp_path / "collections" / "docs" / "versions" / "live" / "snapshots").glob("*/index.bin")) == []
    with running_service(IndexService, settings) as runtime:
        stub = pb_grpc.IndexServiceStub(channel_to(runtime.address))
        collection = stub.GetCollection(pb.GetCollectionRequest(name="docs")).collection
        assert collection.lexical.lexical_only and collection.item_count == len(written)
        got = stub.GetItems(pb.GetItemsRequest(collection="docs", ids=sorted(written)))
        assert {i.id: i.text for i in got.items} == written
        assert sorted(lexical_ids(stub, "docs", "beta3")) == [f"d3-{i}" for i in range(4)]
        assert sorted(lexical_ids(stub, "docs", "beta0")) == ["d0-1", "d0-2", "d0-3"]
