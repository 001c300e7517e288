"""Trace context through gRPC metadata, without a server."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.tracing import Tracing, split_method


def test_a_context_injected_into_metadata_is_extracted_as_the_same_span() -> None:
    tracing = Tracing.create("test", None, exporter=InMemorySpanExporter())
    with tracing.tracer.start_as_current_span("caller") as span:
        metadata: list[tuple[str, str]] = [("x-api-key", "k")]
        tracing.inject(metadata)
    assert [k for k, _ in metadata] == ["x-api-key", "traceparent"]
    extracted = trace.get_current_span(tracing.extract(metadata)).get_span_context()
    assert extracted.trace_id == span.get_span_context().trace_id
    assert extracted.span_id == span.get_span_context().span_id
    assert extracted.is_remote and extracted.trace_flags.sampled
    # gRPC hands metadata values over as str, or bytes for binary headers: both read.
    as_bytes = [(k, v.encode()) for k, v in metadata]
    assert trace.get_current_span(tracing.extract(as_bytes)).get_span_context() == extracted


def test_metadata_without_a_context_extracts_none() -> None:
    tracing = Tracing.create("test", None, exporter=InMemorySpanExporter())
    for metadata in (None, [], [("traceparent", "garbage")]):
        assert not trace.get_current_span(tracing.extract(metadata)).get_span_context().is_valid


def test_client_calls_get_a_span_only_inside_a_traced_request() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.create("test", None, exporter=exporter)
    assert tracing.start_client_call("/pkg.Service/Method", "peer:1") == (None, [])
    with tracing.tracer.start_as_current_span("request") as request:
        span, metadata = tracing.start_client_call("/pkg.Service/Method", "peer:1", {"a": 1})
    assert span is not None and span.kind == SpanKind.CLIENT
    assert span.parent.span_id == request.get_span_context().span_id
    # The metadata carries the client span, so the server's span is its child.
    carried = trace.get_current_span(tracing.extract(metadata)).get_span_context()
    assert carried.span_id == span.get_span_context().span_id
    assert span.attributes["rpc.service"] == "pkg.Service" and span.attributes["a"] == 1


def test_off_by_default_without_a_global_provider() -> None:
    settings = ServiceSettings()
    assert settings.otlp_endpoint is None
    tracing = Tracing.create("test", settings.otlp_endpoint)
    assert not tracing.enabled and isinstance(tracing.tracer, trace.NoOpTracer)
    tracing.shutdown()  # nothing to flush
    with trace.NoOpTracer().start_as_current_span("outside"):
        assert tracing.start_client_call("/a.B/C", "peer") == (None, [])


def test_an_otlp_endpoint_turns_tracing_on_and_needs_a_scheme(monkeypatch) -> None:
    monkeypatch.setenv("CONTENTEMBED_OTLP_ENDPOINT", "http://127.0.0.1:1")
    settings = ServiceSettings()
    tracing = Tracing.create("test", settings.otlp_endpoint)
    assert tracing.enabled
    tracing.shutdown()
    with pytest.raises(ValidationError, match="scheme"):
        ServiceSettings(otlp_endpoint="collector:4317")


def test_split_method() -> None:
    assert split_method("/contentembed.search.v1.SearchService/Search") == (
        "contentembed.search.v1.SearchService", "Search",
    )
