"""The gateway's search options over in-memory shards: top_k 0, offset pages, a score
threshold, ef and a filter passed to every shard, and the bounds on each."""

from __future__ import annotations

from dataclasses import replace

import pytest

from contentembed.services.common.errors import InvalidArgument, NotFound
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.search import Query
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon

WORDS = [f"item {i}" for i in range(40)]


def stack(**config):
    shards = [FakeShard(0), FakeShard(1), FakeShard(2)]
    gateway = fake_gateway([FakeEncoder("space-a")], shards, **config)
    gateway.create_collection("shop", "", False, soon())
    gateway.upsert_documents(
        "shop",
        [Document(f"d{i}", text, metadata={"n": i, "even": i % 2 == 0}) for i, text in enumerate(WORDS)],
        soon(),
    )
    return gateway, shards


def ids(outcome) -> list[str]:
    return [hit.id for hit in outcome.hits]


def test_top_k_0_is_the_configured_default() -> None:
    gateway, _ = stack(default_top_k=7)
    assert len(gateway.search(Query("shop", "coffee", 0, soon())).hits) == 7


def test_pages_concatenate_to_the_unpaged_ranking() -> None:
    gateway, _ = stack()
    whole = ids(gateway.search(Query("shop", "coffee", 30, soon())))
    pages = [ids(gateway.search(Query("shop", "coffee", 10, soon(), offset=offset)))
             for offset in (0, 10, 20)]
    assert sum(pages, []) == whole and len(whole) == 30
    last = gateway.search(Query("shop", "coffee", 10, soon(), offset=35))
    assert ids(last) == ids(gateway.search(Query("shop", "coffee", 40, soon())))[35:]


def test_a_threshold_drops_the_tail() -> None:
    gateway, _ = stack()
    whole = gateway.search(Query("shop", "coffee", 20, soon())).hits
    cut = whole[5].score
    kept = gateway.search(Query("shop", "coffee", 20, soon(), score_threshold=cut)).hits
    assert [h.id for h in kept] == [h.id for h in whole if h.score >= cut]
    assert len(kept) < len(whole) and all(h.score >= cut for h in kept)


def test_ef_and_filter_reach_every_shard_and_the_filter_applies() -> None:
    gateway, shards = stack()
    wanted = {"$and": [{"even": True}, {"n": {"$gte": 10, "$lt": 30}}]}
    outcome = gateway.search(Query("shop", "coffee", 40, soon(), ef=64, metadata_filter=wanted))
    assert len(outcome.hits) == 10
    assert all(h.metadata["even"] and 10 <= h.metadata["n"] < 30 for h in outcome.hits)
    for shard in shards:
        name, arguments = shard.calls[-1]
        assert name == "search" and arguments[-2:] == (64, wanted)


def test_offset_pages_a_merge_across_collections() -> None:
    gateway, _ = stack()
    gateway.create_collection("more", "", False, soon())
    gateway.upsert_documents("more", [Document(f"m{i}", f"more {i}") for i in range(10)], soon())
    query = Query("shop", "coffee", 20, soon(), also_collections=["more"])
    whole = [(h.collection, h.id) for h in gateway.search(query).hits]
    paged = [(h.collection, h.id)
             for offset in (0, 10) for h in gateway.search(replace(query, top_k=10, offset=offset)).hits]
    assert paged == whole


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"top_k": 101}, "TOP_K_OUT_OF_RANGE"),
        ({"top_k": -1}, "TOP_K_OUT_OF_RANGE"),
        ({"top_k": 10, "offset": 91}, "TOP_K_OUT_OF_RANGE"),  # offset + top_k above max_top_k
        ({"ef": 10_001}, "EF_OUT_OF_RANGE"),
        ({"metadata_filter": {"n": {"$gt": "5"}}}, "BAD_FILTER"),
        ({"metadata_filter": {"$nor": [{"n": 1}]}}, "BAD_FILTER"),
    ],
)
def test_the_bounds_are_the_gateways(changes: dict, reason: str) -> None:
    gateway, shards = stack(max_top_k=100)
    before = len(shards[0].calls)
    with pytest.raises(InvalidArgument) as caught:
        gateway.search(replace(Query("shop", "coffee", 10, soon()), **changes))
    assert caught.value.reason == reason
    assert len(shards[0].calls) == before  # refused before any shard was asked


def test_offset_plus_top_k_at_the_limit_is_served() -> None:
    gateway, _ = stack(max_top_k=40)
    assert len(gateway.search(Query("shop", "coffee", 10, soon(), offset=30)).hits) == 10


def test_more_like_this_searches_with_the_items_vector_and_leaves_it_out() -> None:
    gateway, shards = stack()
    like = gateway.search(Query("shop", "", 5, soon(), item_id="d3"))
    # The same ranking as a search with d3's text (its vector), d3 itself left out.
    by_text = ids(gateway.search(Query("shop", WORDS[3], 6, soon())))
    assert by_text[0] == "d3" and ids(like) == by_text[1:]
    paged = gateway.search(Query("shop", "", 2, soon(), item_id="d3", offset=2,
                                 metadata_filter={"even": True}))
    assert all(h.metadata["even"] and h.id != "d3" for h in paged.hits) and len(paged.hits) == 2
    # Only the item's own shard was asked for its vector.
    assert sum(1 for shard in shards for call in shard.calls if call[0] == "get_vector") == 2


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"item_id": "nope"}, NotFound, "ITEM_NOT_FOUND"),
        ({"item_id": "d1", "version": "live"}, InvalidArgument, "ONE_COLLECTION_ONLY"),
        ({"item_id": "d1", "also_collections": ["shop2"]}, InvalidArgument, "ONE_COLLECTION_ONLY"),
        ({"item_id": "x" * 300}, InvalidArgument, "ID_TOO_LONG"),
    ],
)
def test_more_like_this_refusals(changes: dict, error: type, reason: str) -> None:
    gateway, _ = stack()
    with pytest.raises(error) as caught:
        gateway.search(replace(Query("shop", "", 5, soon()), **changes))
    assert caught.value.reason == reason
