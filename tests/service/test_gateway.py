"""Gateway over real gRPC: real encoder, two real index shards, all on port 0."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from contentembed.client import ApiError, Client, UpsertResult
from contentembed.encoder.v1 import encoder_service_pb2 as encoder_pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as encoder_grpc
from contentembed.index.v1 import index_service_pb2 as index_pb
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import running_service, settings_for_test

DOCUMENTS = [
    {"id": "headphones", "text": "over-ear noise cancelling wireless headphones", "metadata": {"price": 199}},
    {"id": "earbuds", "text": "true wireless bluetooth earbuds with charging case", "metadata": {"price": 89}},
    {"id": "speaker", "text": "waterproof portable bluetooth speaker for the beach"},
    {"id": "espresso", "text": "espresso machine with milk frother"},
    {"id": "grinder", "text": "burr coffee grinder with 40 settings"},
    {"id": "kettle", "text": "gooseneck electric kettle for pour-over coffee"},
    {"id": "tent", "text": "two-person backpacking tent, 1.4 kg"},
    {"id": "sleeping-bag", "text": "down sleeping bag rated to minus ten degrees"},
    {"id": "stove", "text": "compact camping stove that runs on gas canisters"},
    {"id": "yoga-mat", "text": "non-slip yoga mat, 6 mm thick"},
    {"id": "dumbbells", "text": "adjustable dumbbells from 2 to 24 kg"},
    {"id": "running-shoes", "text": "cushioned road running shoes for long distances"},
]


@dataclass
class Stack:
    gateway: object
    shards: list
    encoder: object


@contextmanager
def gateway_stack(text_encoder, shard_count: int = 2, index_overrides: dict | None = None,
                  **gateway_overrides):
    with ExitStack() as stack:
        shards = [
            stack.enter_context(
                running_service(
                    IndexService,
                    settings_for_test(IndexSettings, shard_index=i, shard_count=shard_count,
                                      **(index_overrides or {})),
                )
            )
            for i in range(shard_count)
        ]
        settings = settings_for_test(
            GatewaySettings,
            encoder_endpoints=[text_encoder.address],
            index_endpoints=[s.address for s in shards],
            downstream_wait_s=30.0,
            **gateway_overrides,
        )
        gateway = stack.enter_context(running_service(GatewayService, settings))
        assert gateway.load_error is None, gateway.load_error
        yield Stack(gateway, shards, text_encoder)


@pytest.fixture(scope="module")
def loaded(text_encoder):
    with gateway_stack(text_encoder) as stack:
        with Client(stack.gateway.address) as client:
            client.create_collection("shop")
            assert client.upsert_documents("shop", DOCUMENTS) == UpsertResult(len(DOCUMENTS), [])
        yield stack


@pytest.fixture
def client(loaded):
    with Client(loaded.gateway.address) as client:
        yield client


def encode(encoder_address: str, texts: list[str]) -> np.ndarray:
    with grpc.insecure_channel(encoder_address) as channel:
        response = encoder_grpc.EncoderServiceStub(channel).Embed(
            encoder_pb.EmbedRequest(inputs=[encoder_pb.EmbedInput(text=t) for t in texts])
        )
    return np.frombuffer(response.vectors.data, "<f4").reshape(response.vectors.count, -1)


def test_documents_are_spread_over_shards_by_hash(loaded, client) -> None:
    info = client.get_collection("shop")
    assert info.item_count == len(DOCUMENTS) and info.shard_count == 2
    for shard_index, shard in enumerate(loaded.shards):
        with grpc.insecure_channel(shard.address) as channel:
            count = index_grpc.IndexServiceStub(channel).GetCollection(
                index_pb.GetCollectionRequest(name="shop")
            ).collection.item_count
        expected = sum(shard_for_id(d["id"], 2) == shard_index for d in DOCUMENTS)
        assert count == expected > 0


@pytest.mark.parametrize("query", ["music in my ears without wires", "making coffee at home", "sleeping outdoors"])
def test_merged_answer_equals_brute_force_over_all_documents(loaded, client, query) -> None:
    result = client.search("shop", text=query, top_k=5)
    vectors = encode(loaded.encoder.address, [d["text"] for d in DOCUMENTS] + [query])
    scores = vectors[:-1] @ vectors[-1]
    expected = [DOCUMENTS[i]["id"] for i in np.argsort(-scores)[:5]]
    assert [h.id for h in result.hits] == expected
    np.testing.assert_allclose([h.score for h in result.hits], np.sort(scores)[::-1][:5], atol=1e-4)
    assert {h.shard_index for h in result.hits} <= {0, 1}
    assert not result.partial and all(s.ok for s in result.shards) and len(result.shards) == 2
    assert result.space_id.startswith("all-MiniLM-L6-v2@")
    assert result.latency_ms["encode"] > 0 and result.latency_ms["total"] >= result.latency_ms["search"]


def test_metadata_travels_with_hits(client) -> None:
    top = client.search("shop", text="noise cancelling headphones", top_k=1).hits[0]
    assert (top.id, top.metadata) == ("headphones", {"price": 199})


@pytest.mark.parametrize(
    ("kwargs", "code", "mentions"),
    [
        ({"collection": "shop", "text": "", "top_k": 3}, "INVALID_ARGUMENT", "empty"),
        ({"collection": "shop", "text": "tent", "top_k": 10, "offset": 995}, "INVALID_ARGUMENT", "offset + top_k"),
        ({"collection": "shop", "text": "tent", "ef": 10_001}, "INVALID_ARGUMENT", "ef"),
        ({"collection": "shop", "text": "tent", "filter": {"price": {"$gt": "cheap"}}}, "INVALID_ARGUMENT", "number"),
        ({"collection": "shop", "text": "tent", "filter": {"$xor": [{"price": 1}]}}, "INVALID_ARGUMENT", "unknown operator"),
        ({"collection": "shop", "text": "tent", "top_k": -5}, "INVALID_ARGUMENT", "top_k"),
        ({"collection": "shop", "text": "tent", "top_k": 1_000_000}, "INVALID_ARGUMENT", "top_k"),
        ({"collection": "nope", "text": "tent", "top_k": 3}, "NOT_FOUND", "nope"),
        ({"collection": "bad name", "text": "tent", "top_k": 3}, "INVALID_ARGUMENT", "collection name"),
        ({"collection": "shop", "image": b"\x89PNG", "top_k": 3}, "FAILED_PRECONDITION", "no encoder embeds image"),
    ],
)
def test_bad_search_requests(client, kwargs, code, mentions) -> None:
    with pytest.raises(ApiError) as caught:
        client.search(**kwargs)
    assert caught.value.code == code
    assert mentions in caught.value.message
    assert client.search("shop", text="tent", top_k=1).hits[0].id == "tent"


def test_top_k_0_is_the_gateways_default(client) -> None:
    assert len(client.search("shop", text="tent", top_k=0).hits) == 10  # default_top_k


FACETS = [
    {"id": f"f{i}", "text": f"{word} number {i}", "metadata": {"price": i * 10, "kind": kind}}
    for i, (word, kind) in enumerate(
        [(w, k) for w, k in [("coffee", "drink"), ("tea", "drink"), ("tent", "camp"),
                             ("stove", "camp"), ("kettle", "kitchen"), ("mug", "kitchen")]] * 5
    )
]


def test_filter_ef_offset_and_threshold_through_the_gateway(loaded, client) -> None:
    client.create_collection("facets", exist_ok=True)
    client.upsert_documents("facets", FACETS)
    query = "hot coffee in the morning"
    wanted = {"$or": [{"kind": {"$in": ["drink", "kitchen"]}}, {"price": {"$gte": 250}}]}
    options = {"text": query, "ef": 200, "filter": wanted}

    # The filter, against brute force over the matching documents.
    texts = [d["text"] for d in FACETS]
    vectors = np.vstack([encode(loaded.encoder.address, texts[i:i + 10]) for i in range(0, len(texts), 10)])
    scores = vectors @ encode(loaded.encoder.address, [query])[0]

    def keep(m) -> bool:
        return m["kind"] in ("drink", "kitchen") or m["price"] >= 250
    expected = [FACETS[i]["id"] for i in np.argsort(-scores) if keep(FACETS[i]["metadata"])]
    whole = client.search("facets", top_k=len(expected), **options).hits
    assert [h.id for h in whole] == expected and len(expected) < len(FACETS)

    # Pages concatenate to the unpaged ranking; the last page is short.
    pages = [client.search("facets", top_k=7, offset=offset, **options).hits
             for offset in range(0, len(expected), 7)]
    assert [h.id for page in pages for h in page] == expected
    assert 0 < len(pages[-1]) <= 7

    # A threshold drops the tail, and 0 < hits <= top_k survive.
    cut = whole[len(whole) // 2].score
    kept = client.search("facets", top_k=len(expected), score_threshold=cut, **options).hits
    assert [h.id for h in kept] == [h.id for h in whole if h.score >= cut]
    assert all(h.score >= cut for h in kept) and len(kept) < len(whole)
    assert client.search("facets", score_threshold=2.0, **options).hits == []

    # The async SDK takes the same options.
    import asyncio

    from contentembed.client.aio import AsyncClient

    async def paged() -> list[str]:
        async with AsyncClient(loaded.gateway.address) as aclient:
            result = await aclient.search("facets", top_k=5, offset=5, score_threshold=-1.0, **options)
        return [h.id for h in result.hits]

    assert asyncio.run(paged()) == expected[5:10]


def test_more_like_this_searches_with_a_stored_items_vector(loaded, client) -> None:
    vectors = encode(loaded.encoder.address, [d["text"] for d in DOCUMENTS[:10]])
    vectors = np.vstack([vectors, encode(loaded.encoder.address, [d["text"] for d in DOCUMENTS[10:]])])
    source = [d["id"] for d in DOCUMENTS].index("kettle")
    order = np.argsort(-(vectors @ vectors[source]))
    expected = [DOCUMENTS[i]["id"] for i in order if DOCUMENTS[i]["id"] != "kettle"][:4]
    result = client.search("shop", item_id="kettle", top_k=4)
    assert [h.id for h in result.hits] == expected
    with pytest.raises(ApiError) as caught:
        client.search("shop", item_id="no-such-item")
    assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "ITEM_NOT_FOUND")


def test_a_vector_query_equals_the_text_query_it_was_embedded_from(loaded, client) -> None:
    text = "coffee for the morning"
    by_text = client.search("shop", text, top_k=5)
    vector = encode(loaded.encoder.address, [text])[0]
    space = client.get_collection("shop").space_id
    for given in (vector, [float(v) for v in vector]):  # an array or a plain sequence
        by_vector = client.search("shop", vector=given, vector_space_id=space, top_k=5)
        assert [h.id for h in by_vector.hits] == [h.id for h in by_text.hits]
        assert [h.score for h in by_vector.hits] == pytest.approx([h.score for h in by_text.hits], abs=1e-5)
        assert not by_vector.cache_hit and by_vector.space_id == space
    # With the options of a text search: a filter, a page.
    filtered = client.search("shop", vector=vector, vector_space_id=space, top_k=3,
                             filter={"price": {"$gte": 0}})
    assert {h.id for h in filtered.hits} <= {"headphones", "earbuds"}

    with pytest.raises(ApiError) as caught:
        client.search("shop", vector=vector, vector_space_id="other-space@1")
    assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "SPACE_MISMATCH")
    with pytest.raises(ApiError) as caught:
        client.search("shop", vector=vector[:-1], vector_space_id=space)
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "DIMENSION_MISMATCH")
    with pytest.raises(ValueError):
        client.search("shop", vector=vector)  # no space
    with pytest.raises(ValueError):
        client.search("shop", "text", vector=vector, vector_space_id=space)


def test_get_documents_answers_across_shards_in_request_order(loaded, client) -> None:
    ids = ["tent", "no-such-id", "stove", "headphones", "kettle", "grinder", "also-missing", "kettle"]
    result = client.get_documents("shop", ids)
    assert [d.id for d in result.documents] == ["tent", "stove", "headphones", "kettle", "grinder", "kettle"]
    assert result.missing_ids == ["no-such-id", "also-missing"]
    assert {d.shard_index for d in result.documents} == {0, 1}  # both shards asked
    for document in result.documents:
        assert document.shard_index == shard_for_id(document.id, 2)
        assert document.vector is None
    by_id = {d.id: d for d in result.documents}
    assert by_id["headphones"].metadata == {"price": 199} and by_id["tent"].metadata == {}

    # With vectors: the stored ones, which are the encoder's vectors of the texts.
    with_vectors = client.get_documents("shop", ["kettle", "tent"], with_vectors=True)
    expected = encode(loaded.encoder.address, [DOCUMENTS[5]["text"], DOCUMENTS[6]["text"]])
    got = np.array([d.vector for d in with_vectors.documents], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # The async SDK too.
    import asyncio

    from contentembed.client.aio import AsyncClient

    async def fetch():
        async with AsyncClient(loaded.gateway.address) as aclient:
            return await aclient.get_documents("shop", ids)

    assert asyncio.run(fetch()) == result
    with pytest.raises(ApiError) as caught:
        client.get_documents("nope", ["kettle"])
    assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "COLLECTION_NOT_FOUND")


def test_search_batch_equals_single_searches(loaded, client) -> None:
    texts = ["coffee for the morning", "camping in the mountains", "music on the go",
             "coffee for the morning"]
    singles = [client.search("shop", text, top_k=4) for text in texts]
    batch = client.search_batch("shop", texts, top_k=4)
    assert len(batch) == len(texts)
    for single, answered in zip(singles, batch):
        assert [h.id for h in answered.hits] == [h.id for h in single.hits]
        assert [h.score for h in answered.hits] == pytest.approx([h.score for h in single.hits], abs=1e-5)
        assert answered.space_id == single.space_id and not answered.partial
        assert [s.ok for s in answered.shards] == [True, True]
    # Every text was searched above, so all come from the cache now.
    assert all(result.cache_hit for result in batch)
    fresh = client.search_batch("shop", ["a brand new query about tents", "another new one"], top_k=2)
    assert [r.cache_hit for r in fresh] == [False, False]

    filtered = client.search_batch("shop", texts[:2], top_k=4, filter={"price": {"$gte": 0}})
    assert all({h.id for h in r.hits} <= {"headphones", "earbuds"} for r in filtered)

    import asyncio

    from contentembed.client.aio import AsyncClient

    async def batched():
        async with AsyncClient(loaded.gateway.address) as aclient:
            return await aclient.search_batch("shop", texts, top_k=4)

    assert [[h.id for h in r.hits] for r in asyncio.run(batched())] == [[h.id for h in r.hits] for r in singles]
    with pytest.raises(ValueError):
        client.search_batch("shop", "one string")


def test_bad_documents_are_refused_whole(client) -> None:
    before = client.get_collection("shop").item_count
    bad_batches = [
        [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}],
        [{"id": "", "text": "x"}],
        [{"id": "ok", "text": "fine"}, {"id": "blank", "text": "   "}],
    ]
    for batch in bad_batches:
        with pytest.raises(ApiError) as caught:
            client.upsert_documents("shop", batch)
        assert caught.value.code == "INVALID_ARGUMENT"
    assert client.get_collection("shop").item_count == before


def test_upsert_replace_and_delete_documents(client) -> None:
    client.create_collection("scratch", exist_ok=True)
    client.upsert_documents("scratch", [{"id": "d1", "text": "a red bicycle"}, {"id": "d2", "text": "a blue kayak"}])
    client.upsert_documents("scratch", [{"id": "d1", "text": "a green tractor"}])
    assert client.get_collection("scratch").item_count == 2
    assert client.search("scratch", text="farm vehicle", top_k=1).hits[0].id == "d1"
    assert client.delete_documents("scratch", ["d1", "unknown"]) == 1
    assert [h.id for h in client.search("scratch", text="farm vehicle", top_k=5).hits] == ["d2"]
    names = [c.name for c in client.list_collections(page_size=1)]
    assert {"scratch", "shop"} <= set(names)
    client.delete_collection("scratch")
    with pytest.raises(ApiError) as caught:
        client.get_collection("scratch")
    assert caught.value.code == "NOT_FOUND"


def test_collection_of_another_space_is_refused(loaded, client) -> None:
    for shard in loaded.shards:
        with grpc.insecure_channel(shard.address) as channel:
            index_grpc.IndexServiceStub(channel).CreateCollection(
                index_pb.CreateCollectionRequest(name="clip-images", space_id="clip@abc", dim=384)
            )
    with pytest.raises(ApiError) as caught:
        client.search("clip-images", text="a tent", top_k=3)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "space" in caught.value.message


def test_stopped_shard_fails_or_flags_partial_per_policy(text_encoder) -> None:
    with gateway_stack(text_encoder) as stack:
        with Client(stack.gateway.address, timeout=5.0) as client:
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS)
            stack.shards[1].stop(grace=0)

            with pytest.raises(ApiError) as caught:
                client.search("shop", text="coffee", top_k=5)
            assert caught.value.code == "UNAVAILABLE"
            assert "index shard 1" in caught.value.message

            result = client.search("shop", text="coffee", top_k=5, allow_partial=True)
            assert result.partial
            by_shard = {s.shard_index: s for s in result.shards}
            assert by_shard[0].ok and not by_shard[1].ok and "UNAVAILABLE" in by_shard[1].error
            survivors = {d["id"] for d in DOCUMENTS if shard_for_id(d["id"], 2) == 0}
            assert result.hits and {h.id for h in result.hits} <= survivors


def test_partial_answers_still_work_when_the_first_shard_is_down(text_encoder) -> None:
    with gateway_stack(text_encoder) as stack:
        with Client(stack.gateway.address, timeout=5.0) as client:
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS)
            stack.gateway.service.gateway.collection_spaces.clear()  # nothing cached
            stack.shards[0].stop(grace=0)
            result = client.search("shop", text="coffee", top_k=5, allow_partial=True)
    assert result.partial and [s.ok for s in result.shards] == [False, True]
    assert result.hits and all(shard_for_id(h.id, 2) == 1 for h in result.hits)


def nested(levels: int) -> dict:
    values: dict = {"leaf": 1}
    for _ in range(levels - 1):
        values = {"k": values}
    return values


def test_metadata_beyond_the_limits_is_refused_before_anything_is_embedded(client) -> None:
    before = client.get_collection("shop").item_count
    cases = [
        ({"blob": "x" * (9 << 20)}, "METADATA_TOO_LARGE"),  # two of these broke every search
        (nested(9), "METADATA_TOO_DEEP"),
        ({"price": float("nan")}, "METADATA_NOT_FINITE"),  # was INTERNAL
        ({"sizes": [1, float("inf")]}, "METADATA_NOT_FINITE"),
    ]
    for metadata, reason in cases:
        with pytest.raises(ApiError) as caught:
            client.upsert_documents("shop", [{"id": "fine", "text": "a lamp"},
                                             {"id": "bad", "text": "a desk", "metadata": metadata}])
        assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", reason)
        assert "documents[1].metadata" in caught.value.message and len(caught.value.message) < 300
    assert client.get_collection("shop").item_count == before


LONG_NAME = "n" * 8000
HUGE_ID = "i" * 100_000


def test_oversized_strings_get_a_clear_short_error(client) -> None:
    """Echoed whole, such a string pushed the status past the trailer limit: the caller
    got RESOURCE_EXHAUSTED instead of the INVALID_ARGUMENT it needs to see."""
    cases = [
        (lambda: client.search(LONG_NAME, text="tent", top_k=1), "INVALID_ARGUMENT"),
        (lambda: client.search("shop", text="tent", top_k=1, also_collections=[LONG_NAME]), "INVALID_ARGUMENT"),
        (lambda: client.upsert_documents(LONG_NAME, [{"id": "a", "text": "x"}]), "INVALID_ARGUMENT"),
        (lambda: client.get_collection(LONG_NAME), "INVALID_ARGUMENT"),
        (lambda: client.create_collection(LONG_NAME), "INVALID_ARGUMENT"),
        (lambda: client.delete_collection(LONG_NAME), "INVALID_ARGUMENT"),
        (lambda: client.shadow_report(LONG_NAME), "INVALID_ARGUMENT"),
        (lambda: client.upsert_documents("shop", [{"id": HUGE_ID, "text": "x"}]), "INVALID_ARGUMENT"),
        (lambda: client.delete_documents("shop", [HUGE_ID]), "INVALID_ARGUMENT"),
        (lambda: client.create_collection("spaced", space_id=LONG_NAME), "FAILED_PRECONDITION"),
        (lambda: client.set_candidate("shop", LONG_NAME), "FAILED_PRECONDITION"),
    ]
    for call, code in cases:
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.code == code, caught.value.message[:200]
        assert caught.value.reason and len(caught.value.message) < 300, caught.value.message[:200]
    assert client.search("shop", text="tent", top_k=1).hits[0].id == "tent"


def test_an_answer_too_large_for_the_gateway_says_what_to_change(text_encoder) -> None:
    """Shards configured for larger metadata than the gateway: the merged answer would
    exceed the gateway's message limit, which is reported with advice, not by the transport."""
    from contentembed.services.common.protoconv import dict_to_struct

    with gateway_stack(text_encoder, index_overrides={"max_metadata_bytes": 64 * 1024, "max_top_k": 100},
                       max_message_bytes=200_000, max_top_k=10) as stack:
        with Client(stack.gateway.address, timeout=10.0) as client:
            client.create_collection("fat")
            client.upsert_documents("fat", DOCUMENTS[:6])
            for shard in stack.shards:  # metadata the shards accept and the gateway would not
                with grpc.insecure_channel(shard.address) as channel:
                    stub = index_grpc.IndexServiceStub(channel)
                    ids = [d["id"] for d in DOCUMENTS[:6]]
                    items = stub.GetItems(index_pb.GetItemsRequest(collection="fat", ids=ids)).items
                    stub.Upsert(index_pb.UpsertRequest(collection="fat", items=[
                        index_pb.Item(id=i.id, vector=i.vector, metadata=dict_to_struct({"blob": "x" * 35_000}))
                        for i in items]))
            # 35 kB each: a shard's answer (at most 5 of these six documents) fits 200 kB,
            # the merged answer of six does not.
            assert len(client.search("fat", text="coffee", top_k=4).hits) == 4
            with pytest.raises(ApiError) as caught:
                client.search("fat", text="coffee", top_k=6)
            assert (caught.value.code, caught.value.reason) == ("RESOURCE_EXHAUSTED", "ANSWER_TOO_LARGE"), caught.value.message
            assert "lower top_k" in caught.value.message
