"""Packed answers (PackedHits columns) and query_batch on the index service, over real
gRPC: the same hits, scores and metadata as the per-hit messages, and the same refusals."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.protoconv import (
    dict_to_struct,
    matrix_to_pb,
    struct_to_dict,
    vector_to_pb,
)
from contentembed.services.gateway.downstream import _answer_hits
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test

DIM = 16
COUNT = 300
TEXTS = ["red apple pie", "green apple tart", "blue berry jam", "plain bread loaf"]


def metadata_of(i: int) -> dict:
    # Every third item has none: packed answers must tell "none" from "{}" cases apart.
    return {} if i % 3 == 0 else {"n": i, "tag": f"t{i % 5}", "nested": {"ok": i % 2 == 0}}


@pytest.fixture(scope="module")
def stub():
    settings = settings_for_test(IndexSettings, max_queries_per_batch=64)
    with running_service(IndexService, settings) as runtime:
        with grpc.insecure_channel(runtime.address) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(
                name="docs", space_id="s@1", dim=DIM,
                lexical=types_pb2.LexicalConfig(enabled=True, language="english"),
            ))
            rng = np.random.default_rng(3)
            vectors = rng.normal(size=(COUNT, DIM)).astype("<f4")
            stub.Upsert(pb.UpsertRequest(collection="docs", items=[
                pb.Item(id=f"d{i}", vector=vector_to_pb(vectors[i]), metadata=dict_to_struct(metadata_of(i)),
                        text=TEXTS[i % len(TEXTS)] + f" item{i}")
                for i in range(COUNT)
            ]))
            yield stub


def unpacked(packed: pb.PackedHits) -> list[tuple[str, float, dict]]:
    scores = np.frombuffer(packed.scores, "<f4").tolist()
    assert len(scores) == len(packed.ids) == len(packed.metadata_json)
    return [(i, s, json.loads(m) if m else {}) for i, s, m in zip(packed.ids, scores, packed.metadata_json)]


def plain(hits) -> list[tuple[str, float, dict]]:
    return [(h.id, h.score, struct_to_dict(h.metadata)) for h in hits]


def same(packed_hits: list[tuple[str, float, dict]], plain_hits: list[tuple[str, float, dict]]) -> None:
    assert [h[0] for h in packed_hits] == [h[0] for h in plain_hits]
    assert [h[1] for h in packed_hits] == [h[1] for h in plain_hits]  # both float32 on the wire
    # The same metadata once both are read as a Struct (JSON keeps 3, a Struct says 3.0).
    assert [dict_to_struct(h[2]) for h in packed_hits] == [dict_to_struct(h[2]) for h in plain_hits]


QUERIES = np.random.default_rng(9).normal(size=(6, DIM)).astype("<f4")


@pytest.mark.parametrize("options", [
    {}, {"exact": True}, {"ef": 20},
    {"filter": {"tag": "t1"}},  # narrow: answered exactly over the matches
], ids=["hnsw", "exact", "own-ef", "filter"])
def test_packed_search_answers_what_the_hits_answer(stub, options) -> None:
    options = dict(options)
    metadata_filter = options.pop("filter", None)
    for query, text in zip(QUERIES, ["apple", "berry jam", "loaf", "", "item7", "tart"]):
        request = pb.SearchRequest(collection="docs", query=vector_to_pb(query), top_k=12, text=text, **options)
        if metadata_filter:
            request.filter.CopyFrom(dict_to_struct(metadata_filter))
        one = stub.Search(request)
        request.packed = True
        packed = stub.Search(request)
        assert not packed.hits and not packed.lexical_hits
        assert packed.HasField("packed_hits") and len(packed.packed_hits.ids) == 12
        same(unpacked(packed.packed_hits), plain(one.hits))
        same(unpacked(packed.packed_lexical_hits), plain(one.lexical_hits))
        assert any(metadata for _, _, metadata in unpacked(packed.packed_hits))


def test_packed_batch_and_query_batch_answer_what_queries_answer(stub) -> None:
    texts = ["apple", "berry", "bread", "tart", "pie", "jam"]
    one = stub.SearchBatch(pb.SearchBatchRequest(
        collection="docs", queries=[vector_to_pb(q) for q in QUERIES], texts=texts, top_k=7))
    packed = stub.SearchBatch(pb.SearchBatchRequest(
        collection="docs", query_batch=matrix_to_pb(QUERIES), texts=texts, top_k=7, packed=True))
    assert len(packed.results) == len(one.results) == len(QUERIES)
    for packed_result, result in zip(packed.results, one.results):
        assert not packed_result.hits
        same(unpacked(packed_result.packed_hits), plain(result.hits))
        same(unpacked(packed_result.packed_lexical_hits), plain(result.lexical_hits))
    # query_batch without packed: the per-hit messages, same answer.
    matrix_plain = stub.SearchBatch(pb.SearchBatchRequest(
        collection="docs", query_batch=matrix_to_pb(QUERIES), top_k=7))
    assert [plain(r.hits) for r in matrix_plain.results] == [plain(r.hits) for r in one.results]


def test_the_gateway_reads_packed_answers_and_those_of_older_shards(stub) -> None:
    request = pb.SearchRequest(collection="docs", query=vector_to_pb(QUERIES[0]), top_k=9, text="apple")
    older = stub.Search(request)  # what a shard that ignores `packed` answers
    request.packed = True
    newer = stub.Search(request)
    for field in ("hits", "lexical_hits"):
        from_older = _answer_hits(older, f"packed_{field}", field, 0, "docs")
        from_newer = _answer_hits(newer, f"packed_{field}", field, 0, "docs")
        assert [(h.id, h.score) for h in from_older] == [(h.id, h.score) for h in from_newer]
        assert [dict_to_struct(h.metadata) for h in from_older] == [
            dict_to_struct(h.metadata) for h in from_newer]
    broken = pb.SearchResponse(packed_hits=pb.PackedHits(ids=["a", "b"], scores=b"\0\0\0\0",
                                                         metadata_json=["", ""]))
    with pytest.raises(Exception, match="2 ids with 1 scores"):
        _answer_hits(broken, "packed_hits", "hits", 3, "docs")


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: r.queries.append(vector_to_pb(QUERIES[0])), "BATCH_MISMATCH"),
    (lambda r: r.query_batch.CopyFrom(matrix_to_pb(np.ones((2, DIM + 1)))), "DIMENSION_MISMATCH"),
    (lambda r: setattr(r.query_batch, "count", 3), "VECTOR_SIZE_MISMATCH"),
    (lambda r: r.query_batch.CopyFrom(matrix_to_pb(np.full((2, DIM), np.nan))), "VECTOR_NOT_FINITE"),
    (lambda r: r.query_batch.CopyFrom(matrix_to_pb(np.zeros((2, DIM)))), "VECTOR_ZERO"),
], ids=["both", "dim", "size", "nan", "zero"])
def test_a_bad_query_batch_is_refused(stub, mutate, reason) -> None:
    request = pb.SearchBatchRequest(collection="docs", query_batch=matrix_to_pb(QUERIES[:2]), top_k=3, packed=True)
    mutate(request)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SearchBatch(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == reason
