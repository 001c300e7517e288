"""Who is the primary of a shard's replica group: a lease, held by one replica at a time,
renewed while it lives, and taken over under a higher term once it has expired.

The lease record is also where the primary keeps its in-sync set: a replica is dropped
from it (durably, here) before a write is acknowledged without it, and only a replica in
it may take the lease over, so the new primary always holds every acknowledged write.
Every change is a compare-and-swap on the record's version: two replicas racing for an
expired lease cannot both win, and a primary that lost it learns so at its next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from contentembed.services.index.persistence import atomic_write


@dataclass(frozen=True)
class LeaseRecord:
    holder: str = ""  # replica id; "" before anyone held it
    term: int = 0
    in_sync: tuple[str, ...] = ()
    renewed_at: float = 0.0  # time.time() of the last renewal
    duration_s: float = 0.0
    version: str = ""  # the store's compare-and-swap token (a resourceVersion)
    # Annotations a backend keeps beside the record (none needed by the file lease).
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def expired(self, now: float) -> bool:
        return not self.holder or now >= self.renewed_at + self.duration_s


class LeaseConflict(Exception):
    """The record changed since it was read: someone else renewed, took or changed it."""


class LeaseUnavailable(Exception):
    """The lease store could not be reached; nothing is known about the record."""


class LeaseStore(Protocol):
    """One shard's lease record, read and replaced by compare-and-swap."""

    def read(self) -> LeaseRecord:
        """The current record (an empty one when none exists yet); LeaseUnavailable."""
        ...

    def swap(self, expected: LeaseRecord, new: LeaseRecord) -> LeaseRecord:
        """Replaces the record when it is still ``expected`` (by version), returning the
        stored one with its new version; LeaseConflict otherwise, LeaseUnavailable."""
        ...


class FileLease:
    """A lease record in a file on a disk every replica shares (``contentembed up`` and
    tests): swaps are serialized by an exclusive flock on a lock file beside it, and the
    version is a counter."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise LeaseUnavailable(f"{self._lock_path}: {error}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # releases the flock

    def _read_unlocked(self) -> LeaseRecord:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return LeaseRecord()
        except (OSError, ValueError) as error:
            raise LeaseUnavailable(f"{self.path}: {error}") from None
        return LeaseRecord(raw["holder"], int(raw["term"]), tuple(raw["in_sync"]),
                           float(raw["renewed_at"]), float(raw["duration_s"]), str(raw["version"]))

    def read(self) -> LeaseRecord:
        with self._locked():
            return self._read_unlocked()

    def swap(self, expected: LeaseRecord, new: LeaseRecord) -> LeaseRecord:
        with self._locked():
            current = self._read_unlocked()
            if current.version != expected.version:
                raise LeaseConflict(f"lease changed: version {current.version}, expected {expected.version}")
            stored = replace(new, version=str(int(current.version or 0) + 1))
            try:
                atomic_write(self.path, json.dumps({
                    "holder": stored.holder, "term": stored.term, "in_sync": list(stored.in_sync),
                    "renewed_at": stored.renewed_at, "duration_s": stored.duration_s,
                    "version": stored.version,
                }).encode())
            except OSError as error:
                raise LeaseUnavailable(f"{self.path}: {error}") from None
            return stored


def take_over(store: LeaseStore, replica_id: str, duration_s: float,
              now: float | None = None, *, seen_term: int | None = None,
              may_bootstrap: bool = True) -> LeaseRecord | None:
    """The lease under a higher term when ``replica_id`` may hold it; None otherwise.
    The new in-sync set is the new primary alone: the others rejoin once caught up.

    - A lease nobody ever held goes to a replica that ``may_bootstrap`` (the group's
      first, replica 0, which holds the data when a single shard gets replicas).
    - Otherwise the replica must have seen the lease's term (``seen_term``, from its own
      disk; None skips the check): a replica whose volume was lost, or that never
      followed the current primary, may lack acknowledged writes. Then it takes an
      expired lease when it is in the in-sync set. Its own lease it takes at once,
      expired or not, when it is the whole in-sync set: a restarted primary, whose earlier
      process (and term) is gone, and which no other replica could replace. With others in
      sync it waits like them: one of them has been serving reads all along, while a
      restarted primary taking over at once would send them all back to catching up."""
    now = time.time() if now is None else now
    current = store.read()
    if not current.holder and not current.term:
        if not may_bootstrap:
            return None
    else:
        if seen_term is not None and seen_term < current.term:
            return None
        if replica_id not in current.in_sync:
            return None
        alone = current.holder == replica_id and current.in_sync == (replica_id,)
        if not alone and not current.expired(now):
            return None
    try:
        return store.swap(current, LeaseRecord(replica_id, current.term + 1, (replica_id,),
                                               now, duration_s))
    except LeaseConflict:
        return None  # another replica won the race


def renew(store: LeaseStore, held: LeaseRecord, in_sync: tuple[str, ...] | None = None,
          now: float | None = None) -> LeaseRecord:
    """``held`` renewed (with a new in-sync set when given); LeaseConflict when it was
    lost meanwhile: the caller is no longer primary."""
    now = time.time() if now is None else now
    return store.swap(held, replace(held, renewed_at=now,
                                    in_sync=held.in_sync if in_sync is None else in_sync))
