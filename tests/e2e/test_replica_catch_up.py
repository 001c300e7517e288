"""A follower that missed writes catches up before it serves: by the log after a stop
during 20k writes, by a snapshot and the log after losing its volume. Both are refused
reads (REPLICA_CATCHING_UP) until they hold every acknowledged write; both durations are
printed (docs/reliability.md records them)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest

from contentembed.index.v1 import index_service_pb2 as pb
from contentembed.rpc_status import error_reason
from tests.support.replica_stack import DIM, ReplicaGroupStack, upsert_request, vector

pytestmark = pytest.mark.timeout(600)
WRITES = 20_000
BATCH = 500


def write_many(primary, start: int, count: int) -> None:
    for first in range(start, start + count, BATCH):
        primary.index.Upsert(upsert_request("c", [f"i{n}" for n in range(first, first + BATCH)]),
                             timeout=60)


def wait_caught_up(stack: ReplicaGroupStack, follower, refusals: list[str]) -> float:
    """Seconds until the follower answers reads; the refusals seen meanwhile."""
    started = time.monotonic()
    while True:
        try:
            follower.index.Search(pb.SearchRequest(collection="c", query=vector("q"), top_k=3),
                                  timeout=5)
            return time.monotonic() - started
        except grpc.RpcError as error:
            refusals.append(error_reason(error) or error.code().name)
        assert time.monotonic() - started < 300, "the follower never caught up"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["delta", "wiped-volume"])
def test_a_follower_that_missed_writes_catches_up_before_it_serves(tmp_path: Path, how: str) -> None:
    # With a snapshot every 5,000 items the primary's log no longer reaches back to what
    # a wiped follower holds (nothing): it gets the snapshot, then the log after it. The
    # stopped follower's primary takes no snapshot meanwhile: the log alone brings it up.
    every = "5000" if how == "wiped-volume" else "1000000"
    stack = ReplicaGroupStack(tmp_path, 2, extra=("--snapshot-every-items", every)).start()
    try:
        primary = stack.primary()
        primary.index.CreateCollection(pb.CreateCollectionRequest(name="c", space_id="s@1", dim=DIM),
                                       timeout=10)
        stack.wait_all_in_sync()
        write_many(primary, 0, 2 * BATCH)
        follower = next(r for r in stack.replicas if r is not primary)
        follower.process.stop(30)
        if how == "wiped-volume":
            shutil.rmtree(tmp_path / f"data-0-{follower.replica_id}")
        started = time.monotonic()
        write_many(primary, 2 * BATCH, WRITES)
        written_s = time.monotonic() - started
        if how == "wiped-volume":
            primary.index.Upsert(upsert_request("c", ["after"]), timeout=10)
        stack.restart(follower)
        refusals: list[str] = []
        caught_up_s = wait_caught_up(stack, follower, refusals)
        assert set(refusals) <= {"REPLICA_CATCHING_UP"}, set(refusals)
        records = WRITES // BATCH
        print(f"{how}: {WRITES} items in {records} records written in {written_s:.1f} s; "
              f"caught up {caught_up_s:.2f} s after its restart answered "
              f"({records / max(caught_up_s, 1e-3):.0f} records/s, "
              f"{WRITES / max(caught_up_s, 1e-3):.0f} items/s)")
        sent = primary.process.log_path.read_text().count("snapshot sent to a replica")
        assert sent == (1 if how == "wiped-volume" else 0), sent
        digests = stack.digests()
        assert len({str(d) for d in digests.values()}) == 1, digests
        assert digests[follower.replica_id][("c", "live")][0] == WRITES + 2 * BATCH + (how == "wiped-volume")
    finally:
        stack.stop()
