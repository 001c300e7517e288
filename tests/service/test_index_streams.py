"""Stalled client streams cannot take a shard: 16 UploadBundle streams that send their
header and then nothing. Before, they held all 16 handler threads and every search behind
them waited out its deadline. Now at most --max-concurrent-streams of them run (the rest
are refused TOO_MANY_STREAMS), searches keep answering within their deadlines, and a
stream idle for --stream-idle-timeout-s is cancelled, which frees its thread."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.services.index.service import IndexService, IndexSettings
from tests.conftest import error_reason, running_service, settings_for_test
from tests.service.test_index_publish import messages, vec, write_part

DIM = 8
STREAMS = 16


def stalled(header: pb.UploadBundleRequest, release: threading.Event):
    """The header, then nothing until the test ends."""
    yield header
    release.wait(60)


def test_stalled_uploads_leave_searches_answering_and_are_cancelled_when_idle(tmp_path) -> None:
    bundles = tmp_path / "bundles"
    write_part(bundles / "v2", "space@1", [f"new-{i}" for i in range(DIM)])
    settings = settings_for_test(IndexSettings, data_dir=tmp_path / "data", bundle_root=bundles,
                                 max_workers=16, stream_idle_timeout_s=2.0)
    release = threading.Event()
    with running_service(IndexService, settings) as runtime, \
            grpc.insecure_channel(runtime.address) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="products", space_id="space@1", dim=DIM))
        stub.Upsert(pb.UpsertRequest(collection="products", items=[
            pb.Item(id=f"old-{i}", vector=vec(np.eye(DIM)[i])) for i in range(DIM)]))
        header = messages(bundles / "v2")[0]
        uploads = [stub.UploadBundle.future(stalled(header, release), timeout=60)
                   for _ in range(STREAMS)]
        try:
            time.sleep(0.5)  # every stream has arrived
            # Searches with 1 s deadlines keep being answered.
            started = time.monotonic()
            for _ in range(20):
                hits = stub.Search(pb.SearchRequest(collection="products", query=vec(np.ones(DIM)),
                                                    top_k=3), timeout=1.0).hits
                assert len(hits) == 3
            assert time.monotonic() - started < 10  # none of them waited out its deadline
            refused = [u for u in uploads if u.done()]
            assert len(refused) == STREAMS - 4  # a quarter of the 16 threads run streams
            for upload in refused:
                assert upload.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error_reason(upload.exception()) == "TOO_MANY_STREAMS"
            # The four running streams are cancelled once idle for 2 s.
            running = [u for u in uploads if not u.done()]
            for upload in running:
                assert upload.exception(timeout=10).code() == grpc.StatusCode.CANCELLED
        finally:
            release.set()
        # Their threads and stream slots are free again: a whole upload goes through.
        uploaded = stub.UploadBundle(iter(messages(bundles / "v2")), timeout=30)
        assert uploaded.item_count == DIM
        metrics = runtime.registry.get_sample_value(
            "contentembed_rpc_duration_seconds_count",
            {"service": "index", "method": "UploadBundle", "code": "DEADLINE_EXCEEDED"},
        )
        assert metrics == 4  # counted as idle streams, not as errors
