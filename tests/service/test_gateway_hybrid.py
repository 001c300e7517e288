"""Hybrid retrieval over real gRPC: the MiniLM text encoder, two real index shards with
lexical (BM25) collections, the gateway fanning out and fusing. What each retriever finds
that the other misses, per-retriever scores and ranks, stable pages, the encoder left out
of lexical searches, the refusals with their codes and reasons, and the text kept with
each document."""

from __future__ import annotations

from contextlib import ExitStack

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.client import Client
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc
from contentembed.services.gateway.fusion import FusionParams
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.conftest import error_reason, running_service, settings_for_test
from tests.service.test_gateway import gateway_stack
from tests.service.test_gateway_routing import gateway_over
from tests.support.images import encoded, photo_like

# The product code XK-4471 is in one document; other filters carry look-alike codes that
# MiniLM embeds close to the query (dense ranks the right one 5th) but that share no
# token with it (BM25 finds only the right one).
CATALOG = [
    ("kettle", "gooseneck electric kettle for pour-over coffee", "kitchen"),
    ("cartridge", "AquaPure pitcher replacement cartridge, order code XK-4471, removes "
                  "chlorine taste", "filter"),
    ("xk4417", "XK4417 fridge water filter", "filter"),
    ("xk4470", "XK4470 water filter cartridge", "filter"),
    ("kx4471", "KX4471 shower filter", "filter"),
    ("xk4714", "XK4714 under-sink filter", "filter"),
    ("xk4771", "XK4771 faucet filter", "filter"),
    ("pitcher", "glass water pitcher with a wooden lid", "kitchen"),
    ("bottle", "insulated stainless steel water bottle, one litre", "outdoor"),
    ("tent", "two-person backpacking tent, 1.4 kg", "outdoor"),
    ("bag", "down sleeping bag rated to minus ten degrees", "outdoor"),
    ("stove", "compact camping stove that runs on gas canisters", "outdoor"),
    ("mat", "non-slip yoga mat, 6 mm thick", "sport"),
    ("grinder", "burr coffee grinder with 40 settings", "kitchen"),
]
CODE = "XK-4471"
PARAPHRASE = "gadget to heat up tea on the stove"  # the kettle, in other words

DENSE = pb.RETRIEVAL_MODE_DENSE
LEXICAL = pb.RETRIEVAL_MODE_LEXICAL
HYBRID = pb.RETRIEVAL_MODE_HYBRID


def documents() -> list[dict]:
    return [{"id": i, "text": t, "metadata": {"kind": k}} for i, t, k in CATALOG]


def create(admin, name: str, lexical: bool) -> admin_pb.CreateCollectionResponse:
    return admin.CreateCollection(admin_pb.CreateCollectionRequest(
        name=name, lexical=types_pb2.LexicalConfig(enabled=True) if lexical else None))


@pytest.fixture(scope="module")
def hybrid(text_encoder):
    with gateway_stack(text_encoder) as stack:
        channel = grpc.insecure_channel(stack.gateway.address)
        admin = admin_grpc.AdminServiceStub(channel)
        create(admin, "parts", lexical=True)
        create(admin, "plain", lexical=False)
        with Client(stack.gateway.address) as client:
            for name in ("parts", "plain"):
                assert client.upsert_documents(name, documents()).upserted_count == len(CATALOG)
        yield stack, search_grpc.SearchServiceStub(channel), admin
        channel.close()


def ask(search, text: str, top_k: int = 3, mode: int = 0, collection: str = "parts",
        **options) -> pb.SearchResponse:
    fields = {k: options.pop(k) for k in list(options)
              if k in {"offset", "filter", "metadata_fields", "omit_metadata", "also_collections",
                       "exact", "ef", "version", "score_threshold"}}
    return search.Search(pb.SearchRequest(
        collection=collection, text=text, top_k=top_k,
        retrieval=pb.RetrievalOptions(mode=mode, **options), **fields))


def ids(response) -> list[str]:
    return [hit.id for hit in response.hits]


def test_a_product_code_is_found_by_lexical_and_hybrid_but_not_by_dense_top_3(hybrid) -> None:
    _, search, _ = hybrid
    dense = ask(search, CODE, mode=DENSE)
    lexical = ask(search, CODE, mode=LEXICAL)
    fused = ask(search, CODE, mode=HYBRID)
    assert "cartridge" not in ids(dense)
    assert ids(lexical)[0] == "cartridge" and ids(fused)[0] == "cartridge"
    assert (dense.mode, lexical.mode, fused.mode) == (DENSE, LEXICAL, HYBRID)
    assert (dense.fusion, lexical.fusion, fused.fusion) == (
        pb.FUSION_METHOD_UNSPECIFIED, pb.FUSION_METHOD_UNSPECIFIED, pb.FUSION_METHOD_RRF)
    assert not fused.fused  # that flag keeps meaning "collections of several spaces"
    # Each retriever's own score and rank: found by both, the dense rank below the page.
    top = fused.hits[0]
    assert top.HasField("dense_score") and top.HasField("lexical_score")
    assert top.lexical_rank == 1 and top.dense_rank > 3
    assert top.lexical_score == pytest.approx(lexical.hits[0].score)
    k = FusionParams().rrf_k  # the gateway's default
    assert top.score == pytest.approx(1 / (k + top.dense_rank) + 1 / (k + 1))
    for hit in fused.hits[1:]:  # the look-alikes: dense only
        assert hit.dense_rank and not hit.lexical_rank and not hit.HasField("lexical_score")
    for hit in dense.hits:
        assert hit.dense_score == hit.score and not hit.HasField("lexical_score")
    assert [h.dense_rank for h in dense.hits] == [1, 2, 3]
    for hit in lexical.hits:
        assert hit.lexical_score == hit.score and not hit.HasField("dense_score")


def test_a_paraphrase_is_found_by_dense_and_hybrid_but_not_by_lexical(hybrid) -> None:
    _, search, _ = hybrid
    assert "kettle" in ids(ask(search, PARAPHRASE, mode=DENSE))
    assert "kettle" not in ids(ask(search, PARAPHRASE, top_k=10, mode=LEXICAL))
    fused = ask(search, PARAPHRASE, mode=HYBRID)
    kettle = next(hit for hit in fused.hits if hit.id == "kettle")
    assert kettle.dense_rank and not kettle.lexical_rank


def test_unspecified_mode_is_hybrid_on_a_lexical_collection_and_dense_otherwise(hybrid) -> None:
    _, search, _ = hybrid
    assert ask(search, CODE).mode == HYBRID
    plain = ask(search, CODE, collection="plain")
    assert plain.mode == DENSE and plain.fusion == pb.FUSION_METHOD_UNSPECIFIED
    assert ids(plain) == ids(ask(search, CODE, mode=DENSE))


@pytest.mark.parametrize("options", [{"depth": 14}, {"depth": 14, "fusion": pb.FUSION_METHOD_MINMAX,
                                                     "alpha": 0.4}])
def test_hybrid_pages_concatenate_to_the_unpaged_ranking(hybrid, options) -> None:
    _, search, _ = hybrid
    whole = ask(search, "water filter cartridge", top_k=12, mode=HYBRID, **options)
    pages = [ask(search, "water filter cartridge", top_k=4, mode=HYBRID, offset=offset, **options)
             for offset in (0, 4, 8)]
    assert [i for page in pages for i in ids(page)] == ids(whole) and len(set(ids(whole))) == 12
    assert [h.score for page in pages for h in page.hits] == [h.score for h in whole.hits]
    if "fusion" in options:
        assert whole.fusion == pb.FUSION_METHOD_MINMAX and 0 <= whole.hits[-1].score <= 1


def test_the_filter_reaches_both_retrievers_and_metadata_options_hold(hybrid) -> None:
    _, search, _ = hybrid
    outdoor = struct_pb2.Struct()
    outdoor.update({"kind": "outdoor"})
    fused = ask(search, "water filter stove", top_k=5, mode=HYBRID, filter=outdoor,
                metadata_fields=["kind"])
    assert fused.hits and all(h.metadata["kind"] == "outdoor" for h in fused.hits)
    assert any(h.lexical_rank for h in fused.hits)  # "stove", "water" (bottle) matched
    bare = ask(search, CODE, mode=HYBRID, omit_metadata=True, exact=True)
    assert ids(bare)[0] == "cartridge" and not any(h.metadata.fields for h in bare.hits)


def test_search_batch_answers_each_text_as_search_does(hybrid) -> None:
    _, search, _ = hybrid
    texts = [CODE, PARAPHRASE, "coffee"]
    for mode in (HYBRID, LEXICAL):
        batch = search.SearchBatch(pb.SearchBatchRequest(
            collection="parts", texts=texts, top_k=3, retrieval=pb.RetrievalOptions(mode=mode)))
        for text, result in zip(texts, batch.results):
            single = ask(search, text, mode=mode)
            assert result.mode == mode and ids(result) == ids(single)
            assert [h.dense_rank for h in result.hits] == [h.dense_rank for h in single.hits]
            assert [h.lexical_rank for h in result.hits] == [h.lexical_rank for h in single.hits]


def test_lexical_searches_never_call_the_encoder(hybrid, text_encoder) -> None:
    _, search, _ = hybrid
    before = text_encoder.service.batcher.items_run
    lexical = ask(search, "replacement cartridge for a pitcher, never asked before", mode=LEXICAL)
    assert ids(lexical)[0] == "cartridge" and not lexical.cache_hit
    assert lexical.latency.encode_ms < 1.0
    assert text_encoder.service.batcher.items_run == before
    ask(search, "replacement cartridge for a jug, never asked before", mode=HYBRID)
    assert text_encoder.service.batcher.items_run == before + 1


def test_with_the_encoder_stopped_lexical_still_answers(tmp_path) -> None:
    model = tmp_path / "tfidf.json"
    TfidfModel.fit([text for _, text, _ in CATALOG]).save(model)
    with ExitStack() as stack:
        encoder = running_service(TextEncoderService, settings_for_test(
            TextEncoderSettings, backend="tfidf", model=str(model)))
        started = encoder.__enter__()
        gateway = gateway_over(stack, [started])
        channel = stack.enter_context(grpc.insecure_channel(gateway.address))
        create(admin_grpc.AdminServiceStub(channel), "parts", lexical=True)
        with Client(gateway.address) as client:
            client.upsert_documents("parts", documents())
        search = search_grpc.SearchServiceStub(channel)
        encoder.__exit__(None, None, None)  # the only text encoder is gone
        assert ids(ask(search, CODE, mode=LEXICAL))[0] == "cartridge"
        with pytest.raises(grpc.RpcError) as caught:
            ask(search, CODE, mode=HYBRID)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def refused(call) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code().name, error_reason(caught.value)


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (pb.SearchRequest(collection="parts", text=CODE,
                          retrieval=pb.RetrievalOptions(mode=HYBRID, alpha=1.5)),
         "INVALID_ARGUMENT", "BAD_FUSION"),
        (pb.SearchRequest(collection="parts", text=CODE, retrieval=pb.RetrievalOptions(rrf_k=20_000)),
         "INVALID_ARGUMENT", "BAD_FUSION"),
        (pb.SearchRequest(collection="parts", text=CODE, retrieval=pb.RetrievalOptions(depth=1001)),
         "INVALID_ARGUMENT", "TOP_K_OUT_OF_RANGE"),
        (pb.SearchRequest(collection="parts", item_id="kettle",
                          retrieval=pb.RetrievalOptions(mode=LEXICAL)),
         "INVALID_ARGUMENT", "TEXT_QUERY_REQUIRED"),
        (pb.SearchRequest(collection="parts", image=types_pb2.Image(data=encoded(photo_like(1))),
                          retrieval=pb.RetrievalOptions(mode=HYBRID)),
         "INVALID_ARGUMENT", "TEXT_QUERY_REQUIRED"),
        (pb.SearchRequest(collection="parts", vector_space_id="any",
                          vector=types_pb2.Vector(data=np.ones(384, "<f4").tobytes(), dim=384),
                          retrieval=pb.RetrievalOptions(mode=HYBRID)),
         "INVALID_ARGUMENT", "TEXT_QUERY_REQUIRED"),
        (pb.SearchRequest(collection="parts", text=CODE, also_collections=["plain"],
                          retrieval=pb.RetrievalOptions(mode=HYBRID)),
         "INVALID_ARGUMENT", "ONE_COLLECTION_ONLY"),
        (pb.SearchRequest(collection="plain", text=CODE, retrieval=pb.RetrievalOptions(mode=LEXICAL)),
         "FAILED_PRECONDITION", "LEXICAL_NOT_ENABLED"),
        (pb.SearchRequest(collection="plain", text=CODE, retrieval=pb.RetrievalOptions(mode=HYBRID)),
         "FAILED_PRECONDITION", "LEXICAL_NOT_ENABLED"),
        (pb.SearchRequest(collection="parts", text=CODE, retrieval=pb.RetrievalOptions(mode=9)),
         "INVALID_ARGUMENT", "UNKNOWN_ENUM_VALUE"),
        (pb.SearchRequest(collection="parts", text=CODE, retrieval=pb.RetrievalOptions(fusion=9)),
         "INVALID_ARGUMENT", "UNKNOWN_ENUM_VALUE"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_refusals_say_their_code_and_reason(hybrid, text_encoder, request_, code, reason) -> None:
    _, search, _ = hybrid
    before = text_encoder.service.batcher.items_run
    assert refused(lambda: search.Search(request_)) == (code, reason)
    assert text_encoder.service.batcher.items_run == before  # refused before embedding


def test_batch_refusals_say_their_code_and_reason(hybrid) -> None:
    _, search, _ = hybrid
    bad_alpha = pb.SearchBatchRequest(collection="parts", texts=[CODE],
                                      retrieval=pb.RetrievalOptions(alpha=-1.0))
    assert refused(lambda: search.SearchBatch(bad_alpha)) == ("INVALID_ARGUMENT", "BAD_FUSION")
    not_lexical = pb.SearchBatchRequest(collection="plain", texts=[CODE],
                                        retrieval=pb.RetrievalOptions(mode=LEXICAL))
    assert refused(lambda: search.SearchBatch(not_lexical)) == (
        "FAILED_PRECONDITION", "LEXICAL_NOT_ENABLED")


def test_collections_report_their_lexical_config_and_documents_their_text(hybrid) -> None:
    stack, search, admin = hybrid
    parts = admin.GetCollection(admin_pb.GetCollectionRequest(name="parts")).collection
    plain = admin.GetCollection(admin_pb.GetCollectionRequest(name="plain")).collection
    assert parts.lexical.enabled and not plain.lexical.enabled
    listed = {c.name: c for c in admin.ListCollections(admin_pb.ListCollectionsRequest()).collections}
    assert listed["parts"].lexical.enabled and not listed["plain"].lexical.enabled
    mismatch = admin_pb.CreateCollectionRequest(name="parts", exist_ok=True)
    assert refused(lambda: admin.CreateCollection(mismatch)) == (
        "FAILED_PRECONDITION", "LEXICAL_MISMATCH")
    found = search.GetDocuments(pb.GetDocumentsRequest(collection="parts",
                                                       ids=["cartridge", "kettle", "nope"]))
    texts = {i: t for i, t, _ in CATALOG}
    assert [(d.id, d.text) for d in found.documents] == [
        ("cartridge", texts["cartridge"]), ("kettle", texts["kettle"])]
    assert list(found.missing_ids) == ["nope"]
