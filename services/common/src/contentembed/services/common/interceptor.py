"""The one interceptor every contentembed call passes, in this order:

1. the API key and its role, before the request body is parsed;
2. readiness: until the service's ``load()`` returned, UNAVAILABLE (NOT_READY, with a
   retry delay), so nothing runs against state that is still being loaded;
3. admission (``admission.py``): a call that would queue too long is refused at arrival,
   one that can no longer finish before its deadline is shed when a thread picks it up;
4. the body: bytes that do not parse as the request message are INVALID_ARGUMENT;
5. the handler, whose domain errors become ``google.rpc.Status`` with ``ErrorInfo``
   (and ``RetryInfo`` where there is a delay to suggest); anything unexpected is INTERNAL.

Each of these outcomes is counted in ``contentembed_rpc_duration_seconds``. Nothing
escapes a contentembed handler as UNKNOWN. Health and reflection are not intercepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from contentembed.services.common.admission import Admission, Ticket
from contentembed.services.common.auth import ApiKeyPolicy
from contentembed.services.common.errors import (
    ERROR_DOMAIN,
    ContentEmbedError,
    InvalidArgument,
)
from contentembed.services.common.metrics import RpcMetrics

log = logging.getLogger(__name__)

# Only our own services: health and reflection have their own status conventions.
OWN_METHOD_PREFIX = "/contentembed."
# A status travels in a trailer that a peer refuses beyond its metadata limit (8 KiB by
# default): a message that echoes a huge input would turn INVALID_ARGUMENT into an
# unreadable RESOURCE_EXHAUSTED on the caller's side.
MAX_MESSAGE_CHARS = 1024
MAX_METADATA_VALUE_CHARS = 256
# gRPC reports "no deadline" as an enormous remaining time; anything past a day is that.
NO_DEADLINE_S = 24 * 3600.0

ReadinessCheck = Callable[[], None]


def caller_time_remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds until the caller's deadline, or None when it set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_S:
        return None
    return max(remaining, 0.0)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 30]}... ({len(text)} characters)"


def status_for_error(error: ContentEmbedError) -> status_pb2.Status:
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason,
            domain=ERROR_DOMAIN,
            metadata={k: clip(v, MAX_METADATA_VALUE_CHARS) for k, v in error.metadata.items()},
        )
    )
    details = [info]
    if error.retry_after_s is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return status_pb2.Status(
        code=code_pb2.Code.Value(error.code),
        message=clip(error.message, MAX_MESSAGE_CHARS),
        details=details,
    )


class Unparseable:
    """Stands in for a request body that did not parse: the handler answers it with
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL, uncounted)."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.type_name = type_name
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001 - protobuf raises DecodeError and others
            return Unparseable(type_name, error)

    return parse


class RuntimeInterceptor(grpc.ServerInterceptor):
    def __init__(
        self,
        metrics: RpcMetrics,
        keys: ApiKeyPolicy,
        readiness: ReadinessCheck,
        admission: Admission,
    ) -> None:
        self._metrics = metrics
        self._keys = keys
        self._readiness = readiness
        self._admission = admission

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(OWN_METHOD_PREFIX):
            return handler
        streaming = handler.stream_unary is not None  # client-streaming uploads
        if handler.unary_unary is None and not streaming:
            return handler
        short_method = method.rsplit("/", 1)[-1]
        # gRPC calls this on its polling thread as the call arrives, before the call
        # waits for a pool thread: the right moment to refuse cheaply.
        arrived = time.perf_counter()
        try:
            self._keys.check(method, handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
            self._readiness()
            ticket = self._admission.arrive(short_method)
        except ContentEmbedError as error:
            return self._refusal(short_method, error, arrived, streaming)
        if streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._guarded(handler.stream_unary, short_method, ticket),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._guarded(handler.unary_unary, short_method, ticket),
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _guarded(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str, ticket: Ticket
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                self._admission.start(ticket, caller_time_remaining(context))
                if isinstance(request, Unparseable):
                    raise InvalidArgument(
                        f"the request body is not a valid {request.type_name}: {request.error}",
                        reason="MALFORMED_REQUEST",
                    )
                if isinstance(request, Iterator):  # a client stream: checked as it is read
                    request = parsed_messages(request)
                return behavior(request, context)
            except ContentEmbedError as error:
                code = error.code
                if error.code != "RESOURCE_EXHAUSTED":  # shed load is counted, not logged
                    log.info("rpc failed", extra={"method": method, "code": code,
                                                  "error": clip(error.message, 300)})
                context.abort_with_status(rpc_status.to_status(status_for_error(error)))
            except Exception:
                code = "INTERNAL"
                log.exception("unexpected error", extra={"method": method})
                context.abort_with_status(
                    rpc_status.to_status(
                        status_for_error(
                            ContentEmbedError(
                                f"internal error in {method}; the server logged the cause"
                            )
                        )
                    )
                )
            finally:
                self._admission.finish(ticket)
                self._metrics.observe(method, code, time.perf_counter() - started)

        return guarded

    def _refusal(
        self, method: str, error: ContentEmbedError, arrived: float, streaming: bool = False
    ) -> grpc.RpcMethodHandler:
        log.debug("rpc refused", extra={"method": method, "code": error.code,
                                        "error": error.message})

        def refuse(request: bytes, context: grpc.ServicerContext) -> None:
            self._metrics.observe(method, error.code, time.perf_counter() - arrived)
            context.abort_with_status(rpc_status.to_status(status_for_error(error)))

        # No deserializer: the body of a refused call is never parsed.
        if streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


def parsed_messages(messages: Iterator[Any]) -> Iterator[Any]:
    """The messages of a client stream; one that did not parse ends it as
    INVALID_ARGUMENT MALFORMED_REQUEST, like the body of a unary call."""
    for position, message in enumerate(messages):
        if isinstance(message, Unparseable):
            raise InvalidArgument(
                f"message {position} of the stream is not a valid {message.type_name}: "
                f"{message.error}",
                reason="MALFORMED_REQUEST",
            )
        yield message
