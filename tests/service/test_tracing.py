"""Distributed tracing over real gRPC: gateway, text-encoder and two index shards on port
0 in this process, each runtime with its own in-memory exporter. A request is one trace
across all of them, with every span under the one that caused it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from contentembed.client import ApiError, Client
from contentembed.encoder.v1 import encoder_service_pb2 as encoder_pb
from contentembed.encoder.v1 import encoder_service_pb2_grpc as encoder_grpc
from contentembed.services.common.config import ServiceSettings
from contentembed.services.common.server import ServiceRuntime
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.index.service import IndexService, IndexSettings
from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings
from contentembed.services.text_encoder.tfidf import TfidfModel
from tests.conftest import running_service, settings_for_test
from tests.support.doubles import EncoderDouble

SEARCH = "contentembed.search.v1.SearchService/Search"
UPSERT = "contentembed.admin.v1.AdminService/UpsertDocuments"
EMBED = "contentembed.encoder.v1.EncoderService/Embed"
SHARD_SEARCH = "contentembed.index.v1.IndexService/Search"
SHARD_UPSERT = "contentembed.index.v1.IndexService/Upsert"

DOCUMENTS = [
    {"id": "headphones", "text": "wireless noise cancelling headphones"},
    {"id": "earbuds", "text": "wireless bluetooth earbuds"},
    {"id": "espresso", "text": "espresso machine with milk frother"},
    {"id": "grinder", "text": "burr coffee grinder"},
    {"id": "tent", "text": "two person backpacking tent"},
    {"id": "stove", "text": "compact camping stove"},
]


@dataclass
class Traced:
    gateway: ServiceRuntime
    encoder: ServiceRuntime
    shards: list[ServiceRuntime]
    exporters: dict[str, InMemorySpanExporter]  # by service: gateway, encoder, shard0, shard1

    def clear(self) -> None:
        for exporter in self.exporters.values():
            exporter.clear()

    def spans(self) -> list[ReadableSpan]:
        return [span for e in self.exporters.values() for span in e.get_finished_spans()]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReadableSpan]:
        """Client spans end on gRPC's completion threads, a moment after the answer."""
        until = time.monotonic() + timeout
        while len(spans := self.spans()) < count and time.monotonic() < until:
            time.sleep(0.01)
        return spans


@contextmanager
def traced_stack(tmp_path, gateway_exporter: bool = True) -> Iterator[Traced]:
    model = tmp_path / "tfidf.json"
    TfidfModel.fit([d["text"] for d in DOCUMENTS]).save(model)
    exporters = {name: InMemorySpanExporter() for name in ("gateway", "encoder", "shard0", "shard1")}
    with ExitStack() as stack:
        encoder = stack.enter_context(running_service(
            TextEncoderService,
            settings_for_test(TextEncoderSettings, backend="tfidf", model=str(model)),
            span_exporter=exporters["encoder"],
        ))
        shards = [
            stack.enter_context(running_service(
                IndexService, settings_for_test(IndexSettings, shard_index=i, shard_count=2),
                span_exporter=exporters[f"shard{i}"],
            ))
            for i in range(2)
        ]
        gateway = stack.enter_context(running_service(
            GatewayService,
            settings_for_test(
                GatewaySettings,
                encoder_endpoints=[encoder.address],
                index_endpoints=[s.address for s in shards],
                downstream_wait_s=30.0,
                cache_ttl_s=0,  # every search reaches the encoder
                recall_sample_rate=0,
            ),
            span_exporter=exporters["gateway"] if gateway_exporter else None,
        ))
        assert gateway.load_error is None and encoder.load_error is None
        yield Traced(gateway, encoder, shards, exporters)


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> Iterator[Traced]:
    with traced_stack(tmp_path_factory.mktemp("traced")) as stack:
        with Client(stack.gateway.address) as client:
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS[:4])
        yield stack


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    parent = by_id(spans).get(span.parent.span_id)
    assert parent is not None, f"the parent of {span.name} was not exported"
    return parent


def named(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and (kind is None or s.kind == kind)]


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = named(spans, name, kind)
    assert len(found) == 1, f"{len(found)} spans named {name}: {sorted(s.name for s in spans)}"
    return found[0]


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def test_a_search_is_one_trace_through_gateway_encoder_and_every_shard(traced) -> None:
    traced.clear()
    with Client(traced.gateway.address) as client:
        client.search("shop", text="wireless headphones", top_k=3)
    # gateway: server, embed_query, Embed client, search_shards, 2 Search clients, merge;
    # encoder: server, wait, encode; each shard: server (and the GetCollection lookups).
    spans = traced.wait_for(16, timeout=1.0)

    assert len({s.context.trace_id for s in spans}) == 1, "one search, one trace"
    root = one(spans, SEARCH, SpanKind.SERVER)
    assert root.parent is None and service_of(root) == "gateway"
    assert root.status.status_code == StatusCode.UNSET
    assert root.attributes["rpc.system"] == "grpc"
    assert root.attributes["rpc.service"] == "contentembed.search.v1.SearchService"
    assert root.attributes["rpc.method"] == "Search"
    assert root.attributes["rpc.grpc.status_code"] == 0

    embed_query = one(spans, "gateway.embed_query")
    assert parent_of(embed_query, spans) is root
    embed_client = one(spans, EMBED, SpanKind.CLIENT)
    assert parent_of(embed_client, spans) is embed_query
    embed_server = one(spans, EMBED, SpanKind.SERVER)
    assert service_of(embed_server) == "text-encoder"
    assert parent_of(embed_server, spans) is embed_client
    wait = one(spans, "encoder.batch_wait")
    encode = one(spans, "encoder.batch_encode")
    assert parent_of(wait, spans) is embed_server and parent_of(encode, spans) is embed_server
    assert wait.end_time <= encode.start_time + 1 and encode.end_time <= embed_server.end_time
    assert encode.attributes["contentembed.batch.items"] >= 1

    fan_out = one(spans, "gateway.search_shards")
    assert parent_of(fan_out, spans) is root
    shard_clients = named(spans, SHARD_SEARCH, SpanKind.CLIENT)
    assert sorted(c.attributes["contentembed.shard_index"] for c in shard_clients) == [0, 1]
    shard_servers = named(spans, SHARD_SEARCH, SpanKind.SERVER)
    assert len(shard_servers) == 2
    for client_span in shard_clients:
        assert parent_of(client_span, spans) is fan_out
        assert client_span.attributes["rpc.grpc.status_code"] == 0
    for server_span in shard_servers:
        assert service_of(server_span) == "index"
        assert parent_of(server_span, spans) in shard_clients
    assert {parent_of(s, spans).context.span_id for s in shard_servers} == {
        c.context.span_id for c in shard_clients
    }
    assert parent_of(one(spans, "gateway.merge"), spans) is root
    # The collection's space, unless cached: a GetCollection to each shard, under the root.
    lookups = named(spans, "contentembed.index.v1.IndexService/GetCollection", SpanKind.CLIENT)
    assert len(lookups) in (0, 2) and all(parent_of(c, spans) is root for c in lookups)
    assert len(spans) == 12 + 2 * len(lookups), sorted(s.name for s in spans)


def test_an_upsert_is_one_trace_through_the_encoder_and_the_shards_it_writes(traced) -> None:
    traced.clear()
    with Client(traced.gateway.address) as client:
        client.upsert_documents("shop", DOCUMENTS[4:])
    spans = traced.wait_for(10)

    assert len({s.context.trace_id for s in spans}) == 1
    root = one(spans, UPSERT, SpanKind.SERVER)
    assert root.parent is None
    embed_documents = one(spans, "gateway.embed_documents")
    assert parent_of(embed_documents, spans) is root
    embed_client = one(spans, EMBED, SpanKind.CLIENT)
    assert parent_of(embed_client, spans) is embed_documents
    embed_server = one(spans, EMBED, SpanKind.SERVER)
    assert parent_of(embed_server, spans) is embed_client
    assert parent_of(one(spans, "encoder.batch_encode"), spans) is embed_server
    write = one(spans, "gateway.write_shards")
    assert parent_of(write, spans) is root
    upsert_clients = named(spans, SHARD_UPSERT, SpanKind.CLIENT)
    assert upsert_clients and all(parent_of(c, spans) is write for c in upsert_clients)
    upsert_servers = named(spans, SHARD_UPSERT, SpanKind.SERVER)
    assert len(upsert_servers) == len(upsert_clients)
    assert all(parent_of(s, spans) in upsert_clients for s in upsert_servers)


def test_a_failed_call_has_an_error_status_and_its_reason(traced) -> None:
    traced.clear()
    with Client(traced.gateway.address) as client:
        with pytest.raises(ApiError):
            client.search("no-such-collection", text="tent", top_k=3)
    spans = traced.wait_for(5)  # gateway server, 2 GetCollection clients, 2 shard servers

    assert len({s.context.trace_id for s in spans}) == 1
    root = one(spans, SEARCH, SpanKind.SERVER)
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert root.attributes["contentembed.error.reason"] == "COLLECTION_NOT_FOUND"
    assert "NOT_FOUND" in root.status.description
    failed_shards = [s for s in spans if s.kind == SpanKind.SERVER and s is not root]
    assert len(failed_shards) == 2
    for span in failed_shards:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["contentembed.error.reason"] == "COLLECTION_NOT_FOUND"
        client_span = parent_of(span, spans)
        assert client_span.kind == SpanKind.CLIENT and parent_of(client_span, spans) is root
        assert client_span.attributes["contentembed.error.reason"] == "COLLECTION_NOT_FOUND"


def test_a_caller_context_in_metadata_is_continued(traced) -> None:
    traced.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with grpc.insecure_channel(traced.encoder.address) as channel:
        encoder_grpc.EncoderServiceStub(channel).Embed(
            encoder_pb.EmbedRequest(inputs=[encoder_pb.EmbedInput(text="coffee")]),
            metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")],
        )
    spans = traced.wait_for(3)
    server = one(spans, EMBED, SpanKind.SERVER)
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
    assert server.parent.is_remote


class NeverLoads(EncoderDouble):
    name = "never-loads"

    def __init__(self) -> None:
        self.release = threading.Event()

    def load(self) -> None:
        self.release.wait(30)


def test_a_refused_call_gets_a_span_with_the_refusal() -> None:
    exporter = InMemorySpanExporter()
    service = NeverLoads()
    runtime = ServiceRuntime(service, settings_for_test(ServiceSettings), CollectorRegistry(), exporter)
    runtime.start()
    try:
        with grpc.insecure_channel(runtime.address) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                encoder_grpc.EncoderServiceStub(channel).Embed(encoder_pb.EmbedRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        service.release.set()
        runtime.stop(grace=0)
    (span,) = exporter.get_finished_spans()
    assert span.name == EMBED and span.kind == SpanKind.SERVER
    assert span.attributes["contentembed.refused"] is True
    assert span.attributes["contentembed.error.reason"] == "NOT_READY"
    assert span.status.status_code == StatusCode.ERROR


def test_without_an_endpoint_nothing_is_traced_or_propagated(tmp_path) -> None:
    with traced_stack(tmp_path, gateway_exporter=False) as stack:
        assert not stack.gateway.tracing.enabled
        with Client(stack.gateway.address) as client:
            client.create_collection("shop")
            client.upsert_documents("shop", DOCUMENTS)
            stack.clear()
            client.search("shop", text="coffee grinder", top_k=2)
        spans = stack.wait_for(4)
    assert not stack.exporters["gateway"].get_finished_spans()
    # The gateway sent no trace context: each downstream call is a trace of its own.
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert {EMBED, SHARD_SEARCH} <= {s.name for s in servers}
    assert all(s.parent is None for s in servers)
    assert len({s.context.trace_id for s in servers}) == len(servers)


def test_the_client_sdk_carries_its_callers_trace(traced) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    traced.clear()
    caller = TracerProvider().get_tracer("caller")  # not installed globally
    with caller.start_as_current_span("caller") as span:
        with Client(traced.gateway.address) as client:
            client.search("shop", text="coffee", top_k=1)
    root = one(traced.wait_for(12, timeout=1.0), SEARCH, SpanKind.SERVER)
    assert root.context.trace_id == span.get_span_context().trace_id
    assert root.parent is not None and root.parent.span_id == span.get_span_context().span_id
