"""Index service via gRPC vs raw hnswlib, measured in the same run.

    .venv/bin/python bench/bench_index.py [--n 100000] [--dim 384] [--seconds 5]

Clustered float32 vectors; the raw baseline is hnswlib.Index (cosine, M=16,
ef_construction=200) in this process. For ef 50/100/200: single-query calls/s from 4, 16
and 32 concurrent asyncio callers (packed answers, as the gateway asks), batched QPS (100
queries per call as one query_batch, packed) and recall@10 against numpy exact search.

Beside them, the floor: rpc_floor.py's bare servicer (the same hnswlib search and
nothing else) under the sync server and under grpc.aio, and an empty unary call. On a
machine where the client shares the cores, the floor shows what Python gRPC itself
allows; the service's ratio to it is what the service's own code costs.

Memory: the service's RSS growth over an empty index process against the bytes of
vectors + graph (hnswlib's saved index). Prints the ratios and their targets:
>= 0.6x raw single-query, >= 0.9x raw batched, recall@10 >= 0.98, RSS <= 1.3x.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import hnswlib
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import loop_rate
from rpc_floor import KINDS

from contentembed.cli.stack import ServiceProcess
from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.common.protoconv import matrix_to_pb


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


async def single_qps(
    address: str, queries: np.ndarray, ef: int, seconds: float, callers: int,
    empty_rpc: bool = False,
) -> float:
    """Search calls/s (one query each, packed answers as the gateway asks) from
    ``callers`` concurrent asyncio callers; with empty_rpc, health checks instead: the
    floor any unary call pays in Python gRPC on this machine."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        requests = [pb.SearchRequest(collection="bench", query=vec(q), top_k=10, ef=ef, packed=True)
                    for q in queries]
        await (health.Check(health_pb2.HealthCheckRequest()) if empty_rpc else stub.Search(requests[0]))
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
                i += callers

        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(callers)))
        return done / (time.perf_counter() - started)


@contextmanager
def floor_server(kind: str, vectors_file: Path) -> Iterator[str]:
    """rpc_floor.py's bare servicer over the same vectors, as its own process."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("rpc_floor.py")), kind, str(vectors_file), "100"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", default="4,16,32", help="comma-separated caller counts")
    args = parser.parse_args()
    caller_counts = [int(c) for c in args.callers.split(",")]
    data = clustered(args.n, args.dim, seed=1)
    queries = clustered(1000, args.dim, seed=1)[:200] + 0.01  # same clusters, unseen points
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    efs = (50, 100, 200)

    with tempfile.TemporaryDirectory() as scratch:
        vectors_file = Path(scratch) / "vectors.npy"
        np.save(vectors_file, data)
        index_process = ServiceProcess(
            "index", "contentembed.services.index",
            ["--port", "0", "--metrics-port", "-1", "--max-items-per-upsert", "5000"], Path(scratch),
        )
        index_process.start(dict(os.environ))
        deadline = time.monotonic() + 60
        index_process.wait_for_port(deadline)
        index_process.wait_until_serving(deadline)
        empty_rss = rss_kib(index_process.pid)
        rows: dict[int, dict[str, float]] = {ef: {} for ef in efs}
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
                floor = {c: asyncio.run(single_qps(index_process.address, queries, 0, args.seconds, c, True))
                         for c in caller_counts}
                for ef in efs:
                    row = rows[ef]
                    found = [[h.id for h in stub.Search(pb.SearchRequest(
                        collection="bench", query=vec(q), top_k=10, ef=ef)).hits] for q in queries]
                    row["recall"] = recall(found, exact)
                    for c in caller_counts:
                        row[f"svc{c}"] = asyncio.run(
                            single_qps(index_process.address, queries, ef, args.seconds, c))
                    batch_request = pb.SearchBatchRequest(
                        collection="bench", query_batch=matrix_to_pb(queries[:100]), top_k=10, ef=ef,
                        packed=True)
                    row["batch"] = 100 * loop_rate(
                        lambda r=batch_request: len(stub.SearchBatch(r).results) // 100, args.seconds)
        finally:
            index_process.stop(30)

        for kind in KINDS:
            with floor_server(kind, vectors_file) as address:
                for ef in efs:
                    counts = caller_counts if kind == "sync" else [max(caller_counts)]
                    for c in counts:
                        rows[ef][f"{kind}{c}"] = asyncio.run(
                            single_qps(address, queries, ef, args.seconds, c))

        raw = hnswlib.Index(space="cosine", dim=args.dim)
        raw.init_index(max_elements=args.n, ef_construction=200, M=16)
        started = time.perf_counter()
        raw.add_items(data, np.arange(args.n))
        raw_build = time.perf_counter() - started
        raw_file = Path(scratch) / "raw.bin"
        raw.save_index(str(raw_file))
        graph_bytes = raw_file.stat().st_size
        for ef in efs:
            raw.set_ef(ef)
            labels, _ = raw.knn_query(queries, k=10, num_threads=1)
            rows[ef]["raw_recall"] = recall([[str(x) for x in r] for r in labels], exact)
            cycle = itertools.cycle(queries)
            rows[ef]["raw_single"] = loop_rate(
                lambda c=cycle: len(raw.knn_query(next(c), k=10, num_threads=1)[0]), args.seconds
            )
            rows[ef]["raw_batch"] = loop_rate(lambda: len(raw.knn_query(queries[:100], k=10)[0]), args.seconds)

    print(f"{args.n} x {args.dim} clustered, M=16, ef_construction=200; {os.cpu_count()} cpus; "
          f"{platform.processor() or platform.machine()}; Python {platform.python_version()}")
    print(f"build: service {args.n / service_build:.0f} vectors/s via Upsert, raw {args.n / raw_build:.0f}/s")
    print("single-query Search calls/s (packed answers); the client is asyncio Python on the same machine")
    header = f"{'ef':>4} {'recall':>7} {'raw':>7} " + " ".join(
        f"{'svc@' + str(c):>8} {'floor@' + str(c):>9}" for c in caller_counts)
    top = max(caller_counts)
    print(header + f" {'aio@' + str(top):>8} {'aio-ex@' + str(top):>9}")
    for ef in efs:
        row = rows[ef]
        print(f"{ef:>4} {row['recall']:>7.3f} {row['raw_single']:>7.0f} " + " ".join(
            f"{row[f'svc{c}']:>8.0f} {row[f'sync{c}']:>9.0f}" for c in caller_counts)
            + f" {row[f'aio-inline{top}']:>8.0f} {row[f'aio-executor{top}']:>9.0f}")
    print("empty unary call (health Check): " + ", ".join(
        f"{floor[c]:.0f}/s at {c}" for c in caller_counts))
    print(f"{'ef':>4} {'best svc/raw':>13} {'best floor/raw':>15} {'svc/floor':>10} "
          f"{'batch svc':>10} {'batch raw':>10} {'ratio':>6}   (targets: single 0.6, batch 0.9)")
    for ef in efs:
        row = rows[ef]
        best_svc = max(row[f"svc{c}"] for c in caller_counts)
        best_floor = max(row[f"sync{c}"] for c in caller_counts)
        print(f"{ef:>4} {best_svc / row['raw_single']:>13.2f} {best_floor / row['raw_single']:>15.2f} "
              f"{best_svc / best_floor:>10.2f} {row['batch']:>10.0f} {row['raw_batch']:>10.0f} "
              f"{row['batch'] / row['raw_batch']:>6.2f}")
    grown = (loaded_rss - empty_rss) * 1024
    print(f"memory: service RSS {loaded_rss / 1024:.0f} MiB (empty process {empty_rss / 1024:.0f} MiB); "
          f"growth {grown / 2**20:.0f} MiB vs vectors+graph {graph_bytes / 2**20:.0f} MiB "
          f"= {grown / graph_bytes:.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
