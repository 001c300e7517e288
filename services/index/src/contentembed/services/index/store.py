"""The collections of one shard, in memory or durable on disk. Pure index code: no grpc.

Durable mode (a data directory): every acknowledged write is in the collection's WAL
before it is applied; snapshots are written in the background every
``snapshot_every_ops`` writes and at shutdown; start-up loads the newest verified
snapshot and replays the WAL after it. See persistence.py for the file layout.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from contentembed.services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import validate_collection_name
from contentembed.services.index.collection import HnswCollection, HnswParams
from contentembed.services.index.persistence import (
    CorruptData,
    SyncPolicy,
    WalRecord,
    WriteAheadLog,
    atomic_write,
    fsync_dir,
    read_wal,
    remove_tree,
    verify_manifest,
)

log = logging.getLogger(__name__)

MAX_DIM = 65536


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
                    f"{what}[{position}]: id {item_id!r} belongs to shard {owner}, "
                    f"this is shard {self.index} of {self.count}",
                    reason="WRONG_SHARD",
                )


@dataclass(frozen=True)
class Durability:
    data_dir: Path
    wal_sync: SyncPolicy = "always"
    wal_sync_interval_s: float = 0.05
    snapshot_every_ops: int = 50_000


class CollectionFiles:
    """The on-disk side of one collection: its WAL segments and snapshots."""

    def __init__(self, directory: Path, durability: Durability) -> None:
        self.directory = directory
        self.durability = durability
        self.snapshot_seq = 0
        self._wal: WriteAheadLog | None = None
        self._lock = threading.Lock()

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
            if self._wal is not None:
                self._wal.close()
            self._wal = WriteAheadLog(
                self.wal_dir / f"{first_seq:020d}.log",
                self.durability.wal_sync,
                self.durability.wal_sync_interval_s,
            )

    def append(self, record: WalRecord) -> None:
        with self._lock:
            assert self._wal is not None
            self._wal.append(record)

    def recover(self, collection: HnswCollection) -> HnswCollection:
        """Newest verified snapshot (if any), then every WAL record after it."""
        current = self.directory / "CURRENT"
        if current.exists():
            seq = int(current.read_text().strip())
            snapshot = self.snapshots_dir / str(seq)
            manifest = verify_manifest(snapshot)
            collection = HnswCollection.from_snapshot(snapshot, manifest, collection.name)
            self.snapshot_seq = seq
        segments = self.segments()
        for number, segment in enumerate(segments):
            last = number == len(segments) - 1
            for record in read_wal(segment, truncate_torn_tail=last):
                collection.replay(record)
        self.open_segment(collection.seq + 1)
        return collection

    def snapshot(self, collection: HnswCollection) -> None:
        """Rotate the WAL, snapshot, point CURRENT at it, drop what it made redundant."""
        rotated_at = collection.seq + 1
        self.open_segment(rotated_at)
        self.snapshots_dir.mkdir(exist_ok=True)
        staging = self.snapshots_dir / f".staging-{rotated_at}"
        remove_tree(staging)
        manifest = collection.write_snapshot(staging)
        final = self.snapshots_dir / str(manifest["seq"])
        remove_tree(final)
        staging.rename(final)
        fsync_dir(self.snapshots_dir)
        atomic_write(self.directory / "CURRENT", str(manifest["seq"]).encode())
        self.snapshot_seq = manifest["seq"]
        for old in self.snapshots_dir.iterdir():
            if old != final and not old.name.startswith(".staging"):
                remove_tree(old)
        for segment in self.segments():
            if int(segment.stem) < rotated_at:
                segment.unlink()
        fsync_dir(self.wal_dir)

    def close(self) -> None:
        with self._lock:
            if self._wal is not None:
                self._wal.close()
                self._wal = None


class CollectionStore:
    def __init__(
        self,
        default_params: HnswParams,
        initial_capacity: int = 1024,
        durability: Durability | None = None,
    ) -> None:
        self.default_params = default_params
        self.initial_capacity = initial_capacity
        self.durability = durability
        self._collections: dict[str, HnswCollection] = {}
        self._files: dict[str, CollectionFiles] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._snapshotter: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def _collection_dir(self, name: str) -> Path:
        assert self.durability is not None
        return self.durability.data_dir / "collections" / name

    def load(self) -> None:
        """Recovers every collection on disk. Any corrupt file aborts the load: a shard
        that would serve with data missing must not turn SERVING."""
        if self.durability is None:
            return
        root = self.durability.data_dir / "collections"
        root.mkdir(parents=True, exist_ok=True)
        for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                spec = json.loads((directory / "collection.json").read_bytes())
                files = CollectionFiles(directory, self.durability)
                empty = self._new_collection(spec["name"], spec["space_id"], spec["dim"],
                                             HnswParams(**spec["hnsw"]))
                collection = files.recover(empty)
            except (CorruptData, OSError, ValueError, KeyError) as error:
                log.error("refusing to load a collection", extra={"dir": str(directory), "error": str(error)})
                raise CorruptData(f"collection in {directory} failed verification: {error}") from error
            collection.journal = files.append
            self._collections[collection.name] = collection
            self._files[collection.name] = files
            log.info("collection recovered", extra={"collection": collection.name,
                                                    "items": collection.item_count, "seq": collection.seq})
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="snapshots", daemon=True)
        self._snapshotter.start()

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.snapshot_due()

    def snapshot_due(self, force: bool = False) -> int:
        """Snapshots collections with enough writes since their last one; returns how many."""
        assert self.durability is not None
        written = 0
        for name, collection in list(self._collections.items()):
            files = self._files.get(name)
            pending = collection.seq - (files.snapshot_seq if files else 0)
            if files is None or pending == 0:
                continue
            if force or pending >= self.durability.snapshot_every_ops:
                try:
                    files.snapshot(collection)
                    written += 1
                except OSError as error:
                    # The WAL still holds every write: a failed snapshot loses nothing.
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

    # -- collections -----------------------------------------------------------------
    def _new_collection(self, name: str, space_id: str, dim: int, params: HnswParams) -> HnswCollection:
        return HnswCollection(name, space_id, dim, params, self.initial_capacity)

    def create(
        self,
        name: str,
        space_id: str,
        dim: int,
        params: HnswParams | None = None,
        exist_ok: bool = False,
    ) -> tuple[HnswCollection, bool]:
        validate_collection_name(name)
        if not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        if not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be 1..{MAX_DIM}, got {dim}", reason="BAD_DIM")
        params = params or self.default_params
        with self._lock:
            existing = self._collections.get(name)
            if existing is not None:
                if not exist_ok:
                    raise AlreadyExists(f"collection {name!r} already exists")
                if existing.space_id != space_id or existing.dim != dim:
                    raise FailedPrecondition(
                        f"collection {name!r} exists in space {existing.space_id} "
                        f"(dim {existing.dim}), not {space_id} (dim {dim})",
                        reason="SPACE_MISMATCH",
                    )
                return existing, False
            collection = self._new_collection(name, space_id, dim, params)
            if self.durability is not None:
                self._persist_new(collection)
            self._collections[name] = collection
            return collection, True

    def _persist_new(self, collection: HnswCollection) -> None:
        directory = self._collection_dir(collection.name)
        remove_tree(directory)  # leftovers of a create that crashed before acknowledging
        staging = directory.with_name(f".creating-{collection.name}")
        remove_tree(staging)
        staging.mkdir(parents=True)
        spec = {
            "name": collection.name, "space_id": collection.space_id, "dim": collection.dim,
            "hnsw": {"m": collection.params.m, "ef_construction": collection.params.ef_construction,
                     "ef_search": collection.params.ef_search},
        }
        atomic_write(staging / "collection.json", json.dumps(spec).encode())
        staging.rename(directory)
        fsync_dir(directory.parent)
        files = CollectionFiles(directory, self.durability)  # type: ignore[arg-type]
        files.open_segment(1)
        collection.journal = files.append
        self._files[collection.name] = files

    def get(self, name: str) -> HnswCollection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist", reason="COLLECTION_NOT_FOUND")
        return collection

    def delete(self, name: str) -> None:
        with self._lock:
            if self._collections.pop(name, None) is None:
                raise NotFound(f"collection {name!r} does not exist", reason="COLLECTION_NOT_FOUND")
            files = self._files.pop(name, None)
            if files is not None:
                files.close()
                remove_tree(files.directory)

    def list_page(self, page_size: int, page_token: str) -> tuple[list[HnswCollection], str]:
        """Collections ordered by name; the token is the last name of the previous page."""
        page_size, after = decode_page(page_size, page_token)
        names = sorted(name for name in self._collections if name > after)
        page = names[:page_size]
        token = encode_token(page[-1]) if len(names) > page_size else ""
        return [self._collections[name] for name in page if name in self._collections], token


def encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def decode_page(page_size: int, page_token: str, default: int = 100, limit: int = 1000) -> tuple[int, str]:
    if page_size < 0 or page_size > limit:
        raise InvalidArgument(f"page_size must be 0..{limit}, got {page_size}")
    after = ""
    if page_token:
        try:
            after = base64.urlsafe_b64decode(page_token.encode()).decode()
        except ValueError as error:
            raise InvalidArgument("page_token is not one this service issued") from error
    return page_size or default, after
