"""A shard's replica group as real index processes on loopback: fixed ports (each replica
must know the others' before it starts), one shared lease file, a data directory each."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from contentembed.cli.stack import HOST, ServiceProcess, free_ports
from contentembed.common.v1 import types_pb2
from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import index_service_pb2_grpc as pb_grpc
from contentembed.index.v1 import replication_service_pb2 as rpb
from contentembed.index.v1 import replication_service_pb2_grpc as rpb_grpc
from contentembed.services.common.downstream import RECONNECT_BACKOFF

DIM = 8


def spawn(process: ServiceProcess, restart: bool = False, env: dict[str, str] | None = None) -> None:
    """Starts (or restarts) a service from a thread of its own. From the main thread the
    launcher forks with a pre-exec hook, and with this process's gRPC client threads busy
    such a child can abort before it execs (gRPC's fork handlers)."""
    env = dict(os.environ) if env is None else env
    thread = threading.Thread(target=process.restart if restart else process.start, args=(env,))
    thread.start()
    thread.join()


@dataclass
class Replica:
    replica_id: str
    process: ServiceProcess
    channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return self.process.address

    def _open(self) -> grpc.Channel:
        if self.channel is None:
            # Reconnecting as the gateway does (at most 1 s apart): a channel opened while
            # the replica restarts would otherwise wait out gRPC's default backoff.
            self.channel = grpc.insecure_channel(self.address, options=RECONNECT_BACKOFF)
        return self.channel

    @property
    def index(self) -> pb_grpc.IndexServiceStub:
        return pb_grpc.IndexServiceStub(self._open())

    @property
    def replication(self) -> rpb_grpc.ReplicationServiceStub:
        return rpb_grpc.ReplicationServiceStub(self._open())

    def state(self, digests: bool = False, timeout: float = 5.0) -> rpb.ReplicaState:
        return self.replication.GetReplicaState(
            rpb.GetReplicaStateRequest(digests=digests), timeout=timeout).state

    def metrics(self) -> str:
        url = f"http://{HOST}:{self.process.metrics_port}/metrics"  # plain http on loopback
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310
            return answer.read().decode()

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


@dataclass
class ReplicaGroupStack:
    root: Path
    count: int
    shard_index: int = 0
    shard_count: int = 1
    extra: tuple[str, ...] = ()
    replicas: list[Replica] = field(default_factory=list)

    def start(self) -> ReplicaGroupStack:
        ports = free_ports(self.count)
        lease = self.root / f"lease-{self.shard_index}.json"
        for n, port in enumerate(ports):
            peers = ",".join(f"{m}={HOST}:{ports[m]}" for m in range(self.count) if m != n)
            process = ServiceProcess(
                f"index-{self.shard_index}-{n}", "contentembed.services.index",
                ["--port", str(port), "--metrics-port", "0",
                 "--data-dir", str(self.root / f"data-{self.shard_index}-{n}"),
                 "--shard-index", str(self.shard_index), "--shard-count", str(self.shard_count),
                 "--replica-id", str(n), "--replica-peers", peers,
                 "--replica-lease-file", str(lease), *self.extra],
                self.root,
            )
            self.replicas.append(Replica(str(n), process))
        for replica in self.replicas:
            spawn(replica.process)
        for replica in self.replicas:
            replica.process.wait_for_port(time.monotonic() + 60)
            replica.process.wait_until_serving(time.monotonic() + 60)
        return self

    def restart(self, replica: Replica) -> None:
        replica.close_channel()
        spawn(replica.process, restart=True)
        replica.process.wait_for_port(time.monotonic() + 60)
        replica.process.wait_until_serving(time.monotonic() + 60)

    def kill(self, replica: Replica) -> None:
        os.kill(replica.process.pid, signal.SIGKILL)
        assert replica.process.process is not None
        replica.process.process.wait(10)
        replica.close_channel()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.close_channel()
            if replica.process.returncode is None:
                replica.process.stop(30)

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.process.returncode is None]

    def primary(self, timeout: float = 30.0) -> Replica:
        """The replica that says it is primary (waits for one)."""
        deadline = time.monotonic() + timeout
        while True:
            for replica in self.alive():
                try:
                    if replica.state(timeout=1.0).role == rpb.REPLICA_ROLE_PRIMARY:
                        return replica
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError("no replica became primary")
            time.sleep(0.1)

    def wait_all_in_sync(self, timeout: float = 60.0) -> None:
        """Until every live replica says it is in sync and the primary counts them all in
        its in-sync set (a follower's own word can be a replaced primary's)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive = self.alive()
                states = [r.state(timeout=2.0) for r in alive]
                primaries = [r for r, s in zip(alive, states) if s.role == rpb.REPLICA_ROLE_PRIMARY]
                if primaries and all(s.in_sync for s in states):
                    counted = primaries[0].index.ListCollections(
                        pb.ListCollectionsRequest(page_size=1), timeout=2.0).shard.replica
                    if set(counted.in_sync_replicas) >= {r.replica_id for r in alive}:
                        return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("replicas did not all get in sync")
            time.sleep(0.1)

    def digests(self) -> dict[str, dict[tuple[str, str], tuple[int, int, str]]]:
        """replica id -> {(collection, version): (count, seq, sha256)} (pending ones: seq)."""
        return {
            r.replica_id: {(v.collection, v.version): (v.item_count, v.seq, v.content_sha256)
                           for v in r.state(digests=True, timeout=30).versions}
            for r in self.alive()
        }


def vector(item_id: str, version: int = 0) -> types_pb2.Vector:
    seed = abs(hash((item_id, version))) % (2**32)
    values = np.random.default_rng(seed).normal(size=DIM).astype("<f4")
    return types_pb2.Vector(data=values.tobytes(), dim=DIM)


def upsert_request(collection: str, ids: list[str], version: int = 0) -> pb.UpsertRequest:
    return pb.UpsertRequest(collection=collection,
                            items=[pb.Item(id=i, vector=vector(i, version)) for i in ids])
