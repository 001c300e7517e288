"""Domain errors, raised by model, index and gateway code that never imports grpc.

Each carries the name of the canonical gRPC code it maps to; the one error-mapping
interceptor (``interceptor.py``) turns it into a ``google.rpc.Status`` with an
``ErrorInfo`` detail. Anything else that escapes a handler becomes INTERNAL.
"""

from __future__ import annotations

from collections.abc import Mapping

ERROR_DOMAIN = "contentembed.dev"


class ContentEmbedError(Exception):
    """An error with a canonical code name, a human message and a machine reason."""

    code: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        # Sent as google.rpc.RetryInfo: when an overloaded server suggests trying again.
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Whole across a pickle (the model worker process sends them back): the default
        # would rebuild from the message alone and lose reason, metadata and retry delay.
        return _rebuild, (type(self), self.message, self.reason, self.metadata, self.retry_after_s)


def _rebuild(
    cls: type[ContentEmbedError],
    message: str,
    reason: str,
    metadata: dict[str, str],
    retry_after_s: float | None,
) -> ContentEmbedError:
    return cls(message, reason=reason, metadata=metadata, retry_after_s=retry_after_s)


class InvalidArgument(ContentEmbedError):
    code = "INVALID_ARGUMENT"


class NotFound(ContentEmbedError):
    code = "NOT_FOUND"


class AlreadyExists(ContentEmbedError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(ContentEmbedError):
    code = "FAILED_PRECONDITION"


class Aborted(ContentEmbedError):
    """A concurrent change made the request's plan stale; re-read and retry."""

    code = "ABORTED"


class ResourceExhausted(ContentEmbedError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ContentEmbedError):
    code = "UNAVAILABLE"


class DeadlineExceeded(ContentEmbedError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(ContentEmbedError):
    code = "CANCELLED"


class Internal(ContentEmbedError):
    code = "INTERNAL"


class Unauthenticated(ContentEmbedError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ContentEmbedError):
    code = "PERMISSION_DENIED"


ERRORS_BY_CODE: dict[str, type[ContentEmbedError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Internal,
        Unauthenticated,
        PermissionDenied,
    )
}

# Codes that say the request itself is wrong: retrying elsewhere will not help,
# so the gateway passes them through instead of treating the shard as down.
CLIENT_ERROR_CODES = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION"}
)


# Refusals for the size of what the request asked for (not a retryable overload): the
# same request is refused the same way by any shard, so it is the caller's to change.
SIZE_REFUSAL_REASONS = frozenset({"ANSWER_TOO_LARGE"})


def caused_by_request(error: ContentEmbedError) -> bool:
    """Whether the request itself is the cause: retrying it elsewhere will not help, and
    a shard that said so is not failing."""
    return error.code in CLIENT_ERROR_CODES or error.reason in SIZE_REFUSAL_REASONS


def error_for_code(
    code: str, message: str, reason: str | None = None, retry_after_s: float | None = None
) -> ContentEmbedError:
    """Builds the domain error for a canonical code name (unknown names become INTERNAL)."""
    return ERRORS_BY_CODE.get(code, Internal)(message, reason=reason, retry_after_s=retry_after_s)
