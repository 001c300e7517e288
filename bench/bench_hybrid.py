"""Hybrid retrieval against its raw parts, measured in the same run.

    .venv/bin/python bench/bench_hybrid.py [--docs 3000] [--seconds 10] [--shards 2]

Corpus and queries: the docstring evaluation set (contentembed.demo.docstrings), built
in this process from the installed packages. Every query is a docstring summary used
once per run: no query repeats, so no cache answers one.

1. The lexical path. Raw tantivy in this process (the same analyzer, a disjunction of
   term queries, top 10) against one index shard started as `up` starts it, answering
   SearchRequest.text: index build docs/s (raw add + commit vs Upsert with texts, whose
   vectors are 8-d so that HNSW costs little) and queries/s, raw on 1 and 4 threads
   (tantivy releases the GIL) vs the shard with 1 and 4 concurrent callers, and the
   floor any unary gRPC call pays on the same shard (an empty health check).
2. The fused path end to end: the local stack (text encoder, shards, gateway, as `up`
   starts them), the first --docs documents ingested into a hybrid collection, then 32
   concurrent callers: dense-only, hybrid, dense again, each phase with its own unseen
   queries. Hybrid's cost is its throughput against the mean of the two dense phases
   (target: at least 0.8x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tantivy  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from harness import closed_loop, ingest_docstrings, unique_summaries  # noqa: E402

from contentembed.cli.stack import LocalStack, ServiceProcess  # noqa: E402
from contentembed.client import Client  # noqa: E402
from contentembed.common.v1 import types_pb2  # noqa: E402
from contentembed.demo import docstrings  # noqa: E402
from contentembed.index.v1 import index_service_pb2 as pb  # noqa: E402
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc  # noqa: E402
from contentembed.services.index.lexical import build_analyzer  # noqa: E402

LEXICAL_DIM = 8
UPSERT_BATCH = 256


# -- part 1: the lexical path -------------------------------------------------------------
class RawTantivy:
    """tantivy as an application would use it without contentembed: one RAM index, the
    documents added once and committed, queries built term by term."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.analyzer = build_analyzer("english")
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field("label", indexed=True, fast=True)
        builder.add_text_field("text", tokenizer_name="en", index_option="freq")
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema)
        self.index.register_tokenizer("en", self.analyzer)
        writer = self.index.writer(heap_size=50_000_000, num_threads=1)
        started = time.perf_counter()
        for label, text in enumerate(texts):
            document = tantivy.Document()
            document.add_unsigned("label", label)
            document.add_text("text", text)
            writer.add_document(document)
        writer.commit()
        self.index.reload()
        self.build_rate = len(texts) / (time.perf_counter() - started)
        self.searcher = self.index.searcher()

    def search(self, text: str) -> list[int]:
        terms = self.analyzer.analyze(text)
        if not terms:
            return []
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "text", t, "freq"))
             for t in terms]
        )
        hits = self.searcher.search(query, 10, count=False).hits
        return self.searcher.fast_field_values("label", [address for _, address in hits])


def threaded_rate(work, items: Sequence[str], threads: int) -> float:
    """Items/s of work(item) over every item once, split into one run per thread (no
    hand-off per item: the raw library's own throughput)."""

    def run(chunk: Sequence[str]) -> None:
        for item in chunk:
            work(item)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [items[n::threads] for n in range(threads)]))
    return len(items) / (time.perf_counter() - started)


def random_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, LEXICAL_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def shard_rate(address: str, queries: Sequence[str], callers: int, empty: bool = False) -> float:
    """SearchRequest.text calls/s over every query once, from `callers` asyncio callers;
    with ``empty``, as many health checks instead: the floor any unary call pays here."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await stub.Search(pb.SearchRequest(collection="bench", text="warm up", top_k=10))
        position = 0

        async def caller() -> None:
            nonlocal position
            while position < len(queries):
                text = queries[position]
                position += 1
                if empty:
                    await health.Check(health_pb2.HealthCheckRequest())
                else:
                    await stub.Search(pb.SearchRequest(collection="bench", text=text, top_k=10))

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return len(queries) / (time.perf_counter() - started)


def lexical_path(texts: Sequence[str], queries: Sequence[str]) -> list[tuple[str, float]]:
    raw = RawTantivy(texts)
    # Four disjoint query sets: each measurement sees its queries for the first time.
    sets = [queries[n::4] for n in range(4)]
    raw_1 = threaded_rate(raw.search, sets[0], 1)
    raw_4 = threaded_rate(raw.search, sets[1], 4)
    vectors = random_vectors(len(texts), seed=1)
    with tempfile.TemporaryDirectory() as scratch:
        shard = ServiceProcess(
            "index", "contentembed.services.index",
            ["--port", "0", "--metrics-port", "-1", "--data-dir", str(Path(scratch) / "data")],
            Path(scratch),
        )
        shard.start(dict(os.environ))
        try:
            deadline = time.monotonic() + 120
            shard.wait_for_port(deadline)
            shard.wait_until_serving(deadline)
            with grpc.insecure_channel(shard.address) as channel:
                stub = pb_grpc.IndexServiceStub(channel)
                stub.CreateCollection(pb.CreateCollectionRequest(
                    name="bench", space_id="bench@1", dim=LEXICAL_DIM,
                    lexical=types_pb2.LexicalConfig(enabled=True),
                ))
                started = time.perf_counter()
                for at in range(0, len(texts), UPSERT_BATCH):
                    stub.Upsert(pb.UpsertRequest(collection="bench", items=[
                        pb.Item(id=f"d{n}", text=texts[n],
                                vector=types_pb2.Vector(data=vectors[n].tobytes(), dim=LEXICAL_DIM))
                        for n in range(at, min(at + UPSERT_BATCH, len(texts)))
                    ]), timeout=600)
                shard_build = len(texts) / (time.perf_counter() - started)
            shard_1 = asyncio.run(shard_rate(shard.address, sets[2], 1))
            shard_4 = asyncio.run(shard_rate(shard.address, sets[3], 4))
            floor_1 = asyncio.run(shard_rate(shard.address, sets[2], 1, empty=True))
            floor_4 = asyncio.run(shard_rate(shard.address, sets[3], 4, empty=True))
        finally:
            shard.stop(30)
    return [
        ("lexical build: raw tantivy add + commit, docs/s", raw.build_rate),
        ("lexical build: shard Upsert with texts (WAL, 8-d HNSW), docs/s", shard_build),
        ("  ratio shard / raw", shard_build / raw.build_rate),
        ("lexical search: raw tantivy, 1 thread, q/s", raw_1),
        ("lexical search: shard SearchRequest.text, 1 caller, q/s", shard_1),
        ("  ratio shard / raw (1)", shard_1 / raw_1),
        ("lexical search: raw tantivy, 4 threads, q/s", raw_4),
        ("lexical search: shard, 4 concurrent callers, q/s", shard_4),
        ("  ratio shard / raw (4)", shard_4 / raw_4),
        ("gRPC floor: empty unary call (health Check), 1 caller, calls/s", floor_1),
        ("gRPC floor: empty unary call, 4 callers, calls/s", floor_4),
        ("  ratio shard lexical search / gRPC floor (4)", shard_4 / floor_4),
    ]


# -- part 2: the fused path end to end -----------------------------------------------------
def fused_path(
    documents: Sequence[docstrings.Entry], queries: Sequence[str], shards: int, callers: int, seconds: float
) -> list[tuple[str, dict[str, float]]]:
    phases = [("dense", queries[0::3]), ("hybrid", queries[1::3]), ("dense", queries[2::3])]
    results = []
    with tempfile.TemporaryDirectory() as run_dir, LocalStack(
        run_dir=Path(run_dir), shard_count=shards
    ) as stack:
        with Client(stack.gateway_address, timeout=600) as client:
            ingest_docstrings(client, "docstrings", documents, Path(run_dir), hybrid=True)
            # Warm every path once (channels, the model's first batch) with a query no
            # phase uses.
            for mode in ("dense", "lexical", "hybrid"):
                client.search("docstrings", text="warm up the stack", top_k=10, mode=mode)
        for mode, phase_queries in phases:
            results.append((mode, closed_loop(stack.gateway_address, "docstrings", phase_queries,
                                              callers, seconds, top_k=10, mode=mode)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000,
                        help="documents ingested through the stack (part 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per fused phase, at most")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--skip-fused", action="store_true", help="part 1 only")
    args = parser.parse_args()

    evalset = docstrings.build()
    documents = evalset.documents
    texts = [entry.text for entry in documents]
    # Every summary, labelled or not, is a realistic query; each is used once.
    summaries = unique_summaries(documents)
    print(f"corpus: {len(texts)} docstring documents, {len(summaries)} unique summaries; "
          f"{os.cpu_count()} cpus")

    for label, value in lexical_path(texts, summaries):
        print(f"{label:<66}{value:>10.2f}")

    if args.skip_fused:
        return
    print(f"\nfused path: {min(args.docs, len(documents))} documents through the stack, {args.shards} shards, "
          f"{args.callers} callers, unique queries per phase")
    phases = fused_path(documents[: args.docs], summaries, args.shards, args.callers, args.seconds)
    print(f"{'phase':<10}{'q/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'queries':>9}{'cache hits':>12}")
    for mode, figures in phases:
        print(f"{mode:<10}{figures['qps']:>8.1f}{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}"
              f"{figures['queries']:>9.0f}{figures['cache_hits']:>12.0f}")
    dense = statistics.mean(f["qps"] for mode, f in phases if mode == "dense")
    hybrid = next(f["qps"] for mode, f in phases if mode == "hybrid")
    print(f"hybrid / dense throughput at {args.callers} callers: {hybrid / dense:.2f} "
          "(target >= 0.8)")


if __name__ == "__main__":
    main()
