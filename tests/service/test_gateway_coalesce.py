"""Shard calls coalesced under load, through a real gateway and real shards: concurrent
searches answered as one-by-one searches answer them, and some of them went out as
SearchBatch calls (shard_max_in_flight 1 forces it at a handful of callers)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from contentembed.client import Client
from contentembed.services.gateway.coalesce import CoalescingShard
from tests.support.stacks import gateway_stack

WORDS = ["red", "green", "blue", "wool", "steel", "glass", "lamp", "chair", "coat", "mug",
         "kettle", "scarf", "table", "vase", "brush"]
DOCS = [{"id": f"d{i}", "text": f"{WORDS[i % 15]} {WORDS[(i * 7) % 15]} {WORDS[(i * 3) % 15]} item {i}",
         "metadata": {"n": i, "even": i % 2 == 0}} for i in range(60)]
QUERIES = [f"{a} {b}" for a in WORDS[:8] for b in WORDS[8:12]]  # 32 distinct queries


@pytest.fixture(scope="module")
def gateway(text_encoder):
    with gateway_stack(text_encoder, shard_max_in_flight=1) as runtime:
        with Client(runtime.address) as client:
            client.create_collection("goods", lexical=True)
            assert client.upsert_documents("goods", DOCS).upserted_count == len(DOCS)
        yield runtime


def answer(client: Client, query: str, mode: str) -> list[tuple[str, float, dict]]:
    result = client.search("goods", query, top_k=5, mode=mode, filter={"even": True}
                           if mode == "dense" else None)
    assert not result.partial
    return [(hit.id, round(hit.score, 5), hit.metadata) for hit in result.hits]


@pytest.mark.parametrize("mode", ["dense", "hybrid", "lexical"])
def test_concurrent_searches_coalesce_and_answer_as_alone(gateway, mode: str) -> None:
    shards = gateway.service.gateway.shards
    assert all(isinstance(shard, CoalescingShard) for shard in shards)
    with Client(gateway.address) as client:
        alone = {query: answer(client, query, mode) for query in QUERIES}  # one at a time
        before = sum(shard.batches_sent for shard in shards)
        for _ in range(5):  # concurrency is the test's to create, not to guarantee
            with ThreadPoolExecutor(len(QUERIES)) as pool:
                together = dict(zip(QUERIES, pool.map(lambda q: answer(client, q, mode), QUERIES)))
            assert together == alone
            if sum(shard.batches_sent for shard in shards) > before:
                break
    assert sum(shard.batches_sent for shard in shards) > before, "no search was coalesced"
    # Operators see it on /metrics: one observation per batch, its size summed.
    batches = sum(gateway.registry.get_sample_value(
        "contentembed_shard_batch_queries_count", {"shard": str(n)}) or 0 for n in range(2))
    batched = sum(gateway.registry.get_sample_value(
        "contentembed_shard_batch_queries_sum", {"shard": str(n)}) or 0 for n in range(2))
    assert batches == sum(shard.batches_sent for shard in shards)
    assert batched == sum(shard.queries_batched for shard in shards) >= batches
    assert any(hits for hits in alone.values())
