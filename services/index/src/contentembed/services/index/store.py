"""The collections of one shard, in memory or durable on disk. Pure index code: no grpc.

Durable mode (a data directory): every acknowledged write is in the collection's WAL
before it is applied; snapshots are written in the background every
``snapshot_every_ops`` writes and at shutdown; start-up loads the newest verified
snapshot and replays the WAL after it. See persistence.py for the file layout.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from contentembed.services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.sharding import shard_for_id
from contentembed.services.common.validation import shown, validate_collection_name
from contentembed.services.index.collection import (
    LIVE_VERSION,
    HnswCollection,
    HnswParams,
    check_hnsw_params,
)
from contentembed.services.index.persistence import (
    CorruptData,
    SyncPolicy,
    WalRecord,
    WalUnavailable,
    WriteAheadLog,
    atomic_write,
    fsync_dir,
    fsync_file,
    read_wal,
    remove_tree,
    verify_manifest,
)

log = logging.getLogger(__name__)

MAX_DIM = 65536
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
        # Held for a whole snapshot and by close(): a collection deleted meanwhile waits for
        # the snapshot to finish, and a closed one is never snapshotted (or recreated) again.
        self._snapshot_lock = threading.Lock()
        self.closed = False
        self.retry_snapshot_at = 0.0  # time.monotonic() before which a failed one waits

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
                self._wal.append(record)
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
        if current.exists():
            seq = int(current.read_text().strip())
            snapshot = self.snapshots_dir / str(seq)
            manifest = verify_manifest(snapshot)
            collection = HnswCollection.from_snapshot(snapshot, manifest, collection.name)
            self.snapshot_seq = seq
        segments = self.segments()
        for number, segment in enumerate(segments):
            for record in read_wal(segment, last_segment=number == len(segments) - 1):
                if record.seq <= collection.seq:
                    continue  # already in the snapshot
                if record.seq != collection.seq + 1:
                    raise CorruptData(
                        f"{segment}: record {record.seq} follows {collection.seq}: writes missing"
                    )
                try:
                    collection.replay(record)
                except Exception as error:  # noqa: BLE001 - hnswlib raises bare RuntimeErrors
                    raise CorruptData(f"{segment}: record {record.seq} does not apply: {error}") from None
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


@dataclass
class Alias:
    """A collection name: its loaded versions and which one serves."""

    versions: dict[str, HnswCollection]
    active: str
    previous: str | None = None

    @property
    def serving(self) -> HnswCollection:
        return self.versions[self.active]


class CollectionStore:
    """Collections by name; each name has versions (LIVE_VERSION, bundles) and an alias."""

    def __init__(
        self,
        default_params: HnswParams,
        initial_capacity: int = 1024,
        durability: Durability | None = None,
        bundle_root: Path | None = None,
        metadata_limits: MetadataLimits | None = None,
    ) -> None:
        self.default_params = default_params
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
                for version_dir in sorted((name_dir / "versions").iterdir()):
                    if version_dir.name.startswith("."):
                        continue
                    versions[version_dir.name] = self._recover(name_dir.name, version_dir)
                state = json.loads(alias_file.read_bytes())
                self._aliases[name_dir.name] = Alias(versions, state["active"], state.get("previous"))
            self._loaded = True
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="snapshots", daemon=True)
        self._snapshotter.start()

    def _recover(self, name: str, directory: Path) -> HnswCollection:
        assert self.durability is not None
        try:
            spec = json.loads((directory / "collection.json").read_bytes())
            files = CollectionFiles(directory, self.durability)
            empty = HnswCollection(name, spec["space_id"], spec["dim"], HnswParams(**spec["hnsw"]),
                                   self.initial_capacity, version=directory.name)
            collection = files.recover(empty)
            # A bundle's manifest names the version it was built as; it serves under the
            # name it was loaded with.
            collection.version = directory.name
        except (CorruptData, OSError, ValueError, KeyError) as error:
            log.error("refusing to load a collection", extra={"dir": str(directory), "error": str(error)})
            raise CorruptData(f"collection in {directory} failed verification: {error}") from error
        collection.journal = files.append
        self._files[(name, directory.name)] = files
        log.info("collection recovered", extra={"collection": name, "version": directory.name,
                                                "items": collection.item_count, "seq": collection.seq})
        return collection

    def _snapshot_loop(self) -> None:
        assert self.durability is not None
        period = min(1.0, self.durability.wal_sync_interval_s)
        while not self._stop.wait(period):
            for files in list(self._files.values()):
                files.sync_if_due()
            self.snapshot_due()

    def snapshot_due(self, force: bool = False) -> int:
        """Snapshots versions with enough writes since their last one; returns how many."""
        assert self.durability is not None
        written = 0
        for (name, version), files in list(self._files.items()):
            alias = self._aliases.get(name)
            collection = alias.versions.get(version) if alias else None
            if collection is None:
                continue
            pending = collection.seq - files.snapshot_seq
            due = pending >= self.durability.snapshot_every_ops
            if pending > 0 and (force or (due and time.monotonic() >= files.retry_snapshot_at)):
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

    # -- collections -----------------------------------------------------------------
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
                return serving, False
            collection = HnswCollection(name, space_id, dim, params, self.initial_capacity)
            if self.durability is not None:
                self._clear_unacknowledged(name)
                self._persist_version(collection, snapshot_from=None)
                self._write_alias(name, Alias({}, LIVE_VERSION))
            self._aliases[name] = Alias({LIVE_VERSION: collection}, LIVE_VERSION)
            return collection, True

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

    def _persist_version(self, collection: HnswCollection, snapshot_from: Path | None) -> None:
        """Creates the version's directory in one rename: spec, optional first snapshot."""
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
        atomic_write(staging / "collection.json", json.dumps(spec).encode())
        if snapshot_from is not None:
            (staging / "snapshots").mkdir()
            target = staging / "snapshots" / str(collection.seq)
            shutil.copytree(snapshot_from, target)
            for path in target.iterdir():
                fsync_file(path)
            atomic_write(staging / "CURRENT", str(collection.seq).encode())
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

    def list_page(self, page_size: int, page_token: str) -> tuple[list[HnswCollection], str]:
        """Serving versions ordered by name; the token is the last name of the previous page."""
        page_size, after = decode_page(page_size, page_token)
        names = sorted(name for name in self._aliases if name > after)
        page = [name for name in names[:page_size] if name in self._aliases]
        token = encode_token(page[-1]) if len(names) > page_size and page else ""
        return [self._aliases[name].serving for name in page], token

    # -- bundles and versions --------------------------------------------------------
    def load_bundle(self, name: str, version: str, path: str) -> tuple[HnswCollection, dict]:
        """Verifies every file of the bundle, then loads it as a new, inactive version
        (the first version of a new collection is active at once)."""
        validate_collection_name(name)
        if not VERSION_NAME.match(version) or version == LIVE_VERSION:
            raise InvalidArgument(
                f"version {shown(version)} must be 1-64 characters of [A-Za-z0-9._-] and not "
                f"{LIVE_VERSION!r}",
                reason="BAD_VERSION",
            )
        directory = self._confined_bundle_path(path)
        with self._lock:
            alias = self._aliases.get(name)
            if alias is not None and version in alias.versions:
                raise AlreadyExists(f"collection {shown(name)} already has version {shown(version)}")
        try:
            manifest = verify_manifest(directory)
            collection = HnswCollection.from_snapshot(directory, manifest, name)
        except CorruptData as error:
            log.error("refusing a bundle", extra={"bundle": str(directory), "error": str(error)})
            raise FailedPrecondition(
                f"bundle {shown(path)} failed verification: {error}", reason="BUNDLE_CORRUPT"
            ) from None
        self._check_bundle_metadata(collection, path)
        collection.version = version
        with self._lock:
            alias = self._aliases.get(name)
            if alias is not None and version in alias.versions:
                raise AlreadyExists(f"collection {shown(name)} already has version {shown(version)}")
            if self.durability is not None:
                if alias is None:
                    self._clear_unacknowledged(name)
                self._persist_version(collection, snapshot_from=directory)
            if alias is None:
                alias = Alias({}, version)
                self._aliases[name] = alias
                self._write_alias(name, alias)
            alias.versions[version] = collection
        return collection, manifest

    def _check_bundle_metadata(self, collection: HnswCollection, path: str) -> None:
        """A batch job writes metadata without going through Upsert: the same bounds,
        refused as the bundle's fault (FAILED_PRECONDITION), with Upsert's reasons."""
        for item_id, values in collection.metadata_items():
            try:
                check_metadata(values, self.metadata_limits, what=f"metadata of {shown(item_id)}")
            except InvalidArgument as error:
                raise FailedPrecondition(
                    f"bundle {shown(path)}: {error.message}", reason=error.reason
                ) from None

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


def encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def decode_page(page_size: int, page_token: str, default: int = 100, limit: int = 1000) -> tuple[int, str]:
    if page_size < 0 or page_size > limit:
        raise InvalidArgument(f"page_size must be 0..{limit}, got {page_size}", reason="BAD_PAGE_SIZE")
    after = ""
    if page_token:
        try:
            # validate=True: the default skips characters outside the alphabet, so "***"
            # would decode to "" and silently restart from the first page.
            after = base64.b64decode(page_token.encode(), altchars=b"-_", validate=True).decode()
        except ValueError as error:
            raise InvalidArgument(
                "page_token is not one this service issued", reason="BAD_PAGE_TOKEN"
            ) from error
    return page_size or default, after
