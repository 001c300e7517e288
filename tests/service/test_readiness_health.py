"""The readiness health service follows a service's own ready() once it has loaded,
while the overall status ("", what liveness asks) stays SERVING."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.services.common.server import READINESS_SERVICE
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import running_service, settings_for_test


class Toggled(IndexService):
    is_ready = False

    def ready(self) -> bool:
        return self.is_ready


def status(channel: grpc.Channel, name: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=5).status


def wait_for(channel: grpc.Channel, name: str, wanted: int) -> None:
    deadline = time.monotonic() + 10
    while status(channel, name) != wanted:
        assert time.monotonic() < deadline, f"{name} never became {wanted}"
        time.sleep(0.05)


def test_readiness_follows_the_service_and_liveness_does_not() -> None:
    settings = settings_for_test(IndexSettings)
    with running_service(Toggled, settings) as runtime, grpc.insecure_channel(runtime.address) as channel:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        wait_for(channel, "", serving)
        wait_for(channel, READINESS_SERVICE, not_serving)
        Toggled.is_ready = True
        wait_for(channel, READINESS_SERVICE, serving)
        Toggled.is_ready = False
        wait_for(channel, READINESS_SERVICE, not_serving)
        assert status(channel, "") == serving
