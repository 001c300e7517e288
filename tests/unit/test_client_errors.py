"""Reading google.rpc.Status off a failed call, in the SDK and the gateway."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from contentembed import client as sdk
from contentembed.client import ApiError
from contentembed.client.errors import error_class_for
from contentembed.client.sync import error_reason as legacy_error_reason
from contentembed.rpc_status import error_reason, retry_delay_s
from contentembed.services.common.downstream import error_from_rpc


class FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, status: status_pb2.Status | None) -> None:
        self._code, self._details, self._status = code, details, status

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        if self._status is None:
            return ()
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def status(code: int, message: str, reason: str, retry_s: float | None = None) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason))
    details = [info]
    if retry_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_s * 1e9))
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(code=code, message=message, details=details)


def test_a_matching_status_gives_its_reason() -> None:
    call = FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "bad", status(code_pb2.INVALID_ARGUMENT, "bad", "BAD_NAME"))
    assert error_reason(call) == legacy_error_reason(call) == "BAD_NAME"
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


SUBCLASSES = {
    "INVALID_ARGUMENT": sdk.InvalidArgumentError,
    "NOT_FOUND": sdk.NotFoundError,
    "ALREADY_EXISTS": sdk.AlreadyExistsError,
    "FAILED_PRECONDITION": sdk.FailedPreconditionError,
    "RESOURCE_EXHAUSTED": sdk.ResourceExhaustedError,
    "UNAVAILABLE": sdk.UnavailableError,
    "DEADLINE_EXCEEDED": sdk.DeadlineExceededError,
    "UNAUTHENTICATED": sdk.UnauthenticatedError,
    "PERMISSION_DENIED": sdk.PermissionDeniedError,
    "ABORTED": sdk.AbortedError,
    "INTERNAL": sdk.InternalError,
    "CANCELLED": sdk.CancelledError,
    "UNKNOWN": sdk.UnknownError,
    "OUT_OF_RANGE": sdk.OutOfRangeError,
    "UNIMPLEMENTED": sdk.UnimplementedError,
    "DATA_LOSS": sdk.DataLossError,
}


@pytest.mark.parametrize("code_name", sorted(SUBCLASSES))
def test_each_code_raises_its_subclass_with_reason_and_retry_delay(code_name: str) -> None:
    code = grpc.StatusCode[code_name]
    call = FailedCall(code, "it failed", status(code.value[0], "it failed", "SOME_REASON", 0.25))
    error = ApiError.from_rpc_error(call)
    assert type(error) is SUBCLASSES[code_name] and isinstance(error, ApiError)
    assert (error.code, error.message, error.reason) == (code_name, "it failed", "SOME_REASON")
    assert error.retry_after_s == pytest.approx(0.25)
    assert str(error) == f"{code_name}: it failed"
    # The server runtime reads the same status the same way.
    assert retry_delay_s(call) == pytest.approx(0.25)


def test_no_status_no_reason_no_delay() -> None:
    error = ApiError.from_rpc_error(FailedCall(grpc.StatusCode.UNAVAILABLE, "", None))
    assert isinstance(error, sdk.UnavailableError)
    assert (error.message, error.reason, error.retry_after_s) == ("UNAVAILABLE", "", None)


def test_subclasses_can_be_raised_by_hand_and_the_base_still_constructs() -> None:
    error = sdk.NotFoundError("no collection 'x'", "COLLECTION_NOT_FOUND")
    assert (error.code, error.reason, error.retry_after_s) == ("NOT_FOUND", "COLLECTION_NOT_FOUND", None)
    assert ApiError("WHATEVER", "m").code == "WHATEVER"
    assert error_class_for("NO_SUCH_CODE") is ApiError
