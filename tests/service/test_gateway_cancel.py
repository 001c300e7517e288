"""A caller that goes away cancels the gateway's downstream calls."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import grpc
from prometheus_client import CollectorRegistry

from contentembed.admin.v1 import admin_service_pb2 as admin_pb
from contentembed.admin.v1 import admin_service_pb2_grpc as admin_grpc
from contentembed.common.v1 import types_pb2
from contentembed.encoder.v1 import encoder_service_pb2 as pb
from contentembed.search.v1 import search_service_pb2 as search_pb
from contentembed.search.v1 import search_service_pb2_grpc as search_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.server import ServiceRuntime
from tests.conftest import settings_for_test
from tests.service.test_gateway_routing import gateway_over
from tests.support.doubles import EncoderDouble


class HangingEncoder(EncoderDouble):
    """Describes a space, then holds every Embed until its caller cancels."""

    name = "hanging-encoder"

    def __init__(self) -> None:
        self.embed_started = threading.Event()
        self.saw_cancel = threading.Event()

    def GetEncoderInfo(self, request, context):
        return pb.GetEncoderInfoResponse(
            modality=types_pb2.MODALITY_TEXT,
            space=types_pb2.Space(space_id="hang@1", dim=4),
            max_batch_size=8,
            max_input_bytes=1000,
        )

    def Embed(self, request, context):
        self.embed_started.set()
        deadline = time.monotonic() + 20
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not context.is_active():
            self.saw_cancel.set()
        return pb.EmbedResponse()


def test_cancelled_search_cancels_the_encoder_call() -> None:
    encoder = HangingEncoder()
    runtime = ServiceRuntime(encoder, settings_for_test(ServiceSettings), CollectorRegistry())
    runtime.start()
    try:
        with ExitStack() as stack:
            gateway = gateway_over(stack, [runtime])
            with grpc.insecure_channel(gateway.address) as channel:
                admin_grpc.AdminServiceStub(channel).CreateCollection(admin_pb.CreateCollectionRequest(name="c"))
                call = search_grpc.SearchServiceStub(channel).Search.future(
                    search_pb.SearchRequest(collection="c", text="anything", top_k=1), timeout=30
                )
                assert encoder.embed_started.wait(10)
                call.cancel()
                assert encoder.saw_cancel.wait(10), "the encoder call outlived its caller"
    finally:
        runtime.stop(grace=0)
