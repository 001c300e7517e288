"""Distributed tracing: one OpenTelemetry tracer provider per runtime, W3C trace context
in gRPC metadata.

Each ``ServiceRuntime`` owns a ``Tracing``: with ``--otlp-endpoint`` set, a provider
that batches spans to that OTLP/gRPC collector; without it, OpenTelemetry's no-op tracer
and ``enabled`` False, so the interceptor skips tracing altogether and a call costs one
attribute check more than before. Nothing here touches OpenTelemetry's global provider
or propagator: four services can share one process (tests, the local stack) and each
keeps its own service name, sampler and exporter.

Context travels as ``traceparent``/``tracestate`` metadata (W3C Trace Context). A
downstream call is traced only inside a traced request: calls the gateway makes on its
own (route refresh, start-up, quality gauges) would otherwise each start a trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.rpc import code_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from contentembed.rpc_status import error_reason

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "contentembed"
# The ErrorInfo reason of a failed call (NOT_READY, SHARDS_FAILED...): the code alone
# does not say which of the many UNAVAILABLEs it was.
REASON_ATTRIBUTE = "contentembed.error.reason"

Metadata = Sequence[tuple[str, str | bytes]]


class MetadataGetter(Getter[Metadata]):
    """Reads W3C headers from gRPC metadata, a sequence of (key, value) pairs whose keys
    gRPC has already lower-cased."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v if isinstance(v, str) else v.decode("ascii", "replace")
                  for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


class MetadataSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


class Tracing:
    """A runtime's tracer, its propagator and (when exporting) its provider."""

    def __init__(self, tracer: Tracer, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.enabled = provider is not None
        self._provider = provider
        self._propagator = TraceContextTextMapPropagator()
        self._getter = MetadataGetter()
        self._setter = MetadataSetter()

    @classmethod
    def off(cls) -> Tracing:
        return cls(trace.NoOpTracer())

    @classmethod
    def create(
        cls,
        service_name: str,
        otlp_endpoint: str | None,
        sample_ratio: float = 1.0,
        exporter: SpanExporter | None = None,
    ) -> Tracing:
        """Exports to ``otlp_endpoint`` when set; ``exporter`` (tests) gets every span as
        it ends. Neither: tracing is off."""
        if otlp_endpoint is None and exporter is None:
            return cls.off()
        provider = TracerProvider(
            # A caller that sampled its trace keeps it sampled here (and one that did
            # not, not): a trace is complete or absent, never holes in the middle.
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
            resource=Resource.create(
                {"service.name": service_name, "service.namespace": "contentembed"}
            ),
            # The runtime shuts it down (and flushes) when it stops; an atexit hook per
            # provider would only pile up in processes that start many runtimes (tests).
            shutdown_on_exit=False,
        )
        if otlp_endpoint is not None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            # Batched on a worker thread: a request never waits for the collector.
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        if exporter is not None:
            # Synchronous, so a test sees a span as soon as it ended.
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider.get_tracer(INSTRUMENTATION_NAME), provider)

    # -- propagation -------------------------------------------------------------------
    def extract(self, metadata: Metadata | None) -> otel_context.Context:
        """The caller's trace context from incoming metadata (an empty one without it)."""
        return self._propagator.extract(metadata or (), getter=self._getter)

    def inject(self, metadata: list[tuple[str, str]], context: otel_context.Context | None = None) -> None:
        """Appends traceparent (and tracestate) of ``context``, by default the current one."""
        self._propagator.inject(metadata, context=context, setter=self._setter)

    # -- spans ---------------------------------------------------------------------------
    def start_client_call(
        self, full_method: str, peer: str, attributes: Mapping[str, Any] | None = None
    ) -> tuple[Span | None, list[tuple[str, str]]]:
        """A CLIENT span for a downstream call and the metadata that carries it, or
        (None, []) outside a traced request."""
        if not self.enabled or not trace.get_current_span().get_span_context().is_valid:
            return None, []
        service, method = split_method(full_method)
        span = self.tracer.start_span(
            full_method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
                "server.address": peer, **(attributes or {}),
            },
        )
        metadata: list[tuple[str, str]] = []
        self.inject(metadata, trace.set_span_in_context(span))
        return span, metadata

    def shutdown(self) -> None:
        """Flushes what is still batched and stops exporting."""
        if self._provider is not None:
            self._provider.shutdown()


def split_method(full_method: str) -> tuple[str, str]:
    """("contentembed.search.v1.SearchService", "Search") of "/contentembed...Service/Search"."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def code_number(code_name: str) -> int:
    return code_pb2.Code.Value(code_name)


def end_span_with_status(
    span: Span, code_name: str, message: str = "", reason: str | None = None
) -> None:
    """Records the outcome of an RPC (by its canonical code name) and ends the span."""
    span.set_attribute("rpc.grpc.status_code", code_number(code_name))
    if code_name != "OK":
        if reason:
            span.set_attribute(REASON_ATTRIBUTE, reason)
        span.set_status(Status(StatusCode.ERROR, f"{code_name}: {message}"[:1024]))
    span.end()


def end_client_span_when_done(span: Span | None, future: grpc.Future) -> None:
    """Ends a CLIENT span when its call completes, on whichever thread completes it:
    the caller may never wait for the result (a cancelled or abandoned call)."""
    if span is None:
        return

    def done(finished: grpc.Future) -> None:
        try:
            if finished.cancelled():
                end_span_with_status(span, "CANCELLED", "cancelled by the caller")
                return
            error = finished.exception()
            if error is None:
                end_span_with_status(span, "OK")
            elif isinstance(error, grpc.RpcError):
                code = error.code()  # type: ignore[attr-defined]
                end_span_with_status(
                    span, code.name, error.details() or "",  # type: ignore[attr-defined]
                    error_reason(error) or None,
                )
            else:
                end_span_with_status(span, "UNKNOWN", str(error))
        except Exception:  # noqa: BLE001 - a callback must not break gRPC's thread
            log.debug("could not end a client span", exc_info=True)
            span.end()

    future.add_done_callback(done)


__all__ = [
    "REASON_ATTRIBUTE",
    "MetadataGetter",
    "MetadataSetter",
    "Tracing",
    "end_client_span_when_done",
    "end_span_with_status",
    "split_method",
]
