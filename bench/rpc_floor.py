"""The least a Python gRPC server can cost around one hnswlib search, for bench_index.py.

A servicer with nothing but the search: the query's bytes to numpy, ``knn_query``, the
hits as one ``PackedHits``. No interceptor, validation, locks, metrics or metadata. What
the index service reaches against this, in the same run, is the cost of being a service;
what this reaches against raw hnswlib is the cost of Python gRPC on the machine, which no
servicer code can remove. It runs as the sync server (a thread pool, as the services
run) and as grpc.aio (the handler inline on the event loop, and in a thread pool).

    python bench/rpc_floor.py KIND VECTORS.npy EF   # serves until killed; prints its port
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures
from typing import Any

import grpc
import hnswlib
import numpy as np

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc

KINDS = ("sync", "aio-inline", "aio-executor")


def build(vectors: np.ndarray, ef: int) -> hnswlib.Index:
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), ef_construction=200, M=16)
    index.add_items(vectors, np.arange(len(vectors)))
    index.set_ef(ef)
    return index


def answer(index: hnswlib.Index, request: pb.SearchRequest) -> pb.SearchResponse:
    # ef is index-wide in hnswlib; a phase of the benchmark uses one ef throughout.
    if request.ef and request.ef != index.ef:
        index.set_ef(request.ef)
    query = np.frombuffer(request.query.data, dtype="<f4")[None, :]
    labels, distances = index.knn_query(query, k=request.top_k, num_threads=1)
    return pb.SearchResponse(packed_hits=pb.PackedHits(
        ids=[str(label) for label in labels[0].tolist()],
        scores=(1.0 - distances[0]).astype("<f4").tobytes(),
        metadata_json=[""] * labels.shape[1],
    ))


class SyncFloor(pb_grpc.IndexServiceServicer):
    def __init__(self, index: hnswlib.Index) -> None:
        self.index = index

    def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        return answer(self.index, request)


class InlineFloor(pb_grpc.IndexServiceServicer):
    def __init__(self, index: hnswlib.Index) -> None:
        self.index = index

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        return answer(self.index, request)


class ExecutorFloor(pb_grpc.IndexServiceServicer):
    def __init__(self, index: hnswlib.Index) -> None:
        self.index = index
        self.pool = futures.ThreadPoolExecutor(4)

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, answer, self.index, request)


def serve(kind: str, vectors_file: str, ef: int) -> None:
    index = build(np.load(vectors_file), ef)
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(16))
        pb_grpc.add_IndexServiceServicer_to_server(SyncFloor(index), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(port, flush=True)
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        servicer = InlineFloor(index) if kind == "aio-inline" else ExecutorFloor(index)
        pb_grpc.add_IndexServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]))
