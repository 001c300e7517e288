"""AsyncClient against a real gateway, encoder and two index shards (port 0)."""

from __future__ import annotations

import asyncio

import pytest

from contentembed.client import (
    AlreadyExistsError,
    AsyncClient,
    Client,
    CollectionCreated,
    NotFoundError,
    TextDocument,
    UpsertResult,
)
from tests.service.test_gateway import DOCUMENTS, gateway_stack


def test_async_client_creates_upserts_searches_and_gets(text_encoder) -> None:
    with gateway_stack(text_encoder) as stack:

        async def main() -> None:
            async with AsyncClient(stack.gateway.address, timeout=30.0) as client:
                assert await client.health() == "SERVING"
                created = await client.create_collection("shop")
                assert isinstance(created, CollectionCreated) and created.created
                assert created.collection.name == "shop" and created.collection.shard_count == 2
                with pytest.raises(AlreadyExistsError):
                    await client.create_collection("shop")
                assert not (await client.create_collection("shop", exist_ok=True)).created

                typed = [TextDocument(d["id"], d["text"], d.get("metadata")) for d in DOCUMENTS[:6]]
                assert await client.upsert_documents("shop", typed) == UpsertResult(6, [])
                # Mappings are still accepted.
                assert (await client.upsert_documents("shop", DOCUMENTS[6:])).upserted_count == 6

                # Concurrent searches on one channel.
                results = await asyncio.gather(
                    client.search("shop", text="music in my ears without wires", top_k=3),
                    client.search("shop", text="making coffee at home", top_k=3),
                )
                assert results[0].hits[0].id in {"headphones", "earbuds"}
                assert {h.id for h in results[1].hits} <= {"espresso", "grinder", "kettle"}
                assert results[0].hits[0].metadata.get("price") in (199, 89)

                info = await client.get_collection("shop")
                assert info.item_count == len(DOCUMENTS) and info.version
                assert [c.name async for c in client.list_collections()] == ["shop"]
                assert len(await client.list_shards()) == 2
                with pytest.raises(NotFoundError) as caught:
                    await client.get_collection("nope")
                assert caught.value.code == "NOT_FOUND"

        asyncio.run(main())

        # The sync client sees the same collection, with the same typed results.
        with Client(stack.gateway.address) as client:
            assert client.search("shop", text="sleeping outdoors", top_k=1).hits[0].id in {
                "tent", "sleeping-bag"
            }


def test_async_client_creates_and_searches_a_hybrid_collection(text_encoder) -> None:
    with gateway_stack(text_encoder) as stack:

        async def main() -> None:
            async with AsyncClient(stack.gateway.address, timeout=30.0) as client:
                created = await client.create_collection("words", lexical=True, language="none")
                assert (created.collection.lexical, created.collection.lexical_language) == (
                    True, "none")
                await client.upsert_documents("words", DOCUMENTS)
                lexical, hybrid = await asyncio.gather(
                    client.search("words", text="Bluetooth", mode="lexical", top_k=5),
                    client.search("words", text="bluetooth speaker", mode="hybrid",
                                  fusion="rrf", rrf_k=5, top_k=5),
                )
                # "none": lower-casing only, so the word matches whatever its case.
                assert lexical.mode == "lexical"
                assert {h.id for h in lexical.hits} == {"earbuds", "speaker"}
                assert all(h.lexical_rank and h.dense_rank is None for h in lexical.hits)
                assert (hybrid.mode, hybrid.fusion) == ("hybrid", "rrf")
                assert hybrid.hits[0].id == "speaker"
                assert (hybrid.hits[0].dense_rank, hybrid.hits[0].lexical_rank) == (1, 1)
                assert hybrid.hits[0].score == pytest.approx(2 / 6)
                batch = await client.search_batch("words", ["kettle", "tent"], mode="lexical")
                assert [r.hits[0].id for r in batch] == ["kettle", "tent"]
                stored = await client.get_documents("words", ["tent"])
                assert stored.documents[0].text == DOCUMENTS[6]["text"]

        asyncio.run(main())
