"""What the replicas of a shard exchange, as plain values, and how a follower applies it
to its store. Pure index code: no grpc (replication_service.py is the edge).

A follower's store is made to match its primary's in three ways: the catalog (names,
aliases, versions and their specs) is sent whole and applied by difference; each
version's writes come as the log records the primary wrote, applied in seq order; and a
version the log can no longer bring up to date is replaced by a snapshot of the
primary's. The follower's term is durable (``replica.json``): a message of an older
term is refused (STALE_TERM), whatever happened in between.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contentembed.services.common.errors import FailedPrecondition, Unavailable
from contentembed.services.index.catalog import Alias, CandidateSpec
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.lexical import LexicalParams
from contentembed.services.index.persistence import (
    CorruptData,
    WalRecord,
    atomic_write,
    verify_manifest,
)
from contentembed.services.index.store import CollectionStore

log = logging.getLogger(__name__)

REPLICA_FILE = "replica.json"


@dataclass(frozen=True)
class VersionSpec:
    """One version as a replica holds it (``seq``/``term``: its last write)."""

    collection: str
    version: str
    space_id: str
    dim: int
    params: HnswParams
    lexical: LexicalParams | None
    pending: bool
    bundle_digest: str
    seq: int
    term: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return self.collection, self.version

    def same_content_kind(self, other: VersionSpec) -> bool:
        """Whether one can be brought to the other by log records alone: same space,
        shape and config, pending or not alike, and installed from the same bundle."""
        return (self.space_id, self.dim, self.params, self.lexical, self.pending, self.bundle_digest) == (
            other.space_id, other.dim, other.params, other.lexical, other.pending, other.bundle_digest)

    @classmethod
    def of(cls, collection: HnswCollection) -> VersionSpec:
        return cls(collection.name, collection.version, collection.space_id, collection.dim,
                   collection.params, collection.lexical_params, collection.pending,
                   collection.bundle_digest, collection.seq, collection.term)


@dataclass(frozen=True)
class AliasSpec:
    collection: str
    active: str
    previous: str | None
    candidate: CandidateSpec | None = None


@dataclass(frozen=True)
class CatalogState:
    """A replica's whole catalog. ``stamp`` orders catalogs: (term, counter)."""

    stamp: tuple[int, int]
    aliases: tuple[AliasSpec, ...]
    versions: tuple[VersionSpec, ...]

    def version_map(self) -> dict[tuple[str, str], VersionSpec]:
        return {v.key: v for v in self.versions}


def catalog_of(store: CollectionStore, stamp: tuple[int, int] = (0, 0)) -> CatalogState:
    """The store's catalog as it is now."""
    aliases, versions = [], []
    with store.catalog.lock:
        for name in store.catalog.names():
            alias = store.catalog.find(name)
            if alias is None:
                continue
            aliases.append(AliasSpec(name, alias.active, alias.previous, alias.candidate))
            versions.extend(VersionSpec.of(c) for c in alias.every_version().values())
    return CatalogState(stamp, tuple(aliases), tuple(versions))


def runs_by_version(
    records: list[tuple[str, str, WalRecord]],
) -> list[tuple[tuple[str, str], list[WalRecord]]]:
    """Consecutive records of one version grouped (in order), so each group is logged
    with one fsync; the order between versions is kept."""
    runs: list[tuple[tuple[str, str], list[WalRecord]]] = []
    for name, version, record in records:
        if runs and runs[-1][0] == (name, version):
            runs[-1][1].append(record)
        else:
            runs.append(((name, version), [record]))
    return runs


class StaleTerm(FailedPrecondition):
    def __init__(self, term: int, current: int) -> None:
        super().__init__(
            f"term {term} is older than this replica's term {current}: another primary has "
            "taken over since; nothing was applied",
            reason="STALE_TERM", metadata={"term": str(current)},
        )
        self.current = current


class ReplicaGap(FailedPrecondition):
    """A record that does not follow what the replica holds: it needs catching up."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="REPLICA_GAP")


@dataclass
class ReplicaStanding:
    """What a replica durably knows of its group."""

    term: int = 0
    catalog_stamp: tuple[int, int] = (0, 0)


class Follower:
    """Applies what a primary sends to this replica's store. Calls are serialized: one
    primary sends them in order, and a second one (of another term) must wait and then
    be checked against the term the first left behind."""

    def __init__(self, store: CollectionStore, replica_id: str, data_dir: Path | None,
                 in_sync_timeout_s: float) -> None:
        self.store = store
        self.replica_id = replica_id
        self._path = None if data_dir is None else data_dir / REPLICA_FILE
        self.standing = self._read()
        self.in_sync_timeout_s = in_sync_timeout_s
        self.primary_id = ""
        self._in_sync_until = 0.0  # time.monotonic(); in sync while the primary keeps saying so
        self._lock = threading.RLock()
        self.stale_term_refusals = 0
        # Set by the replica group: whether this replica leads now, and what to do when a
        # primary of a newer term reaches it meanwhile.
        self.leading: Callable[[], bool] = lambda: False
        self.on_newer_term: Callable[[int], None] = lambda term: None

    def _read(self) -> ReplicaStanding:
        if self._path is None or not self._path.exists():
            return ReplicaStanding()
        try:
            raw = json.loads(self._path.read_bytes())
            return ReplicaStanding(int(raw["term"]), tuple(raw["catalog_stamp"]))  # type: ignore[arg-type]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptData(f"{self._path}: unreadable ({error})") from None

    def _write(self) -> None:
        if self._path is not None:
            atomic_write(self._path, json.dumps({
                "term": self.standing.term, "catalog_stamp": list(self.standing.catalog_stamp),
            }).encode())

    @property
    def term(self) -> int:
        return self.standing.term

    def raise_term(self, term: int) -> None:
        """Records a term this replica has seen (its own, once it is primary)."""
        with self._lock:
            if term > self.standing.term:
                self.standing.term = term
                self._write()

    @property
    def in_sync(self) -> bool:
        return time.monotonic() < self._in_sync_until

    def leave_sync(self) -> None:
        self._in_sync_until = 0.0

    def _accept(self, term: int, primary_id: str) -> None:
        """Under the lock: refuses an older term, adopts a newer one (durably first)."""
        if term < self.standing.term:
            self.stale_term_refusals += 1
            raise StaleTerm(term, self.standing.term)
        if term == self.standing.term and self.leading():
            # One primary per term: a second one of the same term is a bug or a forgery.
            raise FailedPrecondition(
                f"replica {self.replica_id} is the primary of term {term}; it takes no "
                "replication of its own term", reason="REPLICA_IS_PRIMARY")
        if term > self.standing.term and self.leading():
            # Still primary here: it steps down first (its lease loop), then follows.
            self.on_newer_term(term)
            raise Unavailable(f"replica {self.replica_id} is stepping down as primary for "
                              f"term {term}", reason="NOT_READY", retry_after_s=0.5)
        if term > self.standing.term:
            self.standing.term = term
            self._write()
            self.leave_sync()  # a new primary decides afresh
        self.primary_id = primary_id

    def require_readable(self) -> None:
        if not self.in_sync:
            raise Unavailable(
                "this replica is catching up with its primary; ask another replica",
                reason="REPLICA_CATCHING_UP", retry_after_s=1.0,
            )

    # -- what the primary calls --------------------------------------------------------
    def state(self, term: int = 0) -> CatalogState:
        """What this replica holds; a primary asking (term > 0) must not be a replaced one."""
        if term and term < self.standing.term:
            self.stale_term_refusals += 1
            raise StaleTerm(term, self.standing.term)
        return catalog_of(self.store, self.standing.catalog_stamp)

    def sync_catalog(self, term: int, primary_id: str, catalog: CatalogState) -> CatalogState:
        """Makes the catalog match ``catalog`` where the log cannot: versions the primary
        lacks go, versions it holds that can start empty (live, pending) are created, and
        aliases follow once their versions are here. A version whose content must come
        as a snapshot (a bundle) is left for InstallSnapshot."""
        with self._lock:
            self._accept(term, primary_id)
            if catalog.stamp < self.standing.catalog_stamp:
                return self.state()  # an older catalog overtaken by a newer one
            wanted = catalog.version_map()
            here = {v.key: v for v in catalog_of(self.store).versions}
            names = {a.collection for a in catalog.aliases}
            for name in {key[0] for key in here} - names:
                self.store.delete(name)
                log.info("replica dropped a collection its primary lacks", extra={"collection": name})
            for key, spec in here.items():
                if key[0] in names and (key not in wanted or not spec.same_content_kind(wanted[key])):
                    self._drop_version(*key)
            for alias in catalog.aliases:
                specs = sorted((v for v in catalog.versions if v.collection == alias.collection),
                               key=lambda v: v.version != alias.active)  # the serving one first
                for spec in specs:
                    if self.store.catalog.find(alias.collection) is None and spec.version != alias.active:
                        break  # the collection comes with its serving version (a snapshot)
                    present = self.store.catalog.find(alias.collection)
                    held = None if present is None else present.every_version().get(spec.version)
                    if held is None and (spec.pending or not spec.bundle_digest):
                        self._create_empty(spec)
                self._set_alias(alias)
            self.standing.catalog_stamp = catalog.stamp
            self._write()
            return self.state()

    def replicate(self, term: int, primary_id: str, records: list[tuple[str, str, WalRecord]],
                  in_sync: bool) -> None:
        """Applies records, each durable here before this returns; ReplicaGap for a record
        of a version this replica lacks or one that skips a seq."""
        with self._lock:
            self._accept(term, primary_id)
            for (name, version), run in runs_by_version(records):
                alias = self.store.catalog.find(name)
                collection = None if alias is None else alias.every_version().get(version)
                if collection is None:
                    raise ReplicaGap(f"no version {version!r} of {name!r} here")
                journal = (self.store.logs.of(name, version).append_all_shipped
                           if self.store.logs is not None else (lambda records: None))
                try:
                    collection.apply_shipped(run, journal)
                except ValueError as error:
                    raise ReplicaGap(f"{name}/{version}: {error}") from None
            if in_sync:
                self._in_sync_until = time.monotonic() + self.in_sync_timeout_s
            else:
                self.leave_sync()

    def install_snapshot(self, term: int, primary_id: str, spec: VersionSpec,
                         directory: Path | None) -> int:
        """Replaces (or creates) a version with the primary's snapshot in ``directory``,
        verified; a pending version comes as no files and starts empty (its whole log
        follows). Returns the version's seq."""
        with self._lock:
            self._accept(term, primary_id)
            if spec.pending or directory is None:
                alias = self.store.catalog.find(spec.collection)
                if alias is None:
                    raise ReplicaGap(f"pending version {spec.version!r} of a collection not here")
                self._create_empty(spec)
                return 0
            alias = self.store.catalog.find(spec.collection)
            if alias is not None and spec.version == alias.active:
                self.leave_sync()  # its serving version is swapped: reads wait for the catalog
            manifest = verify_manifest(directory)
            collection = HnswCollection.from_snapshot(directory, manifest, spec.collection)
            collection.version = spec.version
            collection.bundle_digest = spec.bundle_digest
            collection.settle()
            self._add_version(collection)
            return collection.seq

    # -- changes to the store ----------------------------------------------------------
    def _drop_version(self, name: str, version: str) -> None:
        """Removes a version; with the last loaded one goes the collection."""
        store = self.store
        with store.catalog.lock:
            alias = store.catalog.find(name)
            if alias is None or (version not in alias.versions and version not in alias.pending):
                return
            others = [v for v in alias.versions if v != version]
            if not others:
                store.catalog.remove(name)
                if store.logs is not None:
                    store.logs.drop_collection(name)
                return
            with alias.gate.write():
                if alias.active == version and others:
                    alias.active = others[0]  # until the catalog says which serves
                if alias.previous == version:
                    alias.previous = None
                if alias.candidate is not None and alias.candidate.version == version:
                    alias.candidate = None
                # The alias first, as DeleteVersion: a crash never leaves one naming a
                # version whose files are gone (unless it is replaced at once).
                store.catalog.write(name, alias)
                alias.versions.pop(version, None)
                alias.pending.pop(version, None)
                if store.logs is not None:
                    store.logs.drop(name, version)

    def _create_empty(self, spec: VersionSpec) -> None:
        collection = HnswCollection(spec.collection, spec.space_id, spec.dim, spec.params,
                                    self.store.initial_capacity, version=spec.version,
                                    lexical=spec.lexical)
        if spec.pending:
            collection.tombstones = set()
        self._add_version(collection)

    def _add_version(self, collection: HnswCollection) -> None:
        """Adds a version (durably) to this replica, creating its collection if needed, or
        replaces the one it has of that name in one swap on disk."""
        store = self.store
        with store.catalog.lock:
            alias = store.catalog.find(collection.name)
            if alias is None:
                if store.logs is not None:
                    store.logs.create(collection, snapshot=collection.seq > 0)
                alias = Alias({}, collection.version)
                placed = alias.pending if collection.pending else alias.versions
                placed[collection.version] = collection
                store.catalog.add(collection.name, alias)
                return
            with alias.gate.write():
                if store.logs is not None:
                    store.logs.create(collection, snapshot=collection.seq > 0, replace=True)
                # In place first, then out of the other kind: a read between never finds
                # the version (its alias's serving one, perhaps) missing.
                target, other = ((alias.pending, alias.versions) if collection.pending
                                 else (alias.versions, alias.pending))
                target[collection.version] = collection
                other.pop(collection.version, None)

    def _set_alias(self, spec: AliasSpec) -> None:
        store = self.store
        with store.catalog.lock:
            alias = store.catalog.find(spec.collection)
            if alias is None or spec.active not in alias.versions:
                return  # its serving version is still to come (a snapshot)
            previous = spec.previous if spec.previous in alias.versions else None
            candidate = spec.candidate
            if candidate is not None and candidate.version not in alias.versions:
                candidate = None  # its version is still to come: the next catalog brings it
            if (alias.active, alias.previous, alias.candidate) != (spec.active, previous, candidate):
                store.catalog.write(spec.collection, alias, active=spec.active, previous=previous,
                                    candidate=candidate)
                alias.active, alias.previous, alias.candidate = spec.active, previous, candidate
