"""SDK side of hybrid retrieval against a recording gateway on port 0: what the sync and
the async client send for mode/fusion/alpha/rrf_k/depth and lexical collections, and how
they read per-retriever scores, the mode and fusion, lexical summaries and stored texts."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from contentembed.client import AsyncClient, Client, Hit
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as search_pb
from tests.support.recording_gateway import RecordingGateway, recording_gateway


@pytest.fixture
def gateway() -> Iterator[tuple[RecordingGateway, str]]:
    with recording_gateway() as running:
        yield running


EXPECTED_HITS = [
    Hit("both", pytest.approx(0.9), {}, 0, "", dense_score=pytest.approx(0.8),
        lexical_score=pytest.approx(7.5), dense_rank=2, lexical_rank=1),
    Hit("words", pytest.approx(0.5), {}, 0, "", lexical_score=pytest.approx(6.0), lexical_rank=2),
    # A dense score of exactly 0 is a score, not "absent".
    Hit("meaning", pytest.approx(0.4), {}, 0, "", dense_score=0.0, dense_rank=1),
]


def test_sync_and_async_send_the_same_retrieval_options_and_read_the_same_hits(gateway) -> None:
    servicer, address = gateway
    options = dict(mode="hybrid", fusion="minmax", alpha=0.0, rrf_k=30, depth=50)
    with Client(address, timeout=5.0) as client:
        sync_result = client.search("shop", text="kettle", top_k=3, **options)
        sync_batch = client.search_batch("shop", ["kettle", "mug"], top_k=3, **options)

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(address, timeout=5.0) as client:
            return (await client.search("shop", text="kettle", top_k=3, **options),
                    await client.search_batch("shop", ["kettle", "mug"], top_k=3, **options))

    async_result, async_batch = asyncio.run(main())
    single_sync, batch_sync, single_async, batch_async = servicer.requests
    assert single_sync == single_async and batch_sync == batch_async
    retrieval = single_sync.retrieval
    assert retrieval.mode == search_pb.RETRIEVAL_MODE_HYBRID
    assert retrieval.fusion == search_pb.FUSION_METHOD_MINMAX
    # alpha=0 (lexical only) is sent as set, not dropped as a default.
    assert retrieval.HasField("alpha") and retrieval.alpha == 0.0
    assert (retrieval.rrf_k, retrieval.depth) == (30, 50)
    assert batch_sync.retrieval == retrieval
    for result in (sync_result, async_result, *sync_batch, *async_batch):
        assert (result.mode, result.fusion) == ("hybrid", "minmax")
        assert result.hits == EXPECTED_HITS


def test_options_left_out_leave_retrieval_unset_for_the_gateways_defaults(gateway) -> None:
    servicer, address = gateway
    with Client(address, timeout=5.0) as client:
        client.search("shop", text="kettle")
        client.search("shop", text="kettle", mode="lexical")
        client.search_batch("shop", ["kettle"])
    default, lexical, batch = servicer.requests
    assert not default.HasField("retrieval") and not batch.HasField("retrieval")
    assert lexical.retrieval.mode == search_pb.RETRIEVAL_MODE_LEXICAL
    assert not lexical.retrieval.HasField("alpha") and lexical.retrieval.fusion == 0


@pytest.mark.parametrize("options", [{"mode": "bm25"}, {"mode": "HYBRID"}, {"fusion": "mean"}])
def test_unknown_mode_or_fusion_names_are_refused_before_any_call(gateway, options) -> None:
    servicer, address = gateway
    with Client(address, timeout=5.0) as client:
        with pytest.raises(ValueError, match="must be one of"):
            client.search("shop", text="kettle", **options)
        with pytest.raises(ValueError, match="must be one of"):
            client.search_batch("shop", ["kettle"], **options)
    assert servicer.requests == []


def test_lexical_collections_are_created_and_summarised(gateway) -> None:
    servicer, address = gateway
    with Client(address, timeout=5.0) as client:
        created = client.create_collection("docs", lexical=True, language="german")
        plain = client.create_collection("plain")
        english = client.get_collection("hybrid")
        dense = client.get_collection("dense")
        with pytest.raises(ValueError, match="lexical=True"):
            client.create_collection("docs", language="german")
    hybrid_request, plain_request = servicer.requests[:2]
    assert hybrid_request.lexical == types_pb2.LexicalConfig(enabled=True, language="german")
    assert not plain_request.HasField("lexical")
    assert (created.collection.lexical, created.collection.lexical_language) == (True, "german")
    assert (plain.collection.lexical, plain.collection.lexical_language) == (False, "")
    # The server's "" is its default language, english.
    assert (english.lexical, english.lexical_language) == (True, "english")
    assert (dense.lexical, dense.lexical_language) == (False, "")
    assert len(servicer.requests) == 4  # the refused call never left the client


def test_lexical_only_collections_are_created_and_summarised(gateway) -> None:
    servicer, address = gateway
    with Client(address, timeout=5.0) as client:
        created = client.create_collection("words", lexical_only=True, language="french")
        for refused in ({"space_id": "s"}, {"model": "m"}, {"modality": "image"}):
            with pytest.raises(ValueError, match="lexical-only"):
                client.create_collection("words", lexical_only=True, **refused)
        hybrid = client.get_collection("hybrid")
    request = servicer.requests[0]
    # lexical_only implies the lexical index: enabled is set with it.
    assert request.lexical == types_pb2.LexicalConfig(
        enabled=True, language="french", lexical_only=True
    )
    info = created.collection
    assert (info.lexical, info.lexical_only, info.lexical_language) == (True, True, "french")
    assert (hybrid.lexical, hybrid.lexical_only) == (True, False)
    assert len(servicer.requests) == 2  # the refused calls never left the client


def test_stored_documents_carry_their_text(gateway) -> None:
    _, address = gateway
    with Client(address, timeout=5.0) as client:
        documents = client.get_documents("shop", ["a", "b"]).documents
    assert [(d.id, d.text) for d in documents] == [("a", "a gooseneck kettle"), ("b", "")]


@pytest.mark.parametrize("method", ["search", "search_batch", "create_collection"])
def test_the_async_client_takes_the_same_arguments(method: str) -> None:
    def parameters(cls: type) -> list[tuple[str, Any, Any]]:
        signature = inspect.signature(getattr(cls, method))
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    assert parameters(Client) == parameters(AsyncClient)
