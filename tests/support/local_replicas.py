"""Replicas in one process: a primary's ReplicaPeer that calls a Follower directly, and
can be taken down and brought back, for the replication logic's unit tests."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from contentembed.services.index.dense import HnswParams
from contentembed.services.index.persistence import WalRecord
from contentembed.services.index.primary import PeerUnreachable, ReplicationTimings, Replicator
from contentembed.services.index.replication import CatalogState, Follower, VersionSpec
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import Durability

FAST = ReplicationTimings(rpc_timeout_s=1.0, heartbeat_s=0.05, retry_s=0.05, write_timeout_s=5.0)


def durable_store(path: Path) -> CollectionStore:
    store = CollectionStore(HnswParams(), 8, Durability(path, snapshot_every_ops=10**9,
                                                        snapshot_interval_s=10**9))
    store.load()
    return store


class LocalPeer:
    """A follower reached without a network. The snapshot directory is copied, as the
    wire would, so the follower never reads the primary's files."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.replica_id = follower.replica_id
        self.down = threading.Event()
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down.is_set():
            raise PeerUnreachable(f"replica {self.replica_id} is down")

    def sync_catalog(self, term: int, primary_id: str, catalog: CatalogState) -> CatalogState:
        self._check()
        return self.follower.sync_catalog(term, primary_id, catalog)

    def replicate(self, term: int, primary_id: str, records: list[tuple[str, str, WalRecord]],
                  in_sync: bool, timeout_s: float | None = None) -> None:
        self._check()
        self.follower.replicate(term, primary_id, records, in_sync)

    def install_snapshot(self, term: int, primary_id: str, spec: VersionSpec,
                         directory: Path | None) -> int:
        self._check()
        if directory is None:
            return self.follower.install_snapshot(term, primary_id, spec, None)
        copy = Path(tempfile.mkdtemp()) / "snapshot"
        try:
            shutil.copytree(directory, copy)
            return self.follower.install_snapshot(term, primary_id, spec, copy)
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)


class InSyncRecord:
    """Where the primary records its in-sync set (the lease, in a real group)."""

    def __init__(self) -> None:
        self.history: list[tuple[str, ...]] = []
        self.fail = False

    def __call__(self, ids: tuple[str, ...]) -> None:
        if self.fail:
            raise OSError("the lease store is unreachable")
        self.history.append(ids)

    @property
    def current(self) -> tuple[str, ...]:
        return self.history[-1] if self.history else ()


def group(root: Path, followers: int, term: int = 1) -> tuple[CollectionStore, Replicator, list[LocalPeer], InSyncRecord]:
    """A primary store with ``followers`` followers, replicating (not yet started)."""
    primary = durable_store(root / "primary")
    primary.logs.term = term  # type: ignore[union-attr]
    peers = []
    for n in range(followers):
        store = durable_store(root / f"follower-{n}")
        peers.append(LocalPeer(Follower(store, f"f{n}", root / f"follower-{n}", in_sync_timeout_s=5.0)))
    record = InSyncRecord()
    replicator = Replicator(primary, "p", term, list(peers), record, FAST)
    return primary, replicator, peers, record
