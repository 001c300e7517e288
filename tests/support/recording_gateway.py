"""A gateway on port 0 that records every request and answers like a hybrid-capable
gateway would: for the SDK's and the CLI's own conversions, without encoders or shards."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.common.v1 import types_pb2
from contentembed.search.v1 import search_service_pb2 as search_pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc

DENSE_ONLY = "dense"  # the one collection name answered as not lexical


def hybrid_response() -> search_pb.SearchResponse:
    response = search_pb.SearchResponse(
        space_id="s", version="live", mode=search_pb.RETRIEVAL_MODE_HYBRID,
        fusion=search_pb.FUSION_METHOD_MINMAX,
    )
    # Found by both retrievers; by the lexical one only; by the dense one only.
    response.hits.add(id="both", score=0.9, dense_score=0.8, lexical_score=7.5,
                      dense_rank=2, lexical_rank=1)
    response.hits.add(id="words", score=0.5, lexical_score=6.0, lexical_rank=2)
    response.hits.add(id="meaning", score=0.4, dense_score=0.0, dense_rank=1)
    return response


class RecordingGateway(search_grpc.SearchServiceServicer, admin_grpc.AdminServiceServicer):
    """Keeps every request. Search answers ``rankings[mode]`` (ids, best first) when
    set for the request's mode, else ``hybrid_response()``."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.rankings: dict[int, list[str]] = {}

    def Search(self, request, context):  # noqa: N802
        self.requests.append(request)
        mode = request.retrieval.mode
        if mode not in self.rankings:
            return hybrid_response()
        response = search_pb.SearchResponse(space_id="s", version="live", mode=mode)
        if mode == search_pb.RETRIEVAL_MODE_HYBRID:
            response.fusion = search_pb.FUSION_METHOD_RRF
        ids = self.rankings[mode][: request.top_k or 10]
        for rank, item_id in enumerate(ids, start=1):
            response.hits.add(id=item_id, score=1.0 / rank)
        return response

    def SearchBatch(self, request, context):  # noqa: N802
        self.requests.append(request)
        return search_pb.SearchBatchResponse(results=[hybrid_response() for _ in request.texts])

    def CreateCollection(self, request, context):  # noqa: N802
        self.requests.append(request)
        summary = admin_pb.CollectionSummary(name=request.name, lexical=request.lexical)
        return admin_pb.CreateCollectionResponse(collection=summary, created=True)

    def GetCollection(self, request, context):  # noqa: N802
        self.requests.append(request)
        lexical = types_pb2.LexicalConfig(enabled=request.name != DENSE_ONLY, language="")
        return admin_pb.GetCollectionResponse(collection=admin_pb.CollectionSummary(
            name=request.name, version="live", lexical=lexical,
        ))

    def GetDocuments(self, request, context):  # noqa: N802
        self.requests.append(request)
        return search_pb.GetDocumentsResponse(documents=[
            search_pb.StoredDocument(id="a", text="a gooseneck kettle"),
            search_pb.StoredDocument(id="b"),
        ])


@contextmanager
def serving_gateway(servicer: Any) -> Iterator[str]:
    """A fake gateway: ``servicer`` (Search and Admin methods) on port 0; its
    ``host:port``, stopped after."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    search_grpc.add_SearchServiceServicer_to_server(servicer, server)
    admin_grpc.add_AdminServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@contextmanager
def recording_gateway() -> Iterator[tuple[RecordingGateway, str]]:
    """The servicer and its ``host:port``; stopped after."""
    servicer = RecordingGateway()
    with serving_gateway(servicer) as address:
        yield servicer, address
