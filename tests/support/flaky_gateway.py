"""A fake gateway on port 0 that fails its first N calls of each method, then answers:
what the SDK's retries and throttling are tested against."""

from __future__ import annotations

import threading
from collections import Counter

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.search.v1 import search_service_pb2 as search_pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc


def overloaded(delay_s: float) -> status_pb2.Status:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(delay_s * 1e9))
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="overloaded", details=[retry])


class FlakyGateway(search_grpc.SearchServiceServicer, admin_grpc.AdminServiceServicer):
    """Each method fails with ``failure`` for its first ``failures`` calls, then answers."""

    def __init__(self) -> None:
        self.failures = 0
        self.failure: grpc.StatusCode | status_pb2.Status = grpc.StatusCode.UNAVAILABLE
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _maybe_fail(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] += 1
            failing = self.calls[method] <= self.failures
        if not failing:
            return
        if isinstance(self.failure, status_pb2.Status):
            context.abort_with_status(rpc_status.to_status(self.failure))
        context.abort(self.failure, "flaky")

    def Search(self, request, context):  # noqa: N802
        self._maybe_fail("Search", context)
        return search_pb.SearchResponse(
            hits=[search_pb.Hit(id="a", score=0.5)], space_id="s", version="live"
        )

    def UpsertDocuments(self, request, context):  # noqa: N802
        self._maybe_fail("UpsertDocuments", context)
        return admin_pb.UpsertDocumentsResponse(upserted_count=len(request.documents))

    def SetCandidate(self, request, context):  # noqa: N802
        self._maybe_fail("SetCandidate", context)
        return admin_pb.SetCandidateResponse()

    def PromoteCandidate(self, request, context):  # noqa: N802
        self._maybe_fail("PromoteCandidate", context)
        return admin_pb.PromoteCandidateResponse(previous_version="live", version="v2")

    def DeleteCollection(self, request, context):  # noqa: N802
        self._maybe_fail("DeleteCollection", context)
        return admin_pb.DeleteCollectionResponse()
