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


def test_large_answers_never_fail_a_search_that_would_succeed_alone(text_encoder) -> None:
    """Items with 8 KiB of metadata: 16 searches at top_k 1,000 (8 MB answers each) and 48
    at top_k 100, all at once, coalescing on as deployed (4 calls per shard, then
    batches). Before, batches of them exceeded 16 MiB, the shards refused them and the
    gateway answered every member UNAVAILABLE SHARDS_FAILED: 31 of 64 failed."""
    import numpy as np

    metadata = {"blob": "m" * (8 * 1024 - 40)}
    # throttle_k=0: on a machine shared with other tests the gateway may shed part of a
    # burst of 64 (retried); the client's own throttling would then turn that into local
    # refusals, which says nothing of coalescing.
    with gateway_stack(text_encoder) as runtime, \
            Client(runtime.address, timeout=120, throttle_k=0) as client:
        info, _ = client.create_collection("fat")
        for start in range(0, 2000, 250):
            client.upsert_documents("fat", [
                {"id": f"f{n}", "text": f"{WORDS[n % 15]} item {n}", "metadata": metadata}
                for n in range(start, start + 250)])
        rng = np.random.default_rng(3)
        queries = rng.normal(size=(64, info.dim)).astype(np.float32)

        def search(position: int) -> int:
            top_k = 1000 if position < 16 else 100
            result = client.search("fat", vector=queries[position], vector_space_id=info.space_id,
                                   top_k=top_k, timeout=120)
            assert not result.partial
            return len(result.hits)

        with ThreadPoolExecutor(64) as pool:
            counts = list(pool.map(search, range(64)))
        assert counts == [1000] * 16 + [100] * 48
        shards = runtime.service.gateway.shards
        assert all(shard.hit_bytes > 4096 for shard in shards if shard.batches_sent)
