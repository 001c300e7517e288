"""Reading a failed call's ``google.rpc.Status``: one vocabulary for the SDK and the services.

A gRPC error carries the canonical code and message; the rich status in the
``grpc-status-details-bin`` trailer adds an ``ErrorInfo`` (a machine-readable reason such
as ``NOT_READY``) and, for overload, a ``RetryInfo`` (how long to wait before retrying).
Only grpcio-status and googleapis-common-protos are needed, both in the base install.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["call_status", "error_reason", "is_size_refusal", "retry_delay_s"]

# RESOURCE_EXHAUSTED for a message's size rather than for load: the services' reasons, and
# gRPC's own refusal of a message over a channel's limit, which carries no reason
# ("Received message larger than max (20000038 vs. 16777216)").
SIZE_REFUSAL_REASONS = frozenset({"ANSWER_TOO_LARGE", "REQUEST_TOO_LARGE"})


def is_size_refusal(code: str, reason: str, message: str) -> bool:
    """Whether a failure refused a message for its size: the same request fails again,
    a smaller one (fewer hits, fewer rows) may not.

    Args:
        code: The canonical code name, e.g. ``"RESOURCE_EXHAUSTED"``.
        reason: The ErrorInfo reason ("" for none).
        message: The status message.

    Returns:
        True for RESOURCE_EXHAUSTED with a size reason, or gRPC's "larger than max".
    """
    return code == "RESOURCE_EXHAUSTED" and (
        reason in SIZE_REFUSAL_REASONS or "larger than max" in message
    )


def call_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed call carries.

    A status whose code the transport overrode (trailers over the size limit come back as
    RESOURCE_EXHAUSTED) is ignored rather than raised as the ValueError of
    ``rpc_status.from_call``.

    Args:
        error: The error a call raised (``grpc.RpcError`` that is also a ``grpc.Call``).

    Returns:
        The status, or None when the call carries none (or a mismatching one).

    Example:
        >>> status = call_status(error)  # doctest: +SKIP
    """
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return None


def error_reason(error: grpc.RpcError) -> str:
    """The ``ErrorInfo.reason`` of a failed call.

    Args:
        error: The error a call raised.

    Returns:
        The reason (``NOT_READY``, ``SHARDS_FAILED``, ...), or "" when there is none.

    Example:
        >>> error_reason(error)  # doctest: +SKIP
        'NOT_READY'
    """
    status = call_status(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """The ``RetryInfo.retry_delay`` of a failed call, in seconds.

    An overloaded service says how long to back off; the gateway passes its encoders' hint
    on to its own callers and the SDK waits that long before retrying.

    Args:
        error: The error a call raised.

    Returns:
        The delay in seconds (never negative), or None when the call carries none.

    Example:
        >>> retry_delay_s(error)  # doctest: +SKIP
        0.25
    """
    status = call_status(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return max(0.0, info.retry_delay.ToNanoseconds() / 1e9)
    return None
