"""The one interceptor every contentembed call passes, in this order:

1. the API key and its role, before the request body is parsed;
2. readiness: until the service's ``load()`` returned, UNAVAILABLE (NOT_READY, with a
   retry delay), so nothing runs against state that is still being loaded;
3. admission (``admission.py``): a call that would queue too long is refused at arrival,
   one that can no longer finish before its deadline is shed when a thread picks it up;
4. the body: bytes that do not parse as the request message are INVALID_ARGUMENT, a body
   over --max-message-bytes RESOURCE_EXHAUSTED REQUEST_TOO_LARGE (the transport takes up
   to twice that, so the refusal is this interceptor's, with a reason and counted);
5. the handler, whose domain errors become ``google.rpc.Status`` with ``ErrorInfo``
   (and ``RetryInfo`` where there is a delay to suggest); anything unexpected is INTERNAL.

Each of these outcomes is counted in ``contentembed_rpc_duration_seconds``. Nothing
escapes a contentembed handler as UNKNOWN. Health and reflection are not intercepted.

With tracing on (``tracing.py``), each call also gets a SERVER span, child of the trace
context in its metadata, from its arrival (so the wait for a handler thread is inside it)
to its answer, with its status code and ErrorInfo reason. A refused call gets one too,
marked ``contentembed.refused``: a shard answering NOT_READY or shedding load is exactly
what a slow or partial trace has to show.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from contentembed.services.common.admission import Admission, Ticket
from contentembed.services.common.auth import ApiKeyPolicy
from contentembed.services.common.errors import (
    ERROR_DOMAIN,
    ContentEmbedError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
)
from contentembed.services.common.interrupt import Interrupt
from contentembed.services.common.metrics import RpcMetrics
from contentembed.services.common.tracing import Tracing, end_span_with_status, split_method

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


def interrupt_of(context: grpc.ServicerContext) -> Interrupt:
    """Stops a handler's long work when its caller cancels or its deadline passes."""
    remaining = caller_time_remaining(context)
    deadline = None if remaining is None else time.monotonic() + remaining
    return Interrupt(deadline, context.is_active)


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
    """Stands in for a request body that did not parse, or that is over the message
    limit: the handler answers it with INVALID_ARGUMENT MALFORMED_REQUEST or
    RESOURCE_EXHAUSTED REQUEST_TOO_LARGE (gRPC itself would answer INTERNAL, or
    RESOURCE_EXHAUSTED without a reason, uncounted either way)."""

    def __init__(self, type_name: str, error: Exception | None, size: int = 0,
                 limit: int = 0) -> None:
        self.type_name = type_name
        self.error = error
        self.size = size
        self.limit = limit

    def refusal(self, what: str) -> ContentEmbedError:
        if self.error is None:
            return ResourceExhausted(
                f"{what} is {self.size} bytes, above the message limit of {self.limit} "
                "(--max-message-bytes): send less per call",
                reason="REQUEST_TOO_LARGE",
            )
        return InvalidArgument(f"{what} is not a valid {self.type_name}: {self.error}",
                               reason="MALFORMED_REQUEST")


def tolerant(
    deserializer: Callable[[bytes], Any] | None, max_bytes: int | None = None
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def parse(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return Unparseable(type_name, None, len(data), max_bytes)
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
        tracing: Tracing | None = None,
        stream_idle_timeout_s: float = 30.0,
        max_request_bytes: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._keys = keys
        self._readiness = readiness
        self._admission = admission
        self._tracing = tracing or Tracing.off()
        self._stream_idle_timeout_s = stream_idle_timeout_s
        self._max_request_bytes = max_request_bytes

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
        # Wall-clock arrival for the span's start; skipped when tracing is off.
        arrived_ns = time.time_ns() if self._tracing.enabled else 0
        try:
            self._keys.check(method, handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
            self._readiness()
            ticket = self._admission.arrive(short_method, stream=streaming)
        except ContentEmbedError as error:
            return self._refusal(method, error, arrived, arrived_ns, streaming)
        if streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._guarded(handler.stream_unary, method, ticket, arrived_ns),
                request_deserializer=tolerant(handler.request_deserializer, self._max_request_bytes),
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._guarded(handler.unary_unary, method, ticket, arrived_ns),
            request_deserializer=tolerant(handler.request_deserializer, self._max_request_bytes),
            response_serializer=handler.response_serializer,
        )

    def _start_span(
        self, full_method: str, context: grpc.ServicerContext, arrived_ns: int
    ) -> tuple[trace.Span, otel_context.Context]:
        parent = self._tracing.extract(context.invocation_metadata())
        service, method = split_method(full_method)
        span = self._tracing.tracer.start_span(
            full_method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            start_time=arrived_ns,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        return span, trace.set_span_in_context(span, parent)

    def _guarded(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        full_method: str,
        ticket: Ticket,
        arrived_ns: int,
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        method = full_method.rsplit("/", 1)[-1]

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = "OK"
            failure: ContentEmbedError | None = None
            span = token = None
            if self._tracing.enabled:
                # The handler's spans and downstream calls (this thread) are its children.
                span, span_context = self._start_span(full_method, context, arrived_ns)
                token = otel_context.attach(span_context)
            try:
                self._admission.start(ticket, caller_time_remaining(context))
                if isinstance(request, Unparseable):
                    raise request.refusal("the request body")
                if isinstance(request, Iterator):  # a client stream: checked as it is read
                    with IdleWatch(context, self._stream_idle_timeout_s) as watch:
                        return behavior(parsed_messages(request, watch), context)
                return behavior(request, context)
            except ContentEmbedError as error:
                code = error.code
                failure = error
                if error.code != "RESOURCE_EXHAUSTED":  # shed load is counted, not logged
                    log.info("rpc failed", extra={"method": method, "code": code,
                                                  "error": clip(error.message, 300)})
                context.abort_with_status(rpc_status.to_status(status_for_error(error)))
            except Exception as error:
                code = "INTERNAL"
                if span is not None:
                    span.record_exception(error)
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
                if span is not None:
                    otel_context.detach(token)
                    end_span_with_status(
                        span, code,
                        failure.message if failure else "unexpected error (see its exception event)",
                        failure.reason if failure else None,
                    )

        return guarded

    def _refusal(
        self,
        full_method: str,
        error: ContentEmbedError,
        arrived: float,
        arrived_ns: int,
        streaming: bool = False,
    ) -> grpc.RpcMethodHandler:
        method = full_method.rsplit("/", 1)[-1]
        log.debug("rpc refused", extra={"method": method, "code": error.code,
                                        "error": error.message})

        def refuse(request: bytes, context: grpc.ServicerContext) -> None:
            self._metrics.observe(method, error.code, time.perf_counter() - arrived)
            if self._tracing.enabled:
                span, _ = self._start_span(full_method, context, arrived_ns)
                span.set_attribute("contentembed.refused", True)
                end_span_with_status(span, error.code, error.message, error.reason)
            context.abort_with_status(rpc_status.to_status(status_for_error(error)))

        # No deserializer: the body of a refused call is never parsed.
        if streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


class IdleWatch:
    """Cancels a client stream whose client sends nothing for ``idle_s``: a handler
    waiting for the next message holds its thread, and nothing else would wake it.

    One thread per stream (streams are few: admission limits them), waiting for the
    stream's next message. Once it fires, the reader of the stream ends with
    DEADLINE_EXCEEDED STREAM_IDLE (counted and logged as such); the client sees the call
    CANCELLED, which is all gRPC can tell it of a call cancelled by the server."""

    def __init__(self, context: grpc.ServicerContext, idle_s: float) -> None:
        self.idle_s = idle_s
        self.expired = False
        self._context = context
        self._progress = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()  # a stream that ends as the timer fires is not cancelled
        self._thread = threading.Thread(target=self._watch, name="stream-idle", daemon=True)

    def __enter__(self) -> IdleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join()

    def received(self) -> None:
        self._progress.set()

    def stop(self) -> None:
        """The stream ended: what the handler does next (verifying an upload) is not idling."""
        with self._lock:
            self._done.set()
        self._progress.set()

    def _watch(self) -> None:
        while not self._done.is_set():
            if not self._progress.wait(self.idle_s):
                with self._lock:
                    if self._done.is_set():
                        return
                    self.expired = True
                self._context.cancel()
                return
            self._progress.clear()

    def check(self) -> None:
        if self.expired:
            raise DeadlineExceeded(
                f"the client sent nothing for {self.idle_s:g} s (--stream-idle-timeout-s); "
                "the stream was cancelled",
                reason="STREAM_IDLE",
            )


def parsed_messages(messages: Iterator[Any], watch: IdleWatch | None = None) -> Iterator[Any]:
    """The messages of a client stream; one that did not parse ends it as
    INVALID_ARGUMENT MALFORMED_REQUEST, like the body of a unary call. With a ``watch``,
    a stream its client left idle ends as DEADLINE_EXCEEDED STREAM_IDLE."""
    position = 0
    while True:
        try:
            message = next(messages)
        except StopIteration:
            if watch is not None:
                watch.stop()
                watch.check()  # the cancel ends the stream as if it were complete
            return
        except grpc.RpcError:
            if watch is not None:
                watch.check()
            raise
        if watch is not None:
            watch.received()
        if isinstance(message, Unparseable):
            raise message.refusal(f"message {position} of the stream")
        yield message
        position += 1
