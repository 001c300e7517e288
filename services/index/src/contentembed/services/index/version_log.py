"""The ordered log of each collection version: its WAL segments (records and their seq),
the snapshots that truncate it, and the version's directory from creation to removal.

Every acknowledged write is in its version's WAL before it is applied; snapshots are
written in the background (``Durability.due``: by items and WAL bytes written since the
last one, and by time) and at shutdown; start-up loads the newest verified snapshot and
replays the WAL after it. persistence.py has the file formats and the directory layout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from contentembed.services.common.errors import NotFound, ResourceExhausted, Unavailable
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.dense import HnswParams
from contentembed.services.index.lexical import LexicalParams
from contentembed.services.index.persistence import (
    CorruptData,
    SyncPolicy,
    WalRecord,
    WalUnavailable,
    WriteAheadLog,
    atomic_write,
    fsync_dir,
    read_wal,
    read_wal_from,
    remove_tree,
    verify_manifest,
)

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
SNAPSHOT_RETRY_S = 10.0  # after a failed background snapshot
# A version directory moved aside while a replica swaps in its primary's copy.
REPLACED_PREFIX = ".replaced-"
# In a version directory opened by BeginVersion: the version waits for its bundle. A
# snapshot (CURRENT) whose manifest carries a bundle digest overrides it (installed).
PENDING_MARKER = "PENDING"


@dataclass(frozen=True)
class Durability:
    """Where collections are kept, how the WAL syncs, and when a snapshot is due.

    Recovery after a crash loads the newest snapshot and replays the WAL after it, and
    replay costs about what the writes did (0.4-1 ms per 384-d item into HNSW on two
    cores): the snapshot cadence is what bounds it. A snapshot is due once the writes
    since the last one hold ``snapshot_every_items`` items (or ``snapshot_share`` of the
    collection, when that is more: a snapshot of a large collection costs seconds of
    writes held back), ``snapshot_wal_bytes`` of log, ``snapshot_every_ops`` write
    requests, or are older than ``snapshot_interval_s``."""

    data_dir: Path
    wal_sync: SyncPolicy = "always"
    wal_sync_interval_s: float = 0.05
    snapshot_every_ops: int = 50_000
    snapshot_every_items: int = 10_000
    snapshot_share: float = 0.05
    snapshot_wal_bytes: int = 256 << 20
    snapshot_interval_s: float = 600.0

    def due(self, version_log: VersionLog, item_count: int, now: float) -> bool:
        """Whether the writes since the last snapshot of ``version_log`` make one due."""
        written = version_log.since_snapshot
        if not written.records:
            return False
        return (
            written.items >= max(self.snapshot_every_items, self.snapshot_share * item_count)
            or written.bytes >= self.snapshot_wal_bytes
            or written.records >= self.snapshot_every_ops
            or now - written.started >= self.snapshot_interval_s
        )


@dataclass
class WrittenSince:
    """What the WAL took since the last snapshot (or since start-up: the replayed tail)."""

    records: int = 0
    items: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)  # of the first of them

    def add(self, record: WalRecord, size: int) -> None:
        if not self.records:
            self.started = time.monotonic()
        self.records += 1
        self.items += len(record.ids)
        self.bytes += size


class LogTruncated(Exception):
    """The records asked for were folded into a snapshot and dropped from the log: a
    replica that needs them copies the snapshot first, then reads the log after it."""

    def __init__(self, snapshot_seq: int) -> None:
        super().__init__(f"the log starts after seq {snapshot_seq} (a snapshot holds the rest)")
        self.snapshot_seq = snapshot_seq


class VersionLog:
    """The on-disk side of one collection version: its WAL segments and snapshots."""

    def __init__(self, directory: Path, durability: Durability,
                 term: Callable[[], int] = lambda: 0) -> None:
        self.directory = directory
        self.durability = durability
        self._term = term  # the term new writes are stamped with
        self.snapshot_seq = 0
        self._wal: WriteAheadLog | None = None
        self._lock = threading.Lock()
        # Held for a whole snapshot and by close(): a collection deleted meanwhile waits for
        # the snapshot to finish, and a closed one is never snapshotted (or recreated) again.
        self._snapshot_lock = threading.Lock()
        self.closed = False
        self.retry_snapshot_at = 0.0  # time.monotonic() before which a failed one waits
        self.since_snapshot = WrittenSince()
        self.recovery_s: dict[str, float] = {}  # how long recover() took, by part
        # The last record appended (as durable as the sync policy makes it): a replica is
        # never sent a record past it, so it never holds a write the log could still lose.
        self.durable_seq = 0
        # Where the last read for a replica stopped (segment, byte offset, seq): the next
        # one resumes there instead of decoding the segment from its start again.
        self._read_cursor: tuple[Path, int, int] | None = None

    @property
    def wal_dir(self) -> Path:
        return self.directory / "wal"

    @property
    def snapshots_dir(self) -> Path:
        return self.directory / "snapshots"

    def segments(self) -> list[Path]:
        return sorted(self.wal_dir.glob("*.log"), key=lambda p: int(p.stem))

    def open_segment(self, first_seq: int) -> None:
        with self._lock:
            if self.closed:
                return
            if self._wal is not None:
                self._wal.close()
            self._wal = WriteAheadLog(
                self.wal_dir / f"{first_seq:020d}.log",
                self.durability.wal_sync,
                self.durability.wal_sync_interval_s,
            )

    def append(self, record: WalRecord) -> WalRecord:
        """Logs a new write under the current term; returns it as logged."""
        term = self._term()
        if term != record.term:
            record = replace(record, term=term)
        self.append_all_shipped([record])
        return record

    def append_all_shipped(self, records: list[WalRecord]) -> None:
        """Logs writes as another replica logged them, in one write and one fsync."""
        if not records:
            return
        with self._lock:
            if self._wal is None:
                raise NotFound(f"collection in {self.directory} was deleted", reason="COLLECTION_NOT_FOUND")
            try:
                size = self._wal.append_all(records)
                for position, record in enumerate(records):
                    self.since_snapshot.add(record, size if position == 0 else 0)
                self.durable_seq = records[-1].seq
            except (OSError, WalUnavailable) as error:
                # Logged here: the interceptor leaves RESOURCE_EXHAUSTED (shed load) unlogged.
                log.error("write-ahead log append failed", extra={"dir": str(self.directory),
                                                                  "error": str(error)})
                if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
                    # The canonical code for a full file system; no retry delay, since
                    # only an operator frees space. The log is intact: writes resume then.
                    raise ResourceExhausted(
                        f"disk full, nothing was written: {error}", reason="DISK_FULL"
                    ) from None
                raise Unavailable(
                    f"write-ahead log failed, nothing was written: {error}", reason="WAL_FAILED"
                ) from None

    def sync_if_due(self) -> None:
        with self._lock:
            if self._wal is not None:
                self._wal.sync_if_due()

    def records_after(self, seq: int, max_bytes: int = 8 << 20,
                      max_records: int = 100_000) -> list[WalRecord]:
        """The logged records after ``seq``, in order, up to about ``max_bytes`` of vectors
        or ``max_records`` records (at least one record): a replica's catch-up by delta,
        read from the segments on disk. LogTruncated when the log no longer starts at or
        before seq + 1."""
        with self._lock:
            segments, durable = self.segments(), self.durable_seq
        if seq >= durable:
            return []
        starts = [int(segment.stem) for segment in segments]
        if not starts or starts[0] > seq + 1:
            raise LogTruncated(self.snapshot_seq)
        records: list[WalRecord] = []
        size = 0
        cursor = self._read_cursor
        for number, segment in enumerate(segments):
            if number + 1 < len(segments) and starts[number + 1] <= seq + 1:
                continue  # every record in it is at or before seq
            start = cursor[1] if cursor is not None and cursor[0] == segment and cursor[2] == seq else 0
            try:
                for record, end in read_wal_from(segment, start,
                                                 last_segment=number == len(segments) - 1,
                                                 cut_torn_tail=False):
                    if record.seq <= seq:
                        continue
                    if record.seq > durable:
                        return records
                    records.append(record)
                    self._read_cursor = (segment, end, record.seq)
                    size += 0 if record.vectors is None else record.vectors.nbytes
                    if size >= max_bytes or len(records) >= max_records:
                        return records
            except FileNotFoundError:
                raise LogTruncated(self.snapshot_seq) from None  # a snapshot dropped it meanwhile
        return records

    def recover(self, collection: HnswCollection) -> HnswCollection:
        """Newest verified snapshot (if any), then every WAL record after it."""
        current = self.directory / "CURRENT"
        started = time.monotonic()
        if current.exists():
            seq = int(current.read_text().strip())
            snapshot = self.snapshots_dir / str(seq)
            manifest = verify_manifest(snapshot)
            collection = HnswCollection.from_snapshot(snapshot, manifest, collection.name)
            self.snapshot_seq = seq
        self.recovery_s = {"snapshot_s": time.monotonic() - started}
        started = time.monotonic()
        segments = self.segments()
        for number, segment in enumerate(segments):
            for record in read_wal(segment, last_segment=number == len(segments) - 1):
                if record.seq <= collection.seq:
                    continue  # already in the snapshot
                # Counted as written since the snapshot: a long tail makes the next one due.
                self.since_snapshot.add(record, 0)
                if record.seq != collection.seq + 1:
                    raise CorruptData(
                        f"{segment}: record {record.seq} follows {collection.seq}: writes missing"
                    )
                try:
                    collection.replay(record)
                except Exception as error:  # noqa: BLE001 - hnswlib raises bare RuntimeErrors
                    raise CorruptData(f"{segment}: record {record.seq} does not apply: {error}") from None
        self.recovery_s["replay_s"] = time.monotonic() - started
        self.durable_seq = collection.seq
        self.open_segment(collection.seq + 1)
        return collection

    def snapshot(self, collection: HnswCollection) -> None:
        """Rotate the WAL, snapshot, point CURRENT at it, drop what it made redundant."""
        with self._snapshot_lock:
            if not self.closed:
                self._snapshot_locked(collection)

    def _snapshot_locked(self, collection: HnswCollection) -> None:
        rotated_at = collection.seq + 1
        self.open_segment(rotated_at)
        written, self.since_snapshot = self.since_snapshot, WrittenSince()
        self.snapshots_dir.mkdir(exist_ok=True)
        staging = self.snapshots_dir / f".staging-{rotated_at}"
        remove_tree(staging)
        try:
            manifest = collection.write_snapshot(staging)
        except BaseException:
            # A failed snapshot (a full disk) must not keep its partial files: they hold
            # the space a retry needs, and the staging name changes with every attempt.
            with contextlib.suppress(OSError):
                remove_tree(staging)
            # Still to be snapshotted: what was written before, and since.
            written.records += self.since_snapshot.records
            written.items += self.since_snapshot.items
            written.bytes += self.since_snapshot.bytes
            self.since_snapshot = written
            raise
        final = self.snapshots_dir / str(manifest["seq"])
        remove_tree(final)
        staging.rename(final)
        fsync_dir(self.snapshots_dir)
        atomic_write(self.directory / "CURRENT", str(manifest["seq"]).encode())
        self.snapshot_seq = manifest["seq"]
        # Everything else goes, staging directories too: under the snapshot lock none is
        # being written, so any is what a process killed mid-snapshot left (a crash loop
        # of 29 kills left four partial snapshots behind before this).
        for old in self.snapshots_dir.iterdir():
            if old != final:
                remove_tree(old)
        for segment in self.segments():
            if int(segment.stem) < rotated_at:
                segment.unlink()
        fsync_dir(self.wal_dir)

    def close(self) -> None:
        with self._snapshot_lock, self._lock:
            self.closed = True
            if self._wal is not None:
                self._wal.close()
                self._wal = None


# The loaded version (never a pending one) of a collection, or None once it is gone.
LoadedVersion = Callable[[str, str], HnswCollection | None]


class VersionLogs:
    """The logs of every collection version of a shard, by (collection, version): a
    version's directory made in one rename, recovered at start-up, snapshotted in the
    background, and removed with the version."""

    def __init__(self, durability: Durability, initial_capacity: int, loaded: LoadedVersion) -> None:
        self.durability = durability
        self.initial_capacity = initial_capacity
        self._loaded = loaded
        self._logs: dict[tuple[str, str], VersionLog] = {}
        # The term of this replica's writes: 0 without replicas; the primary's term.
        self.term = 0
        # Told of every new write once it is logged (the primary's replication), in seq
        # order per version, under the version's write lock.
        self.on_logged: Callable[[str, str, WalRecord], None] | None = None
        self._stop = threading.Event()
        self._snapshotter: threading.Thread | None = None

    @property
    def collections_dir(self) -> Path:
        return self.durability.data_dir / "collections"

    def name_dir(self, name: str) -> Path:
        return self.collections_dir / name

    def version_dir(self, name: str, version: str) -> Path:
        return self.name_dir(name) / "versions" / version

    def _current_term(self) -> int:
        return self.term

    def _journal(self, name: str, version: str, version_log: VersionLog) -> Callable[[WalRecord], WalRecord]:
        def journal(record: WalRecord) -> WalRecord:
            logged = version_log.append(record)
            if self.on_logged is not None:
                self.on_logged(name, version, logged)
            return logged
        return journal

    def of(self, name: str, version: str) -> VersionLog:
        return self._logs[(name, version)]

    def create(self, collection: HnswCollection, snapshot: bool = False,
               replace: bool = False) -> None:
        """Creates the version's directory in one rename: spec, then a first snapshot (a
        bundle, whose manifest gets the bundle digest) or the pending marker; from then on
        the collection journals into it. ``replace``: the version's directory exists and
        is swapped for the new one (a replica given its primary's copy): moved aside, the
        new one renamed in, the old one removed; a crash in between finds it moved aside
        and puts it back (``restore_replaced``)."""
        directory = self.version_dir(collection.name, collection.version)
        staging = directory.with_name(f".staging-{collection.version}")
        remove_tree(staging)
        staging.mkdir(parents=True)
        spec = {
            "name": collection.name, "space_id": collection.space_id, "dim": collection.dim,
            "hnsw": {"m": collection.params.m, "ef_construction": collection.params.ef_construction,
                     "ef_search": collection.params.ef_search},
        }
        if collection.lexical_params is not None:  # absent: dense only (as before lexical)
            spec["lexical"] = collection.lexical_params.to_json()
        atomic_write(staging / "collection.json", json.dumps(spec).encode())
        if snapshot:
            collection.write_snapshot(staging / "snapshots" / str(collection.seq))
            fsync_dir(staging / "snapshots")
            atomic_write(staging / "CURRENT", str(collection.seq).encode())
        if collection.pending:
            atomic_write(staging / PENDING_MARKER, b"")
        aside = directory.with_name(f"{REPLACED_PREFIX}{collection.version}")
        if replace and directory.exists():
            old = self._logs.pop((collection.name, collection.version), None)
            if old is not None:
                old.close()
            remove_tree(aside)
            directory.rename(aside)
        staging.rename(directory)
        fsync_dir(directory.parent)
        remove_tree(aside)
        version_log = VersionLog(directory, self.durability, self._current_term)
        version_log.snapshot_seq = version_log.durable_seq = collection.seq
        version_log.open_segment(collection.seq + 1)
        collection.journal = self._journal(collection.name, collection.version, version_log)
        self._logs[(collection.name, collection.version)] = version_log

    @staticmethod
    def restore_replaced(versions_dir: Path) -> None:
        """Puts back a version a crash left moved aside mid-replacement (its new copy never
        took its place), and removes one whose replacement did."""
        for aside in versions_dir.glob(f"{REPLACED_PREFIX}*"):
            target = aside.with_name(aside.name.removeprefix(REPLACED_PREFIX))
            if target.exists():
                remove_tree(aside)
            else:
                aside.rename(target)
                fsync_dir(versions_dir)

    def recover(self, name: str, directory: Path) -> HnswCollection:
        """A version as its directory holds it; CorruptData for anything that does not
        verify (the shard must not serve with data missing)."""
        try:
            spec = json.loads((directory / "collection.json").read_bytes())
            version_log = VersionLog(directory, self.durability, self._current_term)
            lexical = LexicalParams.from_json(spec.get("lexical"))  # absent: dense only
            empty = HnswCollection(name, spec["space_id"], spec["dim"], HnswParams(**spec["hnsw"]),
                                   self.initial_capacity, version=directory.name, lexical=lexical)
            marker = directory / PENDING_MARKER
            installed = (directory / "CURRENT").exists()
            if marker.exists() and not installed:
                # Pending: everything is in its WAL. An install that crashed before CURRENT
                # may have left a rotated (empty) segment and a partial snapshot: neither
                # holds a write, and an empty segment after the live one would make a torn
                # tail in the live one look like damage in an older segment.
                empty.tombstones = set()
                remove_tree(directory / "snapshots")
                for segment in version_log.segments():
                    if segment.stat().st_size == 0:
                        segment.unlink()
            collection = version_log.recover(empty)
            collection.settle()
            if collection.lexical_params != lexical:
                # The snapshot's manifest says how its texts are indexed; a version never
                # changes that (bundles of another config are refused), so a difference is
                # damage, not something to pick a side of.
                raise CorruptData(
                    f"the snapshot's lexical config {collection.lexical_params} differs from "
                    f"collection.json's {lexical}"
                )
            if marker.exists() and installed:
                # Crashed between CURRENT and removing the marker: the snapshot is the
                # installed bundle (with the pending writes applied) if it says so.
                if not collection.bundle_digest:
                    raise CorruptData("a pending version has a snapshot without a bundle digest")
                marker.unlink()
                fsync_dir(directory)
            # A bundle's manifest names the version it was built as; it serves under the
            # name it was loaded with.
            collection.version = directory.name
        except (CorruptData, OSError, ValueError, KeyError) as error:
            log.error("refusing to load a collection", extra={"dir": str(directory), "error": str(error)})
            raise CorruptData(f"collection in {directory} failed verification: {error}") from error
        collection.journal = self._journal(name, directory.name, version_log)
        self._logs[(name, directory.name)] = version_log
        log.info("collection recovered", extra={
            "collection": name, "version": directory.name, "items": collection.item_count,
            "seq": collection.seq, "replayed_records": version_log.since_snapshot.records,
            "replayed_items": version_log.since_snapshot.items,
            **{part: round(seconds, 2) for part, seconds in version_log.recovery_s.items()},
        })
        return collection

    def install(self, bundle: HnswCollection) -> None:
        """Makes ``bundle`` (a pending version with its bundle absorbed) the version's
        content on disk: a snapshot with a seq above every record of the pending WAL and
        the bundle digest in its manifest, then CURRENT, then the marker goes. A crash
        before CURRENT recovers the pending version from its WAL (a retried publish
        installs again); after it, the snapshot."""
        version_log = self.of(bundle.name, bundle.version)
        bundle.term = self.term  # the install is a write of this term
        version_log.snapshot(bundle)
        (version_log.directory / PENDING_MARKER).unlink(missing_ok=True)
        fsync_dir(version_log.directory)
        bundle.journal = self._journal(bundle.name, bundle.version, version_log)

    def drop(self, name: str, version: str) -> None:
        """Closes the version's log and removes its directory."""
        version_log = self._logs.pop((name, version), None)
        if version_log is not None:
            version_log.close()
        remove_tree(self.version_dir(name, version))

    def drop_collection(self, name: str) -> None:
        """Closes the logs of every version of ``name`` and removes its directory."""
        for key in [k for k in self._logs if k[0] == name]:
            self._logs.pop(key).close()
        remove_tree(self.name_dir(name))

    def start_snapshots(self) -> None:
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="snapshots", daemon=True)
        self._snapshotter.start()

    def _snapshot_loop(self) -> None:
        period = min(1.0, self.durability.wal_sync_interval_s)
        while not self._stop.wait(period):
            for version_log in list(self._logs.values()):
                version_log.sync_if_due()
            self.snapshot_due()

    def snapshot_due(self, force: bool = False) -> int:
        """Snapshots loaded versions whose writes since their last one make one due
        (``Durability.due``), or every one with writes when ``force``; returns how many
        were written. A pending version is never snapshotted: its WAL is all it has until
        its bundle is installed."""
        written = 0
        for (name, version), version_log in list(self._logs.items()):
            collection = self._loaded(name, version)
            if collection is None:
                continue
            pending = collection.seq - version_log.snapshot_seq
            now = time.monotonic()
            due = self.durability.due(version_log, collection.item_count, now)
            if pending > 0 and (force or (due and now >= version_log.retry_snapshot_at)):
                try:
                    version_log.snapshot(collection)
                    written += 1
                except OSError as error:
                    # The WAL still holds every write: a failed snapshot loses nothing. It
                    # is not retried at once: every try rotates the WAL and rewrites the
                    # whole index (on a full disk: 115 tries and 84 WAL segments in 7 s).
                    version_log.retry_snapshot_at = time.monotonic() + SNAPSHOT_RETRY_S
                    log.error("snapshot failed", extra={"collection": name, "error": str(error)})
        return written

    def close(self) -> None:
        """Stops the background snapshots, snapshots what is left and closes every log."""
        self._stop.set()
        if self._snapshotter is not None:
            self._snapshotter.join(timeout=30)
        self.snapshot_due(force=True)
        for version_log in self._logs.values():
            version_log.close()
