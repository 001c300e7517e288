"""The primary's side of replication: every follower gets each logged write, in order,
and a write is acknowledged only once every follower in the in-sync set holds it.

One ``FollowerLink`` per follower, each with its own thread: while the follower is in
sync the link ships what the log takes as it comes (batched, a heartbeat when there is
nothing); otherwise it catches the follower up (the catalog, then per version the log
records after the follower's seq, or a snapshot and the records after it where the log
no longer reaches back, or where the follower holds writes this primary never had) and
asks for it to join the in-sync set. A follower that fails a shipment is dropped from
the set, durably (the lease record), before any write is acknowledged without it.
Pure index code: the followers are reached through ``ReplicaPeer``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from contentembed.services.common.errors import Unavailable
from contentembed.services.index.persistence import WalRecord
from contentembed.services.index.replication import (
    CatalogState,
    ReplicaGap,
    StaleTerm,
    VersionSpec,
    catalog_of,
)
from contentembed.services.index.store import CollectionStore
from contentembed.services.index.version_log import LogTruncated

log = logging.getLogger(__name__)

Shipment = list[tuple[str, str, WalRecord]]


class PeerUnreachable(Exception):
    """The follower did not answer in time, or the connection failed."""


class ReplicaPeer(Protocol):
    """One follower as the primary reaches it (replication_service.py has the gRPC one).
    Raises StaleTerm, ReplicaGap or PeerUnreachable."""

    replica_id: str

    def sync_catalog(self, term: int, primary_id: str, catalog: CatalogState) -> CatalogState: ...

    def replicate(self, term: int, primary_id: str, records: Shipment, in_sync: bool,
                  timeout_s: float | None = None) -> None:
        """``timeout_s``: None for the peer's own (the in-sync shipments' short one)."""
        ...

    def install_snapshot(self, term: int, primary_id: str, spec: VersionSpec,
                         directory: Path | None) -> int: ...


class InSyncLost(Exception):
    """The in-sync set could not be recorded: this replica may no longer be primary."""


@dataclass(frozen=True)
class ReplicationTimings:
    rpc_timeout_s: float = 2.0  # a follower slower than this is dropped from the set
    heartbeat_s: float = 0.5
    max_batch_bytes: int = 4 << 20
    # Catch-up reads the log in shipments this size, each given this long: nobody waits on
    # them, and one that outlived rpc_timeout_s was refused again and again (the follower's
    # admission learnt that Replicate takes seconds and shed the retries).
    catch_up_batch_bytes: int = 1 << 20
    catch_up_batch_records: int = 1024
    catch_up_timeout_s: float = 30.0
    retry_s: float = 0.2  # between catch-up attempts of an unreachable follower
    write_timeout_s: float = 10.0  # the longest a write waits for its followers


@dataclass
class _Shipped:
    index: int
    name: str
    version: str
    record: WalRecord | None  # None: the catalog changed
    enqueued_at: float = 0.0  # time.monotonic()


class FollowerLink:
    def __init__(self, replicator: Replicator, peer: ReplicaPeer) -> None:
        self.replicator = replicator
        self.peer = peer
        self.in_sync = False
        self.acked = 0  # the last shipment index the follower holds
        self.joined_at = 0  # the index at which it (last) joined the in-sync set
        self.queue: deque[_Shipped] = deque()
        self.caught_up_s: float | None = None  # how long the last catch-up took
        self.lag_records = 0
        self.out_since = time.monotonic()  # when it last left the in-sync set (or started)
        self._reached_at: float | None = None  # this catch-up's first answer from it
        self._thread = threading.Thread(target=self._run, name=f"replica-{peer.replica_id}",
                                        daemon=True)

    @property
    def replica_id(self) -> str:
        return self.peer.replica_id

    def lag_seconds(self, now: float) -> float:
        if not self.in_sync:
            return now - self.out_since
        queue = self.queue
        return now - queue[0].enqueued_at if queue else 0.0

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        replicator = self.replicator
        while not replicator.stopped:
            try:
                if self.in_sync:
                    self._ship()
                else:
                    self._catch_up()
            except StaleTerm as error:
                replicator.superseded(error.current)
                return
            except InSyncLost:
                return  # the replicator is fenced: nothing more to do
            except (PeerUnreachable, ReplicaGap, LogTruncated, OSError) as error:
                if self.in_sync:
                    try:
                        replicator.drop(self, str(error))
                    except InSyncLost:
                        return
                else:
                    log.info("replica catch-up failed; retrying",
                             extra={"replica": self.replica_id, "error": str(error)})
                replicator.wait_stop(replicator.timings.retry_s)

    # -- in sync -------------------------------------------------------------------------
    def _ship(self) -> None:
        replicator = self.replicator
        batch = replicator.take(self)
        records: Shipment = []
        for item in batch:
            if item.record is None:
                self._send(records)
                records = []
                self._reconcile()
            else:
                records.append((item.name, item.version, item.record))
        self._send(records)
        replicator.acknowledged(self, batch[-1].index if batch else self.acked)

    def _send(self, records: Shipment) -> None:
        replicator = self.replicator
        try:
            self.peer.replicate(replicator.term, replicator.replica_id, records, True)
        except ReplicaGap:
            # A record of a version the follower has not heard of yet (a create or a
            # BeginVersion racing its first write): the catalog first, then once more.
            self._reconcile()
            known = catalog_of(replicator.store).version_map()
            self.peer.replicate(replicator.term, replicator.replica_id,
                                [r for r in records if (r[0], r[1]) in known], True)

    # -- catching up ---------------------------------------------------------------------
    def _reconcile(self) -> dict[tuple[str, str], VersionSpec]:
        """Sends the catalog, then a snapshot of each version the follower cannot reach by
        the log; returns the follower's versions once nothing more needs a snapshot."""
        replicator = self.replicator
        for _ in range(8):
            catalog = replicator.catalog()
            theirs = self.peer.sync_catalog(replicator.term, replicator.replica_id, catalog).version_map()
            todo = [spec for key, spec in catalog.version_map().items()
                    if key not in theirs or not self._reachable_by_log(spec, theirs[key])]
            if not todo:
                return theirs
            for spec in todo:
                self._send_snapshot(spec)
        raise ReplicaGap("the catalog kept changing while the follower was brought up to it")

    def _reachable_by_log(self, mine: VersionSpec, theirs: VersionSpec) -> bool:
        """Whether the follower's copy is a prefix of this primary's history: the same
        kind of version, and its last write (seq, term) is one this primary has too. A
        copy that fails this holds writes this primary never had (the old primary's,
        never acknowledged): it is replaced."""
        if not mine.same_content_kind(theirs):
            return False
        if theirs.seq == 0:
            return True
        version_log = self.replicator.store.logs.of(mine.collection, mine.version)  # type: ignore[union-attr]
        if theirs.seq > version_log.durable_seq:
            return False
        if theirs.seq == mine.seq:
            return theirs.term == mine.term
        try:
            records = version_log.records_after(theirs.seq - 1, max_records=1)
        except LogTruncated:
            return False  # cannot tell: the snapshot settles it
        return bool(records) and records[0].seq == theirs.seq and records[0].term == theirs.term

    def _send_snapshot(self, spec: VersionSpec) -> int | None:
        """Replaces the follower's copy of the version with a snapshot of this one's;
        returns the follower's seq for it after (None: the version is gone here)."""
        replicator = self.replicator
        store = replicator.store
        alias = store.catalog.find(spec.collection)
        collection = None if alias is None else alias.every_version().get(spec.version)
        if collection is None:
            return None  # gone meanwhile: the next catalog drops it there too
        if collection.pending:
            # A pending version's log holds all of it (it is never snapshotted).
            return self.peer.install_snapshot(replicator.term, replicator.replica_id, spec, None)
        started = time.monotonic()
        with replicator.transfer_dir() as directory:
            manifest = collection.write_snapshot(directory / "snapshot")
            sent = replace(spec, seq=int(manifest["seq"]), term=int(manifest.get("term", 0)))
            seq = self.peer.install_snapshot(replicator.term, replicator.replica_id, sent,
                                             directory / "snapshot")
        log.info("snapshot sent to a replica", extra={
            "replica": self.replica_id, "collection": spec.collection, "version": spec.version,
            "items": int(manifest["count"]), "seconds": round(time.monotonic() - started, 2)})
        return seq

    def _catch_up(self) -> None:
        replicator = self.replicator
        theirs = {key: spec.seq for key, spec in self._reconcile().items()}
        # From the first time it answered: a catch-up may take several attempts.
        started = self._reached_at = self._reached_at or time.monotonic()
        while not replicator.stopped:
            catalog = replicator.catalog()
            for key in catalog.version_map():
                theirs[key] = self._send_log(key, theirs.get(key, 0))
            if replicator.try_join(self, catalog.stamp, theirs):
                break
            if replicator.catalog().stamp != catalog.stamp:
                theirs = {key: spec.seq for key, spec in self._reconcile().items()}
        else:
            return
        self.caught_up_s = time.monotonic() - started
        self._reached_at = None
        self.peer.replicate(replicator.term, replicator.replica_id, [], True)
        log.info("replica in sync", extra={"replica": self.replica_id,
                                           "seconds": round(self.caught_up_s, 2)})

    def _send_log(self, key: tuple[str, str], seq: int) -> int:
        """Ships the version's records after ``seq`` from the log on disk; returns the
        follower's seq after them."""
        store = self.replicator.store
        assert store.logs is not None
        try:
            version_log = store.logs.of(*key)
        except KeyError:
            return seq  # dropped meanwhile
        while True:
            timings = self.replicator.timings
            try:
                records = version_log.records_after(seq, timings.catch_up_batch_bytes,
                                                    timings.catch_up_batch_records)
            except LogTruncated:
                alias = store.catalog.find(key[0])
                collection = None if alias is None else alias.every_version().get(key[1])
                installed = None if collection is None else self._send_snapshot(VersionSpec.of(collection))
                if installed is None:
                    return seq  # dropped meanwhile
                seq = installed
                continue
            if not records:
                return seq
            self.lag_records = version_log.durable_seq - seq
            self.peer.replicate(self.replicator.term, self.replicator.replica_id,
                                [(*key, r) for r in records], False, timings.catch_up_timeout_s)
            seq = records[-1].seq


class Replicator:
    """The primary's followers, and the wait of each write for them."""

    def __init__(
        self,
        store: CollectionStore,
        replica_id: str,
        term: int,
        peers: list[ReplicaPeer],
        record_in_sync: Callable[[tuple[str, ...]], None],
        timings: ReplicationTimings | None = None,
        on_superseded: Callable[[int], None] | None = None,
    ) -> None:
        if store.logs is None:
            raise ValueError("replication needs a durable store (a data directory)")
        self.store = store
        self.replica_id = replica_id
        self.term = term
        self.timings = timings or ReplicationTimings()
        self._record_in_sync = record_in_sync
        self._on_superseded = on_superseded
        self._lock = threading.Condition()
        self._index = 0
        self._catalog_counter = 0
        self._local = threading.local()
        self._stop = threading.Event()
        self.fenced: str | None = None  # why no write can be acknowledged any more
        self.links = [FollowerLink(self, peer) for peer in peers]

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def start(self) -> None:
        assert self.store.logs is not None
        self.store.logs.on_logged = self.on_logged
        self.store.on_catalog_changed = self.catalog_changed
        for link in self.links:
            link.start()

    def stop(self) -> None:
        assert self.store.logs is not None
        self.store.logs.on_logged = None
        self.store.on_catalog_changed = None
        self._stop.set()
        with self._lock:
            self.fenced = self.fenced or "this replica stopped being primary"
            self._lock.notify_all()
        for link in self.links:
            link.join(self.timings.rpc_timeout_s + 1)

    def in_sync_ids(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted([self.replica_id, *(other.replica_id for other in self.links if other.in_sync)]))

    def catalog(self) -> CatalogState:
        with self._lock:
            stamp = (self.term, self._catalog_counter)
        return catalog_of(self.store, stamp)

    # -- hooks the store calls --------------------------------------------------------
    def on_logged(self, name: str, version: str, record: WalRecord) -> None:
        self._enqueue(name, version, record)

    def catalog_changed(self) -> None:
        with self._lock:
            self._catalog_counter += 1
        self._enqueue("", "", None)

    def _enqueue(self, name: str, version: str, record: WalRecord | None) -> None:
        with self._lock:
            self._index += 1
            item = _Shipped(self._index, name, version, record, time.monotonic())
            for link in self.links:
                if link.in_sync:
                    link.queue.append(item)
            self._lock.notify_all()
            self._local.index = self._index

    # -- writes --------------------------------------------------------------------------
    def require_writable(self) -> None:
        if self.fenced is not None:
            raise Unavailable(f"not the primary any more: {self.fenced}", reason="NOT_PRIMARY",
                              retry_after_s=1.0)

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Around one write request: once the store has it, waits until every follower in
        the in-sync set holds what it logged (or has been dropped from the set)."""
        self.require_writable()
        self._local.index = 0
        yield
        index = getattr(self._local, "index", 0)
        if index:
            self.wait(index)

    def wait(self, index: int) -> None:
        deadline = time.monotonic() + self.timings.write_timeout_s
        with self._lock:
            while True:
                self.require_writable()
                lagging = [link for link in self.links
                           if link.in_sync and link.joined_at < index and link.acked < index]
                if not lagging:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        "the write is durable here but its replicas have not confirmed it in "
                        f"{self.timings.write_timeout_s:.0f} s; retry it (writes are idempotent)",
                        reason="REPLICATION_TIMEOUT", retry_after_s=1.0,
                    )
                self._lock.wait(remaining)

    # -- what the links call -------------------------------------------------------------
    def take(self, link: FollowerLink) -> list[_Shipped]:
        """The next batch for an in-sync link: what is queued (up to max_batch_bytes), or
        nothing after a heartbeat interval."""
        with self._lock:
            if not link.queue:
                self._lock.wait(self.timings.heartbeat_s)
            batch, size = [], 0
            while link.queue and size < self.timings.max_batch_bytes:
                item = link.queue.popleft()
                batch.append(item)
                vectors = None if item.record is None else item.record.vectors
                size += 0 if vectors is None else vectors.nbytes
            return batch

    def acknowledged(self, link: FollowerLink, index: int) -> None:
        with self._lock:
            link.acked = max(link.acked, index)
            link.lag_records = len(link.queue)
            self._lock.notify_all()

    def drop(self, link: FollowerLink, why: str) -> None:
        """Takes a follower out of the in-sync set, durably, then releases the writes that
        waited for it."""
        with self._lock:
            if not link.in_sync:
                return
            remaining = tuple(sorted([self.replica_id, *(
                other.replica_id for other in self.links if other.in_sync and other is not link)]))
            try:
                self._record_in_sync(remaining)
            except Exception as error:  # noqa: BLE001 - any failure: nothing is known
                self._fence(f"the in-sync set could not be recorded ({error})")
                raise InSyncLost(str(error)) from None
            link.in_sync = False
            link.out_since = time.monotonic()
            link.lag_records = len(link.queue)
            link.queue.clear()
            self._lock.notify_all()
        log.warning("replica dropped from the in-sync set", extra={"replica": link.replica_id,
                                                                   "why": why})

    def try_join(self, link: FollowerLink, stamp: tuple[int, int],
                 follower_seqs: dict[tuple[str, str], int]) -> bool:
        """Adds a caught-up follower to the in-sync set when nothing was written or
        changed since it was brought up to date (checked under the lock every write's
        shipment takes, so none slips between)."""
        assert self.store.logs is not None
        with self._lock:
            if (self.term, self._catalog_counter) != stamp:
                return False
            for key in catalog_of(self.store).version_map():
                if self.store.logs.of(*key).durable_seq != follower_seqs.get(key, -1):
                    return False
            added = tuple(sorted({*self.in_sync_ids(), link.replica_id}))
            try:
                self._record_in_sync(added)
            except Exception as error:  # noqa: BLE001
                self._fence(f"the in-sync set could not be recorded ({error})")
                raise InSyncLost(str(error)) from None
            link.in_sync = True
            link.joined_at = link.acked = self._index
            link.lag_records = 0
            link.queue.clear()
            return True

    def superseded(self, term: int) -> None:
        self._fence(f"a replica has seen term {term}, newer than this primary's {self.term}")
        if self._on_superseded is not None:
            self._on_superseded(term)

    def _fence(self, why: str) -> None:
        with self._lock:
            if self.fenced is None:
                log.error("primary fenced: no write will be acknowledged", extra={"why": why})
                self.fenced = why
            self._lock.notify_all()

    @contextlib.contextmanager
    def transfer_dir(self) -> Iterator[Path]:
        assert self.store.durability is not None
        root = self.store.durability.data_dir / "transfers"
        root.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(dir=root))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)
