"""The collections of one shard, in memory or durable on disk. Pure index code: no grpc.

The store is where the shard's parts meet: the catalog of names and versions
(catalog.py), each version's ordered log and snapshots (version_log.py), and bundle parts
on their way in (bundles.py). It decides which versions a write goes to and keeps a
version set change and the writes to it from crossing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contentembed.services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from contentembed.services.common.metadata import MetadataLimits
from contentembed.services.common.validation import shown, validate_collection_name
from contentembed.services.index.bundles import (
    UPLOAD_ID,
    BundleIntake,
    StagedUpload,
    Upload,
    UploadLimits,
    check_bundle_lexical,
    lexical_shown,
    upload_id_for,
)
from contentembed.services.index.catalog import Alias, CandidateSpec, Catalog, check_version_name
from contentembed.services.index.collection import LIVE_VERSION, HnswCollection
from contentembed.services.index.dense import HnswParams, check_hnsw_params
from contentembed.services.index.lexical import LexicalParams, check_texts
from contentembed.services.index.persistence import remove_tree
from contentembed.services.index.version_log import Durability, VersionLogs

log = logging.getLogger(__name__)

# The largest embedding models in use have 3,072 or 4,096 dimensions. Each dimension costs
# every item 4 bytes and every comparison a multiply-add; at 65,536 a 16 MiB Upsert carried
# 64 vectors.
MAX_DIM = 4096


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
        self.initial_capacity = initial_capacity
        self.durability = durability
        self.logs: VersionLogs | None = None
        if durability is not None:
            self.logs = VersionLogs(durability, initial_capacity, self._loaded_version)
        self.catalog = Catalog(None if self.logs is None else self.logs.collections_dir,
                               max_collections)
        self.bundles = BundleIntake(
            bundle_root, None if durability is None else durability.data_dir / "uploads",
            upload_limits, metadata_limits,
        )
        self._loaded = durability is None  # in memory there is nothing to recover
        # Told of every change of names, versions or aliases (the primary's replication);
        # called before the change is acknowledged, where a write to a new version cannot
        # yet have been logged.
        self.on_catalog_changed: Callable[[], None] | None = None

    def _catalog_changed(self) -> None:
        if self.on_catalog_changed is not None:
            self.on_catalog_changed()

    def _loaded_version(self, name: str, version: str) -> HnswCollection | None:
        return self.catalog.loaded_version(name, version)

    # -- lifecycle -------------------------------------------------------------------
    def load(self) -> None:
        """Recovers every collection version on disk. Any corrupt file aborts the load: a
        shard that would serve with data missing must not turn SERVING.

        Holds the catalog's lock throughout: the runtime already refuses calls until this
        returns, and the lock makes the store itself safe against a create, bundle load or
        delete that reached it anyway (it waits, then sees every recovered collection)."""
        if self.logs is None:
            return
        root = self.logs.collections_dir
        root.mkdir(parents=True, exist_ok=True)
        self.bundles.clear_uploads()
        with self.catalog.lock:
            for name_dir in sorted(
                p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
            ):
                state = Catalog.read(name_dir)
                if state is None:
                    # The alias is written last, before the create is acknowledged: without
                    # it the collection never existed for any client.
                    log.warning("removing an unacknowledged collection", extra={"dir": str(name_dir)})
                    remove_tree(name_dir)
                    continue
                versions: dict[str, HnswCollection] = {}
                pending: dict[str, HnswCollection] = {}
                VersionLogs.restore_replaced(name_dir / "versions")
                for version_dir in sorted((name_dir / "versions").iterdir()):
                    if version_dir.name.startswith("."):
                        continue
                    collection = self.logs.recover(name_dir.name, version_dir)
                    (pending if collection.pending else versions)[version_dir.name] = collection
                active, previous, candidate = state
                self.catalog.add(name_dir.name, Alias(versions, active, previous, pending, candidate),
                                 durable=False)
            self._loaded = True
        self.logs.start_snapshots()

    def snapshot_due(self, force: bool = False) -> int:
        """See VersionLogs.snapshot_due; 0 in memory."""
        return 0 if self.logs is None else self.logs.snapshot_due(force)

    def close(self) -> None:
        if self.logs is not None:
            self.logs.close()
        self.bundles.close()

    # -- collections -----------------------------------------------------------------
    def alias(self, name: str) -> Alias:
        return self.catalog.alias(name)

    def get(self, name: str, version: str = "") -> HnswCollection:
        """The serving version, or the named one."""
        return self.catalog.get(name, version)

    def list_page(self, page_size: int, after: str) -> tuple[list[HnswCollection], bool]:
        return self.catalog.list_page(page_size, after)

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
        with self.catalog.lock:
            existing = self.catalog.find(name)
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
                        f"{lexical_shown(serving.lexical_params)}, not {lexical_shown(lexical)}",
                        reason="LEXICAL_MISMATCH",
                    )
                return serving, False
            self.catalog.check_room_for_one_more()
            collection = HnswCollection(name, space_id, dim, params, self.initial_capacity,
                                        lexical=lexical)
            if self.logs is not None:
                self._clear_unacknowledged(name)
                self.logs.create(collection)
            self.catalog.add(name, Alias({LIVE_VERSION: collection}, LIVE_VERSION))
            self._catalog_changed()
            return collection, True

    def _clear_unacknowledged(self, name: str) -> None:
        """Removes the leftovers of a create that was never acknowledged, and nothing else:
        a directory with an alias holds acknowledged writes that only a completed load()
        may account for, so finding one here is refused, never deleted."""
        assert self.logs is not None
        directory = self.logs.name_dir(name)
        if not self._loaded or Catalog.read(directory) is not None:
            raise Unavailable(
                f"collection {name!r} is on disk but not loaded; the shard is still recovering",
                reason="NOT_READY",
                retry_after_s=1.0,
            )
        remove_tree(directory)

    def delete(self, name: str) -> None:
        validate_collection_name(name)
        with self.catalog.lock:
            if not self.catalog.remove(name):
                raise NotFound(f"collection {shown(name)} does not exist", reason="COLLECTION_NOT_FOUND")
            if self.logs is not None:
                self.logs.drop_collection(name)
            self._catalog_changed()

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
    def begin_upload(self, name: str, version: str, manifest_bytes: bytes) -> Upload:
        """Checks an upload's header and opens its staging directory."""
        validate_collection_name(name)
        check_version_name(version)
        self.catalog.refuse_lexical_only(name, "upload a bundle for")
        return self.bundles.begin_upload(name, version, manifest_bytes)

    def finish_upload(self, upload: Upload) -> StagedUpload:
        return self.bundles.finish_upload(upload)

    def load_bundle(
        self, name: str, version: str, path: str = "", upload_id: str = ""
    ) -> tuple[HnswCollection, dict]:
        """Verifies every file of a bundle part (a directory under the bundle root, or a
        staged upload), then loads it as a new, inactive version (the first version of a
        new collection is active at once), or installs it into the pending version of that
        name. Idempotent: the same part loaded again as the same version changes nothing."""
        validate_collection_name(name)
        check_version_name(version)
        self.catalog.refuse_lexical_only(name, "load a bundle into")
        if bool(path) == bool(upload_id):
            raise InvalidArgument("give exactly one of path and upload_id", reason="BAD_BUNDLE_SOURCE")
        if upload_id:
            if not UPLOAD_ID.match(upload_id):
                raise InvalidArgument(f"upload_id {shown(upload_id)} is not one this shard issued",
                                      reason="BAD_UPLOAD_ID")
            with self.catalog.lock:
                done = self._already_loaded(name, version, upload_id=upload_id)
            if done is not None:
                self.bundles.discard_upload(upload_id)
                return done
        part = self.bundles.find(name, version, path, upload_id)
        with self.catalog.lock:
            done = self._already_loaded(name, version, digest=part.digest)
        if done is not None:
            if upload_id:
                self.bundles.discard_upload(upload_id)
            return done
        collection, manifest = self.bundles.verified(part.directory, name, part.source)
        collection.version = version
        collection.bundle_digest = part.digest
        with self.catalog.lock:
            done = self._already_loaded(name, version, digest=part.digest)
            alias = self.catalog.find(name)
            if done is not None:
                pass  # a concurrent load of the same part won
            elif alias is not None and version in alias.pending:
                self._install(alias, version, collection)
            else:
                if alias is not None:
                    check_bundle_lexical(collection, alias.serving, part.source)
                else:
                    self.catalog.check_room_for_one_more()
                if self.logs is not None:
                    if alias is None:
                        self._clear_unacknowledged(name)
                    self.logs.create(collection, snapshot=True)
                if alias is None:
                    alias = Alias({}, version)
                    self.catalog.add(name, alias)
                with alias.gate.write():
                    alias.versions[version] = collection
                    self._catalog_changed()
        if upload_id:
            self.bundles.discard_upload(upload_id)
        return done or (collection, manifest)

    def _already_loaded(
        self, name: str, version: str, digest: str = "", upload_id: str = ""
    ) -> tuple[HnswCollection, dict] | None:
        """The loaded version when it came from the same part (a retried publish); None
        when the version is free or pending; ALREADY_EXISTS for another part."""
        existing = self.catalog.loaded_version(name, version)
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

    def _install(self, alias: Alias, version: str, bundle: HnswCollection) -> None:
        """Installs a bundle part into the pending version of that name: the pending
        version's writes (newer than the bundle's catalog) are applied on top, and the
        result becomes a loaded version (on disk as VersionLogs.install says). Writes to
        the collection wait meanwhile."""
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
            if self.logs is not None:
                self.logs.install(bundle)
            alias.versions[version] = bundle
            del alias.pending[version]
            self._catalog_changed()
        log.info("bundle installed into a pending version",
                 extra={"collection": bundle.name, "version": version, "items": bundle.item_count})

    def begin_version(
        self, name: str, version: str, space_id: str, dim: int
    ) -> tuple[HnswCollection, bool]:
        """Opens a pending version: an empty collection in that space that takes every
        write of its space and every delete until a bundle is installed into it."""
        validate_collection_name(name)
        check_version_name(version)
        self.catalog.refuse_lexical_only(name, "begin a version of")
        if not space_id:
            raise InvalidArgument("space_id is required", reason="MISSING_SPACE")
        if not 1 <= dim <= MAX_DIM:
            raise InvalidArgument(f"dim must be 1..{MAX_DIM}, got {dim}", reason="BAD_DIM")
        with self.catalog.lock:
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
                if self.logs is not None:
                    self.logs.create(collection)
                alias.pending[version] = collection
                self._catalog_changed()
            return collection, True

    def delete_version(self, name: str, version: str) -> HnswCollection:
        """Drops a version that is not serving, with its files; returns the serving one."""
        validate_collection_name(name)
        with self.catalog.lock:
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
                candidate = alias.candidate
                if candidate is not None and candidate.version == version:
                    candidate = None
                if alias.previous == version or candidate != alias.candidate:
                    # Alias first: a crash before the files go brings the version back as
                    # an ordinary version, never a rollback target (or a candidate) that
                    # is half deleted.
                    previous = None if alias.previous == version else alias.previous
                    self.catalog.write(name, alias, previous=previous, candidate=candidate)
                    alias.previous, alias.candidate = previous, candidate
                alias.versions.pop(version, None)
                alias.pending.pop(version, None)
                if self.logs is not None:
                    self.logs.drop(name, version)
                self._catalog_changed()
            return alias.serving

    def activate(self, name: str, version: str) -> tuple[HnswCollection, str]:
        """Flips the alias; returns (now serving, previously serving version)."""
        flipped = self.catalog.activate(name, version)
        self._catalog_changed()
        return flipped

    def rollback(self, name: str) -> tuple[HnswCollection, str]:
        flipped = self.catalog.rollback(name)
        self._catalog_changed()
        return flipped

    def set_candidate(self, name: str, candidate: CandidateSpec | None) -> HnswCollection:
        """See Catalog.set_candidate."""
        validate_collection_name(name)
        serving = self.catalog.set_candidate(name, candidate)
        self._catalog_changed()
        return serving
