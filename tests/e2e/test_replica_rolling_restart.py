"""A rolling restart of every replica of a 2 x 2 stack, as `contentembed up --replicas 2`
starts it, under read and write load through the gateway: each replica is stopped
(SIGTERM), restarted and waited for until ready (caught up) before the next, primaries
included. No search fails and none is partial, no acknowledged write is lost; the
latency of searches during the roll is printed beside that before it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contentembed.cli.stack import LocalStack
from contentembed.client import ApiError, Client
from contentembed.services.common.server import READINESS_SERVICE
from tests.support.documents import TEN_PRODUCTS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
REFRESH_S = 1.0
QUERIES = ["coffee grinder", "tent for camping", "running shoes", "bluetooth speaker", "yoga mat"]


def wait_ready(address: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=READINESS_SERVICE), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{address} never became ready"
            time.sleep(0.1)


def test_a_rolling_restart_of_every_replica_fails_no_search_and_loses_no_write(tmp_path: Path) -> None:
    # The gateway learns its replicas' standing every second here (10 s by default): the
    # roll waits twice that after each replica is ready, as Kubernetes waits
    # minReadySeconds (15 s) against the default.
    stack = LocalStack(run_dir=tmp_path, shard_count=2, replicas=2, metrics_base_port=0,
                       gateway_port=0, encoder_port=0, index_base_port=0,
                       extra_env={"CONTENTEMBED_ENCODER_REFRESH_S": str(REFRESH_S)})
    stack.start()
    stop = threading.Event()
    latencies: list[tuple[float, float]] = []  # (when, seconds)
    failed_searches: list[str] = []
    partial: list[str] = []
    acknowledged: list[str] = []
    failed_writes: list[str] = []
    try:
        client = Client(stack.gateway_address, timeout=15)
        client.create_collection("things")
        client.upsert_documents("things", TEN_PRODUCTS)
        for process in stack.services:
            if process.name.startswith("index-"):
                wait_ready(process.address)

        def reader() -> None:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    result = client.search("things", QUERIES[n % len(QUERIES)] + f" {n}", top_k=5)
                    latencies.append((started, time.monotonic() - started))
                    if result.partial:
                        partial.append(str(result.shards))
                except ApiError as error:
                    failed_searches.append(f"{error.code} {error.reason} {error}")
                n += 1
                time.sleep(0.01)

        def writer() -> None:
            n = 0
            while not stop.is_set():
                document = {"id": f"w-{n}", "text": f"{TEN_PRODUCTS[n % 10]['text']} {n}"}
                try:
                    client.upsert_documents("things", [document])
                    acknowledged.append(document["id"])
                except ApiError as error:
                    failed_writes.append(f"{error.code} {error.reason}")
                n += 1
                time.sleep(0.02)

        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for thread in threads:
            thread.start()
        time.sleep(5.0)
        roll_started = time.monotonic()

        def roll() -> None:
            # Off the main thread: a fork from it runs the launcher's pre-exec hook, and
            # with this process's gRPC client threads busy that child can abort.
            for process in [p for p in stack.services if p.name.startswith("index-")]:
                process.stop(30)
                process.restart(stack.child_env())
                process.wait_for_port(time.monotonic() + 60)
                wait_ready(process.address)
                time.sleep(2 * REFRESH_S)  # minReadySeconds

        roller = threading.Thread(target=roll)
        roller.start()
        roller.join(400)
        roll_ended = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(60)

        before = [s for when, s in latencies if when < roll_started]
        during = [s for when, s in latencies if roll_started <= when < roll_ended]
        print(f"rolling restart: {roll_ended - roll_started:.1f} s, searches p99 before "
              f"{np.percentile(before, 99) * 1000:.0f} ms ({len(before)}), during "
              f"{np.percentile(during, 99) * 1000:.0f} ms ({len(during)}); writes "
              f"{len(acknowledged)} acknowledged, {len(failed_writes)} failed")
        assert not failed_searches, failed_searches[:5]
        assert not partial, partial[:3]
        found = {d.id for d in client.get_documents("things", acknowledged).documents}
        assert found == set(acknowledged), set(acknowledged) - found
        assert not failed_writes, failed_writes[:5]
    finally:
        stop.set()
        stack.stop()
