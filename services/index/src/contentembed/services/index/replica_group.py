"""This replica's role in its shard's group, decided by the shard's lease: primary while
it holds the lease (it renews it, and keeps its in-sync set in it), follower otherwise,
trying to take the lease over whenever it expires. Pure index code: the lease store and
the peers come in through their protocols."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from contentembed.services.common.errors import FailedPrecondition, Unavailable
from contentembed.services.index.lease import (
    LeaseConflict,
    LeaseRecord,
    LeaseStore,
    LeaseUnavailable,
    renew,
    take_over,
)
from contentembed.services.index.primary import ReplicaPeer, ReplicationTimings, Replicator
from contentembed.services.index.replication import Follower
from contentembed.services.index.store import CollectionStore

log = logging.getLogger(__name__)

PRIMARY, FOLLOWER = "primary", "follower"
BOOTSTRAP_REPLICA = "0"


@dataclass(frozen=True)
class LeaseTimings:
    duration_s: float = 3.0  # a primary that stops renewing is replaced after this long
    renew_every_s: float = 1.0


class ReplicaGroup:
    def __init__(
        self,
        store: CollectionStore,
        follower: Follower,
        lease: LeaseStore,
        peers: list[ReplicaPeer],
        lease_timings: LeaseTimings | None = None,
        timings: ReplicationTimings | None = None,
    ) -> None:
        self.store = store
        self.follower = follower
        self.replica_id = follower.replica_id
        self.lease = lease
        self.peers = peers
        self.lease_timings = lease_timings or LeaseTimings()
        self.timings = timings or ReplicationTimings()
        self.replicator: Replicator | None = None
        self.held: LeaseRecord | None = None
        self.failovers = 0  # times this replica became primary
        # Only the group's first replica starts a lease nobody held (see lease.take_over).
        self.may_bootstrap = self.replica_id == BOOTSTRAP_REPLICA
        self._superseded = False
        self._lease_lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="replica-lease", daemon=True)
        follower.leading = lambda: self.replicator is not None
        follower.on_newer_term = self._on_superseded

    @property
    def role(self) -> str:
        return PRIMARY if self.replicator is not None else FOLLOWER

    def start(self) -> None:
        self._tick()  # a lone replica (or the lease's holder before a restart) leads at once
        self._thread.start()

    def stop(self) -> None:
        """Stops acknowledging writes, then hands the lease on at once (expired) so a
        follower takes over without waiting it out: a rolling restart's primary."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.lease_timings.renew_every_s * 2 + self.timings.rpc_timeout_s)
        replicator, self.replicator = self.replicator, None
        if replicator is None:
            return
        replicator.stop()
        with self._lease_lock, contextlib.suppress(LeaseConflict, LeaseUnavailable):
            if self.held is not None:
                self.lease.swap(self.held, replace(self.held, renewed_at=0.0))
        log.info("primary stepped down at shutdown", extra={"term": replicator.term})

    # -- the lease loop ------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.lease_timings.renew_every_s):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("replica lease loop failed a round")

    def _tick(self) -> None:
        if self.replicator is None:
            self._try_lead()
            return
        why = None
        if self._superseded:
            why = "a replica has seen a newer term"
        else:
            with self._lease_lock:
                assert self.held is not None
                try:
                    self.held = renew(self.lease, self.held)
                except LeaseConflict:
                    why = "the lease was taken over"
                except LeaseUnavailable as error:
                    # Stop before the lease can expire: past it, another replica may lead.
                    if time.time() >= self.held.renewed_at + self.lease_timings.duration_s \
                            - self.lease_timings.renew_every_s:
                        why = f"the lease could not be renewed ({error})"
        if why is not None:
            self._step_down(why)

    def _try_lead(self) -> None:
        if time.monotonic() - self._started < self.lease_timings.duration_s and not self._first_in_line():
            # Just started: the replicas that kept running (and serving reads) get the
            # first chance at an expired lease. One that led from here would send them all
            # back to catching up at once, leaving the shard one readable replica.
            return
        try:
            record = take_over(self.lease, self.replica_id, self.lease_timings.duration_s,
                               seen_term=self.follower.term, may_bootstrap=self.may_bootstrap)
        except LeaseUnavailable:
            return
        if record is None:
            return
        self.follower.raise_term(record.term)  # durable first: the term is never reused
        assert self.store.logs is not None
        self.store.logs.term = record.term
        self.held = record
        self._superseded = False
        self.failovers += 1
        replicator = Replicator(self.store, self.replica_id, record.term, self.peers,
                                self._record_in_sync, self.timings, self._on_superseded)
        replicator.start()
        self.replicator = replicator
        log.warning("this replica is primary", extra={"term": record.term})

    def _first_in_line(self) -> bool:
        """Whether a replica that just started may lead at once: nobody ever held the
        lease, it is the whole in-sync set (nobody else could lead), or the last primary
        handed the lease over (stopped, or named a successor) and did not wait."""
        try:
            current = self.lease.read()
        except LeaseUnavailable:
            return False
        return ((not current.holder and not current.term)
                or current.in_sync == (self.replica_id,) or current.renewed_at == 0.0)

    def _record_in_sync(self, ids: tuple[str, ...]) -> None:
        with self._lease_lock:
            assert self.held is not None
            self.held = renew(self.lease, self.held, ids)

    def _on_superseded(self, term: int) -> None:
        self._superseded = True  # the lease loop steps down (not the link thread itself)

    def _step_down(self, why: str) -> None:
        replicator, self.replicator = self.replicator, None
        if replicator is not None:
            replicator.stop()
        self.follower.leave_sync()
        log.warning("this replica is no longer primary", extra={"why": why})

    def transfer(self, successor: str) -> int:
        """Hands the lease to ``successor`` (in the in-sync set): this replica stops
        acknowledging writes, and the lease, expired, names the successor alone as in
        sync, so only it may take it over. Returns the term it will lead under."""
        replicator = self.replicator
        if replicator is None:
            raise Unavailable(f"replica {self.replica_id} is not the primary", reason="NOT_PRIMARY",
                              retry_after_s=1.0)
        if successor == self.replica_id:
            return self.term
        if successor not in replicator.in_sync_ids():
            raise FailedPrecondition(
                f"replica {successor!r} is not in the in-sync set {list(replicator.in_sync_ids())}: "
                "it may lack acknowledged writes", reason="REPLICA_NOT_IN_SYNC")
        self.replicator = None
        replicator.stop()
        self.follower.leave_sync()
        with self._lease_lock:
            assert self.held is not None
            self.held = self.lease.swap(self.held, replace(self.held, renewed_at=0.0,
                                                             in_sync=(successor,)))
        log.warning("primary handed over", extra={"successor": successor, "term": self.held.term})
        return self.held.term + 1

    # -- what the edge asks ----------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        replicator = self.replicator
        if replicator is None:
            raise Unavailable(
                f"replica {self.replica_id} is not the primary of its shard"
                + (f" (replica {self.follower.primary_id} is)" if self.follower.primary_id else "")
                + "; writes go to the primary",
                reason="NOT_PRIMARY", retry_after_s=1.0,
            )
        with replicator.write():
            yield

    def require_readable(self) -> None:
        replicator = self.replicator
        if replicator is not None:
            if replicator.fenced is not None:
                raise Unavailable(f"this replica stopped being primary: {replicator.fenced}",
                                  reason="REPLICA_CATCHING_UP", retry_after_s=1.0)
            return
        self.follower.require_readable()

    @property
    def in_sync(self) -> bool:
        replicator = self.replicator
        return replicator.fenced is None if replicator is not None else self.follower.in_sync

    def in_sync_replicas(self) -> tuple[str, ...]:
        replicator = self.replicator
        return replicator.in_sync_ids() if replicator is not None else ()

    @property
    def term(self) -> int:
        return self.follower.term
