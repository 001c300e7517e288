"""SDK retries against a fake gateway on port 0 that fails N times, then answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.client import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
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


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FlakyGateway, str]]:
    servicer = FlakyGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    search_grpc.add_SearchServiceServicer_to_server(servicer, server)
    admin_grpc.add_AdminServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def gateway(fake) -> tuple[FlakyGateway, str]:
    servicer, address = fake
    servicer.calls.clear()
    servicer.failures = 0
    servicer.failure = grpc.StatusCode.UNAVAILABLE
    return servicer, address


def test_search_is_retried_on_unavailable_until_it_answers(gateway) -> None:
    servicer, address = gateway
    servicer.failures = 2
    with Client(address, timeout=5.0, retries=3, initial_backoff_s=0.01) as client:
        result = client.search("shop", text="x")
    assert [h.id for h in result.hits] == ["a"] and servicer.calls["Search"] == 3


def test_retries_give_up_after_the_configured_number(gateway) -> None:
    servicer, address = gateway
    servicer.failures = 10
    with Client(address, timeout=5.0, retries=2, initial_backoff_s=0.01) as client:
        with pytest.raises(UnavailableError):
            client.search("shop", text="x")
    assert servicer.calls["Search"] == 3


def test_zero_retries_disables_retrying(gateway) -> None:
    servicer, address = gateway
    servicer.failures = 1
    with Client(address, retries=0) as client, pytest.raises(UnavailableError):
        client.search("shop", text="x")
    assert servicer.calls["Search"] == 1


def test_upserts_are_retried_idempotent_by_id(gateway) -> None:
    servicer, address = gateway
    servicer.failures = 1
    with Client(address, initial_backoff_s=0.01) as client:
        assert client.upsert_documents("shop", [{"id": "a", "text": "x"}]).upserted_count == 1
    assert servicer.calls["UpsertDocuments"] == 2


@pytest.mark.parametrize("call", [
    lambda c: c.set_candidate("shop", "v2"),
    lambda c: c.promote_candidate("shop"),
    lambda c: c.delete_collection("shop"),
])
def test_calls_that_are_not_idempotent_are_never_retried(gateway, call) -> None:
    servicer, address = gateway
    servicer.failures = 1
    with Client(address, retries=5, initial_backoff_s=0.01) as client, pytest.raises(UnavailableError):
        call(client)
    assert sum(servicer.calls.values()) == 1


def test_overload_waits_the_servers_retry_delay(gateway) -> None:
    servicer, address = gateway
    servicer.failures, servicer.failure = 1, overloaded(0.3)
    with Client(address, timeout=5.0, initial_backoff_s=0.001) as client:
        started = time.monotonic()
        client.search("shop", text="x")
    assert time.monotonic() - started >= 0.3 and servicer.calls["Search"] == 2


def test_a_retry_delay_past_the_deadline_is_not_waited_for(gateway) -> None:
    servicer, address = gateway
    servicer.failures, servicer.failure = 1, overloaded(5.0)
    with Client(address, timeout=1.0) as client:
        started = time.monotonic()
        with pytest.raises(ResourceExhaustedError) as caught:
            client.search("shop", text="x")
    assert time.monotonic() - started < 0.5 and caught.value.retry_after_s == pytest.approx(5.0)
    assert servicer.calls["Search"] == 1


def test_other_codes_are_not_retried(gateway) -> None:
    servicer, address = gateway
    servicer.failures, servicer.failure = 1, grpc.StatusCode.INVALID_ARGUMENT
    with Client(address) as client, pytest.raises(InvalidArgumentError):
        client.search("shop", text="x")
    assert servicer.calls["Search"] == 1


def test_retries_stop_at_the_calls_deadline(gateway) -> None:
    servicer, address = gateway
    servicer.failures = 10_000
    with Client(address, retries=1000, initial_backoff_s=0.05, max_backoff_s=0.1) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            client.search("shop", text="x", timeout=0.6)
    assert time.monotonic() - started < 0.9 and 3 <= servicer.calls["Search"] < 30


def test_async_client_retries_the_same_way(gateway) -> None:
    servicer, address = gateway
    servicer.failures = 2

    async def main() -> None:
        async with AsyncClient(address, timeout=5.0, initial_backoff_s=0.01) as client:
            result = await client.search("shop", text="x")
            assert result.version == "live"
            with pytest.raises(UnavailableError):
                await client.set_candidate("shop", "v2")

    asyncio.run(main())
    assert servicer.calls["Search"] == 3 and servicer.calls["SetCandidate"] == 1
