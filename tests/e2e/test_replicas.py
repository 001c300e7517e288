"""A shard of three replica processes: writes acknowledged by the primary are on every
in-sync replica, reads go on while the primary is killed, a follower takes over under a
higher term, the old primary comes back as a follower, and every replica ends with the
same digest for every version."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.index.v1 import replication_service_pb2 as rpb
from contentembed.rpc_status import error_reason
from tests.support.replica_stack import DIM, ReplicaGroupStack, upsert_request, vector

pytestmark = pytest.mark.timeout(300)


def create(replica, name: str = "c") -> None:
    replica.index.CreateCollection(pb.CreateCollectionRequest(name=name, space_id="s@1", dim=DIM),
                                   timeout=10)


def test_writes_reach_every_replica_and_a_killed_primary_is_replaced(tmp_path: Path) -> None:
    stack = ReplicaGroupStack(tmp_path, 3).start()
    try:
        primary = stack.primary()
        create(primary)
        stack.wait_all_in_sync()
        for batch in range(10):
            primary.index.Upsert(upsert_request("c", [f"{batch}-{n}" for n in range(20)]), timeout=10)
        # Acknowledged means on every in-sync replica: the digests agree at once.
        digests = stack.digests()
        assert len({str(d) for d in digests.values()}) == 1, digests
        assert digests[primary.replica_id][("c", "live")][0] == 200
        samples = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                   for line in primary.metrics().splitlines()
                   if line.startswith("contentembed_replica") and "{" in line}
        assert samples["contentembed_replica_primary"] == 1.0
        assert samples["contentembed_replica_in_sync_replicas"] == 3.0
        followers = [r for r in stack.replicas if r is not primary]
        with pytest.raises(grpc.RpcError) as refused:
            followers[0].index.Upsert(upsert_request("c", ["x"]), timeout=10)
        assert error_reason(refused.value) == "NOT_PRIMARY"

        # Writes and reads under way while the primary is killed.
        acknowledged: list[str] = []
        refused_reasons: list[str] = []
        failed_reads: list[str] = []
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                ids = [f"w{n}"]
                for replica in stack.alive():
                    try:
                        replica.index.Upsert(upsert_request("c", ids), timeout=5)
                        acknowledged.extend(ids)
                        break
                    except grpc.RpcError as error:
                        refused_reasons.append(error_reason(error) or error.code().name)
                else:
                    time.sleep(0.05)
                    continue
                n += 1

        def reader() -> None:
            while not stop.is_set():
                answered = False
                for replica in stack.alive():
                    try:
                        replica.index.Search(pb.SearchRequest(collection="c", query=vector("q"),
                                                              top_k=5), timeout=5)
                        answered = True
                        break
                    except grpc.RpcError as error:
                        last = error_reason(error) or error.code().name
                if not answered:
                    failed_reads.append(last)
                time.sleep(0.02)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        before = len(acknowledged)
        old_term = primary.state().term
        killed_at = time.monotonic()
        stack.kill(primary)
        new_primary = stack.primary(timeout=30)
        while len(acknowledged) <= before + 5 and time.monotonic() - killed_at < 30:
            time.sleep(0.05)
        failover_s = time.monotonic() - killed_at
        assert new_primary.state().term > old_term
        print(f"failover: writes accepted again {failover_s:.2f} s after SIGKILL")
        time.sleep(1.0)
        stack.restart(primary)  # the old primary comes back: a follower now
        stack.wait_all_in_sync()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(30)

        assert not failed_reads, failed_reads[:5]  # some replica answered every search
        assert primary.state().role == rpb.REPLICA_ROLE_FOLLOWER
        digests = stack.digests()
        assert len({str(d) for d in digests.values()}) == 1, digests
        for replica in stack.replicas:
            found = replica.index.GetItems(pb.GetItemsRequest(collection="c", ids=acknowledged),
                                           timeout=30)
            assert {item.id for item in found.items} == set(acknowledged), replica.replica_id
        assert len(acknowledged) > before
    finally:
        stack.stop()


def test_an_operator_hands_the_primary_to_an_in_sync_replica(tmp_path: Path) -> None:
    stack = ReplicaGroupStack(tmp_path, 2).start()
    try:
        primary = stack.primary()
        create(primary)
        stack.wait_all_in_sync()
        primary.index.Upsert(upsert_request("c", ["a"]), timeout=10)
        successor = next(r for r in stack.replicas if r is not primary)
        with pytest.raises(grpc.RpcError) as refused:
            successor.replication.TransferPrimary(rpb.TransferPrimaryRequest(successor_id="0"), timeout=10)
        assert error_reason(refused.value) == "NOT_PRIMARY"
        term = primary.replication.TransferPrimary(
            rpb.TransferPrimaryRequest(successor_id=successor.replica_id), timeout=10).term
        assert stack.primary(timeout=10) is successor
        assert successor.state().term == term
        successor.index.Upsert(upsert_request("c", ["b"]), timeout=10)
        stack.wait_all_in_sync()
        digests = stack.digests()
        assert len({str(d) for d in digests.values()}) == 1, digests
        assert digests[primary.replica_id][("c", "live")][0] == 2
    finally:
        stack.stop()
