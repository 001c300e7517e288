"""Fault tests on a real index process: kill -9 mid-stream, corrupt snapshot on disk."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.cli.stack import ServiceProcess, StackError
from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from tests.conftest import error_reason

pytestmark = pytest.mark.e2e
DIM = 16


def start_index(run_dir: Path, data_dir: Path, *extra: str, metrics: bool = False) -> ServiceProcess:
    process = ServiceProcess(
        "index", "contentembed.services.index",
        ["--port", "0", "--metrics-port", "0" if metrics else "-1", "--data-dir", str(data_dir),
         *extra],
        run_dir,
    )
    process.start(dict(os.environ))
    process.wait_for_port(time.monotonic() + 60)
    return process


def vector_for(item_id: str, version: int) -> np.ndarray:
    seed = abs(hash((item_id, version))) % (2**32)
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def as_pb(vector: np.ndarray) -> types_pb2.Vector:
    return types_pb2.Vector(data=vector.astype("<f4").tobytes(), dim=DIM)


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_kill_9_mid_stream_loses_no_acknowledged_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    index = start_index(tmp_path, data_dir, "--snapshot-every-ops", "25")
    index.wait_until_serving(time.monotonic() + 60)
    channel = grpc.insecure_channel(index.address)
    stub = pb_grpc.IndexServiceStub(channel)
    stub.CreateCollection(pb.CreateCollectionRequest(name="docs", space_id="s@1", dim=DIM))

    acknowledged: dict[str, np.ndarray] = {}
    # The request the kill interrupted was never acknowledged: it may or may not be applied.
    in_flight: dict[str, np.ndarray] = {}
    stop = threading.Event()

    def writer() -> None:
        batch = 0
        while not stop.is_set():
            # New ids, plus a rewrite of an earlier id so "the last acknowledged vector" matters.
            ids = [f"doc-{batch}-{i}" for i in range(8)]
            if batch > 2:
                ids.append(f"doc-{batch // 2}-0")
            vectors = [vector_for(i, batch) for i in ids]
            in_flight.clear()
            in_flight.update(zip(ids, vectors))
            try:
                stub.Upsert(pb.UpsertRequest(
                    collection="docs",
                    items=[pb.Item(id=i, vector=as_pb(v)) for i, v in zip(ids, vectors)],
                ), timeout=5)
            except grpc.RpcError:
                return  # the process died under this request: it was never acknowledged
            acknowledged.update(zip(ids, vectors))
            batch += 1

    thread = threading.Thread(target=writer)
    thread.start()
    snapshots_dir = data_dir / "collections" / "docs" / "versions" / "live" / "snapshots"
    deadline = time.monotonic() + 60
    # Kill once a background snapshot exists and more writes followed it, so recovery
    # needs both the snapshot and the WAL after it.
    while time.monotonic() < deadline and not (
        len(acknowledged) >= 1500 and list(snapshots_dir.glob("[0-9]*"))
    ):
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(index.pid, signal.SIGKILL)  # mid-stream: the writer is still sending
    index.process.wait(10)
    stop.set()
    thread.join(10)
    channel.close()
    assert len(acknowledged) >= 1500
    assert list(snapshots_dir.glob("[0-9]*")), "no snapshot: only WAL replay would be tested"

    restarted = start_index(tmp_path, data_dir)
    try:
        restarted.wait_until_serving(time.monotonic() + 60)
        with grpc.insecure_channel(restarted.address) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            ids = sorted(acknowledged)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                response = stub.GetItems(pb.GetItemsRequest(collection="docs", ids=chunk))
                assert list(response.missing_ids) == []
                for item in response.items:
                    stored = np.frombuffer(item.vector.data, "<f4")
                    allowed = [unit(acknowledged[item.id])]
                    if item.id in in_flight:
                        allowed.append(unit(in_flight[item.id]))
                    assert any(np.allclose(stored, a, atol=1e-5) for a in allowed), item.id
    finally:
        restarted.stop(20)


def test_corrupt_snapshot_is_refused_and_the_shard_never_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    index = start_index(tmp_path, data_dir)
    index.wait_until_serving(time.monotonic() + 60)
    with grpc.insecure_channel(index.address) as channel:
        stub = pb_grpc.IndexServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="docs", space_id="s@1", dim=DIM))
        stub.Upsert(pb.UpsertRequest(collection="docs", items=[
            pb.Item(id=f"d{i}", vector=as_pb(vector_for(f"d{i}", 0))) for i in range(50)
        ]))
    index.stop(20)  # SIGTERM: drains and writes a final snapshot
    assert index.process.returncode == 0
    snapshot = next((data_dir / "collections" / "docs" / "versions" / "live" / "snapshots").glob("[0-9]*"))
    index_file = snapshot / "index.bin"
    index_file.write_bytes(index_file.read_bytes()[:-64])

    broken = start_index(tmp_path, data_dir, metrics=True)
    try:
        # A launcher waiting for it learns at once that waiting will not help.
        with pytest.raises(StackError, match="index failed to load"):
            broken.wait_until_serving(time.monotonic() + 60)
        with grpc.insecure_channel(broken.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
            # Live but not ready: every product call says why, naming the refused files.
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.IndexServiceStub(channel).ListCollections(pb.ListCollectionsRequest())
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "LOAD_FAILED"
        assert "collections/docs/versions/live" in caught.value.details()
        assert broken.process.poll() is None
        log = broken.log_path.read_text()
        assert "refusing to load a collection" in log and "truncated" in log
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{broken.metrics_port}/metrics", timeout=5
        ).read().decode()
        assert 'contentembed_service_state{contentembed_service_state="load_failed",service="index"} 1.0' in metrics
    finally:
        broken.stop(10)
