"""Reading google.rpc.Status off a failed call, in the SDK and the gateway."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from contentembed.client import ApiError
from contentembed.client.sync import error_reason
from contentembed.services.common.downstream import error_from_rpc


class FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, status: status_pb2.Status) -> None:
        self._code, self._details, self._status = code, details, status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def status(code: int, message: str, reason: str) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason))
    return status_pb2.Status(code=code, message=message, details=[info])


def test_a_matching_status_gives_its_reason() -> None:
    call = FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "bad", status(code_pb2.INVALID_ARGUMENT, "bad", "BAD_NAME"))
    assert error_reason(call) == "BAD_NAME"
    assert ApiError.from_rpc_error(call).reason == "BAD_NAME"


def test_a_status_the_transport_overrode_is_ignored_not_raised() -> None:
    """Trailers over the limit: the call says RESOURCE_EXHAUSTED, the status something else.
    rpc_status.from_call raises ValueError there, which used to escape the SDK (and the
    gateway, as INTERNAL)."""
    call = FailedCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "metadata too large",
                      status(code_pb2.INVALID_ARGUMENT, "bad", "BAD_NAME"))
    assert error_reason(call) == ""
    assert ApiError.from_rpc_error(call).code == "RESOURCE_EXHAUSTED"
    assert error_from_rpc(call, "index shard 0").code == "RESOURCE_EXHAUSTED"
