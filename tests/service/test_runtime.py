"""The shared runtime: graceful drain and error mapping, with a servicer whose
calls block until the test releases them."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.downstream import error_from_rpc
from contentembed.services.common.errors import ResourceExhausted
from contentembed.services.common.server import ServiceRuntime
from tests.conftest import settings_for_test
from tests.support.doubles import EncoderDouble


class BlockingEncoder(EncoderDouble):
    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def Embed(self, request, context):
        self.entered.set()
        self.release.wait(10)
        return pb.EmbedResponse(space_id="drained")

    def GetEncoderInfo(self, request, context):
        raise ZeroDivisionError("a bug, not a domain error")


@pytest.fixture
def runtime():
    service = BlockingEncoder()
    runtime = ServiceRuntime(service, settings_for_test(ServiceSettings, drain_delay_s=0.5), CollectorRegistry())
    runtime.start()
    assert runtime.wait_until_loaded(5)
    yield runtime
    runtime.stop(grace=0)


def test_sigterm_path_goes_not_serving_then_finishes_in_flight_calls(runtime) -> None:
    service: BlockingEncoder = runtime.service
    channel = grpc.insecure_channel(runtime.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING

    in_flight = pb_grpc.EncoderServiceStub(channel).Embed.future(
        pb.EmbedRequest(inputs=[pb.EmbedInput(text="x")]), timeout=20
    )
    assert service.entered.wait(5)
    stopper = threading.Thread(target=runtime.stop, kwargs={"grace": 15})
    stopper.start()

    def status_now() -> int:
        return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status

    deadline = time.monotonic() + 5
    while status_now() != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health never turned NOT_SERVING"
        time.sleep(0.02)

    # After the drain delay the server refuses new calls while the old one still runs.
    info = pb_grpc.EncoderServiceStub(channel).GetEncoderInfo
    deadline = time.monotonic() + 10
    while True:
        with pytest.raises(grpc.RpcError) as caught:
            info(pb.GetEncoderInfoRequest(), timeout=2)
        if caught.value.code() == grpc.StatusCode.UNAVAILABLE:
            break
        assert time.monotonic() < deadline, "server kept accepting calls"
        time.sleep(0.05)
    assert not in_flight.done()

    service.release.set()
    assert in_flight.result().space_id == "drained"
    stopper.join(10)
    assert not stopper.is_alive()
    channel.close()


def test_unexpected_exception_is_internal_never_unknown(runtime) -> None:
    with grpc.insecure_channel(runtime.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.EncoderServiceStub(channel).GetEncoderInfo(pb.GetEncoderInfoRequest())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError" not in caught.value.details()
    assert "GetEncoderInfo" in caught.value.details()


def test_overload_carries_a_retry_delay() -> None:
    from google.rpc import code_pb2, error_details_pb2

    from contentembed.services.common.errors import ResourceExhausted
    from contentembed.services.common.interceptor import status_for_error

    status = status_for_error(ResourceExhausted("queue full", reason="QUEUE_FULL", retry_after_s=0.25))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.reason == "QUEUE_FULL"
    assert status.details[1].Unpack(retry) and retry.retry_delay.ToMilliseconds() == 250


def test_calls_beyond_capacity_are_shed_with_resource_exhausted() -> None:
    service = BlockingEncoder()
    settings = settings_for_test(ServiceSettings, max_concurrent_rpcs=1)
    runtime = ServiceRuntime(service, settings, CollectorRegistry())
    runtime.start()
    try:
        with grpc.insecure_channel(runtime.address) as channel:
            stub = pb_grpc.EncoderServiceStub(channel)
            request = pb.EmbedRequest(inputs=[pb.EmbedInput(text="x")])
            busy = stub.Embed.future(request, timeout=20)
            assert service.entered.wait(5)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Embed(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            service.release.set()
            assert busy.result().space_id == "drained"
            assert stub.Embed(request, timeout=5).space_id == "drained"  # capacity is back
    finally:
        service.release.set()
        runtime.stop(grace=0)


class OverloadedEncoder(EncoderDouble):
    def Embed(self, request, context):
        raise ResourceExhausted("queue full", reason="QUEUE_FULL", retry_after_s=0.4)


def test_a_downstream_retry_delay_is_passed_on() -> None:
    runtime = ServiceRuntime(OverloadedEncoder(), settings_for_test(ServiceSettings), CollectorRegistry())
    runtime.start()
    try:
        with grpc.insecure_channel(runtime.address) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.EncoderServiceStub(channel).Embed(pb.EmbedRequest(), timeout=5)
        error = error_from_rpc(caught.value, "encoder")
        assert (error.code, error.reason, error.retry_after_s) == ("RESOURCE_EXHAUSTED", "QUEUE_FULL", 0.4)
    finally:
        runtime.stop(grace=0)
