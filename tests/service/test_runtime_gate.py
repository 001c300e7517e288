"""The runtime's gate in front of every product call: readiness while loading, the
load-failure policy, unparseable bodies, echoed inputs, load shed at arrival — each
answered with a canonical code and an ErrorInfo reason, and counted in the RPC metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.errors import InvalidArgument
from contentembed.services.common.server import ServiceRuntime
from tests.conftest import error_reason, settings_for_test
from tests.support.doubles import EncoderDouble

EMBED = "/contentembed.encoder.v1.EncoderService/Embed"


class GatedEncoder(EncoderDouble):
    """load() waits for the test; Embed echoes its input or sleeps as asked."""

    name = "gated"

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.loading = threading.Event()
        self.finish_loading = threading.Event()
        self.fail_with = fail_with
        self.embedded = 0
        self.sleeping = threading.Event()

    def load(self) -> None:
        self.loading.set()
        self.finish_loading.wait(30)
        if self.fail_with is not None:
            raise self.fail_with

    def Embed(self, request, context):
        text = request.inputs[0].text if request.inputs else ""
        if text.startswith("sleep "):
            self.sleeping.set()
            time.sleep(float(text.split()[1]))
        elif text:
            raise InvalidArgument(f"inputs[0]: {text!r} is not welcome", reason="ECHO")
        self.embedded += 1
        return pb.EmbedResponse(space_id="gated@1")

    def GetEncoderInfo(self, request, context):
        return pb.GetEncoderInfoResponse(backend="gated")


@contextmanager
def started(service: GatedEncoder, **overrides) -> Iterator[tuple[ServiceRuntime, grpc.Channel]]:
    registry = CollectorRegistry()
    runtime = ServiceRuntime(service, settings_for_test(ServiceSettings, **overrides), registry)
    runtime.start()
    channel = grpc.insecure_channel(runtime.address)
    try:
        yield runtime, channel
    finally:
        service.finish_loading.set()
        channel.close()
        runtime.stop(grace=0)


def embed(channel: grpc.Channel, text: str = "", timeout: float = 5) -> pb.EmbedResponse:
    return pb_grpc.EncoderServiceStub(channel).Embed(
        pb.EmbedRequest(inputs=[pb.EmbedInput(text=text)]), timeout=timeout
    )


def retry_delay_of(error: grpc.RpcError) -> float | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def calls_counted(runtime: ServiceRuntime, method: str, code: str) -> float:
    value = runtime.registry.get_sample_value(
        "contentembed_rpc_duration_seconds_count",
        {"service": runtime.service.name, "method": method, "code": code},
    )
    return value or 0.0


def state_of(runtime: ServiceRuntime) -> str:
    for state in ("loading", "serving", "load_failed", "stopping"):
        if runtime.registry.get_sample_value(
            "contentembed_service_state", {"service": runtime.service.name,
                                           "contentembed_service_state": state}
        ) == 1.0:
            return state
    raise AssertionError("no state set")


def test_product_calls_wait_for_load_while_health_and_reflection_answer() -> None:
    service = GatedEncoder()
    with started(service) as (runtime, channel):
        assert service.loading.wait(5)
        with pytest.raises(grpc.RpcError) as caught:
            embed(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "NOT_READY"
        assert retry_delay_of(caught.value) == pytest.approx(1.0)
        assert service.embedded == 0, "the handler ran before load() returned"
        assert calls_counted(runtime, "Embed", "UNAVAILABLE") == 1
        assert state_of(runtime) == "loading"

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        listed = [s.name for s in next(reflection).list_services_response.service]
        assert "contentembed.encoder.v1.EncoderService" in listed

        service.finish_loading.set()
        assert runtime.wait_until_loaded(5)
        assert embed(channel).space_id == "gated@1"
        assert state_of(runtime) == "serving"


def test_a_failed_load_stays_alive_and_answers_load_failed_naming_the_cause() -> None:
    service = GatedEncoder(fail_with=OSError("/models/minilm/model.safetensors is truncated"))
    with started(service) as (runtime, channel):
        service.finish_loading.set()
        assert runtime.wait_until_loaded(5)
        with pytest.raises(grpc.RpcError) as caught:
            embed(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "LOAD_FAILED"
        assert "model.safetensors is truncated" in caught.value.details()
        assert state_of(runtime) == "load_failed"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff\x0f",  # no valid wire format
        b"\x0a\x04\x0a\x02\xff\xfe",  # inputs[0].text with invalid UTF-8
    ],
    ids=["garbage", "bad-utf8"],
)
def test_an_unparseable_body_is_invalid_argument_and_counted(body: bytes) -> None:
    service = GatedEncoder()
    service.finish_loading.set()
    with started(service) as (runtime, channel):
        assert runtime.wait_until_loaded(5)
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(EMBED)(body, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "MALFORMED_REQUEST"
        assert "EmbedRequest" in caught.value.details()
        assert calls_counted(runtime, "Embed", "INVALID_ARGUMENT") == 1
        assert embed(channel).space_id == "gated@1"  # and the service goes on


def test_an_error_echoing_a_huge_input_stays_a_readable_invalid_argument() -> None:
    service = GatedEncoder()
    service.finish_loading.set()
    with started(service) as (runtime, channel):
        assert runtime.wait_until_loaded(5)
        with pytest.raises(grpc.RpcError) as caught:
            embed(channel, "x" * 100_000)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "ECHO"
        assert len(caught.value.details()) <= 1024
        assert "characters)" in caught.value.details()


def test_calls_that_would_queue_too_long_are_refused_at_arrival() -> None:
    service = GatedEncoder()
    service.finish_loading.set()
    with started(service, max_workers=1, max_queue_wait_s=0.05) as (runtime, channel):
        assert runtime.wait_until_loaded(5)
        embed(channel, "sleep 0.3")  # Embed takes about 0.3 s
        service.sleeping.clear()
        busy = pb_grpc.EncoderServiceStub(channel).Embed.future(
            pb.EmbedRequest(inputs=[pb.EmbedInput(text="sleep 1")]), timeout=10
        )
        assert service.sleeping.wait(5)  # the busy call holds the only thread
        with pytest.raises(grpc.RpcError) as caught:
            embed(channel)  # would wait ~0.3 s behind it: over the 50 ms limit
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(caught.value) == "OVERLOADED"
        assert retry_delay_of(caught.value) == pytest.approx(0.3, rel=0.5)
        assert calls_counted(runtime, "Embed", "RESOURCE_EXHAUSTED") == 1
        assert busy.result().space_id == "gated@1"
        assert embed(channel).space_id == "gated@1"  # capacity is back


def test_a_gateway_whose_encoder_is_still_loading_answers_not_ready() -> None:
    from contentembed.services.gateway.service import GatewayService, GatewaySettings
    from contentembed.services.index.service import IndexService, IndexSettings
    from tests.conftest import running_service

    encoder = GatedEncoder()
    with started(encoder) as (encoder_runtime, _), \
            running_service(IndexService, settings_for_test(IndexSettings)) as shard:
        settings = settings_for_test(
            GatewaySettings,
            encoder_endpoints=[encoder_runtime.address],
            index_endpoints=[shard.address],
            downstream_wait_s=60.0,
        )
        registry = CollectorRegistry()
        gateway = ServiceRuntime(GatewayService(settings, registry), settings, registry)
        gateway.start()
        try:
            with grpc.insecure_channel(gateway.address) as channel:
                search = channel.unary_unary("/contentembed.search.v1.SearchService/Search")
                with pytest.raises(grpc.RpcError) as caught:
                    search(b"\x0a\x04docs\x12\x03tea", timeout=5)
                # Not FAILED_PRECONDITION NO_ENCODER_FOR_SPACE: the gateway is not ready yet.
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert error_reason(caught.value) == "NOT_READY"
                encoder.finish_loading.set()
                assert gateway.wait_until_loaded(30) and gateway.load_error is None
                assert gateway.state == "serving"
        finally:
            gateway.stop(grace=0)


def test_calls_that_expire_while_queued_give_their_place_back() -> None:
    service = GatedEncoder()
    service.finish_loading.set()
    with started(service, max_workers=1, max_concurrent_rpcs=4, max_queue_wait_s=60) as (
        runtime, channel,
    ):
        assert runtime.wait_until_loaded(5)
        stub = pb_grpc.EncoderServiceStub(channel)
        busy = stub.Embed.future(pb.EmbedRequest(inputs=[pb.EmbedInput(text="sleep 1.5")]), timeout=10)
        assert service.sleeping.wait(5)
        # These wait for the only thread and expire there: their handlers never run.
        expired = [stub.Embed.future(pb.EmbedRequest(inputs=[pb.EmbedInput()]), timeout=0.3)
                   for _ in range(3)]
        for call in expired:
            with pytest.raises(grpc.RpcError):
                call.result()
        assert busy.result().space_id == "gated@1"
        # Their places are free again: one busy call and one queued behind it fit the
        # limit of 4 (had the three leaked, the queued call would be TOO_MANY_CALLS).
        service.sleeping.clear()
        busy = stub.Embed.future(pb.EmbedRequest(inputs=[pb.EmbedInput(text="sleep 0.3")]), timeout=10)
        assert service.sleeping.wait(5)
        assert embed(channel).space_id == "gated@1"
        assert busy.result().space_id == "gated@1"
