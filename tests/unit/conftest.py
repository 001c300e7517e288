"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc
from tests.support.flaky_gateway import FlakyGateway


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
def flaky_gateway(fake) -> tuple[FlakyGateway, str]:
    servicer, address = fake
    servicer.calls.clear()
    servicer.failures = 0
    servicer.failure = grpc.StatusCode.UNAVAILABLE
    return servicer, address
