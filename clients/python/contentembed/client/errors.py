"""Exceptions the SDK raises: one class per canonical gRPC code, all under ``ApiError``.

Every failed call raises a subclass of :class:`ApiError` chosen by the status code, so
callers catch what they can handle::

    try:
        client.get_collection("products")
    except NotFoundError:
        ...
    except UnavailableError as error:
        time.sleep(error.retry_after_s or 1.0)

``error.code`` stays the canonical code name ("NOT_FOUND", ...), so code written against
the single ``ApiError`` keeps working.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from contentembed.rpc_status import error_reason, retry_delay_s

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "ApiError",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "error_class_for",
]


class ApiError(Exception):
    """A failed call.

    Attributes:
        code: Canonical gRPC code name, e.g. ``"UNAVAILABLE"``.
        message: The server's message (the code name when it sent none).
        reason: The ``google.rpc.ErrorInfo`` reason (``"NOT_READY"``, ``"SHARDS_FAILED"``,
            ...), or "" when the server sent none.
        retry_after_s: The ``google.rpc.RetryInfo`` delay in seconds the server asked
            for before a retry (sent with overload), or None.
    """

    def __init__(
        self, code: str, message: str, reason: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ApiError:
        """The exception for a failed gRPC call: the subclass of its code.

        Args:
            error: What the gRPC stub raised (a ``grpc.RpcError`` that is a ``grpc.Call``).

        Returns:
            An instance of the :class:`ApiError` subclass for the call's code, with the
            reason and retry delay of its ``google.rpc.Status``.

        Example:
            >>> try:  # doctest: +SKIP
            ...     stub.Search(request, timeout=5)
            ... except grpc.RpcError as error:
            ...     raise ApiError.from_rpc_error(error) from None
        """
        code = error.code().name  # type: ignore[attr-defined]
        return error_class_for(code)._make(
            code, error.details() or code, error_reason(error), retry_delay_s(error)  # type: ignore[attr-defined]
        )

    @classmethod
    def _make(
        cls, code: str, message: str, reason: str, retry_after_s: float | None
    ) -> ApiError:
        return cls(code, message, reason, retry_after_s)


class _CodeError(ApiError):
    """An ``ApiError`` whose class fixes the code: ``NotFoundError("no such thing")``."""

    grpc_code: ClassVar[str] = ""

    def __init__(
        self, message: str = "", reason: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(self.grpc_code, message or self.grpc_code, reason, retry_after_s)

    @classmethod
    def _make(
        cls, code: str, message: str, reason: str, retry_after_s: float | None
    ) -> ApiError:
        return cls(message, reason, retry_after_s)


class CancelledError(_CodeError):
    """CANCELLED: the call was cancelled (usually by the caller)."""

    grpc_code = "CANCELLED"


class UnknownError(_CodeError):
    """UNKNOWN: an error the server could not classify."""

    grpc_code = "UNKNOWN"


class InvalidArgumentError(_CodeError):
    """INVALID_ARGUMENT: the request is malformed (bad name, oversized input, ...)."""

    grpc_code = "INVALID_ARGUMENT"


class DeadlineExceededError(_CodeError):
    """DEADLINE_EXCEEDED: the call's deadline passed before an answer."""

    grpc_code = "DEADLINE_EXCEEDED"


class NotFoundError(_CodeError):
    """NOT_FOUND: no such collection, version or document."""

    grpc_code = "NOT_FOUND"


class AlreadyExistsError(_CodeError):
    """ALREADY_EXISTS: e.g. a collection created twice without ``exist_ok``."""

    grpc_code = "ALREADY_EXISTS"


class PermissionDeniedError(_CodeError):
    """PERMISSION_DENIED: the API key lacks the role the call needs."""

    grpc_code = "PERMISSION_DENIED"


class ResourceExhaustedError(_CodeError):
    """RESOURCE_EXHAUSTED: overload (with ``retry_after_s``) or a message over a limit."""

    grpc_code = "RESOURCE_EXHAUSTED"


class FailedPreconditionError(_CodeError):
    """FAILED_PRECONDITION: the system is not in the state the call needs."""

    grpc_code = "FAILED_PRECONDITION"


class AbortedError(_CodeError):
    """ABORTED: a concurrent change got in the way; retry the whole operation."""

    grpc_code = "ABORTED"


class OutOfRangeError(_CodeError):
    """OUT_OF_RANGE: a value past the valid range."""

    grpc_code = "OUT_OF_RANGE"


class UnimplementedError(_CodeError):
    """UNIMPLEMENTED: the server does not offer this method."""

    grpc_code = "UNIMPLEMENTED"


class InternalError(_CodeError):
    """INTERNAL: a bug or broken invariant on the server."""

    grpc_code = "INTERNAL"


class UnavailableError(_CodeError):
    """UNAVAILABLE: the gateway or a service behind it cannot answer now; transient."""

    grpc_code = "UNAVAILABLE"


class DataLossError(_CodeError):
    """DATA_LOSS: unrecoverable data loss or corruption."""

    grpc_code = "DATA_LOSS"


class UnauthenticatedError(_CodeError):
    """UNAUTHENTICATED: no valid API key (or client certificate) was presented."""

    grpc_code = "UNAUTHENTICATED"


_BY_CODE: dict[str, type[_CodeError]] = {
    cls.grpc_code: cls
    for cls in (
        CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError,
        NotFoundError, AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError,
        FailedPreconditionError, AbortedError, OutOfRangeError, UnimplementedError,
        InternalError, UnavailableError, DataLossError, UnauthenticatedError,
    )
}


def error_class_for(code: str) -> type[ApiError]:
    """The exception class for a canonical code name.

    Args:
        code: A canonical code name such as ``"NOT_FOUND"``.

    Returns:
        Its :class:`ApiError` subclass; :class:`ApiError` itself for an unknown name.

    Example:
        >>> error_class_for("NOT_FOUND").__name__
        'NotFoundError'
    """
    return _BY_CODE.get(code, ApiError)
