"""Stand-in encoder services for tests of the runtime and the gateway's call handling
(never of model results: those use real models)."""

from __future__ import annotations

import grpc

from contentembed.encoder.v1 import encoder_service_pb2_grpc as pb_grpc
from contentembed.services.common.auth import SEARCH_ROLE


class EncoderDouble(pb_grpc.EncoderServiceServicer):
    """The Service protocol around an EncoderService; subclasses define the RPCs."""

    name = "encoder-double"

    def register(self, server: grpc.Server) -> list[str]:
        pb_grpc.add_EncoderServiceServicer_to_server(self, server)
        return ["contentembed.encoder.v1.EncoderService"]

    def required_role(self, method: str) -> str | None:
        return SEARCH_ROLE

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass
