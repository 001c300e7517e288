"""Replication between a primary and its followers, in one process: every follower ends
with the primary's catalog and the same digest for every version, whichever way it got
there (shipped as written, caught up by log delta, by snapshot + delta, or replaced
because it held writes the primary never had), and a primary whose term is over
acknowledges nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from contentembed.services.common.errors import Unavailable
from contentembed.services.index.persistence import WalRecord
from contentembed.services.index.replication import StaleTerm, catalog_of
from contentembed.services.index.store import CollectionStore
from tests.support.local_replicas import group
from tests.unit.test_index_pending import write_part

DIM = 4


def vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)


def write(store: CollectionStore, replicator, batch: int, count: int = 5, name: str = "c") -> list[str]:
    ids = [f"{batch}-{n}" for n in range(count)]
    with replicator.write():
        store.upsert(name, ids, vectors(count, batch), [{"batch": batch}] * count,
                     texts=[f"text {batch} {n}" for n in range(count)])
    return ids


def digests(store: CollectionStore) -> dict[tuple[str, str], object]:
    return {spec.key: store.get(spec.collection, spec.version).digest() if not spec.pending
            else (spec.seq, spec.term)
            for spec in catalog_of(store).versions}


def aliases(store: CollectionStore) -> set:
    return set(catalog_of(store).aliases)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def in_sync(replicator, *ids: str) -> bool:
    return set(replicator.in_sync_ids()) == {"p", *ids}


def test_writes_and_version_changes_reach_every_follower_before_they_are_acknowledged(tmp_path: Path) -> None:
    primary, replicator, peers, record = group(tmp_path, 2)
    replicator.start()
    try:
        with replicator.write():
            primary.create("c", "s@1", DIM)
        wait_until(lambda: in_sync(replicator, "f0", "f1"))
        for batch in range(5):
            write(primary, replicator, batch)
        with replicator.write():
            primary.delete_items("c", ["0-0", "1-1"])
        with replicator.write():
            primary.begin_version("c", "v2", "s@2", DIM)
        with replicator.write():
            primary.upsert("c", ["x"], vectors(1, 99), [{}], space_id="s@2")
        write_part(tmp_path / "bundles" / "b1", ["a", "b"])  # a bundle of space s@1
        primary.bundles.bundle_root = tmp_path / "bundles"
        with replicator.write():
            primary.load_bundle("c", "b1", path="b1")
        with replicator.write():
            primary.activate("c", "b1")
        # Acknowledged: every follower already holds all of it, no waiting.
        for peer in peers:
            assert digests(peer.follower.store) == digests(primary)
            assert aliases(peer.follower.store) == aliases(primary)
            assert peer.follower.in_sync
        assert record.current == ("f0", "f1", "p")
    finally:
        replicator.stop()


def test_a_follower_down_is_dropped_then_caught_up_by_the_log(tmp_path: Path) -> None:
    primary, replicator, peers, record = group(tmp_path, 2)
    replicator.start()
    try:
        with replicator.write():
            primary.create("c", "s@1", DIM)
        wait_until(lambda: in_sync(replicator, "f0", "f1"))
        peers[1].down.set()
        for batch in range(20):
            write(primary, replicator, batch)  # acknowledged without f1, once it is dropped
        assert "f1" not in record.current and "f0" in record.current
        assert digests(peers[0].follower.store) == digests(primary)
        behind, ahead = peers[1].follower.store.get("c").seq, primary.get("c").seq
        assert behind < ahead, (behind, ahead, peers[1].calls)
        peers[1].down.clear()
        wait_until(lambda: in_sync(replicator, "f0", "f1"))
        assert digests(peers[1].follower.store) == digests(primary)
        assert record.current == ("f0", "f1", "p")
    finally:
        replicator.stop()


def test_a_follower_behind_a_snapshot_gets_the_snapshot_then_the_log(tmp_path: Path) -> None:
    primary, replicator, peers, _ = group(tmp_path, 1)
    replicator.start()
    try:
        with replicator.write():
            primary.create("c", "s@1", DIM)
        wait_until(lambda: in_sync(replicator, "f0"))
        peers[0].down.set()
        for batch in range(10):
            write(primary, replicator, batch)
        primary.snapshot_due(force=True)  # the log no longer reaches back to f0's seq
        write(primary, replicator, 10)
        peers[0].down.clear()
        wait_until(lambda: in_sync(replicator, "f0"))
        assert digests(peers[0].follower.store) == digests(primary)
    finally:
        replicator.stop()


def test_a_follower_holding_writes_the_primary_never_had_is_replaced(tmp_path: Path) -> None:
    """The old primary shipped a write to this follower and died before acknowledging
    it; the new primary (term 2) never had it. Same seq, another term: replaced."""
    primary, replicator, peers, _ = group(tmp_path, 1, term=2)
    follower = peers[0].follower
    for store in (primary, follower.store):
        store.create("c", "s@1", DIM)[0].upsert(["a"], vectors(1, 1), [{}])  # seq 1, term 0
    old = WalRecord(2, "upsert", ["ghost"], vectors(1, 2), [{}], None, term=1)
    follower.replicate(1, "old-primary", [("c", "live", old)], in_sync=True)
    primary.logs.term = 2
    replicator.start()
    try:
        write(primary, replicator, 7, count=1)  # seq 2 of term 2 here: a different write
        wait_until(lambda: in_sync(replicator, "f0"))
        assert follower.store.get("c").get(["ghost"]) == []
        assert digests(follower.store) == digests(primary)
    finally:
        replicator.stop()


def test_a_primary_whose_term_is_over_acknowledges_nothing(tmp_path: Path) -> None:
    primary, replicator, peers, _ = group(tmp_path, 1, term=1)
    replicator.start()
    try:
        with replicator.write():
            primary.create("c", "s@1", DIM)
        wait_until(lambda: in_sync(replicator, "f0"))
        peers[0].follower.raise_term(2)  # a newer primary has reached this follower
        with pytest.raises(StaleTerm):
            peers[0].follower.replicate(1, "p", [], True)
        with pytest.raises(Unavailable) as refused:
            write(primary, replicator, 1)
        assert refused.value.reason == "NOT_PRIMARY"
        with pytest.raises(Unavailable):
            replicator.require_writable()
    finally:
        replicator.stop()


def test_writes_are_refused_when_the_in_sync_set_cannot_be_recorded(tmp_path: Path) -> None:
    """Partitioned from the lease store, a primary cannot drop a silent follower, so it
    must not acknowledge the write that follower missed."""
    primary, replicator, peers, record = group(tmp_path, 1)
    replicator.start()
    try:
        with replicator.write():
            primary.create("c", "s@1", DIM)
        wait_until(lambda: in_sync(replicator, "f0"))
        record.fail = True
        peers[0].down.set()
        with pytest.raises(Unavailable):
            write(primary, replicator, 1)
    finally:
        replicator.stop()


def test_joined_small_writes_end_in_the_state_applying_them_one_by_one_does() -> None:
    """A replica catching up joins consecutive upserts of distinct ids into one insert;
    rewrites of an id and deletes break the runs, so the result is the same."""
    from contentembed.services.index.collection import HnswCollection, merged_upserts
    from contentembed.services.index.dense import HnswParams

    rng = np.random.default_rng(3)
    records, seq = [], 0
    for _ in range(300):
        seq += 1
        ids = [f"i{n}" for n in rng.choice(40, size=int(rng.integers(1, 4)), replace=False)]
        if rng.random() < 0.15:
            records.append(WalRecord(seq, "delete", ids))
        else:
            texts = [f"t{seq}"] * len(ids) if rng.random() < 0.5 else None
            records.append(WalRecord(seq, "upsert", ids, vectors(len(ids), seq),
                                     [{"seq": seq}] * len(ids), texts, term=2))
    joined = merged_upserts(records, 16)
    assert len(joined) < len(records) and joined[-1].seq == records[-1].seq
    one_by_one, together = (HnswCollection("c", "s@1", DIM, HnswParams()) for _ in range(2))
    for record in records:
        one_by_one.replay(record)  # as recovery applies them: each on its own
    assert together.apply_shipped(records, lambda logged: None) == len(records)
    assert together.digest() == one_by_one.digest()
    assert (together.seq, together.term) == (one_by_one.seq, one_by_one.term) == (300, records[-1].term)
    # And no stray copy of an id left in the graph for searches to find.
    found = [hit.id for hit in together.search(vectors(1, 999)[0], top_k=40, ef=400)]
    assert sorted(found) == sorted(hit.id for hit in one_by_one.search(vectors(1, 999)[0], top_k=40, ef=400))
    assert len(found) == len(set(found))
