"""Routing over in-memory encoders and shards: the query cache forgets a space whose
encoder changed model, and the collection -> space map is refreshed, not re-asked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contentembed.services.common.errors import FailedPrecondition
from contentembed.services.gateway.ingest import Document
from contentembed.services.gateway.search import Query
from tests.support.gateway_fakes import FakeEncoder, FakeShard, fake_gateway, soon

GATEWAY_SOURCES = Path(__file__).parents[2] / "services/gateway/src/contentembed/services/gateway"


def stack():
    encoder = FakeEncoder("space-a")
    shards = [FakeShard(0), FakeShard(1)]
    for shard in shards:
        shard.add_collection("shop", "live", "space-a")
    gateway = fake_gateway([encoder], shards)
    gateway.upsert_documents("shop", [Document("a", "coffee"), Document("b", "tea")], soon())
    return gateway, encoder, shards


def test_a_repeated_query_comes_from_the_cache() -> None:
    gateway, encoder, _ = stack()
    first = gateway.search(Query("shop", "coffee", 2, soon()))
    again = gateway.search(Query("shop", "coffee", 2, soon()))
    assert not first.cache_hit and again.cache_hit
    assert [h.id for h in again.hits] == [h.id for h in first.hits] == ["a", "b"]
    assert sum(batch == ["coffee"] for batch in encoder.batches) == 1


def test_an_encoder_found_serving_another_space_drops_that_spaces_cache() -> None:
    gateway, encoder, _ = stack()
    gateway.search(Query("shop", "coffee", 2, soon()))
    assert len(gateway.cache) == 1
    encoder.space_id = "space-z"  # redeployed with another model
    assert gateway.router.refresh(soon()) == {"space-a"}
    gateway.searcher.forget_spaces({"space-a"})  # what the refresh loop does with it
    assert len(gateway.cache) == 0


def test_an_encoder_answering_in_another_space_is_refused_and_its_cache_dropped() -> None:
    gateway, encoder, _ = stack()
    gateway.search(Query("shop", "coffee", 2, soon()))
    encoder.space_id = "space-z"  # between two refreshes
    with pytest.raises(FailedPrecondition) as caught:
        gateway.search(Query("shop", "tea", 2, soon()))
    assert caught.value.reason == "SPACE_MISMATCH"
    assert len(gateway.cache) == 0  # "coffee" in space-a is gone too
    with pytest.raises(FailedPrecondition) as caught:  # no encoder of space-a any more
        gateway.search(Query("shop", "coffee", 2, soon()))
    assert caught.value.reason == "NO_ENCODER_FOR_SPACE"


def test_the_collection_space_is_asked_once_then_kept_by_the_refresh() -> None:
    gateway, _, shards = stack()
    for _ in range(3):
        gateway.search(Query("shop", "coffee", 2, soon()))
    asked = sum(method == "get_collection" for method, _ in shards[0].calls)
    gateway.refresh_collections(soon())
    assert "shop" in gateway.collection_spaces
    assert sum(method == "get_collection" for method, _ in shards[0].calls) > asked
    gateway.delete_collection("shop", soon())
    assert "shop" not in gateway.collection_spaces


def test_a_shard_refusing_the_space_forgets_it_so_the_next_search_asks_again() -> None:
    gateway, _, shards = stack()
    encoder_b = FakeEncoder("space-b")
    gateway.router.encoders.append(encoder_b)
    gateway.router.refresh(soon())
    gateway.search(Query("shop", "coffee", 2, soon()))
    for shard in shards:  # promoted through another gateway
        shard.add_version("shop", "v2", "space-b")
        shard.collections["shop"].serving = "v2"
    with pytest.raises(FailedPrecondition):
        gateway.search(Query("shop", "coffee", 2, soon()))
    assert gateway.search(Query("shop", "coffee", 2, soon())).space_ids == ["space-b"]


def test_the_gateways_domain_imports_no_grpc_and_no_generated_code() -> None:
    adapters = {"downstream.py", "service.py", "__main__.py"}
    for source in sorted(GATEWAY_SOURCES.glob("*.py")):
        if source.name in adapters:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith("grpc"), f"{source.name} imports {name}"
                assert not name.endswith("_pb2") and ".v1" not in name, f"{source.name} imports {name}"
                assert name not in {
                    "contentembed.services.common.downstream",
                    "contentembed.services.common.tracing",
                    "contentembed.services.gateway.downstream",
                }, f"{source.name} imports {name}"


def test_a_deleted_collection_is_no_longer_polled_for_its_coverage() -> None:
    """Its coverage gauge asked every shard for its size every 10 s, forever."""
    gateway, _, shards = stack()
    gateway.search(Query("shop", "coffee", 2, soon()))
    gateway.refresh_collections(soon())
    assert "shop" in gateway.monitoring.catalog.collections()
    for shard in shards:  # deleted through another gateway: this one finds out by asking
        del shard.collections["shop"]
    gateway.refresh_collections(soon())
    assert "shop" not in gateway.monitoring.catalog.collections()
    asked = sum(method == "get_collection" for method, _ in shards[0].calls)
    gateway.refresh_collections(soon())
    assert sum(method == "get_collection" for method, _ in shards[0].calls) == asked
    # Deleted through this gateway: forgotten at once.
    gateway.create_collection("shop2", "space-a", False, soon())
    gateway.search(Query("shop2", "coffee", 2, soon()))
    gateway.delete_collection("shop2", soon())
    assert "shop2" not in gateway.monitoring.catalog.collections()
