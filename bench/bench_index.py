"""Index service via gRPC vs raw hnswlib, measured in the same run.

    .venv/bin/python bench/bench_index.py [--n 100000] [--dim 384] [--seconds 5]

Clustered float32 vectors; the raw baseline is hnswlib.Index (cosine, M=16,
ef_construction=200) in this process. For ef 50/100/200: single-query QPS (one query per
call; the service is driven by 4 concurrent asyncio callers so the client is not the
limit), batched QPS (100 queries per call) and recall@10 against numpy exact search.
Memory: the service's RSS growth over an empty index process against the bytes of
vectors + graph (hnswlib's saved index). Prints the ratios and their targets:
>= 0.8x raw single-query, >= 0.9x raw batched, recall@10 >= 0.98, RSS <= 1.3x.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from pathlib import Path

import grpc
import hnswlib
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import loop_rate

from contentembed.cli.stack import ServiceProcess
from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(n // 1000, 10), dim))
    points = centers[rng.integers(0, len(centers), n)] + 0.4 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def vec(v: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(data=v.tobytes(), dim=v.shape[0])


def recall(found: list[list[str]], exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & {str(i) for i in e}) / 10 for f, e in zip(found, exact)]))


async def service_single_qps(
    address: str, queries: np.ndarray, ef: int, seconds: float, empty_rpc: bool = False
) -> float:
    """Search calls/s from 4 concurrent callers; with empty_rpc, health checks instead:
    the floor any unary call pays in Python gRPC on this machine."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        requests = [pb.SearchRequest(collection="bench", query=vec(q), top_k=10, ef=ef) for q in queries]
        stop, done = time.perf_counter() + seconds, 0

        async def caller(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < stop:
                if empty_rpc:
                    await health.Check(health_pb2.HealthCheckRequest())
                else:
                    await stub.Search(requests[i % len(requests)])
                done += 1
                i += 4

        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(4)))
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    data = clustered(args.n, args.dim, seed=1)
    queries = clustered(1000, args.dim, seed=1)[:200] + 0.01  # same clusters, unseen points
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]

    with tempfile.TemporaryDirectory() as scratch:
        index_process = ServiceProcess(
            "index", "contentembed.services.index",
            ["--port", "0", "--metrics-port", "-1", "--max-items-per-upsert", "5000"], Path(scratch),
        )
        index_process.start(dict(os.environ))
        deadline = time.monotonic() + 60
        index_process.wait_for_port(deadline)
        index_process.wait_until_serving(deadline)
        empty_rss = rss_kib(index_process.pid)
        rows = []
        try:
            with grpc.insecure_channel(index_process.address, options=[
                ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)
            ]) as channel:
                stub = pb_grpc.IndexServiceStub(channel)
                stub.CreateCollection(pb.CreateCollectionRequest(name="bench", space_id="bench@1", dim=args.dim))
                started = time.perf_counter()
                for start in range(0, args.n, 2000):
                    stub.Upsert(pb.UpsertRequest(collection="bench", items=[
                        pb.Item(id=str(i), vector=vec(data[i])) for i in range(start, min(start + 2000, args.n))
                    ]), timeout=600)
                service_build = time.perf_counter() - started
                loaded_rss = rss_kib(index_process.pid)
                floor = asyncio.run(
                    service_single_qps(index_process.address, queries, 0, args.seconds, empty_rpc=True)
                )
                for ef in (50, 100, 200):
                    found = [[h.id for h in stub.Search(pb.SearchRequest(
                        collection="bench", query=vec(q), top_k=10, ef=ef)).hits] for q in queries]
                    single = asyncio.run(service_single_qps(index_process.address, queries, ef, args.seconds))
                    batch_request = pb.SearchBatchRequest(
                        collection="bench", queries=[vec(q) for q in queries[:100]], top_k=10, ef=ef)
                    batched = loop_rate(lambda r=batch_request: len(stub.SearchBatch(r).results), args.seconds)
                    rows.append([ef, recall(found, exact), single, batched])
        finally:
            index_process.stop(30)

        raw = hnswlib.Index(space="cosine", dim=args.dim)
        raw.init_index(max_elements=args.n, ef_construction=200, M=16)
        started = time.perf_counter()
        raw.add_items(data, np.arange(args.n))
        raw_build = time.perf_counter() - started
        raw_file = Path(scratch) / "raw.bin"
        raw.save_index(str(raw_file))
        graph_bytes = raw_file.stat().st_size
        for row in rows:
            ef = row[0]
            raw.set_ef(ef)
            labels, _ = raw.knn_query(queries, k=10, num_threads=1)
            raw_recall = recall([[str(x) for x in r] for r in labels], exact)
            cycle = itertools.cycle(queries)
            raw_single = loop_rate(
                lambda c=cycle: len(raw.knn_query(next(c), k=10, num_threads=1)[0]), args.seconds
            )
            raw_batched = loop_rate(lambda: len(raw.knn_query(queries[:100], k=10)[0]), args.seconds)
            row += [raw_recall, raw_single, raw_batched]

    print(f"{args.n} x {args.dim} clustered, M=16, ef_construction=200; {os.cpu_count()} cpus")
    print(f"build: service {args.n / service_build:.0f} vectors/s via Upsert, raw {args.n / raw_build:.0f}/s")
    print(f"{'ef':>4} {'recall svc':>10} {'recall raw':>10} {'single svc':>11} {'single raw':>11} "
          f"{'ratio':>6} {'batch svc':>10} {'batch raw':>10} {'ratio':>6}")
    for ef, rec, single, batched, raw_rec, raw_single, raw_batched in rows:
        print(f"{ef:>4} {rec:>10.3f} {raw_rec:>10.3f} {single:>11.0f} {raw_single:>11.0f} "
              f"{single / raw_single:>6.2f} {batched:>10.0f} {raw_batched:>10.0f} {batched / raw_batched:>6.2f}")
    print(f"gRPC floor: an empty unary call (health Check), same 4 callers: {floor:.0f} calls/s")
    grown = (loaded_rss - empty_rss) * 1024
    print(f"memory: service RSS {loaded_rss / 1024:.0f} MiB (empty process {empty_rss / 1024:.0f} MiB); "
          f"growth {grown / 2**20:.0f} MiB vs vectors+graph {graph_bytes / 2**20:.0f} MiB "
          f"= {grown / graph_bytes:.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
