"""Bundle parts on their way in: streamed uploads staged on the shard, directories under
the bundle root, and the checks every part passes before it may become a version."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contentembed.services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from contentembed.services.common.metadata import MetadataLimits, check_metadata
from contentembed.services.common.validation import shown
from contentembed.services.index.collection import HnswCollection
from contentembed.services.index.lexical import LexicalParams
from contentembed.services.index.persistence import (
    SNAPSHOT_FILES,
    CorruptData,
    atomic_write,
    fsync_dir,
    remove_tree,
    verify_manifest,
)

log = logging.getLogger(__name__)

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

    def require_complete(self) -> None:
        """FAILED_PRECONDITION UPLOAD_INCOMPLETE unless every file has all its bytes."""
        incomplete = [f"{f} ({self.received[f]} of {size} bytes)"
                      for f, size in self.sizes.items() if self.received[f] != size]
        if incomplete:
            raise FailedPrecondition(
                f"the stream ended before every file was complete: {', '.join(incomplete)}",
                reason="UPLOAD_INCOMPLETE",
            )

    def close_files(self) -> None:
        for handle in self._handles.values():
            if not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()


@dataclass(frozen=True)
class BundlePart:
    """A part found where a load asked for it, not yet verified."""

    directory: Path
    source: str  # how errors name it: "upload <id>" or "bundle <path>"
    digest: str  # sha256 of its manifest.json


class BundleIntake:
    """Where bundle parts come from (staged uploads, the bundle root) and how they are
    verified. ``uploads_root`` is <data-dir>/uploads for a durable shard (cleared at
    start-up: a staged upload's stream died with the process); None in memory, where a
    temporary directory is made at the first upload."""

    def __init__(
        self,
        bundle_root: Path | None,
        uploads_root: Path | None,
        limits: UploadLimits | None = None,
        metadata_limits: MetadataLimits | None = None,
    ) -> None:
        self.bundle_root = bundle_root
        self.limits = limits or UploadLimits()
        # Bundles are an ingest path too: their metadata gets the bounds of Upsert's.
        self.metadata_limits = metadata_limits or MetadataLimits()
        self._uploads = uploads_root
        self._temporary = uploads_root is None
        self._lock = threading.Lock()

    def clear_uploads(self) -> None:
        """At start-up: a staged upload was never installed, and its id died with it."""
        if not self._temporary and self._uploads is not None:
            shutil.rmtree(self._uploads, ignore_errors=True)

    def close(self) -> None:
        if self._temporary and self._uploads is not None:
            shutil.rmtree(self._uploads, ignore_errors=True)

    def _uploads_root(self, create: bool) -> Path | None:
        if self._uploads is None and create:
            with self._lock:
                if self._uploads is None:
                    self._uploads = Path(tempfile.mkdtemp(prefix="contentembed-uploads-"))
        if self._uploads is not None and create:
            self._uploads.mkdir(parents=True, exist_ok=True)
        return self._uploads

    def begin_upload(self, name: str, version: str, manifest_bytes: bytes) -> Upload:
        """Checks an upload's manifest and opens its staging directory."""
        if not manifest_bytes or len(manifest_bytes) > MAX_MANIFEST_BYTES:
            raise InvalidArgument(
                f"manifest must be 1..{MAX_MANIFEST_BYTES} bytes, got {len(manifest_bytes)}",
                reason="BAD_MANIFEST",
            )
        sizes = manifest_sizes(manifest_bytes)
        total = sum(sizes.values())
        if total > self.limits.max_bytes:
            raise InvalidArgument(
                f"the part is {total} bytes; this shard takes uploads of at most "
                f"{self.limits.max_bytes}",
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
        upload.require_complete()
        upload.close_files()
        atomic_write(upload.staging / "manifest.json", upload.manifest_bytes)
        collection, _ = self.verified(upload.staging, upload.name, f"upload {upload.upload_id}")
        info = {"collection": upload.name, "version": upload.version, "digest": upload.digest}
        atomic_write(upload.staging / UPLOAD_INFO, json.dumps(info).encode())
        final = upload.staging.with_name(upload.upload_id)
        remove_tree(final)
        upload.staging.rename(final)
        fsync_dir(final.parent)
        return StagedUpload(upload.upload_id, collection.item_count, collection.space_id, upload.digest)

    def find(self, name: str, version: str, path: str, upload_id: str) -> BundlePart:
        """The staged upload or the directory under the bundle root a load names, with the
        digest of its manifest."""
        if upload_id:
            directory, source = self._staged(name, version, upload_id), f"upload {upload_id}"
        else:
            directory, source = self._confined_bundle_path(path), f"bundle {shown(path)}"
        try:
            manifest_bytes = (directory / "manifest.json").read_bytes()
        except OSError as error:
            raise FailedPrecondition(f"{source} has no readable manifest.json: {error.strerror}",
                                     reason="BUNDLE_CORRUPT") from None
        return BundlePart(directory, source, hashlib.sha256(manifest_bytes).hexdigest())

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

    def discard_upload(self, upload_id: str) -> None:
        root = self._uploads_root(create=False)
        if root is not None:
            with contextlib.suppress(OSError):
                remove_tree(root / upload_id)

    def _sweep_uploads(self, root: Path) -> None:
        """Removes staged (or abandoned partial) uploads untouched for ttl_s."""
        deadline = time.time() - self.limits.ttl_s
        for entry in root.iterdir():
            try:
                touched = max([entry.stat().st_mtime] + [p.stat().st_mtime for p in entry.iterdir()])
                if touched < deadline:
                    log.info("removing a stale upload", extra={"upload": entry.name})
                    remove_tree(entry)
            except OSError:
                continue  # removed meanwhile by another upload's sweep

    def verified(self, directory: Path, name: str, source: str) -> tuple[HnswCollection, dict]:
        """The part loaded as a collection once every file, and its metadata, passed;
        FAILED_PRECONDITION (the bundle's fault) otherwise."""
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
        self._check_metadata(collection, source)
        return collection, manifest

    def _check_metadata(self, collection: HnswCollection, source: str) -> None:
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


def lexical_shown(params: LexicalParams | None) -> str:
    return "none (dense only)" if params is None else f"language {params.language!r}"


def check_bundle_lexical(bundle: HnswCollection, version: HnswCollection, source: str) -> None:
    """A bundle part must index text as the collection does (its serving version, or the
    pending version it is installed into): a version with another config, once activated,
    would silently change what hybrid searches of the collection find (none at all from
    a dense-only bundle). Refused: FAILED_PRECONDITION LEXICAL_MISMATCH; the part is to be
    rebuilt with the collection's config."""
    if bundle.lexical_params != version.lexical_params:
        raise FailedPrecondition(
            f"{source} was built with lexical config {lexical_shown(bundle.lexical_params)}; "
            f"collection {shown(version.name)} has {lexical_shown(version.lexical_params)}: "
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
