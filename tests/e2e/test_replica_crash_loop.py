"""The crash loop with replicas: 2 shards x 3 replicas under upserts, rewrites, deletes,
searches and creates while a killer SIGKILLs random replicas (primaries included) and
restarts them. The client goes to a shard's replicas as the gateway does (writes to
whichever takes them, reads to any that answers).

After it: no acknowledged write lost (an id's last acknowledged write decides what it
must be, where no call on it failed in between), every replica's digest equal to its
primary's, and no search answer partial (a shard with no replica answering) while each
shard kept at least one in-sync replica up, which the killer guarantees by never taking
down a replica of a shard whose others are not all in sync.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.services.common.sharding import shard_for_id
from tests.support.replica_stack import DIM, ReplicaGroupStack, upsert_request, vector

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
SHARDS, REPLICAS = 2, 3
CHAOS_S = 40.0
KILL_EVERY_S = (1.5, 3.0)
IDS = [f"item-{n}" for n in range(300)]


@dataclass
class Ledger:
    """Per id: its last acknowledged write (version, or None for a delete), and whether a
    write on it failed after that (then either outcome is allowed)."""

    last: dict[str, int | None] = field(default_factory=dict)
    unsure: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged = 0
    failed = 0

    def done(self, ids: list[str], version: int | None) -> None:
        with self.lock:
            self.acknowledged += 1
            for item in ids:
                self.last[item] = version
                self.unsure.discard(item)

    def uncertain(self, ids: list[str]) -> None:
        with self.lock:
            self.failed += 1
            self.unsure.update(ids)


def first_that_takes(replicas, call, errors: list[str] | None = None) -> bool:
    """Tries each replica; then, as the gateway retries, each once more waiting for its
    connection (one that came back a moment ago may still be reconnecting)."""
    for patient in (False, True):
        for replica in replicas:
            try:
                call(replica, patient)
                return True
            except grpc.RpcError as error:
                if errors is not None:
                    errors.append(f"replica {replica.replica_id}: {error.code().name} {error.details()}")
    return False


def test_replicas_lose_nothing_and_agree_through_a_crash_loop(tmp_path: Path) -> None:
    stacks = [ReplicaGroupStack(tmp_path / f"shard-{s}", REPLICAS, shard_index=s, shard_count=SHARDS,
                                extra=("--snapshot-every-items", "2000"))
              for s in range(SHARDS)]
    for stack in stacks:
        stack.root.mkdir(parents=True)
        stack.start()
    ledger = Ledger()
    stop = threading.Event()
    partial: list[str] = []
    kills: list[str] = []
    try:
        for stack in stacks:
            stack.primary().index.CreateCollection(
                pb.CreateCollectionRequest(name="c", space_id="s@1", dim=DIM), timeout=10)
            stack.wait_all_in_sync()

        def write(ids: list[str], version: int | None) -> None:
            for shard in range(SHARDS):
                mine = [i for i in ids if shard_for_id(i, SHARDS) == shard]
                if not mine:
                    continue
                def call(replica, patient, mine=mine):
                    if version is None:
                        replica.index.DeleteItems(pb.DeleteItemsRequest(collection="c", ids=mine),
                                                  timeout=5, wait_for_ready=patient)
                    else:
                        replica.index.Upsert(upsert_request("c", mine, version), timeout=5,
                                             wait_for_ready=patient)
                if first_that_takes(stacks[shard].alive(), call):
                    ledger.done(mine, version)
                else:
                    ledger.uncertain(mine)

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            version = seed * 1_000_000
            while not stop.is_set():
                version += 1
                ids = rng.sample(IDS[seed - 1::2], 5)  # writers own disjoint ids: one order per id
                write(ids, None if rng.random() < 0.2 else version)
                if rng.random() < 0.02:  # a create (exist_ok) now and then
                    for stack in stacks:
                        first_that_takes(stack.alive(), lambda r, patient: r.index.CreateCollection(
                            pb.CreateCollectionRequest(name="c", space_id="s@1", dim=DIM, exist_ok=True),
                            timeout=5, wait_for_ready=patient))

        def reader() -> None:
            while not stop.is_set():
                errors: list[str] = []
                answered = [first_that_takes(stack.alive(), lambda r, patient: r.index.Search(
                    pb.SearchRequest(collection="c", query=vector("q"), top_k=5),
                    timeout=2 if patient else 5, wait_for_ready=patient), errors)
                    for stack in stacks]
                if not all(answered):
                    partial.append(f"{time.strftime('%H:%M:%S')} {answered}: {errors}")
                time.sleep(0.02)

        def killer() -> None:
            rng = random.Random(7)
            while not stop.wait(rng.uniform(*KILL_EVERY_S)):
                stack = rng.choice(stacks)
                try:
                    stack.wait_all_in_sync(timeout=60)  # a shard never loses its last in-sync copy
                except AssertionError:
                    continue
                primary = stack.primary(timeout=10)
                # Every other kill takes the primary: failover is what most needs the chaos.
                victim = primary if len(kills) % 2 == 0 else rng.choice(
                    [r for r in stack.alive() if r is not primary])
                was_primary = victim is primary
                stack.kill(victim)
                kills.append(f"shard {stack.shard_index} replica {victim.replica_id}"
                             + (" (primary)" if was_primary else ""))
                time.sleep(rng.uniform(0.2, 1.5))
                stack.restart(victim)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 3)]
        threads += [threading.Thread(target=reader), threading.Thread(target=killer)]
        for thread in threads:
            thread.start()
        time.sleep(CHAOS_S)
        stop.set()
        for thread in threads:
            thread.join(120)

        for stack in stacks:
            stack.wait_all_in_sync(timeout=120)
            digests = stack.digests()
            assert len({str(d) for d in digests.values()}) == 1, (stack.shard_index, digests)
        for stack in stacks:
            for replica in stack.replicas:
                held = {item.id: item for item in replica.index.GetItems(
                    pb.GetItemsRequest(collection="c", ids=IDS), timeout=30).items}
                for item_id, version in ledger.last.items():
                    if item_id in ledger.unsure or shard_for_id(item_id, SHARDS) != stack.shard_index:
                        continue
                    if version is None:
                        assert item_id not in held, (replica.replica_id, item_id, "deleted")
                    else:
                        assert item_id in held, (replica.replica_id, item_id, "lost")
                        stored = np.frombuffer(held[item_id].vector.data, "<f4")
                        sent = np.frombuffer(vector(item_id, version).data, "<f4")
                        cosine = stored @ sent / np.linalg.norm(sent)  # stored normalized
                        assert cosine > 0.9999, (replica.replica_id, item_id, "an older write")
        primaries = sum("(primary)" in k for k in kills)
        print(f"crash loop: {len(kills)} kills ({primaries} of primaries), {ledger.acknowledged} "
              f"writes acknowledged, {ledger.failed} failed, {len(partial)} partial answers")
        assert primaries >= 2 and len(kills) >= 4, kills
        assert not partial, f"searches that found a shard with no replica answering: {partial}"
    finally:
        stop.set()
        for stack in stacks:
            stack.stop()
