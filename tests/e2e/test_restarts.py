"""A shard restarted under traffic: while it replays its log every call is refused with
UNAVAILABLE NOT_READY, and a CreateCollection(exist_ok) in that window — what
`contentembed ingest` sends first — destroys nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from tests.conftest import error_reason
from tests.e2e.test_index_faults import start_index

pytestmark = pytest.mark.e2e
DIM = 64
ITEMS = 30_000


def fill(stub: pb_grpc.IndexServiceStub) -> None:
    rng = np.random.default_rng(7)
    stub.CreateCollection(pb.CreateCollectionRequest(name="docs", space_id="s@1", dim=DIM))
    for start in range(0, ITEMS, 1000):
        vectors = rng.normal(size=(1000, DIM)).astype("<f4")
        stub.Upsert(pb.UpsertRequest(collection="docs", items=[
            pb.Item(id=f"d{start + i}", vector=types_pb2.Vector(data=v.tobytes(), dim=DIM))
            for i, v in enumerate(vectors)
        ]), timeout=60)


def test_calls_during_recovery_are_not_ready_and_lose_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # No snapshot before the kill: recovery replays the whole log, a window of seconds.
    index = start_index(tmp_path, data_dir, "--snapshot-every-ops", str(10**9), "--snapshot-every-items", str(10**9), "--wal-sync", "never")
    try:
        index.wait_until_serving(time.monotonic() + 60)
        with grpc.insecure_channel(index.address) as channel:
            fill(pb_grpc.IndexServiceStub(channel))
    finally:
        os.kill(index.pid, signal.SIGKILL)
        index.process.wait(10)

    restarted = start_index(tmp_path, data_dir, "--snapshot-every-ops", str(10**9), "--snapshot-every-items", str(10**9))
    try:
        answers: list[str] = []
        with grpc.insecure_channel(restarted.address) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            query = types_pb2.Vector(data=np.ones(DIM, "<f4").tobytes(), dim=DIM)
            deadline = time.monotonic() + 120
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != (
                health_pb2.HealthCheckResponse.SERVING
            ):
                assert time.monotonic() < deadline, "the shard never finished recovering"
                for call in (
                    lambda: stub.CreateCollection(pb.CreateCollectionRequest(
                        name="docs", space_id="s@1", dim=DIM, exist_ok=True), timeout=5),
                    lambda: stub.Search(pb.SearchRequest(
                        collection="docs", query=query, top_k=3), timeout=5),
                ):
                    try:
                        call()
                        answers.append("OK")
                    except grpc.RpcError as error:
                        answers.append(f"{error.code().name}/{error_reason(error)}")
            # Calls that raced the very end of the load may have been answered normally.
            refused = [a for a in answers if a != "OK"]
            assert refused, "recovery finished before any call arrived: nothing was tested"
            assert set(refused) == {"UNAVAILABLE/NOT_READY"}, set(refused)

            count = stub.GetCollection(pb.GetCollectionRequest(name="docs")).collection.item_count
            assert count == ITEMS
            again = stub.CreateCollection(pb.CreateCollectionRequest(
                name="docs", space_id="s@1", dim=DIM, exist_ok=True))
            assert not again.created and again.collection.item_count == ITEMS
    finally:
        restarted.stop(30)
    assert restarted.process.returncode == 0

    # And the items are still there after one more (graceful) restart.
    final = start_index(tmp_path, data_dir)
    try:
        final.wait_until_serving(time.monotonic() + 120)
        with grpc.insecure_channel(final.address) as channel:
            response = pb_grpc.IndexServiceStub(channel).GetCollection(
                pb.GetCollectionRequest(name="docs"))
        assert response.collection.item_count == ITEMS
    finally:
        final.stop(30)
