"""Every class of bad input against every public RPC of every service: each case ends in
the canonical code it deserves, with a short message and an ErrorInfo reason, never
UNKNOWN or INTERNAL; the service stays SERVING and no index changes.

The cases are a table; `test_every_rpc_has_bad_input_cases` keeps it covering every RPC."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf import message as protobuf_message
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.admin.v1 import admin_service_pb2 as admin
from contentembed.client import Client
from contentembed.common.v1 import types_pb2 as types
from contentembed.encoder.v1 import encoder_service_pb2 as encoder
from contentembed.index.v1 import index_service_pb2 as index
from contentembed.index.v1 import index_service_pb2_grpc as index_grpc
from contentembed.index.v1 import replication_service_pb2 as replication
from contentembed.search.v1 import search_service_pb2 as search
from contentembed.services.gateway.service import GatewayService, GatewaySettings
from contentembed.services.image_encoder.service import (
    ImageEncoderService,
    ImageEncoderSettings,
)
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test
from tests.support.images import encoded, photo_like, png_claiming_size

DIM = 8
INDEX = "/contentembed.index.v1.IndexService/"
ENCODER = "/contentembed.encoder.v1.EncoderService/"
SEARCH = "/contentembed.search.v1.SearchService/"
ADMIN = "/contentembed.admin.v1.AdminService/"
REPLICATION = "/contentembed.index.v1.ReplicationService/"
SERVICES = {"index": INDEX, "text-encoder": ENCODER, "image-encoder": ENCODER, "gateway": None,
            "replica": REPLICATION}
# The replica in the fixture leads in this term (it held the lease in the one before).
REPLICA_TERM = 2

INVALID = ("INVALID_ARGUMENT",)
NOT_FOUND = ("NOT_FOUND",)
PRECONDITION = ("FAILED_PRECONDITION",)


def vector(values, dim: int | None = None, dtype: int = 0) -> types.Vector:
    data = np.asarray(values, dtype="<f4")
    return types.Vector(data=data.tobytes(), dim=len(data) if dim is None else dim, dtype=dtype)


def unit(seed: int) -> types.Vector:
    return vector(np.random.default_rng(seed).normal(size=DIM))


def metadata(value: object) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"m": value})
    return struct


def struct_of(values: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def nested_or(depth: int) -> dict:
    value: dict = {"m": 1}
    for _ in range(depth):
        value = {"$or": [value]}
    return value


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def deeply_nested_upsert(levels: int) -> bytes:
    """An Upsert whose metadata nests deeper than protobuf's parser allows (100 levels),
    written as wire bytes: protobuf itself would refuse to build it."""
    from google.protobuf.internal.encoder import _VarintBytes

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
        return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload

    value = b"\x11" + struct.pack("<d", 1.0)  # Value.number_value = 1
    for _ in range(levels):  # Value.struct_value -> Struct.fields["n"] -> Value: 3 levels
        value = field(5, field(1, field(1, b"n") + field(2, value)))
    metadata = field(1, field(1, b"m") + field(2, value))
    one = field(1, b"new") + field(2, unit(1).SerializeToString()) + field(3, metadata)
    return field(1, b"docs") + field(2, one)


def item(item_id: str = "new", vec: types.Vector | None = None, meta=None) -> index.Item:
    return index.Item(id=item_id, vector=vec or unit(1), metadata=meta)


HUGE_NAME = "c" * 8000
BIG_ID = "i" * 100_000
PICTURE = encoded(photo_like(5))


@dataclass(frozen=True)
class Case:
    service: str
    method: str
    label: str
    request: Callable[[], protobuf_message.Message | bytes]
    codes: tuple[str, ...] = INVALID

    @property
    def id(self) -> str:
        return f"{self.service}:{self.method.rsplit('/', 1)[-1]}:{self.label}"


def cases() -> list[Case]:
    I, E, S, A, R = INDEX, ENCODER, SEARCH, ADMIN, REPLICATION  # noqa: E741 - short prefixes keep the table readable
    up = index.UpsertRequest
    table = [
        # -- index shard -----------------------------------------------------------------
        Case("index", I + "CreateCollection", "empty name", lambda: index.CreateCollectionRequest(space_id="s@1", dim=DIM)),
        Case("index", I + "CreateCollection", "8000-char name", lambda: index.CreateCollectionRequest(name=HUGE_NAME, space_id="s@1", dim=DIM)),
        Case("index", I + "CreateCollection", "path in name", lambda: index.CreateCollectionRequest(name="../etc", space_id="s@1", dim=DIM)),
        Case("index", I + "CreateCollection", "dim 0", lambda: index.CreateCollectionRequest(name="x", space_id="s@1", dim=0)),
        Case("index", I + "CreateCollection", "dim too large", lambda: index.CreateCollectionRequest(name="x", space_id="s@1", dim=10**7)),
        # 65,536 was accepted: an empty collection of it allocated 268 MB.
        Case("index", I + "CreateCollection", "dim 65536", lambda: index.CreateCollectionRequest(name="x", space_id="s@1", dim=65536)),
        Case("index", I + "CreateCollection", "no space", lambda: index.CreateCollectionRequest(name="x", dim=DIM)),
        Case("index", I + "CreateCollection", "unknown metric enum", lambda: index.CreateCollectionRequest(name="x", space_id="s@1", dim=DIM, metric=99)),
        Case("index", I + "CreateCollection", "hnsw m 1", lambda: index.CreateCollectionRequest(name="x", space_id="s@1", dim=DIM, hnsw=index.HnswParams(m=1))),
        Case("index", I + "CreateCollection", "hnsw ef huge", lambda: index.CreateCollectionRequest(name="x", space_id="s@1", dim=DIM, hnsw=index.HnswParams(ef_search=10**9))),
        Case("index", I + "CreateCollection", "exists in another space", lambda: index.CreateCollectionRequest(name="docs", space_id="s@2", dim=DIM, exist_ok=True), PRECONDITION),
        Case("index", I + "CreateCollection", "exists", lambda: index.CreateCollectionRequest(name="docs", space_id="s@1", dim=DIM), ("ALREADY_EXISTS",)),
        Case("index", I + "GetCollection", "unknown", lambda: index.GetCollectionRequest(name="nope"), NOT_FOUND),
        Case("index", I + "GetCollection", "8000-char name", lambda: index.GetCollectionRequest(name=HUGE_NAME), INVALID + NOT_FOUND),
        Case("index", I + "ListCollections", "negative page size", lambda: index.ListCollectionsRequest(page_size=-1)),
        Case("index", I + "ListCollections", "page size too large", lambda: index.ListCollectionsRequest(page_size=10**6)),
        Case("index", I + "ListCollections", "forged token", lambda: index.ListCollectionsRequest(page_token="%%%not-base64")),
        Case("index", I + "DeleteCollection", "unknown", lambda: index.DeleteCollectionRequest(name="nope"), NOT_FOUND),
        Case("index", I + "DeleteCollection", "8000-char name", lambda: index.DeleteCollectionRequest(name=HUGE_NAME), INVALID + NOT_FOUND),
        Case("index", I + "Upsert", "unknown collection", lambda: up(collection="nope", items=[item()]), NOT_FOUND),
        Case("index", I + "Upsert", "no items", lambda: up(collection="docs")),
        Case("index", I + "Upsert", "wrong dim", lambda: up(collection="docs", items=[item(vec=vector(np.ones(DIM + 1)))])),
        Case("index", I + "Upsert", "dim field lies", lambda: up(collection="docs", items=[item(vec=vector(np.ones(DIM), dim=DIM + 1))])),
        Case("index", I + "Upsert", "byte length not 4*dim", lambda: up(collection="docs", items=[item(vec=types.Vector(data=b"\x00" * 30, dim=DIM))])),
        Case("index", I + "Upsert", "unknown dtype enum", lambda: up(collection="docs", items=[item(vec=vector(np.ones(DIM), dtype=7))])),
        Case("index", I + "Upsert", "NaN", lambda: up(collection="docs", items=[item(vec=vector([np.nan] + [1.0] * (DIM - 1)))])),
        Case("index", I + "Upsert", "inf", lambda: up(collection="docs", items=[item(vec=vector([np.inf] + [1.0] * (DIM - 1)))])),
        Case("index", I + "Upsert", "zero vector", lambda: up(collection="docs", items=[item(vec=vector(np.zeros(DIM)))])),
        Case("index", I + "Upsert", "empty id", lambda: up(collection="docs", items=[item("")])),
        Case("index", I + "Upsert", "100 KB id", lambda: up(collection="docs", items=[item(BIG_ID)])),
        Case("index", I + "Upsert", "duplicate ids", lambda: up(collection="docs", items=[item("z"), item("z")])),
        Case("index", I + "Upsert", "NaN in metadata", lambda: up(collection="docs", items=[item(meta=metadata(float("nan")))])),
        Case("index", I + "Upsert", "inf in metadata", lambda: up(collection="docs", items=[item(meta=metadata(float("inf")))])),
        Case("index", I + "Upsert", "9 MiB metadata", lambda: up(collection="docs", items=[item(meta=metadata("x" * (9 << 20)))])),
        Case("index", I + "Upsert", "metadata nested 30 deep", lambda: up(collection="docs", items=[item(meta=metadata(nested(30)))])),
        Case("index", I + "Upsert", "nested past protobuf's limit", lambda: deeply_nested_upsert(60)),
        Case("index", I + "Upsert", "another space", lambda: up(collection="docs", space_id="s@2", items=[item()]), PRECONDITION),
        Case("index", I + "DeleteItems", "no ids", lambda: index.DeleteItemsRequest(collection="docs")),
        Case("index", I + "DeleteItems", "unknown collection", lambda: index.DeleteItemsRequest(collection="nope", ids=["a"]), NOT_FOUND),
        Case("index", I + "Search", "top_k 0", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=0)),
        Case("index", I + "Search", "top_k negative", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=-5)),
        Case("index", I + "Search", "top_k huge", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=2**31 - 1)),
        Case("index", I + "Search", "ef huge", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, ef=2**32 - 1)),
        Case("index", I + "Search", "wrong dim", lambda: index.SearchRequest(collection="docs", query=vector(np.ones(3)), top_k=3)),
        Case("index", I + "Search", "NaN query", lambda: index.SearchRequest(collection="docs", query=vector([np.nan] * DIM), top_k=3)),
        Case("index", I + "Search", "no query", lambda: index.SearchRequest(collection="docs", top_k=3)),
        Case("index", I + "Search", "unknown collection", lambda: index.SearchRequest(collection="nope", query=unit(1), top_k=3), NOT_FOUND),
        Case("index", I + "Search", "unknown version", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, version="v9"), NOT_FOUND),
        Case("index", I + "Search", "NaN in filter", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, filter=metadata(float("nan")))),
        Case("index", I + "Search", "unknown filter operator", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, filter=metadata({"$regex": "a"}))),
        Case("index", I + "Search", "range on a string", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, filter=metadata({"$gte": "a"}))),
        Case("index", I + "Search", "$in without a list", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, filter=metadata({"$in": 3}))),
        Case("index", I + "Search", "$or of nothing", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, filter=struct_of({"$or": []}))),
        Case("index", I + "Search", "filter too deep", lambda: index.SearchRequest(collection="docs", query=unit(1), top_k=3, filter=struct_of(nested_or(12)))),
        Case("index", I + "SearchBatch", "unknown filter operator", lambda: index.SearchBatchRequest(collection="docs", top_k=3, queries=[unit(1)], filter=struct_of({"$not": [{"m": 1}]}))),
        Case("index", I + "SearchBatch", "no queries", lambda: index.SearchBatchRequest(collection="docs", top_k=3)),
        Case("index", I + "SearchBatch", "too many queries", lambda: index.SearchBatchRequest(collection="docs", top_k=3, queries=[unit(1)] * 5000)),
        Case("index", I + "SearchBatch", "one wrong dim", lambda: index.SearchBatchRequest(collection="docs", top_k=3, queries=[unit(1), vector(np.ones(3))])),
        Case("index", I + "GetItems", "no ids", lambda: index.GetItemsRequest(collection="docs")),
        Case("index", I + "GetItems", "too many ids", lambda: index.GetItemsRequest(collection="docs", ids=["a"] * 20_000)),
        Case("index", I + "ListItems", "forged token", lambda: index.ListItemsRequest(collection="docs", page_token="***")),
        Case("index", I + "ListItems", "negative page size", lambda: index.ListItemsRequest(collection="docs", page_size=-3)),
        Case("index", I + "LoadBundle", "path traversal", lambda: index.LoadBundleRequest(collection="docs", version="v2", path="../../etc")),
        Case("index", I + "LoadBundle", "absolute path", lambda: index.LoadBundleRequest(collection="docs", version="v2", path="/etc")),
        Case("index", I + "LoadBundle", "bad version name", lambda: index.LoadBundleRequest(collection="docs", version="../v", path="b")),
        Case("index", I + "LoadBundle", "missing bundle", lambda: index.LoadBundleRequest(collection="docs", version="v2", path="absent"), NOT_FOUND),
        Case("index", I + "LoadBundle", "not a bundle", lambda: index.LoadBundleRequest(collection="docs", version="v2", path="junk"), PRECONDITION),
        Case("index", I + "ActivateVersion", "unknown version", lambda: index.ActivateVersionRequest(collection="docs", version="v9"), NOT_FOUND),
        Case("index", I + "ActivateVersion", "unknown collection", lambda: index.ActivateVersionRequest(collection="nope", version="live"), NOT_FOUND),
        Case("index", I + "RollbackVersion", "nothing to roll back to", lambda: index.RollbackVersionRequest(collection="docs"), PRECONDITION),
        Case("index", I + "RollbackVersion", "8000-char name", lambda: index.RollbackVersionRequest(collection=HUGE_NAME), INVALID + NOT_FOUND),
        Case("index", I + "LoadBundle", "path and upload_id", lambda: index.LoadBundleRequest(collection="docs", version="v2", path="b", upload_id="0" * 32)),
        Case("index", I + "LoadBundle", "forged upload_id", lambda: index.LoadBundleRequest(collection="docs", version="v2", upload_id="../../etc")),
        Case("index", I + "LoadBundle", "unknown upload", lambda: index.LoadBundleRequest(collection="docs", version="v2", upload_id="0" * 32), NOT_FOUND),
        Case("index", I + "UploadBundle", "empty", lambda: index.UploadBundleRequest()),
        Case("index", I + "UploadBundle", "chunk before header", lambda: index.UploadBundleRequest(chunk=index.FileChunk(file="index.bin", data=b"x"))),
        Case("index", I + "UploadBundle", "manifest not JSON", lambda: index.UploadBundleRequest(header=index.UploadHeader(collection="docs", version="v2", manifest=b"{"))),
        Case("index", I + "UploadBundle", "2 MiB manifest", lambda: index.UploadBundleRequest(header=index.UploadHeader(collection="docs", version="v2", manifest=b" " * (2 << 20)))),
        Case("index", I + "UploadBundle", "version live", lambda: index.UploadBundleRequest(header=index.UploadHeader(collection="docs", version="live", manifest=b"{}"))),
        Case("index", I + "BeginVersion", "empty", lambda: index.BeginVersionRequest()),
        Case("index", I + "BeginVersion", "unknown collection", lambda: index.BeginVersionRequest(collection="nope", version="v2", space_id="s@2", dim=DIM), NOT_FOUND),
        Case("index", I + "BeginVersion", "dim 0", lambda: index.BeginVersionRequest(collection="docs", version="v2", space_id="s@2")),
        Case("index", I + "BeginVersion", "loaded version", lambda: index.BeginVersionRequest(collection="docs", version="live", space_id="s@2", dim=DIM)),
        Case("index", I + "BeginVersion", "same space, other dim", lambda: index.BeginVersionRequest(collection="docs", version="v2", space_id="s@1", dim=DIM + 1), PRECONDITION),
        Case("index", I + "DeleteVersion", "empty", lambda: index.DeleteVersionRequest()),
        Case("index", I + "DeleteVersion", "serving", lambda: index.DeleteVersionRequest(collection="docs", version="live"), PRECONDITION),
        Case("index", I + "DeleteVersion", "unknown version", lambda: index.DeleteVersionRequest(collection="docs", version="v9"), NOT_FOUND),
        Case("index", I + "SetCandidate", "empty", lambda: index.SetCandidateRequest()),
        Case("index", I + "SetCandidate", "unknown collection", lambda: index.SetCandidateRequest(collection="nope", candidate=index.CandidateState(version="v2")), NOT_FOUND),
        Case("index", I + "SetCandidate", "unknown version", lambda: index.SetCandidateRequest(collection="docs", candidate=index.CandidateState(version="v9")), NOT_FOUND),
        Case("index", I + "SetCandidate", "the serving version", lambda: index.SetCandidateRequest(collection="docs", candidate=index.CandidateState(version="live")), PRECONDITION),
        Case("index", I + "SetCandidate", "canary above 1", lambda: index.SetCandidateRequest(collection="docs", candidate=index.CandidateState(version="live", canary_weight=1.5))),
        Case("index", I + "SetCandidate", "NaN shadow", lambda: index.SetCandidateRequest(collection="docs", candidate=index.CandidateState(version="live", shadow_fraction=float("nan")))),
        # -- replication (a replica that leads term 2) -------------------------------------
        Case("replica", R + "GetReplicaState", "a replaced primary asking", lambda: replication.GetReplicaStateRequest(term=REPLICA_TERM - 1), PRECONDITION),
        Case("replica", R + "SyncCatalog", "stale term", lambda: replication.SyncCatalogRequest(term=REPLICA_TERM - 1), PRECONDITION),
        Case("replica", R + "SyncCatalog", "its own term", lambda: replication.SyncCatalogRequest(term=REPLICA_TERM, primary_id="9"), PRECONDITION),
        Case("replica", R + "Replicate", "stale term", lambda: replication.ReplicateRequest(term=REPLICA_TERM - 1), PRECONDITION),
        Case("replica", R + "Replicate", "corrupt record", lambda: replication.ReplicateRequest(term=REPLICA_TERM, records=[replication.ShippedRecord(collection="docs", version="live", record=b"\x00" * 40)])),
        Case("replica", R + "InstallSnapshot", "empty", lambda: replication.InstallSnapshotRequest()),
        Case("replica", R + "InstallSnapshot", "manifest not JSON", lambda: replication.InstallSnapshotRequest(header=replication.SnapshotHeader(term=REPLICA_TERM - 1, manifest=b"{"))),
        Case("replica", R + "TransferPrimary", "empty", lambda: replication.TransferPrimaryRequest(), PRECONDITION),
        Case("replica", R + "TransferPrimary", "a replica not in sync", lambda: replication.TransferPrimaryRequest(successor_id="1"), PRECONDITION),
        # -- encoders --------------------------------------------------------------------
        Case("text-encoder", E + "Embed", "no inputs", lambda: encoder.EmbedRequest()),
        Case("text-encoder", E + "Embed", "too many inputs", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(text="a")] * 1000)),
        Case("text-encoder", E + "Embed", "empty text", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(text="")])),
        Case("text-encoder", E + "Embed", "oversize text", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(text="word " * 100_000)])),
        Case("text-encoder", E + "Embed", "image to a text encoder", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(image=types.Image(data=PICTURE))])),
        Case("text-encoder", E + "Embed", "no content", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput()])),
        Case("text-encoder", E + "Embed", "bad UTF-8", lambda: b"\x0a\x04\x0a\x02\xff\xfe"),
        Case("text-encoder", E + "GetEncoderInfo", "garbage body", lambda: b"\xff\xff\xff\xff\x0f"),
        Case("image-encoder", E + "Embed", "zero-byte image", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(image=types.Image(data=b""))])),
        Case("image-encoder", E + "Embed", "not an image", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(image=types.Image(data=b"GIF89a nonsense"))])),
        Case("image-encoder", E + "Embed", "truncated PNG", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(image=types.Image(data=PICTURE[:200]))])),
        Case("image-encoder", E + "Embed", "decompression bomb", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(image=types.Image(data=png_claiming_size(60_000, 60_000)))])),
        Case("image-encoder", E + "Embed", "oversize bytes", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(image=types.Image(data=PICTURE + b"\x00" * (11 << 20)))])),
        Case("image-encoder", E + "Embed", "text to an image encoder", lambda: encoder.EmbedRequest(inputs=[encoder.EmbedInput(text="a cat")])),
        Case("image-encoder", E + "GetEncoderInfo", "garbage body", lambda: b"\x12\xff"),
        # -- gateway ---------------------------------------------------------------------
        Case("gateway", S + "Search", "no query", lambda: search.SearchRequest(collection="products", top_k=3)),
        # A NaN threshold matched nothing: an answer silently empty.
        Case("gateway", S + "Search", "score_threshold NaN", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, score_threshold=float("nan"))),
        Case("gateway", S + "Search", "score_threshold infinite", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, score_threshold=float("inf"))),
        Case("gateway", S + "Search", "blank text", lambda: search.SearchRequest(collection="products", text="   ", top_k=3)),
        Case("gateway", S + "Search", "offset + top_k above max_top_k", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, offset=2**32 - 1)),
        Case("gateway", S + "Search", "empty item_id", lambda: search.SearchRequest(collection="products", item_id="", top_k=3)),
        Case("gateway", S + "Search", "unknown item_id", lambda: search.SearchRequest(collection="products", item_id="no-such-item", top_k=3), NOT_FOUND),
        Case("gateway", S + "Search", "item_id with a version", lambda: search.SearchRequest(collection="products", item_id="p1", top_k=3, version="live")),
        Case("gateway", S + "Search", "vector without vector_space_id", lambda: search.SearchRequest(collection="docs", vector=unit(1), top_k=3)),
        Case("gateway", S + "Search", "vector in another space", lambda: search.SearchRequest(collection="docs", vector=unit(1), vector_space_id="other@1", top_k=3), PRECONDITION),
        Case("gateway", S + "Search", "vector of the wrong dim", lambda: search.SearchRequest(collection="docs", vector=vector([1.0, 2.0, 3.0]), vector_space_id="s@1", top_k=3)),
        Case("gateway", S + "Search", "vector bytes not dim floats", lambda: search.SearchRequest(collection="docs", vector=vector([1.0] * DIM, dim=DIM + 1), vector_space_id="s@1", top_k=3)),
        Case("gateway", S + "Search", "NaN in vector", lambda: search.SearchRequest(collection="docs", vector=vector([float("nan")] * DIM), vector_space_id="s@1", top_k=3)),
        Case("gateway", S + "Search", "vector of unknown dtype", lambda: search.SearchRequest(collection="docs", vector=vector([1.0] * DIM, dtype=9), vector_space_id="s@1", top_k=3)),
        Case("gateway", S + "GetDocuments", "no ids", lambda: search.GetDocumentsRequest(collection="products")),
        Case("gateway", S + "GetDocuments", "empty id", lambda: search.GetDocumentsRequest(collection="products", ids=["kettle", ""])),
        Case("gateway", S + "GetDocuments", "huge id", lambda: search.GetDocumentsRequest(collection="products", ids=[BIG_ID])),
        Case("gateway", S + "GetDocuments", "too many ids", lambda: search.GetDocumentsRequest(collection="products", ids=[f"i{n}" for n in range(5000)])),
        Case("gateway", S + "GetDocuments", "8000-char collection", lambda: search.GetDocumentsRequest(collection=HUGE_NAME, ids=["kettle"])),
        Case("gateway", S + "GetDocuments", "unknown collection", lambda: search.GetDocumentsRequest(collection="nope", ids=["kettle"]), NOT_FOUND),
        Case("gateway", S + "SearchBatch", "no texts", lambda: search.SearchBatchRequest(collection="products", top_k=3)),
        Case("gateway", S + "SearchBatch", "a blank text", lambda: search.SearchBatchRequest(collection="products", texts=["kettle", "  "], top_k=3)),
        Case("gateway", S + "SearchBatch", "too many texts", lambda: search.SearchBatchRequest(collection="products", texts=["kettle"] * 5000, top_k=3)),
        Case("gateway", S + "SearchBatch", "top_k huge", lambda: search.SearchBatchRequest(collection="products", texts=["kettle"], top_k=2**31 - 1)),
        Case("gateway", S + "SearchBatch", "ef huge", lambda: search.SearchBatchRequest(collection="products", texts=["kettle"], top_k=3, ef=2**32 - 1)),
        Case("gateway", S + "SearchBatch", "unknown filter operator", lambda: search.SearchBatchRequest(collection="products", texts=["kettle"], top_k=3, filter=struct_of({"$not": [{"m": 1}]}))),
        Case("gateway", S + "SearchBatch", "unknown partial policy enum", lambda: search.SearchBatchRequest(collection="products", texts=["kettle"], top_k=3, partial_result_policy=42)),
        Case("gateway", S + "SearchBatch", "8000-char collection", lambda: search.SearchBatchRequest(collection=HUGE_NAME, texts=["kettle"], top_k=3)),
        Case("gateway", S + "SearchBatch", "unknown collection", lambda: search.SearchBatchRequest(collection="nope", texts=["kettle"], top_k=3), NOT_FOUND),
        Case("gateway", S + "SearchBatch", "oversize text", lambda: search.SearchBatchRequest(collection="products", texts=["word " * 100_000], top_k=3)),
        Case("gateway", S + "Search", "ef huge", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, ef=2**32 - 1)),
        Case("gateway", S + "Search", "unknown filter operator", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, filter=struct_of({"$not": [{"m": 1}]}))),
        Case("gateway", S + "Search", "range on a string", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, filter=metadata({"$lt": "z"}))),
        Case("gateway", S + "Search", "$in without a list", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, filter=metadata({"$in": "z"}))),
        Case("gateway", S + "Search", "filter too deep", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, filter=struct_of(nested_or(12)))),
        Case("gateway", S + "Search", "NaN in filter", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, filter=metadata(float("nan")))),
        Case("gateway", S + "Search", "top_k negative", lambda: search.SearchRequest(collection="products", text="kettle", top_k=-1)),
        Case("gateway", S + "Search", "top_k huge", lambda: search.SearchRequest(collection="products", text="kettle", top_k=2**31 - 1)),
        Case("gateway", S + "Search", "unknown collection", lambda: search.SearchRequest(collection="nope", text="kettle", top_k=3), NOT_FOUND),
        Case("gateway", S + "Search", "8000-char collection", lambda: search.SearchRequest(collection=HUGE_NAME, text="kettle", top_k=3)),
        Case("gateway", S + "Search", "corrupt image", lambda: search.SearchRequest(collection="pictures", image=types.Image(data=PICTURE[:100]), top_k=3)),
        Case("gateway", S + "Search", "empty image", lambda: search.SearchRequest(collection="pictures", image=types.Image(data=b""), top_k=3)),
        Case("gateway", S + "Search", "too many collections", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, also_collections=[f"c{i}" for i in range(20)])),
        Case("gateway", S + "Search", "unknown partial policy enum", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, partial_result_policy=42)),
        Case("gateway", S + "Search", "oversize text", lambda: search.SearchRequest(collection="products", text="word " * 100_000, top_k=3)),
        Case("gateway", A + "CreateCollection", "bad name", lambda: admin.CreateCollectionRequest(name="a/b")),
        Case("gateway", A + "CreateCollection", "8000-char name", lambda: admin.CreateCollectionRequest(name=HUGE_NAME)),
        Case("gateway", A + "CreateCollection", "unknown space", lambda: admin.CreateCollectionRequest(name="fresh", space_id="nope@0"), PRECONDITION),
        Case("gateway", A + "CreateCollection", "unknown model", lambda: admin.CreateCollectionRequest(name="fresh", model="no-such-model"), PRECONDITION),
        Case("gateway", A + "GetCollection", "unknown", lambda: admin.GetCollectionRequest(name="nope"), NOT_FOUND),
        Case("gateway", A + "ListCollections", "negative page size", lambda: admin.ListCollectionsRequest(page_size=-1)),
        Case("gateway", A + "DeleteCollection", "bad name", lambda: admin.DeleteCollectionRequest(name="")),
        Case("gateway", A + "UpsertDocuments", "no documents", lambda: admin.UpsertDocumentsRequest(collection="products")),
        Case("gateway", A + "UpsertDocuments", "no content", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id="x")])),
        Case("gateway", A + "UpsertDocuments", "empty id", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(text="a kettle")])),
        Case("gateway", A + "UpsertDocuments", "100 KB id", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id=BIG_ID, text="a kettle")])),
        Case("gateway", A + "UpsertDocuments", "duplicate ids", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id="x", text="a"), admin.Document(id="x", text="b")])),
        Case("gateway", A + "UpsertDocuments", "blank text", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id="x", text="  ")])),
        Case("gateway", A + "UpsertDocuments", "NaN metadata", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id="x", text="a kettle", metadata=metadata(float("nan")))])),
        Case("gateway", A + "UpsertDocuments", "9 MiB metadata", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id="x", text="a kettle", metadata=metadata("x" * (9 << 20)))])),
        Case("gateway", A + "UpsertDocuments", "metadata nested 30 deep", lambda: admin.UpsertDocumentsRequest(collection="products", documents=[admin.Document(id="x", text="a kettle", metadata=metadata(nested(30)))])),
        Case("gateway", A + "UpsertDocuments", "undecodable image", lambda: admin.UpsertDocumentsRequest(collection="pictures", documents=[admin.Document(id="x", image=types.Image(data=b"nope"))])),
        Case("gateway", A + "UpsertDocuments", "text into an image space", lambda: admin.UpsertDocumentsRequest(collection="pictures", documents=[admin.Document(id="x", text="a cat")]), PRECONDITION),
        Case("gateway", A + "UpsertDocuments", "unknown collection", lambda: admin.UpsertDocumentsRequest(collection="nope", documents=[admin.Document(id="x", text="a")]), NOT_FOUND),
        Case("gateway", A + "DeleteDocuments", "no ids", lambda: admin.DeleteDocumentsRequest(collection="products")),
        Case("gateway", A + "DeleteDocuments", "bad collection", lambda: admin.DeleteDocumentsRequest(collection="", ids=["a"])),
        Case("gateway", A + "SetCandidate", "fraction above 1", lambda: admin.SetCandidateRequest(collection="products", version="v2", shadow_fraction=2.0)),
        Case("gateway", A + "SetCandidate", "NaN weight", lambda: admin.SetCandidateRequest(collection="products", version="v2", canary_weight=float("nan"))),
        Case("gateway", A + "SetCandidate", "version not loaded", lambda: admin.SetCandidateRequest(collection="products", version="v9"), PRECONDITION),
        Case("gateway", A + "GetShadowReport", "no candidate", lambda: admin.GetShadowReportRequest(collection="products"), NOT_FOUND),
        Case("gateway", A + "GetShadowReport", "bad name", lambda: admin.GetShadowReportRequest(collection="../x"), INVALID + NOT_FOUND),
        Case("gateway", A + "PromoteCandidate", "no candidate", lambda: admin.PromoteCandidateRequest(collection="products"), PRECONDITION),
        Case("gateway", A + "RollbackCollection", "nothing to roll back to", lambda: admin.RollbackCollectionRequest(collection="products"), PRECONDITION),
        Case("gateway", A + "RollbackCollection", "bad name", lambda: admin.RollbackCollectionRequest(collection="a b")),
        Case("gateway", A + "ListSpaces", "unparseable body", lambda: b"\x0a\xff"),
        Case("gateway", A + "ListShards", "unparseable body", lambda: b"\x0a\xff"),
        Case("gateway", A + "BeginVersion", "no space", lambda: admin.BeginVersionRequest(collection="products", version="v7")),
        Case("gateway", A + "BeginVersion", "space nobody serves", lambda: admin.BeginVersionRequest(collection="products", version="v7", space_id="nobody@1"), PRECONDITION),
        Case("gateway", A + "BeginVersion", "bad name", lambda: admin.BeginVersionRequest(collection="../x", version="v7", space_id="nobody@1")),
        Case("gateway", A + "DeleteVersion", "the serving version", lambda: admin.DeleteVersionRequest(collection="products", version="live"), PRECONDITION),
        Case("gateway", A + "DeleteVersion", "unknown version", lambda: admin.DeleteVersionRequest(collection="products", version="v404"), NOT_FOUND),
        Case("gateway", A + "DeleteVersion", "bad name", lambda: admin.DeleteVersionRequest(collection="a b", version="v1")),
        Case("gateway", S + "Search", "version not loaded", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, version="v404"), PRECONDITION),
        Case("gateway", S + "Search", "version with more collections", lambda: search.SearchRequest(collection="products", text="kettle", top_k=3, version="live", also_collections=["pictures"])),
    ]
    return table


CASES = cases()


@pytest.fixture(scope="module")
def services(text_encoder, tmp_path_factory):
    bundles = tmp_path_factory.mktemp("bundles")
    (bundles / "junk").mkdir()
    (bundles / "junk" / "manifest.json").write_text("{not json")
    data = tmp_path_factory.mktemp("data")
    with ExitStack() as stack:
        shard = stack.enter_context(running_service(IndexService, settings_for_test(
            IndexSettings, data_dir=data, bundle_root=bundles)))
        image = stack.enter_context(running_service(
            ImageEncoderService, settings_for_test(ImageEncoderSettings)))
        replica = stack.enter_context(running_service(IndexService, replica_settings(
            tmp_path_factory.mktemp("replica"))))
        gateway = stack.enter_context(running_service(GatewayService, settings_for_test(
            GatewaySettings,
            encoder_endpoints=[text_encoder.address, image.address],
            index_endpoints=[shard.address],
            downstream_wait_s=30.0,
        )))
        with grpc.insecure_channel(shard.address) as channel:
            stub = index_grpc.IndexServiceStub(channel)
            stub.CreateCollection(index.CreateCollectionRequest(name="docs", space_id="s@1", dim=DIM))
            stub.Upsert(index.UpsertRequest(collection="docs", items=[
                item(f"d{i}", unit(i), metadata(i)) for i in range(20)
            ]))
        with Client(gateway.address) as client:
            client.create_collection("products", exist_ok=True)
            client.upsert_documents("products", [
                {"id": "kettle", "text": "gooseneck kettle", "metadata": {"price": 39}},
                {"id": "tent", "text": "two-person tent"},
            ])
            client.create_collection("pictures", space_id=image_space_of(image.address))
            client.upsert_documents("pictures", [{"id": "p5", "image": PICTURE}])
        yield {"index": shard, "text-encoder": text_encoder, "image-encoder": image,
               "gateway": gateway, "replica": replica}


def image_space_of(address: str) -> str:
    from contentembed.encoder.v1 import encoder_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = encoder_service_pb2_grpc.EncoderServiceStub(channel)
        return stub.GetEncoderInfo(encoder.GetEncoderInfoRequest()).space.space_id


def replica_settings(root) -> IndexSettings:
    """Replica 0 of a group whose other member never answers, restarted after leading term
    REPLICA_TERM - 1: it leads again, in REPLICA_TERM."""
    data = root / "data"
    data.mkdir()
    (data / "replica.json").write_text(json.dumps({"term": REPLICA_TERM - 1, "catalog_stamp": [0, 0]}))
    (root / "lease.json").write_text(json.dumps({
        "holder": "0", "term": REPLICA_TERM - 1, "in_sync": ["0"], "renewed_at": 0.0,
        "duration_s": 3.0, "version": "1"}))
    return settings_for_test(IndexSettings, data_dir=data, replica_id="0",
                             replica_peers=["1=127.0.0.1:9"], replica_lease_file=root / "lease.json")


def fingerprint(shard_address: str) -> str:
    """Every collection, version, id, metadata and vector on the shard, as one digest."""
    digest = hashlib.sha256()
    with grpc.insecure_channel(shard_address) as channel:
        stub = index_grpc.IndexServiceStub(channel)
        for collection in stub.ListCollections(index.ListCollectionsRequest()).collections:
            digest.update(json.dumps([collection.name, collection.space_id, collection.dim,
                                      collection.item_count, list(collection.versions),
                                      collection.version]).encode())
            listed = stub.ListItems(index.ListItemsRequest(collection=collection.name, page_size=1000))
            ids = [i.id for i in listed.items]
            for stored in stub.GetItems(index.GetItemsRequest(collection=collection.name, ids=ids)).items:
                digest.update(stored.SerializeToString(deterministic=True))
    return digest.hexdigest()


def call(address: str, method: str, request: protobuf_message.Message | bytes) -> grpc.RpcError | None:
    body = request if isinstance(request, bytes) else request.SerializeToString()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        try:
            channel.unary_unary(method)(body, timeout=30)
        except grpc.RpcError as error:
            return error
    return None


def test_every_rpc_has_bad_input_cases() -> None:
    from tests.service.test_access import product_methods

    covered = {(case.method.split("/")[1], case.method.split("/")[2]) for case in CASES}
    assert covered == product_methods()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_its_canonical_code_and_changes_nothing(services, case: Case) -> None:
    runtime = services[case.service]
    before = fingerprint(services["index"].address)
    error = call(runtime.address, case.method, case.request())
    assert error is not None, f"{case.id} was accepted"
    assert error.code().name in case.codes, f"{case.id}: {error.code().name}: {error.details()}"
    assert error.details() and len(error.details()) <= 1024
    assert error_reason(error)
    assert fingerprint(services["index"].address) == before, f"{case.id} changed the index"
    with grpc.insecure_channel(runtime.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- property-based fuzzing of request messages ---------------------------------------------

from google.protobuf import descriptor as protobuf_descriptor  # noqa: E402
from google.protobuf import symbol_database  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FD = protobuf_descriptor.FieldDescriptor
# Canonical codes a fuzzed request may end in: anything but UNKNOWN and INTERNAL.
EXPECTED_CODES = {
    "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED", "OUT_OF_RANGE", "DEADLINE_EXCEEDED", "UNAVAILABLE",
}
NAMES = st.sampled_from(["docs", "products", "pictures", "live", "v2", "s@1"])
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
SCALARS = {
    FD.TYPE_STRING: st.one_of(NAMES, st.text(max_size=40)),
    FD.TYPE_BYTES: st.one_of(st.binary(max_size=64), st.just(PICTURE), st.just(unit(1).data)),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FD.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1)),
    FD.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FD.TYPE_DOUBLE: st.floats(),
    FD.TYPE_FLOAT: st.floats(width=32),
}


def message_strategy(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of this type with any subset of their fields set to any value."""
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=8), JSON, max_size=3).map(_struct)
    fields = {}
    for field in descriptor.fields:
        if field.type == FD.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry or depth > 2:
                continue
            value = message_strategy(field.message_type, depth + 1)
        elif field.type == FD.TYPE_ENUM:
            value = st.integers(-3, 8)  # known numbers and unknown ones
        else:
            value = SCALARS[field.type]
        fields[field.name] = st.lists(value, max_size=4) if field.is_repeated else value
    message_class = symbol_database.Default().GetSymbol(descriptor.full_name)
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(message_class, values))


def _struct(values: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(values)
    except (ValueError, TypeError):
        pass  # protobuf itself cannot hold some of them (NaN keys are fine, others are not)
    return struct


def _build(message_class, values: dict):
    message = message_class()
    for name, value in values.items():
        field = getattr(message, name)
        if isinstance(value, list):
            for element in value:
                if isinstance(element, protobuf_message.Message):
                    field.add().CopyFrom(element)
                else:
                    field.append(element)
        elif isinstance(value, protobuf_message.Message):
            field.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def request_types() -> dict[str, tuple[str, object]]:
    """Full method path -> (service key, request descriptor), for every public RPC."""
    from contentembed.admin.v1 import admin_service_pb2
    from contentembed.search.v1 import search_service_pb2

    targets = {
        "contentembed.index.v1.IndexService": ("index", index),
        "contentembed.encoder.v1.EncoderService": ("text-encoder", encoder),
        "contentembed.search.v1.SearchService": ("gateway", search_service_pb2),
        "contentembed.admin.v1.AdminService": ("gateway", admin_service_pb2),
    }
    methods = {}
    for full_name, (key, module) in targets.items():
        service = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[-1]]
        for method in service.methods:
            methods[f"/{full_name}/{method.name}"] = (key, method.input_type)
            if key == "text-encoder":
                methods[f"/{full_name}/{method.name}#image"] = ("image-encoder", method.input_type)
    return methods


REQUESTS = request_types()


@pytest.mark.parametrize("method", sorted(REQUESTS))
def test_fuzzed_requests_end_in_a_canonical_code_and_the_service_stays_up(services, method) -> None:
    key, descriptor = REQUESTS[method]
    runtime = services[key]
    path = method.split("#")[0]

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=st.one_of(message_strategy(descriptor), st.binary(max_size=64)))
    def fuzz(request) -> None:
        error = call(runtime.address, path, request)
        if error is None:
            return
        assert error.code().name in EXPECTED_CODES, f"{path}: {error.code().name}: {error.details()}"
        assert error.details()
        assert error_reason(error)

    fuzz()
    with grpc.insecure_channel(runtime.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
