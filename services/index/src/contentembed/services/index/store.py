"""The collections of one shard, in memory or durable on disk. Pure index code: no grpc.

Durable mode (a data directory): every acknowledged write is in the collection's WAL
before it is applied; snapshots are written in the background (``Durability.due``: by
items and WAL bytes written since the last one, and by time) and at shutdown; start-up
loads the newest verified snapshot and replays the WAL after it. See persistence.py for
the file layout.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contentembed.services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.rwlock import ReadWriteLock
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import shown, validate_collection_name
from contentembed.services.index.collection import (
    LIVE_VERSION,
    HnswCollection,
    HnswParams,
    check_hnsw_params,
)
from contentembed.services.index.lexical import LexicalParams, check_texts
from contentembed.services.index.persistence import (
    SNAPSHOT_FILES,
    CorruptData,
    SyncPolicy,
    WalRecord,
    WalUnavailable,
    WriteAheadLog,
    atomic_write,
    fsync_dir,
    read_wal,
    remove_tree,
    verify_manifest,
)

log = logging.getLogger(__name__)

# The largest embedding models in use have 3,072 or 4,096 dimensions. Each dimension costs
# every item 4 bytes and every comparison a multiply-add; at 65,536 a 16 MiB Upsert carried
# 64 vectors.
MAX_DIM = 4096
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
SNAPSHOT_RETRY_S = 10.0  # after a failed background snapshot


@dataclass(frozen=True)
class ShardPosition:
    index: int
    count: int

    def check_owns(self, ids: list[str], *, what: str) -> None:
        """Ids are routed by a stable hash; an id that lands here by mistake would be
        invisible to the shard that should hold it, so it is refused."""
        for position, item_id in enumerate(ids):
            owner = shard_for_id(item_id, self.count)
            if owner != self.index:
                raise FailedPrecondition(
                    f"{what}[{position}]: id {shown(item_id)} belongs to shard {owner}, "
                    f"this is shard {self.index} of {self.count}",
                    reason="WRONG_SHARD",
                )


SHARD_FILE = "shard.json"


def claim_data_dir(data_dir: Path, shard: ShardPosition) -> None:
    """Records which shard of how many a data directory belongs to, and refuses to load it
    as another. Ids are routed by hash modulo the shard count: under another count most of
    its items belong elsewhere, and serving them would answer with duplicates (an upsert
    lands on the new owner, the old copy stays) and deletes that miss. A directory written
    before this file existed is claimed as it is found."""
    path = data_dir / SHARD_FILE
    if path.exists():
        try:
            recorded = json.loads(path.read_bytes())
            found = ShardPosition(int(recorded["index"]), int(recorded["count"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptData(f"{path}: unreadable ({error})") from None
        if found != shard:
            raise CorruptData(
                f"{data_dir} holds shard {found.index} of {found.count}; this process is "
                f"shard {shard.index} of {shard.count}. Ids hash to other shards under another "
                f"count: give it a new data directory and fill it (build --shards "
                f"{shard.count} + publish, or re-ingest), or start it as shard {found.index} "
                f"of {found.count}"
            )
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"index": shard.index, "count": shard.count}).encode())


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

    def due(self, files: CollectionFiles, item_count: int, now: float) -> bool:
        """Whether the writes since the last snapshot of ``files`` make one due."""
        written = files.since_snapshot
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


class CollectionFiles:
    """The on-disk side of one collection: its WAL segments and snapshots."""

    def __init__(self, directory: Path, durability: Durability) -> None:
        self.directory = directory
        self.durability = durability
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

    def append(self, record: WalRecord) -> None:
        with self._lock:
            if self._wal is None:
                raise NotFound(f"collection in {self.directory} was deleted", reason="COLLECTION_NOT_FOUND")
            try:
                self.since_snapshot.add(record, self._wal.append(record))
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


VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# In a version directory opened by BeginVersion: the version waits for its bundle. A
# snapshot (CURRENT) whose manifest carries a bundle digest overrides it (installed).
PENDING_MARKER = "PENDING"


def check_version_name(version: str) -> None:
    if not VERSION_NAME.match(version) or version == LIVE_VERSION:
        raise InvalidArgument(
            f"version {shown(version)} must be 1-64 characters of [A-Za-z0-9._-] and not "
            f"{LIVE_VERSION!r}",
            reason="BAD_VERSION",
        )


@dataclass
class Alias:
    """A collection name: its loaded versions, which one serves, and the pending ones."""

    versions: dict[str, HnswCollection]
    active: str
    previous: str | None = None
    # Opened by BeginVersion, waiting for their bundle: they take writes, serve nothing.
    pending: dict[str, HnswCollection] = field(default_factory=dict)
    # Writes hold it shared while they pick their target versions and write them; a change
    # of the version set (load, begin, install, drop) holds it alone, so no write lands on
    # a version being replaced, or misses one being added, or checks a stale fingerprint.
    gate: ReadWriteLock = field(default_factory=ReadWriteLock, repr=False, compare=False)

    @property
    def serving(self) -> HnswCollection:
        return self.versions[self.active]

    def every_version(self) -> dict[str, HnswCollection]:
        """Loaded and pending versions, the serving one first."""
        others = {**self.versions, **self.pending}
        return {self.active: others.pop(self.active), **dict(sorted(others.items()))}

    @property
    def fingerprint(self) -> str:
        """Changes whenever a version is loaded, opened, installed or dropped."""
        state = sorted(
            [version, c.space_id, "pending" if c.pending else "loaded"]
            for version, c in self.every_version().items()
        )
        return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_MANIFEST_BYTES = 1 << 20
MAX_CHUNK_BYTES = 4 << 20
UPLOAD_INFO = "upload.json"  # in a staged upload: collection, version, digest


def upload_id_for(name: str, version: str, digest: str) -> str:
    """The same part (manifest digest) for the same collection and version: the same id,
    whether it is staged or already installed."""
    return hashlib.sha256(f"{name}\n{version}\n{digest}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 16 << 30  # the sum of the sizes a manifest may declare
    ttl_s: float = 3600.0  # staged uploads older than this are swept by the next upload


@dataclass(frozen=True)
class StagedUpload:
    upload_id: str
    item_count: int
    space_id: str
    digest: str


class Upload:
    """One UploadBundle stream being received into a private staging directory. Chunks of
    a file arrive in order (files may interleave) and never past the declared size."""

    def __init__(self, name: str, version: str, manifest_bytes: bytes, sizes: dict[str, int],
                 staging: Path) -> None:
        self.name = name
        self.version = version
        self.manifest_bytes = manifest_bytes
        self.digest = hashlib.sha256(manifest_bytes).hexdigest()
        self.upload_id = upload_id_for(name, version, self.digest)
        self.sizes = sizes
        self.received = dict.fromkeys(sizes, 0)
        self.staging = staging
        self._handles = {name: (staging / name).open("wb") for name in sizes}

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.close_files()
        if error is not None:  # refused, cancelled, failed: nothing of it stays
            with contextlib.suppress(OSError):
                remove_tree(self.staging)

    def write(self, file: str, offset: int, data: bytes) -> None:
        if file not in self.sizes:
            raise InvalidArgument(
                f"chunk for {shown(file)}, which the manifest does not list ({sorted(self.sizes)})",
                reason="UNKNOWN_FILE",
            )
        if len(data) > MAX_CHUNK_BYTES:
            raise InvalidArgument(
                f"chunk of {file}: {len(data)} bytes, at most {MAX_CHUNK_BYTES}", reason="CHUNK_TOO_LARGE"
            )
        if offset != self.received[file]:
            raise InvalidArgument(
                f"chunk of {file} at offset {offset}; {self.received[file]} bytes were received, "
                "chunks of a file must come in order",
                reason="CHUNK_OUT_OF_ORDER",
            )
        if offset + len(data) > self.sizes[file]:
            raise InvalidArgument(
                f"chunk of {file} ends at {offset + len(data)}, the manifest says {self.sizes[file]} bytes",
                reason="CHUNK_BEYOND_SIZE",
            )
        self._handles[file].write(data)
        self.received[file] += len(data)

    def incomplete(self) -> list[str]:
        return [f"{f} ({self.received[f]} of {size} bytes)"
                for f, size in self.sizes.items() if self.received[f] != size]

    def close_files(self) -> None:
        for handle in self._handles.values():
            if not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()


class CollectionStore:
    """Collections by name; each name has versions (LIVE_VERSION, bundles) and an alias."""

    def __init__(
        self,
        default_params: HnswParams,
        initial_capacity: int = 1024,
        durability: Durability | None = None,
        bundle_root: Path | None = None,
        metadata_limits: MetadataLimits | None = None,
        upload_limits: UploadLimits | None = None,
        max_collections: int | None = None,
    ) -> None:
        self.default_params = default_params
        self.max_collections = max_collections
        self.upload_limits = upload_limits or UploadLimits()
        self._temp_uploads: Path | None = None  # in memory: staged uploads live here
        # Bundles are an ingest path too: their metadata gets the bounds of Upsert's.
        self.metadata_limits = metadata_limits or MetadataLimits()
        self.initial_capacity = initial_capacity
        self.durability = durability
        self.bundle_root = bundle_root
        self._aliases: dict[str, Alias] = {}
        self._files: dict[tuple[str, str], CollectionFiles] = {}
        self._lock = threading.Lock()
        self._loaded = durability is None  # in memory there is nothing to recover
        self._stop = threading.Event()
        self._snapshotter: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def _name_dir(self, name: str) -> Path:
        assert self.durability is not None
        return self.durability.data_dir / "collections" / name

    def _version_dir(self, name: str, version: str) -> Path:
        return self._name_dir(name) / "versions" / version

    def load(self) -> None:
        """Recovers every collection version on disk. Any corrupt file aborts the load: a
        shard that would serve with data missing must not turn SERVING.

        Holds the store's lock throughout: the runtime already refuses calls until this
        returns, and the lock makes the store itself safe against a create, bundle load or
        delete that reached it anyway (it waits, then sees every recovered collection)."""
        if self.durability is None:
            return
        root = self.durability.data_dir / "collections"
        root.mkdir(parents=True, exist_ok=True)
        # A staged upload was never installed; its stream (and its id) died with the process.
        shutil.rmtree(self.durability.data_dir / "uploads", ignore_errors=True)
        with self._lock:
            for name_dir in sorted(
                p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                alias_file = name_dir / "alias.json"
                if not alias_file.exists():
                    # The alias is written last, before the create is acknowledged: without
                    # it the collection never existed for any client.
                    log.warning("removing an unacknowledged collection", extra={"dir": str(name_dir)})
                    remove_tree(name_dir)
                    continue
                versions: dict[str, HnswCollection] = {}
                pending: dict[str, HnswCollection] = {}
                for version_dir in sorted((name_dir / "versions").iterdir()):
                    if version_dir.name.startswith("."):
                        continue
                    collection = self._recover(name_dir.name, version_dir)
                    (pending if collection.pending else versions)[version_dir.name] = collection
                state = json.loads(alias_file.read_bytes())
                self._aliases[name_dir.name] = Alias(
                    versions, state["active"], state.get("previous"), pending
                )
            self._loaded = True
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="snapshots", daemon=True)
        self._snapshotter.start()

    def _recover(self, name: str, directory: Path) -> HnswCollection:
        assert self.durability is not None
        try:
            spec = json.loads((directory / "collection.json").read_bytes())
            files = CollectionFiles(directory, self.durability)
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
                for segment in files.segments():
                    if segment.stat().st_size == 0:
                        segment.unlink()
            collection = files.recover(empty)
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
        collection.journal = files.append
        self._files[(name, directory.name)] = files
        log.info("collection recovered", extra={
            "collection": name, "version": directory.name, "items": collection.item_count,
            "seq": collection.seq, "replayed_records": files.since_snapshot.records,
            "replayed_items": files.since_snapshot.items,
            **{name: round(seconds, 2) for name, seconds in files.recovery_s.items()},
        })
        return collection

    def _snapshot_loop(self) -> None:
        assert self.durability is not None
        period = min(1.0, self.durability.wal_sync_interval_s)
        while not self._stop.wait(period):
            for files in list(self._files.values()):
                files.sync_if_due()
            self.snapshot_due()

    def snapshot_due(self, force: bool = False) -> int:
        """Snapshots versions whose writes since their last one make one due
        (``Durability.due``), or every version with writes when ``force``; returns how
        many were written."""
        assert self.durability is not None
        written = 0
        for (name, version), files in list(self._files.items()):
            alias = self._aliases.get(name)
            collection = alias.versions.get(version) if alias else None
            if collection is None:
                continue
            pending = collection.seq - files.snapshot_seq
            now = time.monotonic()
            due = self.durability.due(files, collection.item_count, now)
            if pending > 0 and (force or (due and now >= files.retry_snapshot_at)):
                try:
                    files.snapshot(collection)
                    written += 1
                except OSError as error:
                    # The WAL still holds every write: a failed snapshot loses nothing. It
                    # is not retried at once: every try rotates the WAL and rewrites the
                    # whole index (on a full disk: 115 tries and 84 WAL segments in 7 s).
                    files.retry_snapshot_at = time.monotonic() + SNAPSHOT_RETRY_S
                    log.error("snapshot failed", extra={"collection": name, "error": str(error)})
        return written

    def close(self) -> None:
        self._stop.set()
        if self._snapshotter is not None:
            self._snapshotter.join(timeout=30)
        if self.durability is not None:
            self.snapshot_due(force=True)
        for files in self._files.values():
            files.close()
        if self._temp_uploads is not None:
            shutil.rmtree(self._temp_uploads, ignore_errors=True)

    # -- collections -----------------------------------------------------------------
    def create(
        self,
        name: str,
        space_id: str,
        dim: int,
        params: HnswParams | None = None,
        exist_ok: bool = False,
        lexical: LexicalParams | None = None,
    ) -> tuple[HnswCollection, bool]:
        """A new collection with its "live" version; ``lexical`` adds a BM25 index of the
        items' text; ``lexical`` with lexical_only makes a collection with that index alone
        (space_id "" and dim 0, else INVALID_ARGUMENT BAD_LEXICAL_CONFIG). exist_ok
        returns the existing one when space, dim and lexical config agree
        (FAILED_PRECONDITION SPACE_MISMATCH / LEXICAL_MISMATCH otherwise)."""
        validate_collection_name(name)
        if lexical is not None and lexical.lexical_only:
            if space_id or dim:
                raise InvalidArgument(
                    "a lexical-only collection has no embedding space: leave space_id and "
                    f"dim unset (got {shown(space_id)}, dim {dim})",
                    reason="BAD_LEXICAL_CONFIG",
                )
        elif not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        elif not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be 1..{MAX_DIM}, got {dim}", reason="BAD_DIM")
        params = params or self.default_params
        check_hnsw_params(params)
        with self._lock:
            existing = self._aliases.get(name)
            if existing is not None:
                serving = existing.serving
                if not exist_ok:
                    raise AlreadyExists(f"collection {name!r} already exists")
                if serving.space_id != space_id or serving.dim != dim:
                    raise FailedPrecondition(
                        f"collection {name!r} exists in space {serving.space_id} "
                        f"(dim {serving.dim}), not {space_id} (dim {dim})",
                        reason="SPACE_MISMATCH",
                    )
                if serving.lexical_params != lexical:
                    raise FailedPrecondition(
                        f"collection {name!r} exists with lexical config "
                        f"{_lexical_shown(serving.lexical_params)}, not {_lexical_shown(lexical)}",
                        reason="LEXICAL_MISMATCH",
                    )
                return serving, False
            self._check_room_for_one_more()
            collection = HnswCollection(name, space_id, dim, params, self.initial_capacity,
                                        lexical=lexical)
            if self.durability is not None:
                self._clear_unacknowledged(name)
                self._persist_version(collection)
                self._write_alias(name, Alias({}, LIVE_VERSION))
            self._aliases[name] = Alias({LIVE_VERSION: collection}, LIVE_VERSION)
            return collection, True

    def _check_room_for_one_more(self) -> None:
        """Under the store's lock: RESOURCE_EXHAUSTED TOO_MANY_COLLECTIONS at the limit."""
        if self.max_collections is not None and len(self._aliases) >= self.max_collections:
            raise ResourceExhausted(
                f"this shard holds {len(self._aliases)} collections, the limit "
                f"(--max-collections); delete one first",
                reason="TOO_MANY_COLLECTIONS",
            )

    def _clear_unacknowledged(self, name: str) -> None:
        """Removes the leftovers of a create that was never acknowledged, and nothing else:
        a directory with an alias holds acknowledged writes that only a completed load()
        may account for, so finding one here is refused, never deleted."""
        directory = self._name_dir(name)
        if not self._loaded or (directory / "alias.json").exists():
            raise Unavailable(
                f"collection {name!r} is on disk but not loaded; the shard is still recovering",
                reason="NOT_READY",
                retry_after_s=1.0,
            )
        remove_tree(directory)

    def _persist_version(self, collection: HnswCollection, snapshot: bool = False) -> None:
        """Creates the version's directory in one rename: spec, then a first snapshot (a
        bundle, whose manifest gets the bundle digest) or the pending marker."""
        assert self.durability is not None
        directory = self._version_dir(collection.name, collection.version)
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
        staging.rename(directory)
        fsync_dir(directory.parent)
        files = CollectionFiles(directory, self.durability)
        files.snapshot_seq = collection.seq
        files.open_segment(collection.seq + 1)
        collection.journal = files.append
        self._files[(collection.name, collection.version)] = files

    def _write_alias(self, name: str, alias: Alias) -> None:
        if self.durability is not None:
            state = {"active": alias.active, "previous": alias.previous}
            atomic_write(self._name_dir(name) / "alias.json", json.dumps(state).encode())

    def _refuse_lexical_only(self, name: str, action: str) -> None:
        """Versions exist to roll out embedding models (bundles of vectors); a lexical-only
        collection has none: FAILED_PRECONDITION LEXICAL_ONLY. Whether a collection is
        lexical-only never changes while it exists, so no lock is needed."""
        alias = self._aliases.get(name)
        if alias is not None and not alias.serving.dense:
            raise FailedPrecondition(
                f"cannot {action} {shown(name)}: it is lexical-only, with no vectors and no "
                "versions; re-upsert its items to change them",
                reason="LEXICAL_ONLY",
            )

    def alias(self, name: str) -> Alias:
        alias = self._aliases.get(name)
        if alias is None:
            # Only here, off the search path: every stored name passed the same check.
            validate_collection_name(name)  # a malformed name is the caller's mistake
            raise NotFound(f"collection {shown(name)} does not exist", reason="COLLECTION_NOT_FOUND")
        return alias

    def get(self, name: str, version: str = "") -> HnswCollection:
        """The serving version, or the named one."""
        alias = self.alias(name)
        if not version:
            return alias.serving
        collection = alias.versions.get(version)
        if collection is None and version in alias.pending:
            raise FailedPrecondition(
                f"version {shown(version)} of {shown(name)} is pending: its bundle is not installed",
                reason="VERSION_PENDING",
            )
        if collection is None:
            raise NotFound(
                f"collection {shown(name)} has no version {shown(version)} (loaded: {sorted(alias.versions)})",
                reason="VERSION_NOT_FOUND",
            )
        return collection

    def delete(self, name: str) -> None:
        validate_collection_name(name)
        with self._lock:
            if self._aliases.pop(name, None) is None:
                raise NotFound(f"collection {shown(name)} does not exist", reason="COLLECTION_NOT_FOUND")
            for key in [k for k in self._files if k[0] == name]:
                self._files.pop(key).close()
            if self.durability is not None:
                remove_tree(self._name_dir(name))

    def list_page(self, page_size: int, after: str) -> tuple[list[HnswCollection], bool]:
        """Serving versions ordered by name, of the names after ``after``; True when more
        follow the page."""
        names = sorted(name for name in self._aliases if name > after)
        page = [name for name in names[:page_size] if name in self._aliases]
        return [self._aliases[name].serving for name in page], len(names) > page_size

    # -- writes to every version -----------------------------------------------------
    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray | None,
        metadata: Sequence[dict[str, Any]],
        space_id: str = "",
        fingerprint: str = "",
        texts: Sequence[str] | None = None,
    ) -> int:
        """Writes the items to every version (loaded or pending) in the vectors' space
        (empty: the serving version's). Each version journals its own copy before applying
        it; a failure part-way (a full disk) leaves the earlier versions written, which a
        retry of the same upsert makes whole. Texts ("" for none) are kept by every
        version and indexed by the lexical ones. Returns the number of items. A
        lexical-only collection takes vectors None (or n x 0) and text for every item."""
        check_texts(texts, len(ids))  # before any version is written
        if vectors is None:
            vectors = np.empty((len(ids), 0), dtype=np.float32)
        alias = self.alias(name)
        with alias.gate.read():
            if fingerprint and fingerprint != alias.fingerprint:
                raise Aborted(
                    f"the versions of {shown(name)} changed (fingerprint {alias.fingerprint}, "
                    f"the request planned on {shown(fingerprint)}); nothing was written",
                    reason="VERSIONS_CHANGED",
                )
            space = space_id or alias.serving.space_id
            targets = [c for c in alias.every_version().values() if c.space_id == space]
            if not targets:
                raise FailedPrecondition(
                    f"vectors are in space {shown(space)}; no version of collection {shown(name)} "
                    f"is (serving: {alias.serving.space_id})",
                    reason="SPACE_MISMATCH",
                )
            for target in targets:  # all checked before any is written
                if not target.dense and vectors.size:
                    raise InvalidArgument(
                        f"collection {shown(name)} is lexical-only: items carry text, not vectors",
                        reason="VECTOR_NOT_EXPECTED",
                    )
                if vectors.ndim != 2 or vectors.shape[1] != target.dim:
                    raise InvalidArgument(
                        f"vectors have dimension {vectors.shape[-1]}, version "
                        f"{shown(target.version)} of {shown(name)} has {target.dim}",
                        reason="DIMENSION_MISMATCH",
                    )
            for target in targets:
                target.upsert(ids, vectors, metadata, texts)
        return len(ids)

    def delete_items(self, name: str, ids: Sequence[str]) -> int:
        """Deletes from every version; pending ones remember ids they do not hold. Returns
        how many of the ids existed in the serving version."""
        alias = self.alias(name)
        with alias.gate.read():
            deleted = 0
            for version, collection in alias.every_version().items():
                existed = collection.delete(ids)
                if version == alias.active:
                    deleted = existed
        return deleted

    # -- bundles and versions --------------------------------------------------------
    def load_bundle(
        self, name: str, version: str, path: str = "", upload_id: str = ""
    ) -> tuple[HnswCollection, dict]:
        """Verifies every file of a bundle part (a directory under the bundle root, or a
        staged upload), then loads it as a new, inactive version (the first version of a
        new collection is active at once), or installs it into the pending version of that
        name. Idempotent: the same part loaded again as the same version changes nothing."""
        validate_collection_name(name)
        check_version_name(version)
        self._refuse_lexical_only(name, "load a bundle into")
        if bool(path) == bool(upload_id):
            raise InvalidArgument("give exactly one of path and upload_id", reason="BAD_BUNDLE_SOURCE")
        if upload_id:
            if not UPLOAD_ID.match(upload_id):
                raise InvalidArgument(f"upload_id {shown(upload_id)} is not one this shard issued",
                                      reason="BAD_UPLOAD_ID")
            with self._lock:
                done = self._already_loaded(name, version, upload_id=upload_id)
            if done is not None:
                self._discard_upload(upload_id)
                return done
            directory, source = self._staged(name, version, upload_id), f"upload {upload_id}"
        else:
            directory, source = self._confined_bundle_path(path), f"bundle {shown(path)}"
        try:
            manifest_bytes = (directory / "manifest.json").read_bytes()
        except OSError as error:
            raise FailedPrecondition(f"{source} has no readable manifest.json: {error.strerror}",
                                     reason="BUNDLE_CORRUPT") from None
        digest = hashlib.sha256(manifest_bytes).hexdigest()
        with self._lock:
            done = self._already_loaded(name, version, digest=digest)
        if done is not None:
            if upload_id:
                self._discard_upload(upload_id)
            return done
        collection, manifest = self._verified_part(directory, name, source)
        collection.version = version
        collection.bundle_digest = digest
        with self._lock:
            done = self._already_loaded(name, version, digest=digest)
            alias = self._aliases.get(name)
            if done is not None:
                pass  # a concurrent load of the same part won
            elif alias is not None and version in alias.pending:
                self._install(alias, version, collection)
            else:
                if alias is not None:
                    check_bundle_lexical(collection, alias.serving, source)
                if alias is None:
                    self._check_room_for_one_more()
                if self.durability is not None:
                    if alias is None:
                        self._clear_unacknowledged(name)
                    self._persist_version(collection, snapshot=True)
                if alias is None:
                    alias = Alias({}, version)
                    self._aliases[name] = alias
                    self._write_alias(name, alias)
                with alias.gate.write():
                    alias.versions[version] = collection
        if upload_id:
            self._discard_upload(upload_id)
        return done or (collection, manifest)

    def _already_loaded(
        self, name: str, version: str, digest: str = "", upload_id: str = ""
    ) -> tuple[HnswCollection, dict] | None:
        """The loaded version when it came from the same part (a retried publish); None
        when the version is free or pending; ALREADY_EXISTS for another part."""
        alias = self._aliases.get(name)
        existing = alias.versions.get(version) if alias is not None else None
        if existing is None:
            return None
        same = existing.bundle_digest and (
            existing.bundle_digest == digest
            or upload_id == upload_id_for(name, version, existing.bundle_digest)
        )
        if not same:
            raise AlreadyExists(
                f"collection {shown(name)} already has version {shown(version)} "
                f"from another bundle (digest {existing.bundle_digest or 'none'})"
            )
        return existing, {"count": existing.item_count, "space_id": existing.space_id}

    def _verified_part(self, directory: Path, name: str, source: str) -> tuple[HnswCollection, dict]:
        try:
            manifest = verify_manifest(directory)
            collection = HnswCollection.from_snapshot(directory, manifest, name)
        except CorruptData as error:
            # The caller's bundle, not this shard's fault: a warning, as any refused request.
            log.warning("refusing a bundle", extra={"bundle": str(directory), "error": str(error)})
            raise FailedPrecondition(
                f"{source} failed verification: {error}", reason="BUNDLE_CORRUPT"
            ) from None
        if not collection.dense:
            # Bundles roll out an embedding model's vectors; the batch job makes none
            # without one, so a dim-0 part is not something this shard installs.
            raise FailedPrecondition(f"{source} holds no vectors (dim 0)", reason="LEXICAL_ONLY")
        self._check_bundle_metadata(collection, source)
        return collection, manifest

    def _install(self, alias: Alias, version: str, bundle: HnswCollection) -> None:
        """Installs a bundle part into the pending version of that name: the pending
        version's writes (newer than the bundle's catalog) are applied on top, and the
        result becomes a loaded version. Writes to the collection wait meanwhile.

        On disk, in the pending version's own directory: a snapshot of the result, with a
        seq above every record of the pending WAL and the bundle digest in its manifest,
        then CURRENT, then the marker goes. A crash before CURRENT recovers the pending
        version from its WAL (a retried publish installs again); after it, the snapshot."""
        pending = alias.pending[version]
        if (bundle.space_id, bundle.dim) != (pending.space_id, pending.dim):
            raise FailedPrecondition(
                f"bundle is in space {bundle.space_id} (dim {bundle.dim}); pending version "
                f"{shown(version)} is in {pending.space_id} (dim {pending.dim})",
                reason="SPACE_MISMATCH",
            )
        check_bundle_lexical(bundle, pending, f"bundle for pending version {shown(version)}")
        with alias.gate.write():
            bundle.absorb(pending)
            bundle.settle()
            if self.durability is not None:
                files = self._files[(bundle.name, version)]
                files.snapshot(bundle)
                (files.directory / PENDING_MARKER).unlink(missing_ok=True)
                fsync_dir(files.directory)
                bundle.journal = files.append
            alias.versions[version] = bundle
            del alias.pending[version]
        log.info("bundle installed into a pending version",
                 extra={"collection": bundle.name, "version": version, "items": bundle.item_count})

    def begin_version(
        self, name: str, version: str, space_id: str, dim: int
    ) -> tuple[HnswCollection, bool]:
        """Opens a pending version: an empty collection in that space that takes every
        write of its space and every delete until a bundle is installed into it."""
        validate_collection_name(name)
        check_version_name(version)
        self._refuse_lexical_only(name, "begin a version of")
        if not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        if not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be 1..{MAX_DIM}, got {dim}", reason="BAD_DIM")
        with self._lock:
            alias = self.alias(name)
            if version in alias.versions:
                raise AlreadyExists(f"collection {shown(name)} already has version {shown(version)}")
            existing = alias.pending.get(version)
            if existing is not None:
                if (existing.space_id, existing.dim) != (space_id, dim):
                    raise FailedPrecondition(
                        f"version {shown(version)} is pending in space {existing.space_id} "
                        f"(dim {existing.dim}), not {shown(space_id)} (dim {dim})",
                        reason="SPACE_MISMATCH",
                    )
                return existing, False
            for other in alias.every_version().values():
                if other.space_id == space_id and other.dim != dim:
                    raise FailedPrecondition(
                        f"version {shown(other.version)} is in space {space_id} with dim "
                        f"{other.dim}, not {dim}",
                        reason="SPACE_MISMATCH",
                    )
            # Lexical like the serving version: the bundle installed into it must be too.
            collection = HnswCollection(name, space_id, dim, alias.serving.params,
                                        self.initial_capacity, version=version,
                                        lexical=alias.serving.lexical_params)
            collection.tombstones = set()
            with alias.gate.write():
                if self.durability is not None:
                    self._persist_version(collection)
                alias.pending[version] = collection
            return collection, True

    def delete_version(self, name: str, version: str) -> HnswCollection:
        """Drops a version that is not serving, with its files; returns the serving one."""
        validate_collection_name(name)
        with self._lock:
            alias = self.alias(name)
            if version == alias.active:
                raise FailedPrecondition(
                    f"version {shown(version)} of {shown(name)} is serving; activate another first",
                    reason="VERSION_SERVING",
                )
            if version not in alias.versions and version not in alias.pending:
                raise NotFound(
                    f"collection {shown(name)} has no version {shown(version)}",
                    reason="VERSION_NOT_FOUND",
                )
            with alias.gate.write():
                if alias.previous == version:
                    # Alias first: a crash before the files go brings the version back as
                    # an ordinary candidate, never a rollback target that is half deleted.
                    self._write_alias(name, Alias(alias.versions, alias.active, None))
                    alias.previous = None
                alias.versions.pop(version, None)
                alias.pending.pop(version, None)
                files = self._files.pop((name, version), None)
                if files is not None:
                    files.close()
                if self.durability is not None:
                    remove_tree(self._version_dir(name, version))
            return alias.serving

    # -- uploads ---------------------------------------------------------------------
    def _uploads_root(self, create: bool) -> Path | None:
        if self.durability is not None:
            root = self.durability.data_dir / "uploads"
        else:
            if self._temp_uploads is None and create:
                with self._lock:  # never held by callers that create
                    if self._temp_uploads is None:
                        self._temp_uploads = Path(tempfile.mkdtemp(prefix="contentembed-uploads-"))
            root = self._temp_uploads
        if root is not None and create:
            root.mkdir(parents=True, exist_ok=True)
        return root

    def begin_upload(self, name: str, version: str, manifest_bytes: bytes) -> Upload:
        """Checks an upload's header and opens its staging directory."""
        validate_collection_name(name)
        check_version_name(version)
        self._refuse_lexical_only(name, "upload a bundle for")
        if not manifest_bytes or len(manifest_bytes) > MAX_MANIFEST_BYTES:
            raise InvalidArgument(
                f"manifest must be 1..{MAX_MANIFEST_BYTES} bytes, got {len(manifest_bytes)}",
                reason="BAD_MANIFEST",
            )
        sizes = manifest_sizes(manifest_bytes)
        total = sum(sizes.values())
        if total > self.upload_limits.max_bytes:
            raise InvalidArgument(
                f"the part is {total} bytes; this shard takes uploads of at most "
                f"{self.upload_limits.max_bytes}",
                reason="UPLOAD_TOO_LARGE",
            )
        root = self._uploads_root(create=True)
        assert root is not None
        self._sweep_uploads(root)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        try:
            return Upload(name, version, manifest_bytes, sizes, staging)
        except BaseException:
            remove_tree(staging)
            raise

    def finish_upload(self, upload: Upload) -> StagedUpload:
        """Once the stream ended: every file complete and verified, then staged under its
        id (replacing an earlier copy of the same part)."""
        incomplete = upload.incomplete()
        if incomplete:
            raise FailedPrecondition(
                f"the stream ended before every file was complete: {', '.join(incomplete)}",
                reason="UPLOAD_INCOMPLETE",
            )
        upload.close_files()
        atomic_write(upload.staging / "manifest.json", upload.manifest_bytes)
        collection, _ = self._verified_part(upload.staging, upload.name, f"upload {upload.upload_id}")
        info = {"collection": upload.name, "version": upload.version, "digest": upload.digest}
        atomic_write(upload.staging / UPLOAD_INFO, json.dumps(info).encode())
        final = upload.staging.with_name(upload.upload_id)
        remove_tree(final)
        upload.staging.rename(final)
        fsync_dir(final.parent)
        return StagedUpload(upload.upload_id, collection.item_count, collection.space_id, upload.digest)

    def _staged(self, name: str, version: str, upload_id: str) -> Path:
        root = self._uploads_root(create=False)
        directory = root / upload_id if root is not None else None
        if directory is None or not directory.is_dir():
            raise NotFound(f"no staged upload {upload_id} on this shard (uploads do not survive "
                           "a restart)", reason="UPLOAD_NOT_FOUND")
        try:
            info = json.loads((directory / UPLOAD_INFO).read_bytes())
        except (OSError, ValueError) as error:
            raise FailedPrecondition(f"upload {upload_id} is unreadable: {error}",
                                     reason="BUNDLE_CORRUPT") from None
        if (info.get("collection"), info.get("version")) != (name, version):
            raise FailedPrecondition(
                f"upload {upload_id} was sent for {info.get('collection')}/{info.get('version')}, "
                f"not {name}/{version}",
                reason="UPLOAD_MISMATCH",
            )
        return directory

    def _discard_upload(self, upload_id: str) -> None:
        root = self._uploads_root(create=False)
        if root is not None:
            with contextlib.suppress(OSError):
                remove_tree(root / upload_id)

    def _sweep_uploads(self, root: Path) -> None:
        """Removes staged (or abandoned partial) uploads untouched for upload_ttl_s."""
        deadline = time.time() - self.upload_limits.ttl_s
        for entry in root.iterdir():
            try:
                touched = max([entry.stat().st_mtime] + [p.stat().st_mtime for p in entry.iterdir()])
                if touched < deadline:
                    log.info("removing a stale upload", extra={"upload": entry.name})
                    remove_tree(entry)
            except OSError:
                continue  # removed meanwhile by another upload's sweep

    def _check_bundle_metadata(self, collection: HnswCollection, source: str) -> None:
        """A batch job writes metadata without going through Upsert: the same bounds,
        refused as the bundle's fault (FAILED_PRECONDITION), with Upsert's reasons."""
        for item_id, values in collection.metadata_items():
            try:
                check_metadata(values, self.metadata_limits, what=f"metadata of {shown(item_id)}")
            except InvalidArgument as error:
                raise FailedPrecondition(f"{source}: {error.message}", reason=error.reason) from None

    def _confined_bundle_path(self, path: str) -> Path:
        if self.bundle_root is None:
            raise FailedPrecondition(
                "this shard has no --bundle-root; bundles cannot be loaded", reason="NO_BUNDLE_ROOT"
            )
        root = self.bundle_root.resolve()
        try:
            candidate = (root / path).resolve()  # an absolute path replaces root here
            if candidate != root and root not in candidate.parents:
                raise InvalidArgument(
                    f"bundle path {shown(path)} is outside the bundle root",
                    reason="PATH_OUTSIDE_ROOT",
                )
            is_dir = candidate.is_dir()
        except (OSError, ValueError) as error:
            # A name longer than the file system allows, a NUL byte: the caller's to fix. The
            # error's own text repeats the whole path, so only its description is kept.
            description = getattr(error, "strerror", None) or "not a valid path"
            raise InvalidArgument(
                f"bundle path {shown(path)} is unusable: {description}", reason="BAD_BUNDLE_PATH"
            ) from None
        if not is_dir:
            raise NotFound(f"bundle {shown(path)} does not exist under the bundle root",
                           reason="BUNDLE_NOT_FOUND")
        for entry in candidate.iterdir():
            if entry.is_symlink():  # a link could point a "bundle file" anywhere on the host
                raise InvalidArgument(
                    f"bundle {shown(path)} contains a symbolic link ({entry.name})",
                    reason="PATH_OUTSIDE_ROOT",
                )
        return candidate

    def activate(self, name: str, version: str) -> tuple[HnswCollection, str]:
        """Flips the alias; returns (now serving, previously serving version)."""
        with self._lock:
            alias = self.alias(name)
            if version in alias.pending:
                raise FailedPrecondition(
                    f"version {shown(version)} of {shown(name)} is pending: install its bundle first",
                    reason="VERSION_PENDING",
                )
            if version not in alias.versions:
                raise NotFound(
                    f"collection {shown(name)} has no version {shown(version)} (loaded: {sorted(alias.versions)})",
                    reason="VERSION_NOT_FOUND",
                )
            previous = alias.active
            if version != previous:
                # Disk first: a crash after the rename serves the new version on restart,
                # a crash before it the old one; never a mix.
                self._write_alias(name, Alias(alias.versions, version, previous))
                alias.active, alias.previous = version, previous
            return alias.serving, previous

    def rollback(self, name: str) -> tuple[HnswCollection, str]:
        with self._lock:
            alias = self.alias(name)
            if alias.previous is None or alias.previous not in alias.versions:
                raise FailedPrecondition(
                    f"collection {shown(name)} has no previous version to roll back to",
                    reason="NO_PREVIOUS_VERSION",
                )
            target = alias.previous
        return self.activate(name, target)


def _lexical_shown(params: LexicalParams | None) -> str:
    return "none (dense only)" if params is None else f"language {params.language!r}"


def check_bundle_lexical(bundle: HnswCollection, version: HnswCollection, source: str) -> None:
    """A bundle part must index text as the collection does (its serving version, or the
    pending version it is installed into): a version with another config, once activated,
    would silently change what hybrid searches of the collection find (none at all from
    a dense-only bundle). Refused: FAILED_PRECONDITION LEXICAL_MISMATCH; the part is to be
    rebuilt with the collection's config."""
    if bundle.lexical_params != version.lexical_params:
        raise FailedPrecondition(
            f"{source} was built with lexical config {_lexical_shown(bundle.lexical_params)}; "
            f"collection {shown(version.name)} has {_lexical_shown(version.lexical_params)}: "
            "rebuild the bundle with the collection's lexical config",
            reason="LEXICAL_MISMATCH",
        )


def manifest_sizes(manifest_bytes: bytes) -> dict[str, int]:
    """The files an uploaded part's manifest lists, with their sizes; INVALID_ARGUMENT
    BAD_MANIFEST unless it lists exactly the snapshot files with sizes and sha256."""
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as error:
        raise InvalidArgument(f"manifest is not JSON: {error}", reason="BAD_MANIFEST") from None
    except RecursionError:  # 10,000 nested objects were an INTERNAL error
        raise InvalidArgument("manifest is nested too deep to read", reason="BAD_MANIFEST") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != set(SNAPSHOT_FILES):
        raise InvalidArgument(f"manifest must list exactly {list(SNAPSHOT_FILES)} under files",
                              reason="BAD_MANIFEST")
    sizes = {}
    for name, entry in files.items():
        size = entry.get("bytes") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(sha, str):
            raise InvalidArgument(f"manifest: {name} needs bytes (a size) and sha256",
                                  reason="BAD_MANIFEST")
        sizes[name] = size
    return sizes
